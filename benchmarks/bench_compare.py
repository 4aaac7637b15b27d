#!/usr/bin/env python
"""MPO against SVD, CP and Tucker on MiniLM-L6, and ``mpo compress`` against TensorLy (issue 4).

Quality: for each MiniLM matrix type (word embedding 30522x384, attention query 384x384, FFN in
1536x384, FFN out 384x1536) and each target rho, the relative Frobenius error (measured on the rebuilt
matrix) and seconds of MPO with uniform caps, MPO in budget mode, truncated SVD, CP and Tucker of the
same n-way tensor (``mpo.baselines``), plus uniform-cap MPOs with n = 3 and 7 (MPOP Fig. 2b). CP
(TensorLy ALS, 100 sweeps, random start) costs O(R^2) per sweep: ranks above --cp-max-rank are not run
and are reported as such.

Speed: the 37 weight matrices ``mpo compress`` takes by default in the demo (word embedding and the
36 layer matrices), float32 as stored, decomposed with one bond cap by ``mpo.decompose`` and by
TensorLy's ``tensor_train_matrix`` with the same ranks, interleaved, medians over --repeats; plus the
whole ``mpo compress`` command in this process (read, decompose, measure errors, write); and budget
mode (``decompose(ratio=--budget-ratio)``) against the uniform cap it starts from, by mpo and by
TensorLy. Everything runs single-threaded (OMP/OPENBLAS/MKL/MPO_NUM_THREADS = 1, set before NumPy
loads).

Correctness checks (a failure makes the exit status 1): every achieved ratio <= its target; the SVD
error equals the tail of the spectrum; MPO errors stay within their bounds; TensorLy's TT-matrix error
agrees with mpo's uniform-cap error (both are the sequential truncated SVD).

    python benchmarks/bench_compare.py [--quick] [--json PATH] [--plot PATH]
"""

from __future__ import annotations

import os

# Single-threaded contenders: set before NumPy (and its BLAS) and mpo's core are loaded.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MPO_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime as _dt  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (benchmarks/ is not a package)

ROOT = Path(__file__).resolve().parent.parent
RATIOS = (0.5, 0.2, 0.1, 0.05)
#: The matrices `mpo demo` compresses: the word embedding and every weight of the 6 layers.
COMPRESS_INCLUDE = r"word_embeddings|encoder\.layer\.\d+\..*\.weight$"


def quality(args, mpo) -> tuple[list[dict], list[str]]:
    """Every method at every ratio on one matrix per type, with the definition checks."""
    from mpo import cli as _cli

    names = ["attn_query_l0", "ffn_in_l0", "ffn_out_l0"] + ([] if args.quick else ["word_embedding"])
    matrices, _ = C.load_minilm_matrices(names, verbose=False)
    rows, failures = [], []
    for name, M in matrices.items():
        found = _cli.run_compare({name: M}, [name], args.ratios, cp_max_rank=args.cp_max_rank)
        spectrum = np.linalg.svd(M, compute_uv=False)
        for r in found:
            r["type"] = name
            if r.get("error") is None:
                continue
            if r["ratio"] > r["target"]:
                failures.append(f"{name} {r['method']} n={r['n']}: ratio {r['ratio']} > target {r['target']}")
            if r["method"] == "svd":
                rank = int(r["detail"].strip("bonds (,)"))
                tail = float(np.sqrt(np.sum(spectrum[rank:] ** 2)) / np.linalg.norm(M))
                if abs(tail - r["error"]) > 1e-9:
                    failures.append(f"{name} svd: error {r['error']} != spectrum tail {tail}")
        for rho in args.ratios:  # MPO errors within their bounds (re-derived: the table keeps only errors)
            m = mpo.decompose(M, n=5, ratio=rho)
            err = C.relative_error(M, m.to_dense())
            if err > m.relative_error_bound() * (1 + 1e-9) + 1e-12:
                failures.append(f"{name} budget rho={rho}: error {err} > bound {m.relative_error_bound()}")
        rows += found
    return rows, failures


