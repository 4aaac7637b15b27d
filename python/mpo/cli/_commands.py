"""``mpo compress``, ``mpo inspect`` and ``mpo rebuild``, and the file handling every command shares.

Files are read and written by ``mpo.io`` (the ``mpo.checkpoint`` format, atomic writes); this module
turns what goes wrong there into one :class:`UsageError` line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import __version__, io
from .._decompose import decompose
from .._mpo import MPO
from .._validation import match_names
from ..io import _dask
from ..io._hf import compress_checkpoint, dense_reason, same_location
from ..io._workfolder import WORK
from ._report import print_folder_report, print_report, progress

__all__ = ["UsageError", "read_tensors", "write_tensors", "check_writable", "read_compressed",
           "check_compress_args", "compress", "compress_folder", "inspect", "rebuild"]


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors, .npz or (with torch) .bin/.pt checkpoint as NumPy arrays."""
    try:
        return io.read_tensors(path)
    except (ValueError, ImportError) as exc:
        raise UsageError(str(exc)) from None


def write_tensors(path: str, tensors: Mapping[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` atomically as .npz (by suffix) or safetensors (any other name)."""
    try:
        io.write_tensors(path, tensors, metadata)
    except OSError as exc:  # a missing folder, no permission, a full disk
        raise UsageError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


def check_writable(path: str) -> None:
    """Fail before the work, not after it, when ``path`` cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write {path!r}: No such folder {folder!r}")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {path!r}: the folder {folder!r} is not writable")


def read_compressed(path: str) -> tuple[dict[str, MPO], dict[str, np.ndarray], dict[str, Any]]:
    """(MPOs by name, plain tensors by name, per-matrix metadata) of a file written by compress."""
    try:
        arrays, plain, info = io.read_checkpoint(path)
    except (ValueError, ImportError) as exc:
        raise UsageError(str(exc)) from None
    mpos = {}
    for name, entries in arrays.items():
        try:
            mpos[name] = MPO.from_arrays(entries)
        except (KeyError, ValueError, TypeError, OverflowError) as exc:
            raise UsageError(f"{path!r}: the MPO of {name!r} is damaged: {exc}") from None
    missing = [name for name in info if name not in mpos]
    if missing:
        raise UsageError(f"{path!r}: the metadata lists {missing[0]!r} but the file holds no MPO of it")
    return mpos, plain, info


def _select(tensors: Mapping[str, np.ndarray], include: Any, exclude: Any, source: str) -> list[str]:
    """Names of the 2-D floating-point tensors matched by an ``include`` glob and no ``exclude`` glob
    (:func:`mpo._validation.match_names`, the syntax of mpo.torch.compress)."""
    names = [name for name, t in tensors.items() if np.asarray(t).ndim == 2 and np.asarray(t).dtype.kind == "f"]
    try:
        chosen = match_names(names, include, exclude)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not chosen:
        what = f" matching --include {include!r}" if include else ""
        what += f" and not --exclude {exclude!r}" if exclude else ""
        raise UsageError(f"no 2-D floating-point weight of {source!r}{what}")
    return chosen


def check_compress_args(args: argparse.Namespace) -> None:
    """What every compress run checks before reading a byte: a cut is chosen, the input exists, and
    the output is not the input under any name (nor inside it)."""
    cuts = [flag for flag, value in (("--max-bond", args.max_bond), ("--ratio", args.ratio), ("--tol", args.tol))
            if value is not None]
    if args.exact and cuts:
        raise UsageError(f"--exact keeps every bond whole and cannot be combined with {', '.join(cuts)}")
    if not args.exact and not cuts:
        raise UsageError("choose how much to cut: one of --max-bond, --ratio, --tol or --exact (full bonds, "
                         "usually larger than the matrix)")
    source, out = str(args.checkpoint), str(args.output)
    if not os.path.exists(source):
        raise UsageError(f"checkpoint {source!r} does not exist")
    if same_location(source, out):
        raise UsageError(f"-o {out!r} is the input {source!r} (or lies inside it, or contains it); "
                         "choose an output elsewhere")


def _client(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The Dask client --workers or --scheduler asks for (a context manager), or a null one."""
    workers, address = getattr(args, "workers", None), getattr(args, "scheduler", None)
    if workers is None and address is None:
        return contextlib.nullcontext(None)
    try:
        _dask.require_distributed()
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    if workers is not None:
        return _dask.local_client(workers)
    try:
        return _dask.connect(address)
    except (OSError, ValueError, TypeError) as exc:  # a refused connection, a timeout, a malformed address
        raise UsageError(f"cannot reach the Dask scheduler at {address!r}: {str(exc).strip().splitlines()[0]}") from None


def compress_folder(args: argparse.Namespace) -> int:
    """mpo compress into a compressed model folder (mpo.io._hf), streamed tensor by tensor, in this process
    or on Dask workers; resumable after an interruption."""
    with _client(args) as client:
        try:
            result = compress_checkpoint(
                args.checkpoint, args.output, n=args.n, max_bond=args.max_bond, tol=args.tol, ratio=args.ratio,
                dtype=args.dtype, include=args.include, exclude=args.exclude, force=args.force,
                max_shard_size=args.max_shard_size, progress=progress, client=client,
            )
        except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError) as exc:
            raise UsageError(str(exc).strip().splitlines()[0]) from None
        except OSError as exc:  # a full disk, no permission
            raise UsageError(f"cannot write {str(args.output)!r}: {exc.strerror or exc}") from None
        except KeyboardInterrupt:
            if os.path.isdir(os.path.join(str(args.output), WORK)):
                print(f"\nmpo: interrupted; the finished matrices are kept in {os.path.join(str(args.output), WORK)!r}: "
                      "rerun the same command to resume", file=sys.stderr)
                return 130
            raise
        except Exception as exc:
            if _dask.is_killed_worker(exc):  # a task that brought down worker after worker
                raise UsageError(f"Dask gave up on a task that killed its workers: {exc}") from None
            raise
    if result.resumed:
        print(f"resumed: {result.resumed} of {len(result.rows) + len(result.dense)} matrices were finished by an "
              "earlier run", file=sys.stderr)
    print_folder_report(result)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _relative_error(M: np.ndarray, m: MPO) -> float:
    """||M - m||_F / ||M||_F: known exactly from the sweep when it made m (MPO.exact_error), else
    measured on the rebuilt matrix."""
    known = m.exact_error()
    if known is not None:
        return known / m.norm if m.norm > 0 else 0.0
    return float(np.linalg.norm(M - m.to_dense()) / max(np.linalg.norm(M), np.finfo(float).tiny))


def compress(args: argparse.Namespace) -> int:
    """Decompose every selected matrix of a checkpoint and write the cores (and the rest) to OUT: a
    compressed model folder, or (a file in, ``-o`` ending in .safetensors) the single-file format."""
    check_compress_args(args)
    if os.path.isdir(str(args.checkpoint)) or not str(args.output).lower().endswith((".safetensors", ".npz")):
        return compress_folder(args)
    if getattr(args, "workers", None) is not None or getattr(args, "scheduler", None) is not None:
        raise UsageError("--workers and --scheduler write a compressed model folder: give -o a folder name, not "
                         f"{str(args.output)!r}")
    if str(args.output).lower().endswith(".npz"):
        # The compressed checkpoint carries its metadata in the safetensors header; an .npz has none,
        # so inspect and rebuild could not read it back.
        raise UsageError(f"OUT of compress is a safetensors file, got {str(args.output)!r} (use a name not ending in .npz)")
    check_writable(args.output)
    tensors = read_tensors(args.checkpoint)
    names = _select(tensors, args.include, args.exclude, args.checkpoint)
    info: dict[str, Any] = {}
    mpos: dict[str, MPO] = {}
    dense: dict[str, str] = {}
    for done, name in enumerate(names):
        progress(done, len(names), name)
        M = tensors[name]
        start = time.perf_counter()
        # A matrix that is tiny, whose MPO would not be smaller, or that cannot meet the setting (a
        # 2 x 384 table at a small ratio) is kept as it was rather than stopping the whole checkpoint.
        reason = dense_reason(M.shape, None, args.force)
        if reason is None:
            try:
                m = decompose(M, n=args.n, max_bond=args.max_bond, tol=args.tol, ratio=args.ratio)
            except ValueError as exc:
                reason = f"cannot meet the setting: {exc}"
            else:
                reason = dense_reason(M.shape, m, args.force)
        if reason is not None:
            dense[name] = reason
            continue
        seconds = time.perf_counter() - start
        error = _relative_error(M, m)
        mpos[name] = m
        info[name] = {"error": error, "seconds": seconds, "dtype": str(M.dtype)}
    progress(len(names), len(names), "done")
    plain = {k: v for k, v in tensors.items() if k not in mpos}
    try:
        io.write_checkpoint(args.output, {name: m.to_arrays() for name, m in mpos.items()}, plain, info,
                            __version__)
    except OSError as exc:  # a missing folder, no permission, a full disk
        raise UsageError(f"cannot write {str(args.output)!r}: {exc.strerror or exc}") from None
    print_report(mpos, info, plain, dense)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _as_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` in the checked metadata dtype (io.DENSE_DTYPES); bfloat16 through ml_dtypes."""
    if dtype == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise UsageError("writing bfloat16 weights needs ml_dtypes: python -m pip install ml_dtypes") from None
        return a.astype(ml_dtypes.bfloat16)
    return a.astype(dtype, copy=False)


def inspect(args: argparse.Namespace) -> int:
    """Print the compress table of a compressed file."""
    mpos, plain, info = read_compressed(args.file)
    print_report(mpos, info, plain)
    return 0


def rebuild(args: argparse.Namespace) -> int:
    """Write the dense checkpoint back: every MPO contracted, every other tensor as it was."""
    check_writable(args.output)
    mpos, plain, info = read_compressed(args.file)
    dense = dict(plain)
    for done, (name, m) in enumerate(mpos.items()):
        progress(done, len(mpos), name)
        dense[name] = _as_dtype(m.to_dense(), info[name]["dtype"])
    progress(len(mpos), len(mpos), "done")
    write_tensors(args.output, dense)
    print(f"wrote {args.output}: {len(mpos)} matrices rebuilt, {len(plain)} tensors copied", file=sys.stderr)
    return 0
