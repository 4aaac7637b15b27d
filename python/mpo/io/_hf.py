"""Hugging Face model folders in and out: the checkpoint read tensor by tensor, the compressed folder.

Input: a ``.safetensors`` file, or a folder holding ``model.safetensors`` or
``model.safetensors.index.json`` and its shards (plus ``config.json`` and the tokenizer files).

Output (``write_compressed`` / ``compress_checkpoint``), one folder:

- every file of the input folder that is not weights (config.json, tokenizer and generation files),
  copied as it is;
- ``mpo-00001-of-0000N.safetensors`` shards and their index ``mpo.safetensors.index.json``: a compressed
  module PATH stores its cores as ``PATH.cores.0`` ... (the keys of ``mpo.torch``'s layers), every
  other tensor under its own name, bit-exact;
- ``mpo_manifest.json``: format name and version, and per compressed module its kind, orientation,
  matrix shape, factors, bonds, dtype, tied aliases and bias; the matrices left dense with the reason.

``compress_checkpoint`` decomposes each chosen matrix as one task (``compress_task``: shard path and
tensor name in, cores out), in this process or on Dask workers (``_dask``), keeps each finished matrix
in ``OUT/.mpo-partial`` so an interrupted run resumes (``_workfolder``), and assembles the folder above
in source order once all are finished.

The weight files are deliberately not called ``model.safetensors``: plain
``transformers.AutoModel.from_pretrained`` then stops with "no file named model.safetensors ..." instead
of building the model and filling the compressed layers with random weights. ``mpo.torch.from_pretrained``
reads the folder.

Orientation: the MPO's matrix M is either the module's stored ``weight`` ("weight") or its transpose
("transposed"). ``mpo compress`` decomposes tensors as stored; ``mpo.torch`` layers hold M = W.T for a
Linear and M = W for an Embedding or a transformers Conv1D (whose weight is stored in x out).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import __version__
from ._atomic import atomic_path
from .._activation import decompose_activations
from ._dask import run_tasks
from .._decompose import decompose
from .._validation import match_names
from ._safetensors import FLOAT_CODES, SafetensorsReader, SafetensorsWriter, TensorInfo, dtype_code, numpy_dtype
from ._workfolder import WORK, WorkFolder, source_fingerprint

__all__ = [
    "FORMAT", "FORMAT_VERSION", "MANIFEST", "INDEX", "Checkpoint", "open_checkpoint", "ShardedWriter",
    "read_manifest", "open_compressed", "new_folder", "parse_size", "copy_side_files", "compress_checkpoint",
    "CompressResult", "KINDS", "ORIENTATIONS", "dense_reason", "same_location", "Settings", "MatrixTask",
    "compress_task",
]

FORMAT = "mpo.hf-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "mpo_manifest.json"
INDEX = "mpo.safetensors.index.json"
KINDS = ("linear", "embedding", "conv1d")
ORIENTATIONS = ("weight", "transposed")
DEFAULT_SHARD_SIZE = 1 << 30
# Files of a model folder that hold weights (never copied: the output has its own) and index files.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".gguf", ".onnx", ".index.json")
_HF_INDEX = "model.safetensors.index.json"
_HF_SINGLE = "model.safetensors"


# ----------------------------------------------------------------------------- reading a checkpoint


class Checkpoint:
    """A checkpoint of one or more safetensors files, read one tensor at a time; a context manager.

    ``names`` lists every tensor (in file order), ``info(name)`` its header entry, ``read(name)`` a fresh
    array in the stored dtype. ``folder`` is the model folder (None for a bare file), ``config`` its
    parsed config.json (None when absent).
    """

    def __init__(self, files: Sequence[str], folder: str | None, weight_map: dict[str, str] | None = None):
        self.folder = folder
        self.files = list(files)
        self._readers: dict[str, SafetensorsReader] = {}
        self._where: dict[str, str] = {}
        try:
            for path in self.files:
                reader = SafetensorsReader(path)
                self._readers[path] = reader
                for name in reader.names:
                    if name in self._where:
                        raise ValueError(
                            f"the tensor {name!r} is in two shards: {os.path.basename(self._where[name])!r} and "
                            f"{os.path.basename(path)!r}"
                        )
                    self._where[name] = path
            if weight_map is not None:
                self._check_index(weight_map)
            self.config = self._read_config()
        except BaseException:
            self.close()
            raise

    def _check_index(self, weight_map: dict[str, str]) -> None:
        for name, shard in weight_map.items():
            held = self._where.get(name)
            if held is None or os.path.basename(held) != shard:
                raise ValueError(f"the index puts {name!r} in {shard!r}, but that shard does not hold it")
        extra = sorted(set(self._where) - set(weight_map))
        if extra:
            raise ValueError(f"the shards hold tensors the index does not list: {extra[:5]}")

    def _read_config(self) -> dict | None:
        if self.folder is None:
            return None
        path = os.path.join(self.folder, "config.json")
        if not os.path.isfile(path):
            return None
        config = _read_json(path)
        if not isinstance(config, dict):
            raise ValueError(f"{path!r} holds a JSON {type(config).__name__}, not an object")
        return config

    @property
    def names(self) -> list[str]:
        """Every tensor's name, shard by shard in file order."""
        return list(self._where)

    def info(self, name: str) -> TensorInfo:
        """The header entry of ``name``."""
        return self._reader(name).info(name)

    def file_of(self, name: str) -> str:
        """The path of the file that holds ``name``."""
        self._reader(name)  # KeyError naming the tensor when it is absent
        return self._where[name]

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a new array in its stored dtype (bit-exact)."""
        return self._reader(name).read(name)

    def _reader(self, name: str) -> SafetensorsReader:
        try:
            return self._readers[self._where[name]]
        except KeyError:
            raise KeyError(f"the checkpoint has no tensor {name!r}") from None

    @property
    def nbytes(self) -> int:
        """Data bytes of every tensor."""
        return sum(self.info(name).nbytes for name in self._where)

    def close(self) -> None:
        """Close every file."""
        for reader in self._readers.values():
            reader.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path!r} is not valid JSON: {exc}") from None


def _shard_path(folder: str, shard: object, index: str) -> str:
    # A shard name comes from a file anyone may have written: it must name a file inside the folder.
    if not isinstance(shard, str) or not shard or shard != os.path.basename(shard) or shard in (".", ".."):
        raise ValueError(f"{index!r} names the shard {shard!r}, which is not a plain file name in its folder")
    path = os.path.join(folder, shard)
    if not os.path.isfile(path):
        raise ValueError(f"{index!r} names the shard {shard!r}, which does not exist in {folder!r}")
    return path


def _index_files(folder: str, index: str) -> tuple[list[str], dict[str, str]]:
    data = _read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) for k in weight_map):
        raise ValueError(f"{index!r} has no 'weight_map' object of tensor name -> shard file")
    files = [_shard_path(folder, shard, index) for shard in dict.fromkeys(weight_map.values())]
    return files, weight_map


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A .safetensors file or a Hugging Face model folder (single file or sharded with its index).

    Raises FileNotFoundError when ``path`` holds no checkpoint, ValueError when a file is malformed.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        if not path.lower().endswith(".safetensors"):
            raise ValueError(f"{path!r} is not a .safetensors file (a compressed folder is made from a model folder "
                             "or a .safetensors file; .npz and .bin/.pt go to a single file: -o NAME.safetensors)")
        return Checkpoint([path], None)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    index = os.path.join(path, _HF_INDEX)
    if os.path.isfile(index):
        files, weight_map = _index_files(path, index)
        return Checkpoint(files, path, weight_map)
    single = os.path.join(path, _HF_SINGLE)
    if os.path.isfile(single):
        return Checkpoint([single], path)
    if os.path.isfile(os.path.join(path, MANIFEST)):
        raise ValueError(f"{path!r} is a folder written by mpo compress: load it with mpo.torch.from_pretrained")
    raise FileNotFoundError(
        f"{path!r} has neither {_HF_SINGLE} nor {_HF_INDEX} (a PyTorch .bin folder must be converted to "
        "safetensors first)"
    )


# ----------------------------------------------------------------------------- writing a folder


def parse_size(size: int | str) -> int:
    """A shard size as bytes: an int, or text such as "500MB", "2GB", "64KiB"."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    elif isinstance(size, str):
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?I?B?)\s*", size.upper())
        if not found:
            raise ValueError(f"a size must be bytes or a number with KB, MB, GB (or KiB, MiB, GiB), got {size!r}")
        unit = found.group(2).rstrip("B")
        scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "KI": 2**10, "MI": 2**20, "GI": 2**30}[unit]
        value = int(float(found.group(1)) * scale)
    else:
        raise TypeError(f"a size must be an int or a string such as '2GB', got {size!r}")
    if value < 1:
        raise ValueError(f"a size must be at least 1 byte, got {size!r}")
    return value


