"""Saving and loading MPOs: one .npz archive, a format version, bit-exact round trips."""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np

from ._mpo import MPO

__all__ = ["save", "load", "FORMAT_VERSION"]

FORMAT_VERSION = 1
# A row-weighted MPO is written as version 2 (its row scale and plain spectra added), so that a reader
# that only knows version 1 refuses it instead of silently dropping the scale.
_WEIGHTED_VERSION = 2
_KIND = "mpo.MPO"


def save(m: MPO, path: str | os.PathLike) -> None:
    """Write ``m`` to ``path`` as an uncompressed .npz archive.

    The archive is written to a temporary file in the same folder and renamed into place, so an
    interrupted save never leaves a half-written file. The path is used as given (no suffix added).
    """
    if not isinstance(m, MPO):
        raise TypeError(f"save expects an MPO, got {type(m).__name__}")
    path = os.fspath(path)
    arrays = {"kind": np.array(_KIND), "format_version": np.array(version_of(m)), **to_arrays(m)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; renamed onto ``path`` when the block ends normally, and
    removed when it raises (KeyboardInterrupt included), so ``path`` is never left half-written."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".mpo-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    # mkstemp makes the file private (0600); give the result the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load(path: str | os.PathLike) -> MPO:
    """Read an MPO written by :meth:`MPO.save`; arrays come back bit-exact."""
    try:
        archive = np.load(os.fspath(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read an MPO from {os.fspath(path)!r}: {exc}") from None
    with archive as data:
        keys = set(data.files)
        if "kind" not in keys or str(data["kind"]) != _KIND or "format_version" not in keys:
            raise ValueError(f"{os.fspath(path)!r} is not an mpo archive (no 'kind'/'format_version' entries)")
        version = int(data["format_version"])
        if version not in (FORMAT_VERSION, _WEIGHTED_VERSION):
            raise ValueError(
                f"{os.fspath(path)!r} has MPO format version {version}; this mpo reads versions "
                f"{FORMAT_VERSION} and {_WEIGHTED_VERSION}"
            )
        try:
            return from_arrays(data, keys)
        except KeyError as exc:
            raise ValueError(f"{os.fspath(path)!r} is missing the entry {exc}") from None


def to_arrays(m: MPO, prefix: str = "") -> dict:
    """Every array an MPO is rebuilt from, keyed ``prefix + name`` (numbers only: also safetensors)."""
    if m.row_scale is not None and m._transposed:
        # The scale of m.T acts on the columns, which only the transposed view of the stored MPO
        # expresses: write that MPO and a flag that reads it back transposed.
        return {**to_arrays(m.T, prefix), prefix + "transposed": np.array(True)}
    arrays = {
        "shape": np.array(m.shape, dtype=np.int64),
        # The norm the spectra and errors refer to: ||D M|| for a row-weighted MPO, else ||M||.
        "norm": np.array(m.weighted_norm, dtype=np.float64),
        "truncation_errors": m.truncation_errors,
        "limits": np.array(m._limits, dtype=np.int64),
        "spectra_of_matrix": np.array(m._spectra_of_matrix),
    }
    for k, core in enumerate(m.cores):
        arrays[f"core_{k}"] = core
    for k, s in enumerate(m.spectra):
        arrays[f"spectrum_{k}"] = s
    if m.row_scale is not None:
        arrays["row_scale"] = m.row_scale
        arrays["plain_norm"] = np.array(m.norm, dtype=np.float64)
        for k, s in enumerate(m._plain[1]):
            arrays[f"plain_spectrum_{k}"] = s
    return {prefix + key: a for key, a in arrays.items()}


def version_of(m: MPO) -> int:
    """The format version an MPO is written in: 1, or 2 for a row-weighted MPO (its scale and plain
    spectra are extra entries that a version-1 reader would silently drop)."""
    return FORMAT_VERSION if m.row_scale is None else _WEIGHTED_VERSION


def from_arrays(data, keys, prefix: str = "") -> MPO:
    """The MPO written by :func:`to_arrays` with ``prefix``; ``data[key]`` gives an array, ``keys`` are
    all keys present. A missing entry raises KeyError."""
    n = sum(1 for key in keys if key.startswith(prefix + "core_"))
    cores = [data[f"{prefix}core_{k}"] for k in range(n)]
    spectra = [data[f"{prefix}spectrum_{k}"] for k in range(n - 1)]
    weighted = {}
    if prefix + "row_scale" in keys:
        plain = [data[f"{prefix}plain_spectrum_{k}"] for k in range(n - 1)]
        weighted = {"row_scale": data[prefix + "row_scale"],
                    "plain": (float(np.reshape(data[prefix + "plain_norm"], ())), plain)}
    m = MPO(
        cores,
        shape=tuple(int(x) for x in data[prefix + "shape"]),
        spectra=spectra,
        truncation_errors=data[prefix + "truncation_errors"],
        # Scalars as shape () or (1,): safetensors' safe_open hands 0-d tensors back with shape (1,).
        norm=float(np.reshape(data[prefix + "norm"], ())),
        limits=[int(x) for x in data[prefix + "limits"]],
        spectra_of_matrix=bool(np.reshape(data[prefix + "spectra_of_matrix"], ())),
        **weighted,
    )
    if prefix + "transposed" in keys and bool(np.reshape(data[prefix + "transposed"], ())):
        return m.T
    return m
