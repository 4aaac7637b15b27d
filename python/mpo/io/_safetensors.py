"""safetensors files read and written with NumPy alone, one tensor at a time.

The format (https://github.com/huggingface/safetensors): 8 bytes, a little-endian unsigned header length
N; N bytes of UTF-8 JSON, ``{"__metadata__": {str: str}, NAME: {"dtype": D, "shape": [...],
"data_offsets": [begin, end]}, ...}``; then the data, little-endian and row-major, offsets counted from
the end of the header.

A file may come from anywhere, so every field is checked before a byte of data is trusted: the header
length against the file size, dtypes against a whitelist, offsets inside the data and tiling it without
overlap or hole, and each size equal to prod(shape) * itemsize. Tensors are read one at a time with
seek + readinto into a fresh array, so a checkpoint never has to fit in memory.

bfloat16 and the float8 types come from ``ml_dtypes`` (the JAX team's NumPy extension types); every
other dtype is NumPy's own. Data is copied bit-exactly: reading and writing never convert a value.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ._atomic import atomic_path

__all__ = ["TensorInfo", "SafetensorsReader", "SafetensorsWriter", "read_header", "load_file", "save_file",
           "dtype_code", "numpy_dtype"]

# safetensors' own reader refuses headers above 100 MB; so does this one (a bigger "header" is a broken
# or hostile file, and json.loads of it would take the memory the streaming reader is meant to save).
MAX_HEADER = 100_000_000
# Space kept for the header in front of the data, so that the data can be written before the header is
# known (see SafetensorsWriter); a header that outgrows it costs one streamed copy of the data.
HEADER_RESERVE = 16384

# safetensors dtype code -> NumPy dtype string (little-endian); "bfloat16" etc. come from ml_dtypes.
_CODES = {
    "BOOL": "|b1", "U8": "|u1", "I8": "|i1", "U16": "<u2", "I16": "<i2", "U32": "<u4", "I32": "<i4",
    "U64": "<u8", "I64": "<i8", "F16": "<f2", "F32": "<f4", "F64": "<f8",
    "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
# Bytes per value, known without importing ml_dtypes (a header is checked before any value is read).
_ITEMSIZE = {code: {"BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}.get(code) or np.dtype(name).itemsize
             for code, name in _CODES.items()}
_ML_DTYPES = {"bfloat16", "float8_e4m3fn", "float8_e5m2"}
#: The floating-point codes a weight matrix may have (the float8 types are copied, never decomposed).
FLOAT_CODES = ("F16", "BF16", "F32", "F64")


def _ml_dtypes():
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError(
            "bfloat16 and float8 tensors need ml_dtypes (NumPy's bfloat16): python -m pip install ml_dtypes"
        ) from None
    return ml_dtypes


def numpy_dtype(code: str) -> np.dtype:
    """The NumPy dtype of a safetensors dtype code ("BF16" -> ml_dtypes.bfloat16)."""
    if code not in _CODES:
        raise ValueError(f"unsupported safetensors dtype {code!r}; supported: {', '.join(_CODES)}")
    name = _CODES[code]
    if name in _ML_DTYPES:
        return np.dtype(getattr(_ml_dtypes(), name))
    return np.dtype(name)


def dtype_code(dtype) -> str:
    """The safetensors code of a NumPy dtype (ml_dtypes.bfloat16 -> "BF16")."""
    dtype = np.dtype(dtype)
    if dtype.name in _ML_DTYPES:
        return next(code for code, name in _CODES.items() if name == dtype.name)
    for code, name in _CODES.items():
        if name not in _ML_DTYPES and np.dtype(name) == dtype.newbyteorder("<"):
            return code
    raise TypeError(f"dtype {dtype} has no safetensors code; supported: {', '.join(_CODES)}")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header; ``start``/``end`` are absolute file offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Bytes of the stored data."""
        return self.end - self.start

    @property
    def size(self) -> int:
        """Number of values."""
        return math.prod(self.shape)


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_header(path: str | os.PathLike) -> tuple[dict[str, str], list[TensorInfo]]:
    """(metadata, tensor entries in data order) of a safetensors file, every field validated.

    Raises ValueError naming the file, the rule and the offending value for anything malformed.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        return _parse_header(f, path)


def _parse_header(f, path: str) -> tuple[dict[str, str], list[TensorInfo]]:
    size = os.fstat(f.fileno()).st_size

    def bad(rule: str) -> ValueError:
        return ValueError(f"{path!r} is not a valid safetensors file: {rule}")

    if size < 8:
        raise bad(f"it has {size} bytes, fewer than the 8 of the header length")
    (length,) = struct.unpack("<Q", f.read(8))
    if length == 0 or length > size - 8:
        raise bad(f"the header length {length} does not fit in the file's {size - 8} bytes after it")
    if length > MAX_HEADER:
        raise bad(f"the header length {length} is above the limit of {MAX_HEADER} bytes")
    raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"the header is not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad(f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad("__metadata__ must map strings to strings")
    data_start, data_size = 8 + length, size - 8 - length
    infos = []
    for name, entry in header.items():
        if not name:
            raise bad("a tensor has an empty name")
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"the entry of {name!r} must have exactly dtype, shape and data_offsets, got {entry!r}")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in _CODES:
            raise bad(f"{name!r} has dtype {code!r}; supported: {', '.join(_CODES)}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"{name!r} has shape {shape!r}, not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise bad(f"{name!r} has data_offsets {offsets!r}, not two integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise bad(f"{name!r} has data_offsets [{begin}, {end}] outside the {data_size} data bytes")
        # Python integers do not overflow, but a hostile shape can still ask for a product with thousands
        # of digits: stop multiplying once the count passes what the data could hold.
        count, itemsize = 1, _ITEMSIZE[code]
        for d in shape:
            count *= d
            if count * itemsize > data_size:
                count = -1
                break
        if count < 0 or count * itemsize != end - begin:
            raise bad(
                f"{name!r} has shape {shape} of {code} ({itemsize} bytes each) but data_offsets [{begin}, {end}] "
                f"hold {end - begin} bytes"
            )
        infos.append(TensorInfo(name, code, tuple(shape), data_start + begin, data_start + end))
    infos.sort(key=lambda t: (t.start, t.end))
    at = data_start
    for t in infos:
        # safetensors writes the data as one tiling in offset order: an overlap would let two tensors
        # alias, a hole would be bytes the header does not account for.
        if t.start != at:
            what = "overlaps the tensor before it" if t.start < at else f"leaves a hole of {t.start - at} bytes before it"
            raise bad(f"{t.name!r} at data_offsets [{t.start - data_start}, {t.end - data_start}] {what}")
        at = t.end
    if at != size:
        raise bad(f"the tensors end at byte {at - data_start} of the data but it has {data_size} bytes")
    return metadata, infos


def _readinto(f, buffer: np.ndarray, what: str) -> None:
    view = buffer.data.cast("B")  # ndarray.data is its memoryview (typed as one, unlike memoryview(ndarray) on 3.11)
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise ValueError(f"{what}: the file ended early (read {done} of {len(view)} bytes)")
        done += got


class SafetensorsReader:
    """A safetensors file opened for reading one tensor at a time; a context manager.

        with SafetensorsReader(path) as r:
            for name in r.names:
                a = r.read(name)           # a fresh array in the stored dtype (bfloat16 via ml_dtypes)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        """Open ``path`` and validate its header (ValueError when it is malformed)."""
        self.path = os.fspath(path)
        self._file = open(self.path, "rb")
        try:
            self.metadata, infos = _parse_header(self._file, self.path)
        except BaseException:
            self._file.close()
            raise
        self._infos = {t.name: t for t in infos}

    @property
    def names(self) -> list[str]:
        """Tensor names in the order their data is stored."""
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        """The header entry of ``name`` (KeyError naming the file when it is absent)."""
        try:
            return self._infos[name]
        except KeyError:
            raise KeyError(f"{self.path!r} has no tensor {name!r}") from None

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a new array in its stored dtype, bit-exact."""
        t = self.info(name)
        raw = np.empty(t.nbytes, dtype=np.uint8)
        self._file.seek(t.start)
        _readinto(self._file, raw, f"{self.path!r}, tensor {name!r}")
        return raw.view(numpy_dtype(t.dtype)).reshape(t.shape)

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file (whole-file convenience; prefer SafetensorsReader for big files)."""
    with SafetensorsReader(path) as r:
        return {name: r.read(name) for name in r.names}