class ShardedWriter:
    """Tensors written one at a time into shards of at most ``max_shard_size`` data bytes each (a tensor
    larger than that gets a shard of its own), then named ``mpo-0000k-of-0000N.safetensors`` and indexed."""

    def __init__(self, folder: str, max_shard_size: int | str = DEFAULT_SHARD_SIZE, metadata: dict | None = None):
        self.folder = folder
        self.max_shard_size = parse_size(max_shard_size)
        self._metadata = {"format": "pt", **(metadata or {})}
        self._done: list[tuple[str, list[str]]] = []  # (temporary file name, tensor names)
        self._writer: SafetensorsWriter | None = None
        self._names: list[str] = []
        self.total_size = 0

    def add(self, name: str, array: np.ndarray) -> None:
        """Write ``array`` under ``name`` into the current shard (starting a new one when it is full)."""
        nbytes = np.asarray(array).nbytes
        if self._writer is not None and self._writer.nbytes and self._writer.nbytes + nbytes > self.max_shard_size:
            self._close_shard()
        if self._writer is None:
            tmp = os.path.join(self.folder, f".shard-{len(self._done) + 1:05d}.safetensors")
            self._writer = SafetensorsWriter(tmp, self._metadata)
            self._names = []
        self._writer.add(name, array)
        self._names.append(name)
        self.total_size += nbytes

    def _close_shard(self) -> None:
        assert self._writer is not None
        self._writer.close()
        self._done.append((self._writer.path, self._names))
        self._writer = None

    def finish(self) -> dict[str, str]:
        """Close the last shard, give every shard its final name, write the index; the weight map."""
        if self._writer is not None:
            self._close_shard()
        total = len(self._done)
        weight_map = {}
        for k, (tmp, names) in enumerate(self._done, 1):
            final = f"mpo-{k:05d}-of-{total:05d}.safetensors"
            os.replace(tmp, os.path.join(self.folder, final))
            weight_map.update(dict.fromkeys(names, final))
        _write_json(os.path.join(self.folder, INDEX), {"metadata": {"total_size": self.total_size},
                                                       "weight_map": weight_map})
        return weight_map

    def abort(self) -> None:
        """Drop the shard being written (the folder itself is the caller's to remove)."""
        if self._writer is not None:
            self._writer.__exit__(RuntimeError, None, None)
            self._writer = None


