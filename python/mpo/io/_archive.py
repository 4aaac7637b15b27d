"""The ``mpo.MPO`` archive: one MPO's arrays in an uncompressed .npz with its tag and format version."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ._atomic import atomic_path
from ._formats import MPO_ARCHIVE, mpo_archive_version
from ._tensors import savez

__all__ = ["write_archive", "read_archive"]


def write_archive(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write an MPO's arrays (``MPO.to_arrays()``) to ``path`` atomically, tagged with kind and version.

    The path is used as given (no suffix added).
    """
    tagged = {"kind": np.array(MPO_ARCHIVE.kind), "format_version": np.array(mpo_archive_version(arrays)),
              **arrays}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        savez(f, tagged)


def read_archive(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an archive written by :func:`write_archive`, after its tag and version are checked.

    Nothing is unpickled (``allow_pickle=False``); a file that is not such an archive, or has a version
    this mpo does not read, raises ValueError naming the path.
    """
    name = repr(os.fspath(path))
    try:
        archive = np.load(os.fspath(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read an MPO from {name}: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{name} is not an mpo archive (a single .npy array, not an .npz)")
    with archive as data:
        keys = set(data.files)
        if "kind" not in keys or str(data["kind"]) != MPO_ARCHIVE.kind or "format_version" not in keys:
            raise ValueError(f"{name} is not an mpo archive (no 'kind'/'format_version' entries)")
        MPO_ARCHIVE.check_version(int(data["format_version"]), name)
        return {key: data[key] for key in keys - {"kind", "format_version"}}
