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
from .._activation import Calibration, allocate, svd_curve
from .._decompose import decompose
from .._mpo import MPO
from .._validation import match_names
from ..io import _dask
from ..io._hf import MIN_SIDE, candidate_matrices, compress_checkpoint, dense_reason, open_checkpoint, same_location
from ..io._workfolder import WORK
from ._report import print_folder_report, print_report, progress

__all__ = ["UsageError", "activation_fits", "calibrate", "read_tensors", "write_tensors", "check_writable", "read_compressed",
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
    calibration, allocate = getattr(args, "calibration", None), getattr(args, "allocate", None)
    if getattr(args, "held_out", None) is not None and calibration is None:
        raise UsageError("--held-out scores the layers --calibration fits: give --calibration too")
    if allocate and (calibration is None or args.ratio is None or args.max_bond is not None or args.tol is not None):
        raise UsageError("--allocate model spends --ratio over all calibrated Linear layers: give --calibration and "
                         "--ratio, and neither --max-bond nor --tol")
    if calibration is not None and not os.path.isdir(source):
        raise UsageError(f"--calibration needs a Hugging Face model folder (with config.json), got the file {source!r}")


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def activation_fits(args: argparse.Namespace) -> dict[str, dict | None]:
    """The layers ``--calibration`` fits to their inputs: module path -> decompose_activations' arguments,
    or None for a layer ``--allocate model`` keeps dense. The rule is ``mpo.torch.compress``'s with
    ``weights="activations"`` (``allocate="model"``): every chosen untied Linear (module kinds and ties read
    from the folder's config.json on the meta device) that has statistics; Conv1D, tied and uncalibrated
    matrices are compressed plainly. The file is checked against the model before it is used."""
    if not os.path.isdir(str(args.checkpoint)):
        raise UsageError(f"--calibration needs a Hugging Face model folder (with config.json), got the file "
                         f"{str(args.checkpoint)!r}")
    try:
        import mpo.torch as mt  # optional: torch and transformers read the model's layers
    except ImportError as exc:
        raise UsageError(f"--calibration reads the model's layers with torch and transformers: {_one_line(exc)}") \
            from None
    try:
        calibration = Calibration.load(args.calibration)
        model = mt.skeleton(args.checkpoint)
        mt.check_calibration(model, calibration)
    except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError, OSError) as exc:
        raise UsageError(f"--calibration {str(args.calibration)!r}: {_one_line(exc)}") from None
    held_out = None
    if getattr(args, "held_out", None) is not None:
        try:
            held_out = Calibration.load(args.held_out)
            mt.check_calibration(model, held_out)
        except (ValueError, TypeError, KeyError, FileNotFoundError, OSError) as exc:
            raise UsageError(f"--held-out {str(args.held_out)!r}: {_one_line(exc)}") from None
    linears = [name for name in mt.activation_candidates(model) if name in calibration]
    with open_checkpoint(args.checkpoint) as ckpt:
        matrices = {path: ckpt.info(name).shape for path, name in candidate_matrices(ckpt).items()}
        try:
            chosen = set(match_names(list(matrices), args.include, args.exclude))
        except ValueError as exc:
            raise UsageError(_one_line(exc)) from None
        # As compress keeps tiny matrices dense before any fit, they take no share of an allocation.
        linears = [name for name in linears if name in chosen and (args.force or min(matrices[name]) >= MIN_SIDE)]
        scaling = args.scaling
        if scaling == "auto":
            scaling = "whiten" if args.n == 2 or args.allocate else "diagonal"

        def scored(names: list[str]) -> dict[str, dict]:
            """decompose_activations' held_out argument of each fitted layer (none without --held-out)."""
            if held_out is None:
                return {}
            missing = [name for name in names if name not in held_out]
            if missing:
                raise UsageError(f"--held-out {str(args.held_out)!r} has no statistics for the fitted layers {missing}")
            return {name: {"held_out": held_out[name]} for name in names}

        if not args.allocate:
            extra = scored(linears)
            return {name: {"activations": calibration[name], "n": args.n, "max_bond": args.max_bond,
                           "ratio": args.ratio, "tol": args.tol, "scaling": scaling, **extra.get(name, {})}
                    for name in linears}
        if not linears:
            raise UsageError("--allocate model: no chosen Linear layer has statistics in --calibration")
        curves = []
        tensors = candidate_matrices(ckpt)
        for done, name in enumerate(linears):
            progress(done, len(linears), f"spectrum of {name}")
            M = ckpt.read(tensors[name]).astype(np.float64).T
            curves.append(svd_curve(name, M, calibration[name]))
        progress(len(linears), len(linears), "spectra done")
    try:
        plan = allocate(curves, ratio=args.ratio)
    except ValueError as exc:
        raise UsageError(f"--allocate model: {_one_line(exc)}") from None
    print(plan, file=sys.stderr, flush=True)
    extra = scored([name for name, setting in plan.settings.items() if setting[0] != "dense"])
    return {name: None if setting[0] == "dense" else
            {"activations": calibration[name], "n": 2, "max_bond": setting[1], "scaling": scaling,
             **extra.get(name, {})}
            for name, setting in plan.settings.items()}