def _write_json(path: str, data) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def copy_side_files(source: str | None, target: str) -> list[str]:
    """Copy every plain file of the model folder ``source`` that is not weights (config.json, tokenizer,
    generation files, README) into ``target``; the copied names."""
    if source is None:
        return []
    copied = []
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        name = entry.name
        if name.startswith(".") or not entry.is_file() or name.lower().endswith(_WEIGHT_SUFFIXES) or name in (MANIFEST, INDEX):
            continue
        shutil.copyfile(entry.path, os.path.join(target, name))
        copied.append(name)
    return copied


def _umask_mode(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def same_location(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` name the same file or folder (links and other spellings included), or
    one lies inside the other."""
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
        return True
    return ra == rb or rb.startswith(ra.rstrip(os.sep) + os.sep) or ra.startswith(rb.rstrip(os.sep) + os.sep)


def check_output_folder(out: str) -> None:
    """Refuse an output that would destroy something: an existing file, or a folder that is neither
    empty nor one written by mpo (whose manifest, or the work folder of an unfinished run, marks it)."""
    if os.path.isfile(out):
        raise ValueError(f"the output {out!r} is a file; the compressed model is a folder")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, MANIFEST)) and \
            not os.path.isdir(os.path.join(out, WORK)):
        raise ValueError(f"the output folder {out!r} exists and was not written by mpo; choose a new folder")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ValueError(f"cannot write {out!r}: no folder {parent!r}")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write {out!r}: the folder {parent!r} is not writable")


class new_folder:
    """A context manager yielding a temporary folder beside ``out`` that replaces ``out`` when the block
    ends normally, and is removed when it raises: a compressed folder is never left half-written."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.given = os.fspath(out)  # as the user spelled it, for messages
        self.out = os.path.abspath(self.given)

    def __enter__(self) -> str:
        check_output_folder(self.given)
        self.tmp = tempfile.mkdtemp(prefix=".mpo-", dir=os.path.dirname(self.out))
        os.chmod(self.tmp, _umask_mode(0o777))  # mkdtemp makes it private; give the usual mode
        return self.tmp

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if os.path.exists(self.out):  # an empty folder or an earlier mpo output (checked on entry)
            old = tempfile.mkdtemp(prefix=".mpo-old-", dir=os.path.dirname(self.out))
            os.replace(self.out, os.path.join(old, "x"))
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- the manifest


def manifest_template(source: str | None = None) -> dict:
    """An empty manifest of this format and version."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "mpo_version": __version__, "source": source,
            "modules": {}, "dense": {}}


def module_entry(*, kind: str | None, orientation: str, shape: Sequence[int], in_factors: Sequence[int],
                 out_factors: Sequence[int], bonds: Sequence[int], dtype: str, aliases: Sequence[str] = (),
                 bias: str | None = None, row_scale: str | None = None, padding_idx: int | None = None,
                 error: float | None = None) -> dict:
    """One compressed module of the manifest (its cores are PATH.cores.0 ... PATH.cores.{n-1})."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    return {"kind": kind, "orientation": orientation, "shape": [int(x) for x in shape],
            "in_factors": [int(x) for x in in_factors], "out_factors": [int(x) for x in out_factors],
            "bonds": [int(x) for x in bonds], "dtype": dtype, "aliases": list(aliases), "bias": bias,
            "row_scale": row_scale, "padding_idx": padding_idx, "error": error}


def core_names(path: str, n: int) -> list[str]:
    """The tensor names of a compressed module's cores (the state_dict keys of mpo.torch's layers)."""
    return [f"{path}.cores.{k}" for k in range(n)]


def write_manifest(folder: str, manifest: dict) -> None:
    """Write ``manifest`` as the folder's mpo_manifest.json (atomically)."""
    _write_json(os.path.join(folder, MANIFEST), manifest)


def read_manifest(folder: str | os.PathLike) -> dict:
    """The validated manifest of a compressed folder (ValueError naming the rule otherwise)."""
    folder = os.fspath(folder)
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        if os.path.isdir(os.path.join(folder, WORK)):
            raise ValueError(f"{folder!r} holds an unfinished mpo compress run (interrupted): rerun the same command "
                             "to finish it")
        raise ValueError(f"{folder!r} is not a compressed model folder: it has no {MANIFEST}")
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not an mpo manifest (format {FORMAT!r} expected)")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path!r} has format version {data.get('format_version')!r}; this mpo reads version "
                         f"{FORMAT_VERSION}")
    modules = data.get("modules")
    if not isinstance(modules, dict):
        raise ValueError(f"{path!r}: 'modules' must be an object of module path -> entry")
    for name, entry in modules.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path!r}: the entry of {name!r} is not an object")
        if entry.get("kind") is not None and entry.get("kind") not in KINDS:
            raise ValueError(f"{path!r}: {name!r} has kind {entry.get('kind')!r}; known kinds: {KINDS}")
        if entry.get("orientation") not in ORIENTATIONS:
            raise ValueError(f"{path!r}: {name!r} has orientation {entry.get('orientation')!r}, not one of {ORIENTATIONS}")
        for key in ("shape", "in_factors", "out_factors", "bonds"):
            value = entry.get(key)
            if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in value):
                raise ValueError(f"{path!r}: {name!r} has {key} {value!r}, not a list of positive integers")
        if len(entry["shape"]) != 2 or len(entry["in_factors"]) != len(entry["out_factors"]) or \
                len(entry["bonds"]) != len(entry["in_factors"]) - 1:
            raise ValueError(f"{path!r}: {name!r} has inconsistent shape, factors and bonds")
        aliases = entry.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise ValueError(f"{path!r}: {name!r} has aliases {aliases!r}, not a list of module names")
    return data


def open_compressed(folder: str | os.PathLike) -> tuple[dict, Checkpoint]:
    """(manifest, the tensors) of a folder written by mpo compress or mpo.torch.save_pretrained."""
    folder = os.fspath(folder)
    manifest = read_manifest(folder)
    index = os.path.join(folder, INDEX)
    if not os.path.isfile(index):
        raise ValueError(f"{folder!r} has a manifest but no {INDEX}")
    files, weight_map = _index_files(folder, index)
    ckpt = Checkpoint(files, folder, weight_map)
    try:
        names = set(ckpt.names)
        for path, entry in manifest["modules"].items():
            missing = [c for c in core_names(path, len(entry["in_factors"])) if c not in names]
            if missing:
                raise ValueError(f"{folder!r}: the cores {missing} of {path!r} are missing")
    except BaseException:
        ckpt.close()
        raise
    return manifest, ckpt


# ----------------------------------------------------------------------------- compressing a checkpoint

#: A matrix with a side below this stays dense unless forced (a 2 x 384 token-type table cannot be
#: factored into cores that are both small and accurate).
MIN_SIDE = 16


@dataclass
class CompressResult:
    """What compress_checkpoint did: one row per compressed module, the matrices left dense (with the
    reason), and the byte and value counts."""

    rows: list[dict] = field(default_factory=list)
    dense: dict[str, str] = field(default_factory=dict)
    copied_values: int = 0
    copied_tensors: int = 0
    resumed: int = 0  # matrices an earlier, interrupted run had finished


def module_path(name: str) -> str:
    """The module a weight tensor belongs to: ``"a.b.weight"`` -> ``"a.b"``; any other name is its own."""
    return name[: -len(".weight")] if name.endswith(".weight") else name


def candidate_matrices(ckpt: Checkpoint) -> dict[str, str]:
    """Module path -> tensor name of every 2-D floating-point tensor: what compress may decompose."""
    out = {}
    for name in ckpt.names:
        t = ckpt.info(name)
        if len(t.shape) == 2 and t.dtype in FLOAT_CODES and min(t.shape) >= 1:
            out[module_path(name)] = name
    return out


def _as_float(a: np.ndarray) -> np.ndarray:
    # bfloat16 and float16 widen exactly to float32: the "float32 size" of the peak-memory promise.
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)


@dataclass(frozen=True)
class Settings:
    """How every matrix of a compress run is cut (the arguments of :func:`compress_checkpoint`), in a
    JSON-able form: a task carries it to a worker, and the progress file stores it, so that a rerun with
    other settings is refused instead of mixing two settings in one model."""

    n: int = 5
    max_bond: int | list[int] | None = None
    tol: float | None = None
    ratio: float | None = None
    dtype: str | None = None  # the cores' dtype by name; None keeps each matrix's own
    force: bool = False
    min_side: int = MIN_SIDE

    @classmethod
    def make(cls, *, n=5, max_bond=None, tol=None, ratio=None, dtype=None, force=False, min_side=MIN_SIDE) -> Settings:
        """Settings from compress_checkpoint's arguments: max_bond as an int or a list, dtype by its canonical
        name (ValueError for an unknown one)."""
        if max_bond is not None and not isinstance(max_bond, (int, np.integer)):
            max_bond = [int(b) for b in max_bond]
        elif max_bond is not None:
            max_bond = int(max_bond)
        name = None if dtype is None else np.dtype(_named_dtype(dtype)).name
        return cls(int(n), max_bond, None if tol is None else float(tol), None if ratio is None else float(ratio),
                   name, bool(force), int(min_side))

    def as_dict(self) -> dict:
        """The settings as a JSON object."""
        return asdict(self)


@dataclass(frozen=True)
class MatrixTask:
    """One matrix to decompose: the shard file that holds it and its tensor name (never the array)."""

    file: str
    name: str


def compress_task(task: MatrixTask, settings: Settings, fit: Mapping | None = None) -> dict:
    """Read one matrix from its shard and decompose it: what a Dask worker runs, and the serial path too.

    ``fit``: decompose_activations' arguments for a Linear fitted to its inputs (serial runs only).
    Returns the tensor name, the reason it stays dense (or None), its cores in the output dtype (then its
    row scale, when the entry names one), and its manifest entry and table row.
    """
    with SafetensorsReader(task.file) as reader:
        raw = reader.read(task.name)
    reason, cores, entry, row = _compress_one(module_path(task.name), raw, settings, fit)
    del raw
    return {"name": task.name, "reason": reason, "cores": cores, "entry": entry, "row": row}


def peak_rss_kb() -> int | None:
    """This process's peak resident set in kB, or None where the system does not say.

    Linux: VmHWM of the process's own address space. ``getrusage``'s ru_maxrss is not used there: Linux
    carries it over exec from the parent, so a Dask worker spawned by a process that had held a large
    checkpoint reported the parent's peak as its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    try:
        import resource  # Unix only
    except ImportError:  # pragma: no cover - Windows
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def compress_checkpoint(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    n: int = 5,
    max_bond=None,
    tol: float | None = None,
    ratio: float | None = None,
    dtype: str | None = None,
    include=None,
    exclude=None,
    force: bool = False,
    min_side: int = MIN_SIDE,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
    select: Callable[[list[str]], list[str]] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    fits: Mapping[str, Mapping | None] | None = None,
    client=None,
    window: int | None = None,
) -> CompressResult:
    """Compress every selected weight matrix of a checkpoint into a compressed model folder ``out``.

    Each matrix is one task (:func:`compress_task`: its shard path and tensor name go in, its cores come
    out), run in this process or, given a Dask ``client`` (``distributed.Client``), on its workers with
    at most ``window`` results in flight (default twice the workers). A worker holds one matrix in float32,
    its decomposition and its cores. ``dtype`` ("bfloat16", "float16", "float32", "float64") is the cores'
    dtype, by default each matrix's own; every tensor not compressed is copied bit-exactly. A matrix with
    a side below ``min_side``, or whose MPO would not be smaller than it, stays dense unless ``force``.
    ``select(paths) -> paths`` picks the module paths (include/exclude globs by default).
    ``progress(done, total, module)`` is called once at the start and after each matrix.

    ``fits`` maps the module paths of ``nn.Linear`` layers to fit to their inputs to the keyword arguments
    of :func:`mpo.decompose_activations` (``activations`` and the cut; the matrix is M = W.T, stored
    "transposed" as ``mpo.torch.compress(weights="activations")`` holds it), or to None for a layer a
    model-wide allocation keeps dense. Their rows carry ``act_error``, ||X(M - M')|| / ||XM|| on the
    statistics, and ``held_out_error``, the same on the fit's ``held_out`` statistics (None without them);
    every other row has both None. Fits run in this process (the statistics are not
    shipped to workers): ``fits`` with a ``client`` is refused.

    Resumable: finished matrices are kept in ``out/.mpo-partial`` (see ``mpo.io._workfolder``); the same
    call after an interruption skips them, and the folder is assembled in source order only when all are
    done, so the output is identical whatever the order the tasks finished in, and identical to an
    uninterrupted run. A rerun with another source or settings is refused (ValueError) rather than mixed.
    """
    source, out = os.fspath(source), os.fspath(out)
    settings = Settings.make(n=n, max_bond=max_bond, tol=tol, ratio=ratio, dtype=dtype, force=force,
                             min_side=min_side)
    with open_checkpoint(source) as ckpt:
        candidates = candidate_matrices(ckpt)
        paths = list(candidates)
        chosen = select(paths) if select is not None else match_names(paths, include, exclude)
        if not chosen:
            raise ValueError(f"include/exclude leave no weight matrix of {source!r} to compress; its matrices are: "
                             + ", ".join(paths[:20]) + (" ..." if len(paths) > 20 else ""))
        chosen_set = set(chosen)
        tensors = [name for name in ckpt.names if candidates.get(module_path(name)) == name
                   and module_path(name) in chosen_set]
        check_output_folder(out)
        fits = {path: fit for path, fit in (fits or {}).items() if path in chosen_set}
        if fits and client is not None:
            raise ValueError("fits (compress --calibration) run in this process: the statistics are not shipped to "
                             "Dask workers; drop the client (--workers/--scheduler)")
        recorded = settings.as_dict()
        if fits:  # a rerun with other statistics or cuts must not resume this one
            recorded["fits"] = {path: _describe_fit(fit) for path, fit in sorted(fits.items())}
        plan = {"source": os.path.abspath(source), "files": source_fingerprint(ckpt.files),
                "settings": recorded, "tensors": tensors}
        work = WorkFolder.open(out, plan)
        resumed = len(work.finished)
        try:
            _run(ckpt, work, settings, tensors, progress, client, window, fits)
        except BaseException:
            if not work.finished:  # nothing worth resuming: leave no trace
                work.remove()
            raise
        result = _assemble(ckpt, work, out, max_shard_size)
        result.resumed = resumed
    return result


#: Why a matrix the model-wide allocation (``fits`` maps it to None) keeps dense is not compressed.
ALLOCATED_DENSE = "the model-wide allocation keeps it dense (its parameters buy more elsewhere)"


def _describe_fit(fit: Mapping | None) -> object:
    """A JSON-able fingerprint of one fit (its cut and a digest of its statistics), for the progress file."""
    if fit is None:
        return "dense"
    out: dict = {}
    for key, value in sorted(fit.items()):
        if key in ("activations", "held_out"):  # C determines the statistics (its diagonal is read off it)
            out[key] = hashlib.sha256(np.ascontiguousarray(value.gram).tobytes()).hexdigest()
        else:
            out[key] = value if value is None or isinstance(value, (int, float, str)) else repr(value)
    return out


def _run(ckpt: Checkpoint, work: WorkFolder, settings: Settings, tensors: list[str], progress, client, window,
         fits: Mapping[str, Mapping | None] | None = None) -> None:
    """Decompose every tensor not yet finished, recording each in the work folder as it arrives."""
    todo = [MatrixTask(ckpt.file_of(name), name) for name in tensors if name not in work.finished]
    if client is not None:
        # Largest first (longest-processing-time order): workers otherwise finish on a big matrix while
        # the others idle, which cost 2 workers a tenth of their time on a Llama layout (its FFN matrices
        # come last in each layer). The output does not depend on the order: it is assembled in source
        # order. Equal sizes keep their source order (a stable sort).
        todo.sort(key=lambda t: -math.prod(ckpt.info(t.name).shape))
    done = len(tensors) - len(todo)
    if progress is not None:
        # The first label names the first matrix set to work (what a serial run is busy with).
        first = module_path(todo[0].name) if todo else "done"
        progress(done, len(tensors), f"{first} ({done} finished earlier)" if done else first)
    fits = fits or {}

    def task(t: MatrixTask) -> dict:
        path = module_path(t.name)
        if path in fits and fits[path] is None:
            return {"name": t.name, "reason": ALLOCATED_DENSE, "cores": [], "entry": None, "row": None}
        return compress_task(t, settings, fits.get(path))

    runner = task if fits else functools.partial(compress_task, settings=settings)
    for result in run_tasks(runner, todo, client=client, window=window, name="mpo-compress"):
        record = {"reason": result["reason"], "entry": result["entry"], "row": result["row"]}
        work.save(result["name"], result["cores"], record)
        done += 1
        if progress is not None:
            progress(done, len(tensors), module_path(result["name"]))


def _assemble(ckpt: Checkpoint, work: WorkFolder, out: str, max_shard_size) -> CompressResult:
    """Write the output folder from the finished matrices and the source, tensor by tensor in source
    order (the order the serial run writes): a fresh folder that replaces ``out`` and its work folder."""
    manifest = manifest_template(work.plan["source"])
    result = CompressResult()
    present = set(ckpt.names)
    chosen = set(work.plan["tensors"])
    with new_folder(out) as tmp:
        writer = ShardedWriter(tmp, max_shard_size)
        try:
            copy_side_files(ckpt.folder, tmp)
            for name in ckpt.names:
                path = module_path(name)
                if name in chosen:
                    cores, record = work.load(name)
                    if record["reason"] is None:
                        scale_name = record["entry"].get("row_scale")
                        if scale_name is not None:  # stored after the cores (_compress_one)
                            cores, scale = cores[:-1], cores[-1]
                            writer.add(scale_name, scale)
                        for core_name, core in zip(core_names(path, len(cores)), cores):
                            writer.add(core_name, core)
                        bias = path + ".bias"
                        manifest["modules"][path] = {**record["entry"], "bias": bias if bias in present else None}
                        result.rows.append(record["row"])
                        continue
                    result.dense[path] = manifest["dense"][path] = record["reason"]
                raw = ckpt.read(name)
                writer.add(name, raw)
                result.copied_tensors += 1
                result.copied_values += raw.size
                del raw
            writer.finish()
            write_manifest(tmp, manifest)
        except BaseException:
            writer.abort()
            raise
    return result


def _named_dtype(name: str):
    names = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
             "float32": "float32", "fp32": "float32", "float64": "float64", "fp64": "float64"}
    if name not in names:
        raise ValueError(f"dtype must be one of bfloat16, float16, float32, float64, got {name!r}")
    name = names[name]
    return numpy_dtype("BF16") if name == "bfloat16" else np.dtype(name)


def dense_reason(shape: Sequence[int], m=None, force: bool = False, min_side: int = MIN_SIDE) -> str | None:
    """Why a matrix of ``shape`` stays dense (None when it is compressed): a side below ``min_side``,
    or (given its MPO ``m``) an MPO not smaller than the matrix; ``force`` overrides both."""
    rows, cols = shape
    if force:
        return None
    if min(rows, cols) < min_side:
        return f"tiny: {rows}x{cols} has a side below {min_side} (use --force to compress it)"
    if m is not None and m.num_params >= rows * cols:
        return (f"an MPO is not smaller at this setting: {m.num_params:,} parameters >= {rows * cols:,} "
                f"(rho {m.compression_ratio:.3f}; use --force to compress it)")
    return None


def _compress_one(path: str, raw: np.ndarray, settings: Settings, fit: Mapping | None = None):
    """Decompose one matrix (fitted to its inputs when ``fit`` holds decompose_activations' arguments):
    (reason it stays dense, [], None, None) or (None, arrays in the output dtype, manifest entry, table
    row); the arrays are the cores, then the row scale when the entry names one."""
    rows, cols = raw.shape
    reason = dense_reason(raw.shape, None, settings.force, settings.min_side)
    if reason is not None:
        return reason, [], None, None
    start = time.perf_counter()
    matrix = _as_float(raw)
    act_error = held_out_error = None
    try:
        if fit is None:
            m = decompose(matrix, n=settings.n, max_bond=settings.max_bond, tol=settings.tol, ratio=settings.ratio)
        else:
            # A Linear computes x @ W.T: the statistics are of x, so the fitted matrix is M = W.T (in x out).
            found = decompose_activations(matrix.T, **fit)
            m = found.mpo
            act_error = None if found.activation_error is None else float(found.activation_error)
            held_out_error = None if found.held_out_error is None else float(found.held_out_error)
    except ValueError as exc:  # a ratio the matrix cannot meet, say
        return f"cannot meet the setting: {exc}", [], None, None
    seconds = time.perf_counter() - start
    reason = dense_reason(raw.shape, m, settings.force, settings.min_side)
    if reason is not None:
        return reason, [], None, None
    if fit is None:
        known = m.exact_error()
        norm = m.norm
        error = (known / norm if norm > 0 else 0.0) if known is not None else \
            float(np.linalg.norm(matrix - m.to_dense()) / max(np.linalg.norm(matrix), np.finfo(float).tiny))
        bound = m.relative_error_bound()
    else:
        error, bound = found.weight_error, found.bound
    target = raw.dtype if settings.dtype is None else np.dtype(_named_dtype(settings.dtype))
    arrays = [core.astype(target) for core in m.cores]
    row_scale = None
    if m.row_scale is not None:
        row_scale = f"{path}.row_scale"
        arrays.append(np.asarray(m.row_scale).astype(target))
    entry = module_entry(
        kind=None if fit is None else "linear", orientation="weight" if fit is None else "transposed",
        shape=m.shape, in_factors=m.in_shape, out_factors=m.out_shape, bonds=m.bond_dims,
        dtype=np.dtype(target).name, row_scale=row_scale, error=float(error),
    )
    # Plain Python numbers and lists: the row is stored as JSON and a resumed run reads it back equal.
    row = {"name": path, "shape": [int(x) for x in m.shape], "in_factors": [int(x) for x in m.in_shape],
           "out_factors": [int(x) for x in m.out_shape], "bonds": [int(x) for x in m.bond_dims],
           "rho": float(m.compression_ratio), "error": float(error), "bound": float(bound),
           "seconds": float(seconds), "dense_params": int(rows * cols), "params": int(m.num_params),
           "entropy": [float(x) for x in m.entropy()], "act_error": act_error, "held_out_error": held_out_error}
    return None, arrays, entry, row
