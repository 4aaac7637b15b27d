"""Benchmark: applying an MPO without rebuilding it, against its peers on the same cores and inputs.

The targets grid (issue 20): X @ m for the 3072x768 Gaussian matrix at max_bond 48 (factors
(4,4,8,6,4) x (3,4,4,4,4), rho ~0.043), float32 and float64, 1 and 2 threads, batches 1, 32, 256, 2048;
each thread count runs in its own child process (BLAS reads its thread count once, when it loads).
Per cell it prints which targets hold: >= 1.5x opt_einsum at batch <= 32, >= 1x opt_einsum at every
batch, >= 0.95x rebuild-then-BLAS at every batch. Contenders, timed in interleaved rounds:
  * mpo      ``X @ m`` (plan "auto": the kernel, or the cores multiplied out and NumPy's BLAS, timed);
  * dense    NumPy ``X @ M`` on the MPO's own dense matrix (BLAS);
  * einsum   ``opt_einsum.contract`` with its optimal path over the same cores (the way TensorLy-Torch
             applies a factorised TT-matrix layer), the expression built once outside the timing;
  * rebuild  ``m.to_dense()`` then ``X @ M``.
The sweep (``--sweep``; in the full run at the first thread count): 768x768, 3072x768, 768x3072 at caps
giving rho ~ 1, 0.3, 0.1, 0.03. The rows part: the 30522x384 MiniLM word embedding, ``m.rows(ids)``
against a dense row gather and rebuild-then-gather, for 1 .. 4096 ids.

Every result is asserted against the dense oracle (float64 products of the MPO's own matrix). The
header records the machine (CPU, vector extensions, BLAS kernel, threads, OPENBLAS_*); where the
machine sets OPENBLAS_CORETYPE the whole run is repeated without it and OPENBLAS_L2_SIZE (see
_common.rerun_without_openblas_coretype). Writes benchmarks/results/bench_apply.json.

    python benchmarks/bench_apply.py [--quick] [--threads N ...] [--dtype float32 float64]
                                     [--batches B ...] [--sweep] [--no-rows] [--out PATH]
"""

from __future__ import annotations

import os
import sys


