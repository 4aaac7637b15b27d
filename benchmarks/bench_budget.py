"""Budget mode's cost against a uniform max_bond on MiniLM-L6, matrix by matrix (issue 14).

For every 2-D weight `mpo compress` decomposes (the 40 of the checkpoint that are not tiny), this
decomposes the float32 matrix as the CLI does with ``ratio=RHO`` and with ``max_bond=CAP`` and prints,
per matrix, the relative error and the CPU seconds of each (process CPU time, threads included: on a
shared machine a fairer measure than wall time), plus the number of candidates the budget search scored
exactly. The totals line is the figure issue 14 asks about (budget CPU / uniform CPU). A third column
pair decomposes with the uniform max_bond the search starts from (the largest that fits the budget):
a sweep of the budget's own size, so budget CPU over it is what the search itself costs, and the
errors show what it buys.

    python benchmarks/bench_budget.py                 # all matrices, ratio 0.3 against max_bond 64
    python benchmarks/bench_budget.py --quick         # three matrices, a smoke run
    python benchmarks/bench_budget.py --cli 7         # issue 14's figure: `mpo compress` of the checkpoint

``--cli N`` times the command issue 14 states its target for, ``mpo compress CHECKPOINT -o OUT --force``
with ``--ratio RHO`` and with ``--max-bond CAP``, N times each, alternating (so that a change of load hits
both alike), in child processes, and prints each run's CPU seconds (user + system, the children's
rusage) and wall seconds, their medians and the ratio of the medians (the target: at most 2).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _threads import apply_threads_flag  # noqa: E402  (benchmarks/ is not a package)

apply_threads_flag(sys.argv[1:], default="1", extra=("MPO_NUM_THREADS",))

import mpo  # noqa: E402
from mpo import io  # noqa: E402
from mpo._data import minilm_checkpoint  # noqa: E402
from mpo.io._hf import dense_reason  # noqa: E402

import _common as C  # noqa: E402  (benchmarks/ is not a package)

QUICK = ["embeddings.position_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
         "encoder.layer.0.intermediate.dense.weight"]


class _Counting(logging.Handler):
    """Budget mode's DEBUG records (the public ``mpo.budget`` logger): how many candidates the last
    search scored, and the uniform max_bond it started from (the largest that fits the budget)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last = 0
        self.start: list[int] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = int(getattr(record, "evaluations", 0))
        self.start = list(getattr(record, "start", [])) or None


