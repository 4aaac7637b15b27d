#!/usr/bin/env python
"""Benchmark ``mpo.decompose`` against TensorLy and a plain numpy Algorithm 1 (issue 2).

For every matrix (MiniLM-L6 checkpoint weights and seeded random Gaussian matrices, all in
float64) the shape plan comes from ``mpo.plan_shape(I, J, n)``; the matrix is zero-padded to the
plan's padded shape for the two peers, so all three methods decompose the same tensor with the
same factors and the same bond caps:

* ``mpo``      -- ``mpo.decompose(M, shape=(in_shape, out_shape), max_bond=cap)`` on the unpadded
                  M (``shape=None, n=n`` when the plan pads: mpo then pads with the same plan)
* ``tensorly`` -- ``tensorly.decomposition.tensor_train_matrix`` (numpy backend) on the padded
                  matrix reshaped row-major to (i1..in, j1..jn), with rank [1, d'_1, .., d'_{n-1}, 1]
* ``numpy``    -- Algorithm 1 written here: reshape, interleave to (i1, j1, .., in, jn), sequential
                  ``np.linalg.svd(full_matrices=False)``, keep U, carry S·Vᵀ, cut to the cap.

Times are medians over repeats (the rebuild used for the error is not timed). Errors are relative
Frobenius errors ||M - rebuild||_F / ||M||_F on the original (unpadded) I×J block.

Correctness checks (a failure makes the exit status 1):
  * the two peers' errors agree (1e-12 absolute in exact mode, 1e-6 relative when capped);
  * exact mode: mpo error <= 1e-12;
  * capped mode: mpo error <= max(1.01 × the exact truncation's error, 1e-12), where the exact
    truncation's error is the peers' (sequential truncated SVD, same caps); the 1e-12 floor only
    matters for a cap at or above every full bond ("no cut"), which leaves an exact MPO;
  * mpo used the plan's factors, returns M's shape, and no bond exceeds min(cap, full bond).
Speed targets (reported, never fatal): tensorly/mpo >= 3 in exact mode and >= 10 with a cap
<= 256 that cuts at least one bond (a cap that cuts nothing is held to the exact-mode target).

Run ``python benchmarks/bench_decompose.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _threads import apply_threads_flag  # noqa: E402  (benchmarks/ is not a package)

apply_threads_flag(sys.argv[1:])  # before numpy loads: BLAS reads its thread count once

import numpy as np  # noqa: E402  (after the thread variables are set)

import _common as C  # noqa: E402

EXACT_TOL = 1e-12  # exact-mode error target (float64)
CAPPED_SLACK = 1.01  # capped-mode error may be at most 1 % above the exact truncation's
PEER_RTOL = 1e-6  # relative agreement of the two peers' errors in capped mode
PEER_ATOL = 1e-12  # absolute agreement in exact mode (both ~1e-15)
SPEED_EXACT = 3.0  # target tensorly/mpo ratio, exact mode
SPEED_CAPPED = 10.0  # target tensorly/mpo ratio, capped mode with cap <= 256
BIG_ELEMENTS = 1_000_000  # matrices at least this large use --repeats-big

RANDOM_CASES = {"random_768x768": (768, 768), "random_3072x768": (3072, 768)}
ALL_CASES = list(C.MINILM_MATRICES) + list(RANDOM_CASES)
QUICK_CASES = ["attn_query_l0", "ffn_in_l0", "random_768x768"]


# --------------------------------------------------------------------------------------------
# Plain numpy Algorithm 1 and a shared rebuild
# --------------------------------------------------------------------------------------------


def _interleave(n: int) -> List[int]:
    """Axis order (i1, j1, i2, j2, ..) of a tensor laid out as (i1..in, j1..jn)."""
    return [ax for k in range(n) for ax in (k, n + k)]


def numpy_algorithm1(
    P: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int], cap: Optional[int]
) -> List[np.ndarray]:
    """Sequential-SVD MPO (MPOP Algorithm 1, no gauge fix) of the padded matrix ``P``.

    Returns the n cores, core k shaped (d_{k-1}, i_k, j_k, d_k).
    """
    n = len(in_shape)
    rest = P.reshape(tuple(in_shape) + tuple(out_shape)).transpose(_interleave(n))
    cores = []
    d_prev = 1
    for k in range(n - 1):
        unfolding = rest.reshape(d_prev * in_shape[k] * out_shape[k], -1)
        U, S, Vt = np.linalg.svd(unfolding, full_matrices=False)
        r = S.size if cap is None else min(int(cap), S.size)
        cores.append(U[:, :r].reshape(d_prev, in_shape[k], out_shape[k], r))
        rest = S[:r, None] * Vt[:r]
        d_prev = r
    cores.append(rest.reshape(d_prev, in_shape[-1], out_shape[-1], 1))
    return cores


def rebuild_cores(cores: Sequence[np.ndarray], in_shape: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
    """Contract cores (d_{k-1}, i_k, j_k, d_k) back into the padded I'×J' matrix."""
    n = len(cores)
    acc = cores[0].reshape(-1, cores[0].shape[-1])
    for core in cores[1:]:
        acc = (acc @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
    inter = [d for k in range(n) for d in (in_shape[k], out_shape[k])]
    back = list(range(0, 2 * n, 2)) + list(range(1, 2 * n, 2))
    rows = int(np.prod(in_shape))
    return acc.reshape(inter).transpose(back).reshape(rows, -1)


# --------------------------------------------------------------------------------------------
# The three methods
# --------------------------------------------------------------------------------------------


def numpy_method(P, plan, cap):
    """(timed callable, rebuild) for the plain numpy Algorithm 1.

    The callable returns the cores; ``rebuild(cores)`` returns (padded dense matrix, bond dims).
    """
    in_shape, out_shape = tuple(plan["in_shape"]), tuple(plan["out_shape"])

    def run():
        return numpy_algorithm1(P, in_shape, out_shape, cap)

    def rebuild(cores):
        return rebuild_cores(cores, in_shape, out_shape), [c.shape[-1] for c in cores[:-1]]

    return run, rebuild


def tensorly_method(P, plan, cap):
    """(timed callable, rebuild) for TensorLy's ``tensor_train_matrix`` (numpy backend).

    The input is the padded matrix reshaped row-major to (i1..in, j1..jn); the rank list is
    [1, d'_1, .., d'_{n-1}, 1] with d'_k = min(cap, full d_k) (full bonds in exact mode).
    """
    import tensorly as tl
    from tensorly.decomposition import tensor_train_matrix

    tl.set_backend("numpy")
    in_shape, out_shape = tuple(plan["in_shape"]), tuple(plan["out_shape"])
    tensor = P.reshape(in_shape + out_shape)
    bonds = C.capped_bonds(C.full_bonds(in_shape, out_shape), cap)

    def run():
        # tensor_train mutates its rank list, so hand it a fresh one on every call
        return tensor_train_matrix(tensor, [1] + list(bonds) + [1])

    def rebuild(ttm):
        dense = tl.to_numpy(tl.tt_matrix_to_tensor(ttm)).reshape(P.shape)
        return dense, [f.shape[-1] for f in ttm.factors[:-1]]

    return run, rebuild


def mpo_method(mpo, M, plan, cap, n):
    """(timed callable, rebuild, info) for ``mpo.decompose`` on the unpadded ``M``.

    Without padding the plan's factors are passed explicitly, ``shape=(in_shape, out_shape)``.
    When the plan pads, ``shape=None`` (with ``n``) is passed instead: the API rejects factors
    whose product differs from M's size and pads only when it plans the shape itself, from the
    same ``mpo.plan_shape`` as the peers. ``rebuild`` (untimed) calls ``to_dense()`` and reads
    the MPO's bonds, factors, error bound and compression ratio.
    """
    shape = (tuple(plan["in_shape"]), tuple(plan["out_shape"]))
    padded = tuple(plan["padding"]) != (0, 0)
    info: Dict[str, object] = {"call_shape": "None (mpo pads)" if padded else "explicit factors"}

    def run():
        if padded:
            return mpo.decompose(M, None, n=n, max_bond=cap)
        return mpo.decompose(M, shape=shape, max_bond=cap)

    def rebuild(m):
        got = (tuple(int(x) for x in m.in_shape), tuple(int(x) for x in m.out_shape))
        if got != shape:
            raise AssertionError(f"mpo used factors {got}, the plan says {shape}")
        dense = np.asarray(m.to_dense())
        if dense.shape != M.shape:
            raise AssertionError(f"to_dense() shape {dense.shape} != {M.shape}")
        for attr in ("relative_error_bound", "compression_ratio"):
            try:
                val = getattr(m, attr)
                info[attr] = float(val() if callable(val) else val)
            except Exception as exc:  # report, don't crash
                info[attr] = f"error: {exc}"
        return dense, [int(d) for d in m.bond_dims]

    return run, rebuild, info


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def load_cases(names: Sequence[str], seed: int) -> Dict[str, np.ndarray]:
    """Float64 matrices for the requested case names (checkpoint weights or random Gaussian)."""
    real = [n for n in names if n in C.MINILM_MATRICES]
    cases: Dict[str, np.ndarray] = {}
    if real:
        loaded, _ = C.load_minilm_matrices(real)
        print(f"checkpoint matrices cast from float32 (as stored) to float64: {', '.join(real)}\n")
        cases.update(loaded)
    rng = np.random.default_rng(seed)
    for name in names:
        if name in RANDOM_CASES:
            cases[name] = rng.standard_normal(RANDOM_CASES[name])
    return {n: cases[n] for n in names}


def plan_for(mpo, rows: int, cols: int, n: int) -> Dict[str, object]:
    """Shape plan from ``mpo.plan_shape`` as a plain dict."""
    p = mpo.plan_shape(rows, cols, n)
    return {
        "in_shape": tuple(int(x) for x in p.in_shape),
        "out_shape": tuple(int(x) for x in p.out_shape),
        "padded_shape": tuple(int(x) for x in p.padded_shape),
        "padding": tuple(int(x) for x in p.padding),
        "source": "mpo.plan_shape",
    }


def _fmt_t(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4f}"


def _fmt_r(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.1f}x"


def _fmt_e(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3e}"


def benchmark_case(name, M, mode_caps, args, mpo) -> List[dict]:
    """Run every mode on one matrix; return one record per mode.

    Within a mode the methods are timed round-robin (see :func:`_common.time_interleaved`) on
    the same input; the rebuild for the error is done afterwards, untimed.
    """
    rows, cols = M.shape
    plan = plan_for(mpo, rows, cols, args.n)
    P = C.pad_to(M, plan["padded_shape"])
    big = M.size >= BIG_ELEMENTS
    repeats = args.repeats_big if big else args.repeats_small
    warmup = 0 if big else args.warmup
    full = C.full_bonds(plan["in_shape"], plan["out_shape"])
    records = []
    for cap in mode_caps:
        cuts = cap is not None and any(cap < d for d in full)
        mode = "exact" if cap is None else (f"cap={cap}" if cuts else f"cap={cap} (no cut)")
        rec: Dict[str, object] = {
            "matrix": name,
            "source": ("MiniLM-L6 checkpoint (float32 -> float64)" if name in C.MINILM_MATRICES
                       else f"N(0,1) seed {args.seed}"),
            "shape": [rows, cols],
            "padded_shape": list(plan["padded_shape"]),
            "in_shape": list(plan["in_shape"]),
            "out_shape": list(plan["out_shape"]),
            "plan_source": plan["source"],
            "mode": mode,
            "max_bond": cap,
            "cap_cuts": cuts,
            "expected_bonds": C.capped_bonds(full, cap),
            "repeats": repeats,
            "warmup": warmup,
        }
        methods = {"tensorly": tensorly_method(P, plan, cap), "numpy": numpy_method(P, plan, cap)}
        info: Dict[str, object] = {}
        run, rebuild, info = mpo_method(mpo, M, plan, cap, args.n)
        methods["mpo"] = (run, rebuild)
        timed = C.time_interleaved({k: v[0] for k, v in methods.items()}, repeats, warmup)
        for label, (_, rebuild) in methods.items():
            out = timed[label]
            if isinstance(out, BaseException):
                rec[label] = {"exception": f"{type(out).__name__}: {out}"}
                print(f"  {name:<16} {mode:<8} {label:<8} FAILED: {rec[label]['exception']}", flush=True)
                continue
            med, times, result = out
            try:
                dense, bonds = rebuild(result)
                err = C.relative_error(M, dense[:rows, :cols])
            except Exception as exc:
                rec[label] = {"seconds": med, "times": times, "exception": f"rebuild: {type(exc).__name__}: {exc}"}
                print(f"  {name:<16} {mode:<8} {label:<8} REBUILD FAILED: {exc}", flush=True)
                continue
            rec[label] = {"seconds": med, "min_seconds": min(times), "times": times, "error": err,
                          "bond_dims": bonds}
            if label == "mpo":
                rec[label].update(info)
            print(f"  {name:<16} {mode:<8} {label:<8} {med:9.4f} s  err {err:.3e}  bonds {bonds}", flush=True)
        check_record(rec)
        records.append(rec)
    return records


def check_record(rec: dict) -> None:
    """Fill in ratios, correctness checks and speed-target flags of one record (in place)."""
    exact = rec["max_bond"] is None
    failures: List[str] = []
    peer_errs = {}
    for label in ("tensorly", "numpy"):
        if "exception" in rec[label]:
            failures.append(f"{label} failed: {rec[label]['exception']}")
        else:
            peer_errs[label] = rec[label]["error"]
    if len(peer_errs) == 2:
        tl_e, np_e = peer_errs["tensorly"], peer_errs["numpy"]
        tol = PEER_ATOL + (0.0 if exact else PEER_RTOL * max(tl_e, np_e))
        if not abs(tl_e - np_e) <= tol:
            failures.append(f"peers disagree: tensorly {tl_e:.6e} vs numpy {np_e:.6e}")
    ref = min(peer_errs.values()) if peer_errs else None
    rec["reference_error"] = ref
    m = rec.get("mpo")
    if m is not None and "exception" in m:
        failures.append(f"mpo failed: {m['exception']}")
    elif m is not None:
        too_big = [(k, got, want) for k, (got, want) in enumerate(zip(m["bond_dims"], rec["expected_bonds"])) if got > want]
        if len(m["bond_dims"]) != len(rec["expected_bonds"]) or too_big:
            failures.append(f"mpo bond_dims {m['bond_dims']} exceed / mismatch expected {rec['expected_bonds']}")
        t = m["seconds"]
        if "seconds" in rec["tensorly"] and t > 0:
            rec["ratio_tensorly_over_mpo"] = rec["tensorly"]["seconds"] / t
        if "seconds" in rec["numpy"] and t > 0:
            rec["ratio_numpy_over_mpo"] = rec["numpy"]["seconds"] / t
        if exact:
            rec["mpo_error_limit"] = EXACT_TOL
            if not m["error"] <= EXACT_TOL:
                failures.append(f"exact mpo error {m['error']:.3e} > {EXACT_TOL:g}")
            target = SPEED_EXACT
        else:
            # a cap that cuts nothing leaves an exact MPO: round-off, judged by the exact target
            limit = None if ref is None else max(CAPPED_SLACK * ref, EXACT_TOL)
            rec["mpo_error_limit"] = limit
            if limit is not None and not m["error"] <= limit:
                failures.append(f"capped mpo error {m['error']:.6e} > max({CAPPED_SLACK} x reference "
                                f"{ref:.6e}, {EXACT_TOL:g})")
            if not rec["cap_cuts"]:
                target = SPEED_EXACT
            else:
                target = SPEED_CAPPED if rec["max_bond"] <= 256 else None
        rec["speed_target"] = target
        r = rec.get("ratio_tensorly_over_mpo")
        rec["speed_target_met"] = None if (target is None or r is None) else bool(r >= target)
    rec["failures"] = failures
    rec["ok"] = not failures


def print_table(records: List[dict]) -> None:
    """Print the summary table of all records."""
    headers = ["matrix", "shape (padded)", "factors in x out", "mode", "bonds",
               "t_mpo s", "t_tl s", "t_np s", "tl/mpo", "np/mpo", "target", "err_mpo", "err_tl", "err_np", "ok"]
    rows = []
    for r in records:
        shape = f"{r['shape'][0]}x{r['shape'][1]}"
        if r["padded_shape"] != r["shape"]:
            shape += f" ({r['padded_shape'][0]}x{r['padded_shape'][1]})"
        factors = ".".join(map(str, r["in_shape"])) + " x " + ".".join(map(str, r["out_shape"]))
        bonds = ",".join(map(str, r["expected_bonds"]))
        row = [r["matrix"], shape, factors, r["mode"], bonds]
        t_tl, t_np = r["tensorly"].get("seconds"), r["numpy"].get("seconds")
        ok = "yes" if r["ok"] else "FAIL"
        m = r.get("mpo", {})
        tgt = r.get("speed_target")
        met = r.get("speed_target_met")
        tgt_s = "-" if tgt is None else f">={tgt:g}x {'met' if met else 'MISSED'}"
        row += [
            _fmt_t(m.get("seconds")), _fmt_t(t_tl), _fmt_t(t_np),
            _fmt_r(r.get("ratio_tensorly_over_mpo")), _fmt_r(r.get("ratio_numpy_over_mpo")), tgt_s,
            _fmt_e(m.get("error")), _fmt_e(r["tensorly"].get("error")), _fmt_e(r["numpy"].get("error")), ok,
        ]
        rows.append(row)
    print(C.format_table(headers, rows))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time mpo.decompose against TensorLy tensor_train_matrix and a plain numpy "
        "Algorithm 1 on MiniLM-L6 weights and random matrices (float64).",
    )
    p.add_argument("--cases", nargs="+", choices=ALL_CASES, default=None,
                   help=f"matrices to run (default: all; --quick: {' '.join(QUICK_CASES)})")
    C.add_max_bond_option(p, None, "max_bond values for the capped mode (default: 256 100 32; --quick: 100)")
    p.add_argument("--no-exact", action="store_true", help="skip the exact (uncapped) mode")
    p.add_argument("-n", type=int, default=5, help="number of MPO cores (tensors) n, default 5")
    p.add_argument("--repeats-small", type=int, default=None,
                   help=f"timed repeats for matrices < {BIG_ELEMENTS} elements (default 5; --quick: 2)")
    p.add_argument("--repeats-big", type=int, default=None,
                   help="timed repeats for the larger matrices (default 3; --quick: 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls for the small matrices (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="set OMP/OPENBLAS/MKL_NUM_THREADS to this for all three methods (default: leave "
                   "the environment alone); 1 gives steadier numbers on a busy machine")
    p.add_argument("--seed", type=int, default=0, help="seed of the random matrices (default 0)")
    p.add_argument("--quick", action="store_true", help="reduced smoke run (small cases, cap 100, few repeats)")
    p.add_argument("--json", type=Path, default=C.RESULTS_DIR / "bench_decompose.json",
                   help="where to write the JSON results (default benchmarks/results/bench_decompose.json)")
    args = p.parse_args(argv)
    if args.cases is None:
        args.cases = QUICK_CASES if args.quick else ALL_CASES
    if args.max_bond is None:
        args.max_bond = [100] if args.quick else [256, 100, 32]
    if args.repeats_small is None:
        args.repeats_small = 2 if args.quick else 5
    if args.repeats_big is None:
        args.repeats_big = 1 if args.quick else 3
    if any(c < 1 for c in args.max_bond):
        p.error(f"--max-bond values must be >= 1, got {args.max_bond}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import mpo
    versions, machine_start = C.print_header(mpo)
    print("dtype: float64 everywhere (checkpoint weights are stored float32 and cast to float64)")
    print()

    cases = load_cases(args.cases, args.seed)
    mode_caps = ([] if args.no_exact else [None]) + list(args.max_bond)
    records: List[dict] = []
    for name, M in cases.items():
        records += benchmark_case(name, M, mode_caps, args, mpo)

    print()
    print_table(records)
    failures = [(r["matrix"], r["mode"], f) for r in records for f in r["failures"]]
    print()
    for label, pick in (("exact (incl. caps that cut nothing)", lambda r: not r["cap_cuts"]),
                        ("capped <= 256", lambda r: r["cap_cuts"] and r["max_bond"] <= 256)):
        sel = [r for r in records if pick(r) and r.get("speed_target_met") is not None]
        if sel:
            met = sum(r["speed_target_met"] for r in sel)
            worst = min(r["ratio_tensorly_over_mpo"] for r in sel)
            print(f"speed target {label}: met in {met}/{len(sel)} cases (lowest tensorly/mpo {worst:.1f}x)")
    if failures:
        print("CORRECTNESS FAILURES:")
        for matrix, mode, f in failures:
            print(f"  {matrix} {mode}: {f}")
    else:
        print("correctness checks: all passed")

    payload = {
        "benchmark": "bench_decompose",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": C.command_line(),
        "versions": versions,
        "machine_start": machine_start,
        "machine_end": C.machine_info(),
        "dtype": "float64 (checkpoint float32 cast to float64)",
        "n": args.n,
        "targets": {
            "exact_error_max": EXACT_TOL,
            "capped_error_max_over_reference": CAPPED_SLACK,
            "speed_exact_tensorly_over_mpo": SPEED_EXACT,
            "speed_capped_tensorly_over_mpo": SPEED_CAPPED,
        },
        "records": records,
        "ok": not failures,
    }
    C.write_json(args.json, payload)
    print(f"wrote {args.json}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