def calibrate(args: argparse.Namespace) -> int:
    """mpo calibrate: run a model folder on the lines of a text file and save its layers' input statistics
    (``mpo.torch.calibrate``) for ``mpo compress --calibration``. Needs torch, transformers and the
    folder's tokenizer."""
    source = str(args.model)
    if not os.path.isdir(source) or not os.path.isfile(os.path.join(source, "config.json")):
        raise UsageError(f"calibrate needs a Hugging Face model folder with config.json, got {source!r}")
    if not os.path.isfile(str(args.text)):
        raise UsageError(f"--text {str(args.text)!r} does not exist")
    try:
        with open(str(args.text), encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as exc:
        raise UsageError(f"--text {str(args.text)!r} is not UTF-8 text: {exc}") from None
    if not lines:
        raise UsageError(f"--text {str(args.text)!r} holds no non-empty line")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")
    if not any(os.path.isfile(os.path.join(source, name)) for name in tokenizer_files):
        raise UsageError(f"cannot load the model and its tokenizer from {source!r}: it has no tokenizer file "
                         f"({', '.join(tokenizer_files)})")
    check_writable(args.output)
    try:
        import mpo.torch as mt  # optional: the model runs in torch
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise UsageError(f"calibrate runs the model with torch and transformers: {_one_line(exc)}") from None
    try:
        # local_files_only: what is calibrated is this folder, never something fetched in its place.
        model = type(mt.skeleton(source)).from_pretrained(  # type: ignore[attr-defined]  # a transformers PreTrainedModel
            source, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"cannot load the model and its tokenizer from {source!r}: {_one_line(exc)}") from None
    if tokenizer.pad_token is None:  # GPT-2 has none; padding is left out of the statistics anyway
        tokenizer.pad_token = tokenizer.eos_token
    batches = [tokenizer(lines[k : k + args.batch_size], padding=True, truncation=True, max_length=args.max_length,
                         return_tensors="pt") for k in range(0, len(lines), args.batch_size)]
    try:
        found = mt.calibrate(model, batches, include=args.include, exclude=args.exclude,
                             progress=lambda done, total, tokens: progress(done, total or done, f"{tokens} tokens"))
        found.save(args.output)
    except (ValueError, TypeError) as exc:
        raise UsageError(_one_line(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write {str(args.output)!r}: {exc.strerror or exc}") from None
    tokens = max(s.tokens for s in found.values())
    print(f"{len(found)} layers, {len(lines)} lines, {tokens:,} tokens: wrote {args.output}", file=sys.stderr)
    return 0


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
    assert address is not None  # one of --workers / --scheduler was given (argparse's exclusive group)
    try:
        return _dask.connect(address)
    except (OSError, ValueError, TypeError) as exc:  # a refused connection, a timeout, a malformed address
        raise UsageError(f"cannot reach the Dask scheduler at {address!r}: {str(exc).strip().splitlines()[0]}") from None


def compress_folder(args: argparse.Namespace) -> int:
    """mpo compress into a compressed model folder (mpo.io._hf), streamed tensor by tensor, in this process
    or on Dask workers; resumable after an interruption."""
    fits = activation_fits(args) if getattr(args, "calibration", None) else {}
    if fits and (getattr(args, "workers", None) is not None or getattr(args, "scheduler", None) is not None):
        raise UsageError("--calibration fits run in this process: drop --workers/--scheduler")
    with _client(args) as client:
        try:
            result = compress_checkpoint(
                args.checkpoint, args.output, n=args.n, max_bond=args.max_bond, tol=args.tol, ratio=args.ratio,
                dtype=args.dtype, include=args.include, exclude=args.exclude, force=args.force,
                max_shard_size=args.max_shard_size, progress=progress, fits=fits, client=client,
            )
        except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError) as exc:
            raise UsageError(_one_line(exc)) from None
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
    print_folder_report(result, activations=bool(getattr(args, "calibration", None)))
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
