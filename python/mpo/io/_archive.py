"""The ``mpo.MPO`` archive: one MPO's arrays in an uncompressed .npz with its tag and format version."""

from __future__ import annotations

import math
import os
import zipfile
import zlib
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
    _check_members(os.fspath(path), name)
    try:
        archive = np.load(os.fspath(path), allow_pickle=False)
    except _UNREADABLE as exc:
        raise ValueError(f"cannot read an MPO from {name}: {type(exc).__name__}: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{name} is not an mpo archive (a single .npy array, not an .npz)")
    with archive as data:
        try:
            keys = set(data.files)
            if "kind" not in keys or str(data["kind"]) != MPO_ARCHIVE.kind or "format_version" not in keys:
                raise ValueError(f"{name} is not an mpo archive (no 'kind'/'format_version' entries)")
            version = data["format_version"]
            if version.dtype.kind not in "iu" or version.size != 1:
                raise ValueError(f"{name}: the entry 'format_version' must be one integer")
            MPO_ARCHIVE.check_version(int(version.reshape(())), name)
            return {key: data[key] for key in keys - {"kind", "format_version"}}
        except ValueError:
            raise
        except _UNREADABLE as exc:
            raise ValueError(f"cannot read an MPO from {name}: {type(exc).__name__}: {exc}") from None


# What zipfile, zlib and NumPy's .npy parser raise on damaged bytes (unsupported zip versions, bad
# deflate streams, header literals that do not parse, encrypted members): all the file's fault.
_UNREADABLE = (OSError, ValueError, EOFError, SyntaxError, TypeError, KeyError, RuntimeError, NotImplementedError,
               OverflowError, MemoryError, zipfile.BadZipFile, zlib.error)

# What an MPO archive holds: float32/float64 arrays, int64 shapes and limits, bool flags, the kind string.
_MEMBER_DTYPES = {"f4", "f8", "i8", "b1"}
# Deflate cannot expand data by more than ~1032x: a member that claims more is not a real one.
_MOST_EXPANSION = 1100


def _check_members(path: str, name: str) -> None:
    """ValueError naming the file and the rule unless every member of the archive at ``path`` is a .npy
    array of a whitelisted dtype whose declared size is what the member holds. Read from the .npy
    headers alone, before NumPy allocates anything (a 1 KB member may declare 175 TiB)."""
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ValueError(f"cannot read an MPO from {name}: no such file") from None
    except _UNREADABLE as exc:
        raise ValueError(f"cannot read an MPO from {name}: not an .npz archive ({type(exc).__name__}: {exc})") from None
    with archive:
        size = os.path.getsize(path)
        for info in archive.infolist():
            member = info.filename
            if not member.endswith(".npy"):
                raise ValueError(f"{name}: the entry {member!r} is not a .npy array")
            if info.compress_size > size or info.file_size > _MOST_EXPANSION * max(info.compress_size, 1) + 4096:
                raise ValueError(f"{name}: the entry {member!r} declares {info.file_size} bytes, more than the file holds")
            try:
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f, max_header_size=10_000)
            except _UNREADABLE as exc:
                raise ValueError(f"{name}: the entry {member!r} has no valid .npy header ({exc})") from None
            if dtype.hasobject or not (dtype.str[1:] in _MEMBER_DTYPES or (member == "kind.npy" and dtype.kind == "U")):
                raise ValueError(f"{name}: the entry {member!r} has dtype {dtype}; an MPO archive holds only "
                                 "float32, float64, int64 and bool arrays")
            declared = math.prod(int(d) for d in shape) * dtype.itemsize
            if declared > info.file_size:
                raise ValueError(f"{name}: the entry {member!r} declares shape {shape} of {dtype} ({declared} bytes) "
                                 f"but holds {info.file_size} bytes")