def speed(args, mpo) -> tuple[dict, list[str]]:
    """mpo.decompose vs TensorLy tensor_train_matrix on the 37 matrices, same caps, interleaved."""
    import re

    import tensorly as tl
    from safetensors.numpy import load_file
    from tensorly.decomposition import tensor_train_matrix

    from mpo import cli as _cli
    from mpo._data import minilm_checkpoint

    tl.set_backend("numpy")
    checkpoint = minilm_checkpoint()
    tensors = load_file(str(checkpoint))
    pattern = re.compile(COMPRESS_INCLUDE)
    names = [k for k, v in tensors.items() if v.ndim == 2 and v.dtype.kind == "f" and pattern.search(k)]
    from mpo.baselines import uniform_cap

    prepared, budget_caps = {}, {}
    for name in names:
        M = tensors[name]  # float32 as stored, for both contenders
        plan = mpo.plan_shape(*M.shape, 5)
        padded = C.pad_to(M, plan.padded_shape)
        bonds = C.capped_bonds(C.full_bonds(plan.in_shape, plan.out_shape), args.cap)
        prepared[name] = (M, padded.reshape(tuple(plan.in_shape) + tuple(plan.out_shape)), bonds)
        # The uniform cap budget mode starts its search from (mpo.baselines' mpo-uniform at this ratio).
        budget_caps[name] = uniform_cap(plan.in_shape, plan.out_shape, *M.shape, args.budget_ratio)

    def run_mpo():
        return {name: mpo.decompose(M, n=5, max_bond=args.cap) for name, (M, _, _) in prepared.items()}

    def run_tensorly():
        # tensor_train mutates its rank list: a fresh list per call
        return {name: tensor_train_matrix(T, [1, *bonds, 1]) for name, (_, T, bonds) in prepared.items()}

    # Budget mode (`mpo compress --ratio`) searches the sweep's per-bond caps by true error, starting
    # from the uniform cap that fits the budget: its cost is set against that uniform-cap sweep (mpo's
    # and TensorLy's tensor_train_matrix with the same ranks), the work it does at least once.
    def run_mpo_budget():
        return {name: mpo.decompose(M, n=5, ratio=args.budget_ratio) for name, (M, _, _) in prepared.items()}

    def run_mpo_uniform_at_budget():
        return {name: mpo.decompose(M, n=5, max_bond=budget_caps[name]) for name, (M, _, _) in prepared.items()}

    def run_tensorly_at_budget():
        return {name: tensor_train_matrix(T, [1, *C.capped_bonds(C.full_bonds(T.shape[:5], T.shape[5:]),
                                                                  budget_caps[name]), 1])
                for name, (_, T, _) in prepared.items()}

    out_dir = Path(tempfile.mkdtemp(prefix="bench-compare-"))

    def run_command():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            status = _cli.main(["compress", str(checkpoint), "-o", str(out_dir / "c.safetensors"),
                                "--max-bond", str(args.cap), "--include", COMPRESS_INCLUDE])
        if status != 0:
            raise RuntimeError(f"mpo compress exited with {status}")

    timed = C.time_interleaved({"mpo": run_mpo, "tensorly": run_tensorly, "mpo compress": run_command,
                                "mpo budget": run_mpo_budget, "mpo uniform at budget": run_mpo_uniform_at_budget,
                                "tensorly at budget": run_tensorly_at_budget},
                               args.repeats, warmup=0)
    failures = []
    for label, value in timed.items():
        if isinstance(value, BaseException):
            failures.append(f"speed {label}: {value!r}")
    if failures:
        return {}, failures
    mpos, ttms = timed["mpo"][2], timed["tensorly"][2]
    per_matrix = []
    for name, (M, T, bonds) in prepared.items():
        t0 = time.perf_counter()
        m = mpo.decompose(M, n=5, max_bond=args.cap)
        t_mpo = time.perf_counter() - t0
        t0 = time.perf_counter()
        tensor_train_matrix(T, [1, *bonds, 1])
        t_tl = time.perf_counter() - t0
        err_mpo = C.relative_error(M, m.to_dense())
        dense = tl.to_numpy(tl.tt_matrix_to_tensor(ttms[name])).reshape(m.padded_shape)
        err_tl = C.relative_error(M, dense[: M.shape[0], : M.shape[1]])
        # mpo may take a checked randomized route for a bond capped far below full (svd="auto"):
        # within 1 % of the exact sequential truncation, as bench_decompose holds it.
        if err_mpo > 1.01 * err_tl + 1e-6:
            failures.append(f"speed {name}: mpo error {err_mpo} > 1.01 x tensorly's {err_tl}")
        per_matrix.append({"matrix": name, "shape": list(M.shape), "bonds": list(mpos[name].bond_dims),
                           "mpo_seconds": t_mpo, "tensorly_seconds": t_tl, "error_mpo": err_mpo,
                           "error_tensorly": err_tl})
    for f in out_dir.iterdir():
        f.unlink()
    out_dir.rmdir()
    result = {
        "matrices": len(prepared),
        "cap": args.cap,
        "repeats": args.repeats,
        "dtype": "float32 (as stored)",
        "median_seconds": {k: v[0] for k, v in timed.items()},
        "all_seconds": {k: v[1] for k, v in timed.items()},
        "ratio_tensorly_over_mpo": timed["tensorly"][0] / timed["mpo"][0],
        "ratio_tensorly_over_mpo_compress": timed["tensorly"][0] / timed["mpo compress"][0],
        "budget_ratio": args.budget_ratio,
        "ratio_mpo_budget_over_mpo_uniform": timed["mpo budget"][0] / timed["mpo uniform at budget"][0],
        "ratio_tensorly_at_budget_over_mpo_budget": timed["tensorly at budget"][0] / timed["mpo budget"][0],
        "per_matrix_single_run": per_matrix,
    }
    return result, failures


