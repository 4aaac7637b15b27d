"""``mpo compare``: MPO (uniform and budget) against SVD, CP and Tucker at the same ratios, with plots."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import baselines, io
from .._shape import plan_shape
from ._commands import UsageError, check_writable, read_tensors
from ._report import progress, table

__all__ = ["COMPARE_METHODS", "run_compare", "compare_table", "plot_compare", "compare"]

COMPARE_METHODS = ("mpo-uniform", "mpo-budget", "svd", "cpd", "tucker")


def default_matrices(tensors: Mapping[str, np.ndarray]) -> list[str]:
    """One matrix per shape (the first of each): a checkpoint's matrix types."""
    seen, names = set(), []
    for name, t in tensors.items():
        a = np.asarray(t)
        if a.ndim == 2 and a.dtype.kind == "f" and min(a.shape) > 2 and a.shape not in seen:
            seen.add(a.shape)
            names.append(name)
    return names


def run_compare(tensors: Mapping[str, np.ndarray], names: Sequence[str], ratios: Sequence[float], *, n: int = 5,
                cp_max_rank: int = 200, extra_n: Iterable[int] = (3, 7)) -> list[dict[str, Any]]:
    """MPO (uniform and budget), SVD, CP and Tucker at every ratio on every matrix, as dict rows.

    CP (ALS) costs O(R^2) per sweep on the whole tensor: a rank above ``cp_max_rank`` is not run and
    shows up as a row with error None. ``extra_n`` adds uniform-max_bond MPOs with other n (MPOP Fig. 2b).
    """
    jobs = [(name, rho, method, n) for name in names for rho in ratios for method in COMPARE_METHODS]
    jobs += [(name, rho, "mpo-uniform", k) for name in names for rho in ratios for k in extra_n]
    rows: list[dict[str, Any]] = []
    for done, (name, rho, method, k) in enumerate(jobs):
        progress(done, len(jobs), f"{name} rho={rho} {method} n={k}")
        M = np.asarray(tensors[name], dtype=np.float64)
        row = {"matrix": name, "shape": list(M.shape), "target": rho, "method": method, "n": k}
        if method == "cpd":
            plan = plan_shape(M.shape[0], M.shape[1], k)
            dims_sum = sum(i * j for i, j in zip(plan.in_shape, plan.out_shape))
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
    progress(len(jobs), len(jobs), "done")
    return rows


def compare_table(rows: Sequence[Mapping[str, Any]]) -> str:
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
    return table(body, header)


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: python -m pip install matplotlib (or \"mpo[bench]\")") from None


def plot_compare(rows: Sequence[Mapping[str, Any]], path: str) -> None:
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

    def label(r: Mapping[str, Any]) -> str:
        return str(r["method"]) if r["n"] == 5 or r["method"] == "svd" else f"{r['method']} n={r['n']}"

    # One colour per method in every panel, even where a method has no point (CP not run).
    colours = {name: f"C{k}" for k, name in enumerate(dict.fromkeys(label(r) for r in rows))}
    for ax, name in zip(axes.flat, matrices):
        curves: dict[str, list[tuple[float, float]]] = {}
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
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    except OSError as exc:
        raise UsageError(f"cannot write {path!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def compare(args: argparse.Namespace) -> int:
    """Run the comparison on chosen matrices of a checkpoint; print it, optionally plot it."""
    tensors = read_tensors(args.checkpoint)
    names = args.matrix or default_matrices(tensors)
    for name in names:
        if name not in tensors:
            raise UsageError(f"--matrix {name!r} is not a tensor of {args.checkpoint!r}")
        if np.asarray(tensors[name]).ndim != 2:
            raise UsageError(f"--matrix {name!r} is not 2-D: shape {np.asarray(tensors[name]).shape}")
    if args.plot:  # fail before the long run, not after it
        check_writable(args.plot)
        _require_matplotlib()
    rows = run_compare(tensors, names, args.ratios, n=args.n, cp_max_rank=args.cp_max_rank)
    print(compare_table(rows))
    if args.plot:
        plot_compare(rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
