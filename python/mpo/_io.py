"""Saving and loading MPOs: one .npz archive, a format version, bit-exact round trips."""

from __future__ import annotations

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
    arrays = {
        "kind": np.array(_KIND),
        "format_version": np.array(FORMAT_VERSION if m.row_scale is None else _WEIGHTED_VERSION),
        "shape": np.array(m.shape, dtype=np.int64),
        "norm": np.array(m.norm, dtype=np.float64),
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
        arrays["plain_norm"] = np.array(m._plain[0], dtype=np.float64)
        for k, s in enumerate(m._plain[1]):
            arrays[f"plain_spectrum_{k}"] = s
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".mpo-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
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
        n = sum(1 for key in keys if key.startswith("core_"))
        try:
            cores = [data[f"core_{k}"] for k in range(n)]
            spectra = [data[f"spectrum_{k}"] for k in range(n - 1)]
            weighted = {}
            if version == _WEIGHTED_VERSION:
                plain = [data[f"plain_spectrum_{k}"] for k in range(n - 1)]
                weighted = {"row_scale": data["row_scale"], "plain": (float(data["plain_norm"]), plain)}
            return MPO(
                cores,
                shape=tuple(int(x) for x in data["shape"]),
                spectra=spectra,
                truncation_errors=data["truncation_errors"],
                norm=float(data["norm"]),
                limits=[int(x) for x in data["limits"]],
                spectra_of_matrix=bool(data["spectra_of_matrix"]),
                **weighted,
            )
        except KeyError as exc:
            raise ValueError(f"{os.fspath(path)!r} is missing the entry {exc}") from None