def _child_threads() -> int | None:
    # A child process is started with --child --threads N; the parent lets BLAS load as it likes.
    if "--child" not in sys.argv:
        return None
    for k, arg in enumerate(sys.argv):
        if arg == "--threads" and k + 1 < len(sys.argv):
            return int(sys.argv[k + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return 1


# Thread counts must be fixed before NumPy loads its BLAS. OpenBLAS's workers spin for a while after
# every call; alternating them with the kernel's own threads on a small machine stalls both, so every
# contender gets the same count.
_THREADS = _child_threads()
if _THREADS is not None:
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPO_NUM_THREADS"):
        os.environ[_var] = str(_THREADS)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (benchmarks/ is not a package)

if __name__ == "__main__":
    C.rerun_without_openblas_coretype()  # before NumPy loads its BLAS

import numpy as np  # noqa: E402

import mpo  # noqa: E402

RESULTS = C.RESULTS_DIR / "bench_apply.json"
TARGET_RHO = (1.0, 0.3, 0.1, 0.03)
#: The issue's matrix: 3072 x 768 with these factors, at this max_bond.
GRID_SHAPE = ((4, 4, 8, 6, 4), (3, 4, 4, 4, 4))
GRID_MAX_BOND = 48
GRID_BATCHES = (1, 32, 256, 2048)
#: (name, peer, lowest ratio peer time / mpo time, largest batch it applies to or None for all).
TARGETS = (
    ("einsum>=1.5x", "einsum", 1.5, 32),
    ("einsum>=1x", "einsum", 1.0, None),
    ("rebuild>=0.95x", "rebuild", 0.95, None),
)
#: Timing budget of race(): full runs and --quick.
FULL_RACE = {"min_time": 0.4, "min_rounds": 9, "max_rounds": 60}
QUICK_RACE = {"min_time": 0.02, "min_rounds": 3, "max_rounds": 5}
RACE = dict(FULL_RACE)


def race(fns, min_time=None, min_rounds=None, max_rounds=None):
    """Median wall time of each of fns, timed in interleaved rounds (one call of each per round).

    On a shared machine the load drifts; interleaving makes every contender see the same load, so the
    ratios stay meaningful even when the absolute times do not. The rounds follow
    :func:`_common.balanced_orders`, so each contender runs right after every other one equally often:
    in one fixed order mpo always ran right after the rebuild peer's fresh dense matrix and GEMM.
    Runs whole cycles of those orders. Returns (medians, minima, last results).
    """
    min_time = RACE["min_time"] if min_time is None else min_time
    min_rounds = RACE["min_rounds"] if min_rounds is None else min_rounds
    max_rounds = RACE["max_rounds"] if max_rounds is None else max_rounds
    outs = [fn() for fn in fns]  # warm-up (and first results; "auto" times its routes here)
    times = [[] for _ in fns]
    start = time.perf_counter()
    rounds = 0
    orders = C.balanced_orders(len(fns))
    # Whole cycles of the orders, so that no contender follows one of the others more often.
    while (rounds < min_rounds or rounds % len(orders)
           or (time.perf_counter() - start < min_time * len(fns) and rounds < max_rounds)):
        for k in orders[rounds % len(orders)]:
            fn = fns[k]
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


def race_peers(m, D, X, rtol):
    """(medians, minima, m.matmul_flops) of mpo, dense, einsum and rebuild for X @ M, each result
    checked against the oracle (the float64 product with the MPO's own dense matrix D)."""
    want = X.astype(np.float64) @ D.astype(np.float64)
    run = einsum_apply(m, X.shape[0])
    med, low, outs = race([lambda: X @ m, lambda: X @ D, lambda: run(X), lambda: X @ m.to_dense()])
    for name, y in zip(("mpo", "dense", "einsum", "rebuild"), outs):
        check(name, y, want, rtol)
    return med, low, m.matmul_flops(X.shape[0])


def targets_held(batch: int, ratios: dict) -> dict:
    """Target name -> True/False for the targets that apply at this batch."""
    out = {}
    for name, peer, floor, largest in TARGETS:
        if largest is None or batch <= largest:
            out[name] = bool(ratios[peer] >= floor)
    return out


def bench_grid(dtypes, batches, rows_out):
    """The issue's cells: 3072x768 at max_bond 48, each dtype and batch, this process's thread count."""
    rng = np.random.default_rng(20)
    I, J = math.prod(GRID_SHAPE[0]), math.prod(GRID_SHAPE[1])
    M = rng.standard_normal((I, J)) / math.sqrt(I)
    for dtype in dtypes:
        dtype = np.dtype(dtype)
        rtol = 1e-4 if dtype == np.float32 else 1e-10
        m = mpo.decompose(M.astype(dtype), shape=GRID_SHAPE, max_bond=GRID_MAX_BOND)  # cores in dtype
        D = m.to_dense()
        for batch in batches:
            X = rng.standard_normal((batch, I)).astype(dtype)
            (t_mpo, t_dense, t_ein, t_reb), low, f = race_peers(m, D, X, rtol)
            ratios = {"dense": t_dense / t_mpo, "einsum": t_ein / t_mpo, "rebuild": t_reb / t_mpo}
            held = targets_held(batch, ratios)
            row = {
                "kind": "grid",
                "dtype": dtype.name,
                "threads": _THREADS,
                "shape": [I, J],
                "in_shape": list(m.in_shape),
                "out_shape": list(m.out_shape),
                "bond_dims": list(m.bond_dims),
                "rho": m.compression_ratio,
                "batch": batch,
                "route": f["route"],
                "plan": f["plan"],
                "groups": list(f["groups"]),
                "mpo_flops": f["mpo"],
                "dense_flops": f["dense"],
                "times": {"mpo": t_mpo, "dense": t_dense, "einsum": t_ein, "rebuild": t_reb},
                "min_times": dict(zip(("mpo", "dense", "einsum", "rebuild"), low)),
                "ratios": ratios,
                "targets": held,
            }
            rows_out.append(row)
            verdict = " ".join(f"{k}:{'ok' if v else 'FAIL'}" for k, v in held.items())
            print(
                f"{dtype.name:>7} {_THREADS:>3} {batch:>5} {plan_label(f):>12} {t_mpo * 1e3:9.3f} "
                f"{ratios['einsum']:8.2f} {ratios['rebuild']:8.2f} {ratios['dense']:8.2f}  {verdict}",
                flush=True,
            )


def bench_matmul(shapes, batches, dtype, rtol, rows_out, targets=TARGET_RHO):
    rng = np.random.default_rng(0)
    for I, J in shapes:
        M = rng.standard_normal((I, J)).astype(dtype) / math.sqrt(I)
        full = mpo.decompose(M)
        for target in targets:
            m = cap_for(full, target)
            D = m.to_dense()
            for batch in batches:
                X = rng.standard_normal((batch, I)).astype(dtype)
                (t_mpo, t_dense, t_ein, t_reb), low, f = race_peers(m, D, X, rtol)
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


def run_child(args) -> dict:
    """This process's part: the grid (and sweep/rows when asked) at _THREADS threads."""
    if args.quick:
        RACE.update(QUICK_RACE)
    results: list[dict] = []
    machine = C.machine_info()
    print(f"--- {_THREADS} thread(s) for every contender (BLAS and the mpo kernel) ---")
    for line in C.format_machine(machine):
        print("  " + line)
    print(f"{'dtype':>7} {'thr':>3} {'batch':>5} {'plan':>12} {'mpo ms':>9} {'einsum/':>8} {'rebuild/':>8} "
          f"{'dense/':>8}  targets")
    bench_grid(args.dtype, args.batches, results)
    if args.sweep:
        print("\nsweep (ratios are peer time / mpo time; plan 5 = rebuild then multiply)")
        print(f"{'shape':>11} {'rho':>6} {'batch':>5} {'plan':>12} {'flops/dns':>9} {'mpo ms':>9} "
              f"{'dense/':>8} {'einsum/':>8} {'rebuild/':>8}")
        shapes = [(768, 768)] if args.quick else [(768, 768), (3072, 768), (768, 3072)]
        for dtype in args.dtype:
            dt = np.dtype(dtype)
            bench_matmul(shapes, args.batches, dt, 1e-4 if dt == np.float32 else 1e-10, results, args.rho)
    if args.rows:
        counts = (1, 32, 256, 4096) if args.quick else (1, 32, 256, 2048, 4096)
        print(f"\n{'embedding':>10} {'rho':>6} {'ids':>5} {'rows ms':>9} {'gather/':>10} {'rebuild/':>10}")
        bench_rows(counts, np.dtype(args.dtype[0]), 1e-4, results, args.quick)
    return {"threads": _THREADS, "machine": machine, "results": results}


def child_command(args, threads: int, out: str, first: bool) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--threads", str(threads), "--out", out,
           "--dtype", *args.dtype, "--batches", *map(str, args.batches), "--rho", *map(str, args.rho)]
    if args.quick:
        cmd.append("--quick")
    if args.sweep_all or (args.sweep and first):
        cmd.append("--sweep")
    if args.rows and first:
        cmd.append("--rows")
    return cmd


def summary(children: list[dict]) -> tuple[list[str], dict]:
    """The targets table (dtype/threads rows, batch columns) and counts of cells held and failed."""
    cells = [r for c in children for r in c["results"] if r["kind"] == "grid"]
    batches = sorted({r["batch"] for r in cells})
    keys = sorted({(r["dtype"], r["threads"]) for r in cells})
    rows = []
    held = failed = 0
    for dtype, threads in keys:
        row = [f"{dtype}, {threads}"]
        for b in batches:
            found = [r for r in cells if (r["dtype"], r["threads"], r["batch"]) == (dtype, threads, b)]
            if not found:
                row.append("-")
                continue
            r = found[0]
            ok = all(r["targets"].values())
            held += ok
            failed += not ok
            bad = [k for k, v in r["targets"].items() if not v]
            row.append(f"einsum {r['ratios']['einsum']:.2f}x, rebuild {r['ratios']['rebuild']:.2f}x"
                       + (f" FAIL {','.join(bad)}" if bad else " ok"))
        rows.append(row)
    table = C.format_table(["dtype, threads"] + [f"batch {b}" for b in batches], rows).splitlines()
    return table, {"cells": held + failed, "held": held, "failed": failed}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batches 1, 32, 256 and short timing")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts, one child process each (default: 1 2)")
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help=f"batches of the grid (default {GRID_BATCHES}; --quick: 1 32 256)")
    parser.add_argument("--rho", type=float, nargs="+", default=list(TARGET_RHO),
                        help="target compression ratios of the sweep (default: 1 0.3 0.1 0.03)")
    parser.add_argument("--sweep", action="store_true",
                        help="also the shapes x rho sweep, at the first thread count")
    parser.add_argument("--sweep-all", action="store_true", help="the sweep at every thread count")
    parser.add_argument("--no-rows", dest="rows", action="store_false", help="skip the embedding rows() part")
    parser.add_argument("--rows", dest="rows", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS), help="JSON results path")
    parser.set_defaults(rows=None)
    args = parser.parse_args()
    if args.batches is None:
        args.batches = [1, 32, 256] if args.quick else list(GRID_BATCHES)
    if args.child:
        args.rows = bool(args.rows)
        C.write_json(Path(args.out), run_child(args))
        return
    if args.rows is None:
        args.rows = not args.quick
    print(f"command: {C.command_line()}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in C.library_versions(mpo).items()))
    machine = C.print_machine()
    print("ratios are peer time / mpo time (> 1: mpo faster); times are medians of interleaved rounds")
    children = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, threads in enumerate(args.threads):
            out = os.path.join(tmp, f"threads{threads}.json")
            code = subprocess.call(child_command(args, threads, out, k == 0))
            if code != 0:
                raise SystemExit(f"bench_apply: the child with {threads} thread(s) failed (exit {code})")
            with open(out, encoding="utf-8") as fh:
                children.append(json.load(fh))
    table, counts = summary(children)
    print("\ntargets (>= 1.5x einsum at batch <= 32, >= 1x einsum, >= 0.95x rebuild-then-BLAS):")
    print("\n".join(table))
    print(f"{counts['held']} of {counts['cells']} cells hold every target")
    payload = {
        "benchmark": "bench_apply",
        "command": C.command_line(),
        "versions": C.library_versions(mpo),
        "machine": machine,
        "quick": args.quick,
        "targets": [{"name": n, "peer": p, "at_least": f, "max_batch": b} for n, p, f, b in TARGETS],
        "summary": counts,
        "runs": children,
    }
    C.write_json(Path(args.out), payload)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