class SafetensorsWriter:
    """A safetensors file written one tensor at a time, atomically; a context manager.

        with SafetensorsWriter(path, metadata={"format": "pt"}) as w:
            w.add("a", array_a)            # the bytes go to disk now; the array may be dropped
            w.add("b", array_b)
        # path appears complete when the block ends, and not at all if it raises

    The data is written behind a reserved header space (``reserve`` bytes), and the header is filled in
    at the end, padded with spaces (JSON allows them; safetensors pads the same way). A header larger than
    the reserve moves the data once, streamed in chunks. The file gets the mode a plain open() gives.
    """

    def __init__(self, path: str | os.PathLike, metadata: Mapping[str, str] | None = None, *,
                 reserve: int = HEADER_RESERVE) -> None:
        """Start writing ``path`` (through a temporary file beside it)."""
        self.path = os.fspath(path)
        meta = dict(metadata or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise TypeError(f"metadata must map strings to strings, got {meta!r}")
        self._metadata = meta
        self._entries: dict[str, dict] = {}
        self._reserve = max(int(reserve), 64)
        self._reserve += -self._reserve % 8  # the data starts 8-byte aligned, as safetensors writes it
        self._size = 0
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._file = open(self._tmp, "r+b")
        self._file.seek(8 + self._reserve)

    @property
    def nbytes(self) -> int:
        """Data bytes written so far."""
        return self._size

    def add(self, name: str, array: np.ndarray) -> None:
        """Append ``array`` (any supported dtype, copied bit-exactly, little-endian) under ``name``."""
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"a tensor name must be a non-empty string other than '__metadata__', got {name!r}")
        if name in self._entries:
            raise ValueError(f"the tensor {name!r} is already in {self.path!r}")
        a = np.asarray(array)
        code = dtype_code(a.dtype)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        if not a.flags.c_contiguous:
            a = a.copy(order="C")  # (np.ascontiguousarray would also turn a 0-d array into 1-d)
        self._file.write(a.reshape(-1).view(np.uint8).data)
        self._entries[name] = {"dtype": code, "shape": list(a.shape),
                               "data_offsets": [self._size, self._size + a.nbytes]}
        self._size += a.nbytes

    def _header(self) -> bytes:
        header = {"__metadata__": self._metadata} if self._metadata else {}
        header.update(self._entries)
        return json.dumps(header, separators=(",", ":")).encode("utf-8")

    def close(self) -> None:
        """Write the header and move the finished file onto ``path``."""
        try:
            header = self._header()
            if len(header) <= self._reserve:
                self._file.seek(0)
                self._file.write(struct.pack("<Q", self._reserve) + header + b" " * (self._reserve - len(header)))
                self._file.close()
            else:
                self._file.close()
                self._rewrite(header)
        except BaseException:
            self._abort()
            raise
        self._atomic.__exit__(None, None, None)

    def _rewrite(self, header: bytes) -> None:
        # The header outgrew the reserve: write header + data to a second temporary file and swap it in.
        padded = header + b" " * (-len(header) % 8)  # keeps the data 8-byte aligned, as safetensors does
        with atomic_path(self._tmp) as second, open(second, "wb") as out, open(self._tmp, "rb") as data:
            out.write(struct.pack("<Q", len(padded)) + padded)
            data.seek(8 + self._reserve)
            while chunk := data.read(1 << 24):
                out.write(chunk)

    def _abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        try:
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except RuntimeError:
            pass

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self._abort()


def save_file(path: str | os.PathLike, tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
              metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (a mapping, or (name, array) pairs consumed one at a time) to ``path`` atomically."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    with SafetensorsWriter(path, metadata) as w:
        for name, array in items:
            w.add(name, array)