def _compress_seconds(checkpoint: str, out: str, flags: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one ``mpo compress`` run in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mpo", "compress", checkpoint, "-o", out, "--force", *flags],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def cli_timing(runs: int, ratio: float, max_bond: int) -> dict:
    """``mpo compress`` of the MiniLM checkpoint, --ratio against --max-bond, ``runs`` alternating pairs."""
    checkpoint = str(minilm_checkpoint())
    commands = {"ratio": ["--ratio", str(ratio)], "max_bond": ["--max-bond", str(max_bond)]}
    times: dict[str, list[tuple[float, float]]] = {key: [] for key in commands}
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "out.safetensors")
        for run in range(runs):
            order = list(commands) if run % 2 == 0 else list(commands)[::-1]
            for key in order:
                times[key].append(_compress_seconds(checkpoint, out, commands[key]))
    table = []
    for run in range(runs):
        (rc, rw), (uc, uw) = times["ratio"][run], times["max_bond"][run]
        table.append([str(run + 1), f"{rc:.2f}", f"{uc:.2f}", f"{rc / uc:.2f}", f"{rw:.2f}", f"{uw:.2f}"])
    cpu = {key: statistics.median(t[0] for t in values) for key, values in times.items()}
    wall = {key: statistics.median(t[1] for t in values) for key, values in times.items()}
    table.append(["median", f"{cpu['ratio']:.2f}", f"{cpu['max_bond']:.2f}", f"{cpu['ratio'] / cpu['max_bond']:.2f}",
                  f"{wall['ratio']:.2f}", f"{wall['max_bond']:.2f}"])
    print(C.format_table(["run", f"--ratio {ratio} cpu s", f"--max-bond {max_bond} cpu s", "cpu ratio",
                          "wall s", "wall s"], table))
    print(f"mpo compress: --ratio {ratio} / --max-bond {max_bond}: median CPU {cpu['ratio'] / cpu['max_bond']:.2f}x, "
          f"median wall {wall['ratio'] / wall['max_bond']:.2f}x over {runs} alternating pairs (target: at most 2x)")
    return {"runs": {key: [list(t) for t in values] for key, values in times.items()},
            "median_cpu": cpu, "median_wall": wall, "cpu_ratio": cpu["ratio"] / cpu["max_bond"],
            "wall_ratio": wall["ratio"] / wall["max_bond"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.3, help="budget mode's ratio (default 0.3)")
    p.add_argument("--max-bond", type=int, default=64, help="the uniform max_bond compared (default 64)")
    p.add_argument("--quick", action="store_true", help="three small matrices only")
    p.add_argument("--cli", type=int, default=0, metavar="N",
                   help="also time `mpo compress` of the checkpoint, --ratio against --max-bond, N alternating pairs")
    p.add_argument("--threads", type=int, default=1, help="BLAS and mpo threads (default 1)")
    p.add_argument("--out", type=Path, default=C.RESULTS_DIR / "bench_budget.json")
    args = p.parse_args()
    versions, machine = C.print_header(mpo)
    tensors = io.read_tensors(str(minilm_checkpoint()))
    names = [k for k, t in tensors.items()
             if t.ndim == 2 and t.dtype.kind == "f" and dense_reason(t.shape, None, False) is None]
    if args.quick:
        names = [k for k in QUICK if k in names]
    counting = _Counting()
    logger = logging.getLogger("mpo.budget")
    level = logger.level
    logger.addHandler(counting)
    logger.setLevel(logging.DEBUG)
    rows, table = [], []
    try:
        for name in names:
            M = tensors[name]
            counting.last, counting.start = 0, None  # a budget the full bonds fit runs no search, logs nothing
            start = time.process_time()
            budget = mpo.decompose(M, ratio=args.ratio)
            budget_cpu = time.process_time() - start
            # The uniform max_bond the search starts from: a sweep of the budget's own size, so budget
            # CPU over this is what the search itself costs.
            same_caps = counting.start or list(budget.bond_dims)
            start = time.process_time()
            same = mpo.decompose(M, max_bond=same_caps)
            same_cpu = time.process_time() - start
            start = time.process_time()
            uniform = mpo.decompose(M, max_bond=args.max_bond)
            uniform_cpu = time.process_time() - start
            row = {
                "name": name, "shape": list(M.shape), "bonds": list(budget.bond_dims),
                "error": budget.relative_error(), "cpu": budget_cpu, "scored": counting.last,
                "same_size_max_bond": same_caps, "same_size_error": same.relative_error(), "same_size_cpu": same_cpu,
                "uniform_error": uniform.relative_error(), "uniform_cpu": uniform_cpu,
            }
            rows.append(row)
            table.append([name, "x".join(map(str, M.shape)), f"{row['error']:.6f}", f"{budget_cpu:.3f}",
                          str(counting.last), f"{row['same_size_error']:.6f}", f"{same_cpu:.3f}",
                          f"{row['uniform_error']:.6f}", f"{uniform_cpu:.3f}"])
    finally:
        logger.removeHandler(counting)
        logger.setLevel(level)
    print(C.format_table(["matrix", "shape", f"ratio {args.ratio} error", "cpu s", "scored",
                          "same-size uniform error", "cpu s", f"max_bond {args.max_bond} error", "cpu s"], table))
    total, total_uniform = sum(r["cpu"] for r in rows), sum(r["uniform_cpu"] for r in rows)
    total_same = sum(r["same_size_cpu"] for r in rows)
    lower = sum(r["error"] < r["same_size_error"] for r in rows)
    higher = sum(r["error"] > r["same_size_error"] for r in rows)
    print(f"total cpu: ratio {args.ratio} {total:.2f} s, max_bond {args.max_bond} {total_uniform:.2f} s, "
          f"{total / total_uniform:.2f}x")
    print(f"against the uniform max_bond of the same size: {total_same:.2f} s, {total / total_same:.2f}x; "
          f"budget error lower on {lower}, higher on {higher} of {len(rows)} matrices")
    cli = cli_timing(args.cli, args.ratio, args.max_bond) if args.cli > 0 else None
    C.write_json(args.out, {"benchmark": "bench_budget", "quick": args.quick, "ratio": args.ratio,
                            "max_bond": args.max_bond, "versions": versions, "machine": machine,
                            "matrices": rows, "total_cpu": total, "total_uniform_cpu": total_uniform,
                            "total_same_size_cpu": total_same,
                            "cli": cli})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