def print_quality(rows: list[dict]) -> None:
    """The full table, then one Markdown table per matrix: error (seconds) per method and ratio."""
    from mpo import cli as _cli

    print(_cli.compare_table(rows))
    for matrix in dict.fromkeys(r["matrix"] for r in rows):
        mine = [r for r in rows if r["matrix"] == matrix]
        ratios = list(dict.fromkeys(r["target"] for r in mine))
        shape = "x".join(map(str, mine[0]["shape"]))
        print(f"\n{matrix} ({shape}): relative error (seconds) at target rho")
        print("| method | " + " | ".join(f"rho {t}" for t in ratios) + " |")
        print("|---" * (len(ratios) + 1) + "|")
        for method, n in dict.fromkeys((r["method"], r["n"]) for r in mine):
            cells = []
            for t in ratios:
                r = next(x for x in mine if (x["method"], x["n"], x["target"]) == (method, n, t))
                cells.append("not run" if r.get("error") is None else f"{r['error']:.3f} ({r['seconds']:.2g} s)")
            label = method if method == "svd" else f"{method} n={n}"
            print(f"| {label} | " + " | ".join(cells) + " |")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: no word embedding, ratios 0.2 0.05, 1 repeat")
    p.add_argument("--ratios", type=float, nargs="+", default=None, help="target ratios (default 0.5 0.2 0.1 0.05)")
    p.add_argument("--cp-max-rank", type=int, default=400, help="skip CP above this rank (default 400)")
    p.add_argument("--cap", type=int, default=64, help="bond cap of the speed comparison (default 64)")
    p.add_argument("--budget-ratio", type=float, default=0.2, help="ratio of the budget-mode timing (default 0.2)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats of the speed comparison (default 3)")
    p.add_argument("--json", type=Path, default=C.RESULTS_DIR / "bench_compare.json")
    p.add_argument("--speed-only", action="store_true",
                   help="only the speed comparison (no error table, no figure); JSON 'quality' is empty")
    p.add_argument("--from-json", type=Path, help="only re-print the tables and re-draw the figure of this JSON")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "compare_minilm.png")
    args = p.parse_args(argv)
    args.ratios = args.ratios or ([0.2, 0.05] if args.quick else list(RATIOS))
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import mpo
    from mpo import cli as _cli

    if args.from_json:  # re-render the tables and the figure of a finished run, measuring nothing
        import json

        rows = json.loads(args.from_json.read_text())["quality"]
        print_quality(rows)
        _cli.plot_compare(rows, str(args.plot))
        print(f"wrote {args.plot}")
        return 0

    versions, machine_start = C.print_header(mpo)

    rows, failures = ([], []) if args.speed_only else quality(args, mpo)
    if not args.speed_only:
        print()
        print_quality(rows)
        _cli.plot_compare(rows, str(args.plot))
        print(f"wrote {args.plot}")

    timing, speed_failures = speed(args, mpo)
    failures += speed_failures
    if timing:
        med = timing["median_seconds"]
        print(f"\nspeed, {timing['matrices']} matrices, max_bond {args.cap}, float32, 1 thread, medians of "
              f"{args.repeats}: mpo.decompose {med['mpo']:.3f} s, tensorly tensor_train_matrix "
              f"{med['tensorly']:.3f} s (tensorly/mpo {timing['ratio_tensorly_over_mpo']:.1f}x), "
              f"whole mpo compress command {med['mpo compress']:.3f} s "
              f"(tensorly/command {timing['ratio_tensorly_over_mpo_compress']:.1f}x)")
        print(f"budget mode (ratio {args.budget_ratio}, caps searched by true error): mpo {med['mpo budget']:.3f} s, "
              f"its starting uniform cap {med['mpo uniform at budget']:.3f} s "
              f"(budget/uniform {timing['ratio_mpo_budget_over_mpo_uniform']:.2f}x), tensorly tensor_train_matrix "
              f"at that cap {med['tensorly at budget']:.3f} s "
              f"(tensorly/budget {timing['ratio_tensorly_at_budget_over_mpo_budget']:.1f}x)")
        top = sorted(timing["per_matrix_single_run"], key=lambda r: -r["tensorly_seconds"])[:4]
        for r in top:
            print(f"  {r['matrix']} {r['shape']}: mpo {r['mpo_seconds']:.3f} s, tensorly {r['tensorly_seconds']:.3f} s")
    print("\ncorrectness checks: " + ("all passed" if not failures else "FAILED"))
    for f in failures:
        print("  " + f)
    C.write_json(args.json, {
        "benchmark": "bench_compare",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": C.command_line(),
        "versions": versions,
        "machine_start": machine_start,
        "machine_end": C.machine_info(),
        "ratios": args.ratios,
        "cp_max_rank": args.cp_max_rank,
        "quality": rows,
        "speed": timing,
        "ok": not failures,
    })
    print(f"wrote {args.json}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
