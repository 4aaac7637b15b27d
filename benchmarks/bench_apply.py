"""Benchmark: applying an MPO without rebuilding it, against its peers on the same cores and inputs.

For X @ M (M of 768x768, 3072x768, 768x3072; caps giving rho ~ 1, 0.3, 0.1, 0.03; batches 1, 32, 256,
2048), in one run:
  * mpo      ``X @ m`` (the C++ kernel, plan chosen by FLOPs);
  * dense    NumPy ``X @ M`` on the MPO's own dense matrix (BLAS);
  * einsum   ``opt_einsum.contract`` with its optimal path over the same cores (the way TensorLy-Torch
             applies a factorised TT-matrix layer), the expression built once outside the timing;
  * rebuild  ``m.to_dense()`` then ``X @ M``.
For the 30522x384 MiniLM word embedding (padded to 30720 = 6*8*10*8*8 rows): ``m.rows(ids)`` against a
dense row gather and rebuild-then-gather, for 1 .. 4096 ids.

Every result is asserted against the dense oracle (float64 products of the MPO's own matrix). Prints a
table of times, ratios and FLOPs and writes benchmarks/results/bench_apply.json.

    python benchmarks/bench_apply.py [--quick] [--dtype float32|float64] [--rho R ...] [--no-rows]
                                     [--threads N]
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv(default: int = 1) -> int:
    for k, arg in enumerate(sys.argv):
        if arg == "--threads" and k + 1 < len(sys.argv):
            return int(sys.argv[k + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return default


# Thread counts must be fixed before NumPy loads its BLAS. OpenBLAS's workers spin for a while after
# every call; alternating them with the kernel's own threads on a small machine stalls both by 10-20x,
# which measures the scheduler, not the contenders. Every contender gets the same count (default 1).
_THREADS = _threads_from_argv()
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPO_NUM_THREADS"):
    os.environ[_var] = str(_THREADS)

import argparse
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402  (benchmarks/ is not a package)

import mpo

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_apply.json")
TARGET_RHO = (1.0, 0.3, 0.1, 0.03)


def race(fns, min_time=0.4, min_rounds=5, max_rounds=60):
    """Median wall time of each of fns, timed in interleaved rounds (one call of each per round).

    On a shared machine the load drifts; interleaving makes every contender see the same load, so the
    ratios stay meaningful even when the absolute times do not. Returns (medians, minima, last results).
    """
    outs = [fn() for fn in fns]  # warm-up (and first results)
    times = [[] for _ in fns]
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - start < min_time * len(fns) and rounds < max_rounds):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t0)
        rounds += 1
    return [statistics.median(t) for t in times], [min(t) for t in times], outs


def cap_for(full: mpo.MPO, target: float) -> mpo.MPO:
    """The uniform cap whose compression ratio is closest to target (truncate: no new decomposition)."""
    best = None
    lo, hi = 1, max(full.bond_dims)
    candidates = sorted({max(1, int(round(lo * (hi / lo) ** (t / 60)))) for t in range(61)})
    for cap in candidates:
        m = full.truncate(max_bond=cap)
        gap = abs(math.log(m.compression_ratio / target))
        if best is None or gap < best[0]:
            best = (gap, m)
    return best[1]


def check(name, got, want, rtol):
    err = float(np.linalg.norm(np.asarray(got, dtype=np.float64) - want))
    scale = float(np.linalg.norm(want))
    assert err <= rtol * scale, f"{name}: relative error {err / scale:.2e} > {rtol:g}"


def einsum_apply(m: mpo.MPO, batch: int):
    """opt_einsum expression X(b, i1..in) x cores -> (b, j1..jn) with its optimal path."""
    import opt_einsum as oe

    n = m.n
    sym = oe.get_symbol
    i = [sym(k) for k in range(n)]
    j = [sym(n + k) for k in range(n)]
    d = [sym(2 * n + k) for k in range(n + 1)]
    b = sym(3 * n + 2)
    terms = [b + "".join(i)]
    for k in range(n):
        terms.append(d[k] + i[k] + j[k] + d[k + 1])
    spec = ",".join(terms) + "->" + b + "".join(j)
    shapes = [(batch, *m.in_shape)] + [c.shape for c in m.cores]
    expr = oe.contract_expression(spec, *shapes, optimize="optimal")
    cores = m.cores
    I, J = m.shape

    def run(X):
        return expr(X.reshape(batch, *m.in_shape), *cores).reshape(batch, J)

    return run


def plan_label(f):
    return f"{f['plan']}:{''.join(str(g) for g in f['groups'])}"


def bench_matmul(shapes, batches, dtype, rtol, rows_out, targets=TARGET_RHO):
    rng = np.random.default_rng(0)
    for I, J in shapes:
        M = rng.standard_normal((I, J)).astype(dtype) / math.sqrt(I)
        full = mpo.decompose(M)
        for target in targets:
            m = cap_for(full, target)
            D = m.to_dense()
            D64 = D.astype(np.float64)
            for batch in batches:
                X = rng.standard_normal((batch, I)).astype(dtype)
                want = X.astype(np.float64) @ D64
                run = einsum_apply(m, batch)
                med, low, outs = race(
                    [lambda: X @ m, lambda: X @ D, lambda: run(X), lambda: X @ m.to_dense()]
                )
                for name, y in zip(("mpo", "dense", "einsum", "rebuild"), outs):
                    check(name, y, want, rtol)
                t_mpo, t_dense, t_ein, t_reb = med
                f = m.matmul_flops(batch)
                row = {
                    "kind": "matmul",
                    "shape": [I, J],
                    "in_shape": m.in_shape,
                    "out_shape": m.out_shape,
                    "bond_dims": m.bond_dims,
                    "rho": m.compression_ratio,
                    "batch": batch,
                    "plan": f["plan"],
                    "groups": f["groups"],
                    "merge_flops": f["merge_flops"],
                    "unmerged_flops": f["unmerged"],
                    "mpo_flops": f["mpo"],
                    "dense_flops": f["dense"],
                    "flops_ratio": f["ratio"],
                    "t_mpo": t_mpo,
                    "t_dense": t_dense,
                    "t_einsum": t_ein,
                    "t_rebuild": t_reb,
                    "min_times": dict(zip(("mpo", "dense", "einsum", "rebuild"), low)),
                    "einsum_over_mpo": t_ein / t_mpo,
                    "dense_over_mpo": t_dense / t_mpo,
                    "rebuild_over_mpo": t_reb / t_mpo,
                }
                rows_out.append(row)
                print(
                    f"{I:>5}x{J:<5} {row['rho']:6.3f} {batch:>5} {plan_label(f):>12} {f['ratio']:9.3f} "
                    f"{t_mpo * 1e3:9.3f} {t_dense / t_mpo:8.2f} {t_ein / t_mpo:8.2f} {t_reb / t_mpo:8.2f}",
                    flush=True,
                )


def bench_rows(counts, dtype, rtol, rows_out, quick):
    from mpo._data import load_minilm

    name = "embeddings.word_embeddings.weight"
    E = np.asarray(load_minilm([name])[name], dtype=dtype)
    full = mpo.decompose(E)
    rng = np.random.default_rng(1)
    for target in TARGET_RHO[1:] if quick else TARGET_RHO:
        m = cap_for(full, target)
        D = m.to_dense()
        for count in counts:
            ids = rng.integers(0, E.shape[0], size=count)
            want = D[ids].astype(np.float64)
            med, low, outs = race([lambda: m.rows(ids), lambda: D[ids], lambda: m.to_dense()[ids]])
            for name, y in zip(("rows", "gather", "rebuild-gather"), outs):
                check(name, y, want, rtol)
            t_rows, t_gather, t_reb = med
            row = {
                "kind": "rows",
                "shape": list(m.shape),
                "padded_shape": list(m.padded_shape),
                "bond_dims": m.bond_dims,
                "rho": m.compression_ratio,
                "ids": count,
                "t_rows": t_rows,
                "t_gather": t_gather,
                "t_rebuild_gather": t_reb,
                "min_times": dict(zip(("rows", "gather", "rebuild_gather"), low)),
                "rebuild_over_rows": t_reb / t_rows,
                "gather_over_rows": t_gather / t_rows,
            }
            rows_out.append(row)
            print(
                f"{m.shape[0]:>5}x{m.shape[1]:<4} {row['rho']:6.3f} {count:>5} {t_rows * 1e3:9.3f} "
                f"{t_gather / t_rows:10.4f} {t_reb / t_rows:10.2f}",
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes, batches and caps")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--rho", type=float, nargs="+", default=list(TARGET_RHO),
                        help="target compression ratios of the matmul part (default: 1 0.3 0.1 0.03)")
    parser.add_argument("--no-rows", action="store_true", help="skip the embedding rows() part")
    parser.add_argument("--out", default=RESULTS, help="JSON results path")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for every contender (BLAS and the MPO kernel alike; default 1)")
    args = parser.parse_args()
    dtype = np.dtype(args.dtype)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    shapes = [(768, 768)] if args.quick else [(768, 768), (3072, 768), (768, 3072)]
    batches = (1, 32, 256) if args.quick else (1, 32, 256, 2048)
    counts = (1, 32, 256, 4096) if args.quick else (1, 32, 256, 2048, 4096)
    results: list[dict] = []
    print(f"dtype {dtype.name}; {_THREADS} thread(s) for every contender; times are medians of interleaved "
          "rounds; ratios are peer time / mpo time (> 1: mpo faster)")
    print("plan: order:sizes of merged core runs (11111 = none merged, 5 = rebuild then multiply)")
    print(f"{'shape':>11} {'rho':>6} {'batch':>5} {'plan':>12} {'flops/dns':>9} {'mpo ms':>9} "
          f"{'dense/':>8} {'einsum/':>8} {'rebuild/':>8}")
    bench_matmul(shapes, batches, dtype, rtol, results, args.rho)
    if not args.no_rows:
        print(f"\n{'embedding':>10} {'rho':>6} {'ids':>5} {'rows ms':>9} {'gather/':>10} {'rebuild/':>10}")
        bench_rows(counts, dtype, rtol, results, args.quick)
    meta = {
        "dtype": dtype.name,
        "quick": args.quick,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": _THREADS,
    }
    write_json(Path(args.out), {"meta": meta, "results": results})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
