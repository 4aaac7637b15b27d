"""bench_apply and bench_torch in --quick mode write JSON of the documented shape (timings not judged).

They run as the user runs them, as scripts in a child process, on the smallest grids the flags allow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, out: Path, *flags: str) -> dict:
    # The machine's OPENBLAS_CORETYPE (where set) stays: tests never change it (the env notes).
    env = {**os.environ, "MPO_BENCH_KEEP_OPENBLAS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--out", str(out), *flags],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "blas:" in done.stdout and "cpu:" in done.stdout and "OPENBLAS_*:" in done.stdout
    return json.loads(out.read_text())


def check_machine(machine: dict) -> None:
    assert {"cpu", "blas", "thread_env", "mpo_threads", "openblas_env", "openblas_unset_from_machine"} <= set(machine)
    assert isinstance(machine["cpu"]["vector_extensions"], list) and machine["cpu"]["model"]
    assert isinstance(machine["blas"], list)


def test_bench_apply_quick_json(tmp_path):
    pytest.importorskip("opt_einsum")
    data = run("bench_apply.py", tmp_path / "apply.json", "--threads", "1", "--batches", "1", "32", "--no-rows")
    assert data["benchmark"] == "bench_apply" and data["quick"] is True
    check_machine(data["machine"])
    assert [t["name"] for t in data["targets"]] == ["einsum>=1.5x", "einsum>=1x", "rebuild>=0.95x"]
    (child,) = data["runs"]
    assert child["threads"] == 1
    check_machine(child["machine"])
    assert child["machine"]["thread_env"]["OPENBLAS_NUM_THREADS"] == "1"
    cells = [r for r in child["results"] if r["kind"] == "grid"]
    assert sorted((r["dtype"], r["batch"]) for r in cells) == [
        ("float32", 1), ("float32", 32), ("float64", 1), ("float64", 32)]
    for r in cells:
        assert r["shape"] == [3072, 768] and max(r["bond_dims"]) == 48
        assert set(r["ratios"]) == {"dense", "einsum", "rebuild"}
        assert set(r["targets"]) == {"einsum>=1.5x", "einsum>=1x", "rebuild>=0.95x"}
        assert all(isinstance(v, bool) for v in r["targets"].values())
        assert r["route"] in ("kernel", "blas")
    assert data["summary"]["cells"] == 4


def test_bench_torch_quick_json(tmp_path):
    pytest.importorskip("torch")
    data = run("bench_torch.py", tmp_path / "torch.json", "--tokens", "64", "--repeats", "1", "--min-seconds", "0",
               "--max-bond", "4")
    assert data["benchmark"] == "bench_torch"
    check_machine(data["machine"])
    assert data["results"]
    kinds = {(r["dtype"], r["autograd"]) for r in data["results"]}
    assert ("float32", False) in kinds and ("float32", True) in kinds
    for r in data["results"]:
        assert set(r["median_s"]) == {"linear", "auto", "contract", "rebuild"}
        assert r["auto_picks"] in ("contract", "rebuild")
        assert r["rounds"] == 4  # --repeats 1 rounds up to one whole cycle of the balanced orders
        # Auto against its modes is timed again head to head with the four-way timing's faster mode, and
        # the other one too where it came within the recorded factor (10 %), in 3x --repeats rounds
        # (whole cycles: 2 contenders have 2 orders, 3 have 6).
        assert data["close"] == 1.10
        t = r["median_s"]
        faster = min(("contract", "rebuild"), key=lambda mode: t[mode])
        timed = {mode for mode in ("contract", "rebuild") if t[mode] <= data["close"] * t[faster]}
        modes = r["median_s_modes"]
        assert set(modes) == {"auto", *timed}
        assert r["rounds_modes"] == (4 if len(modes) == 2 else 6)
        assert set(r["checks"]) == {"auto_vs_modes", "auto_vs_linear"}
        assert r["checks"]["auto_vs_modes"] == (min(modes[m] for m in timed) / modes["auto"] >= 0.97)
        assert (r["checks"]["auto_vs_linear"] is None) == (r["flops_ratio_contract"] > data["flop_share"])


def test_machine_record_and_its_header():
    sys.path.insert(0, str(BENCH))
    try:
        import _common as C
    finally:
        sys.path.remove(str(BENCH))
    info = C.machine_info()
    check_machine(info)
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo to compare with")
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    assert info["cpu"]["vector_extensions"] == [f for f in C.VECTOR_FLAGS if f in flags]
    assert any(lib.get("user_api") == "blas" for lib in info["blas"])  # NumPy's, loaded by _common
    lines = C.format_machine(info)
    assert any(line.startswith("blas: ") and "kernel" in line for line in lines)
    assert not any(line.startswith("note: ") for line in lines)
    # A child run without the machine's OPENBLAS_CORETYPE says so in its header.
    info["openblas_unset_from_machine"] = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "524288"}
    note = [line for line in C.format_machine(info) if line.startswith("note: ")]
    assert note and "OPENBLAS_CORETYPE=Haswell" in note[0] and "unset" in note[0]


def test_bench_budget_quick_json(tmp_path):
    data = run("bench_budget.py", tmp_path / "budget.json", "--cli", "1")
    assert data["benchmark"] == "bench_budget" and data["quick"] is True
    # --cli: one alternating pair of `mpo compress` runs, each timed; the ratio is of the medians.
    cli = data["cli"]
    assert [len(cli["runs"][key]) for key in ("ratio", "max_bond")] == [1, 1]
    assert all(cpu > 0 and wall > 0 for key in ("ratio", "max_bond") for cpu, wall in cli["runs"][key])
    assert cli["cpu_ratio"] == cli["median_cpu"]["ratio"] / cli["median_cpu"]["max_bond"]
    check_machine(data["machine"])
    assert len(data["matrices"]) == 3
    for row in data["matrices"]:
        # Budget mode fits its ratio and the CLI's errors are those of the sweeps (in [0, 1)).
        assert 0 < row["error"] < 1 and 0 < row["uniform_error"] < 1
        assert 1 <= row["scored"] <= 16 and row["cpu"] > 0
        # The uniform max_bond the search started from (logged) has the budget's size, and the search
        # never ends above its error (budget mode's promise).
        assert len(row["same_size_max_bond"]) == len(row["bonds"]) and min(row["same_size_max_bond"]) >= 1
        assert row["error"] <= row["same_size_error"] + 1e-6 and row["same_size_cpu"] > 0
    assert abs(data["total_cpu"] - sum(r["cpu"] for r in data["matrices"])) < 1e-9
    assert abs(data["total_same_size_cpu"] - sum(r["same_size_cpu"] for r in data["matrices"])) < 1e-9


def test_caps_is_a_deprecated_name_of_max_bond():
    """Benchmarks take ``--max-bond``; the old ``--caps`` stores the same values and warns."""
    sys.path.insert(0, str(BENCH))
    try:
        import _common as C
    finally:
        sys.path.remove(str(BENCH))
    import argparse

    parser = argparse.ArgumentParser(prog="bench")
    C.add_max_bond_option(parser, [7], "max_bond values")
    assert parser.parse_args([]).max_bond == [7]
    assert parser.parse_args(["--max-bond", "4", "16"]).max_bond == [4, 16]
    with pytest.warns(FutureWarning, match=r"--caps is deprecated: use --max-bond"):
        assert parser.parse_args(["--caps", "4", "16"]).max_bond == [4, 16]
    assert "--caps" not in parser.format_help()


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_balanced_orders_put_every_callable_after_every_other_equally_often(n):
    sys.path.insert(0, str(BENCH))
    try:
        import _common as C
    finally:
        sys.path.remove(str(BENCH))
    orders = C.balanced_orders(n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    pairs = [(o[k], o[k + 1]) for o in orders for k in range(n - 1)]
    each = 1 if n % 2 == 0 else 2
    assert sorted(pairs) == sorted((a, b) for a in range(n) for b in range(n) if a != b for _ in range(each))


def test_interleaved_timing_follows_the_balanced_orders_and_drops_a_failing_callable():
    """After the warm-up, each callable runs right after every other one equally often (a fixed or a
    rotated order keeps who follows whom: bench_torch's "auto" ran after nn.Linear in 3 of 5 rounds)."""
    sys.path.insert(0, str(BENCH))
    try:
        import _common as C
    finally:
        sys.path.remove(str(BENCH))
    labels = "abcd"

    def record(calls: list, fail: str = ""):
        def make(label: str):
            def fn():
                calls.append(label)
                if label == fail and calls.count(label) == 3:
                    raise ValueError("third call fails")
                return label
            return fn
        return {k: make(k) for k in labels}

    calls: list = []
    out = C.time_interleaved(record(calls), repeats=4, warmup=1)
    rounds = [calls[k : k + 4] for k in range(0, len(calls), 4)]
    assert rounds[0] == list(labels)  # the warm-up round in the given order
    pairs = sorted((r[k], r[k + 1]) for r in rounds[1:] for k in range(3))
    assert pairs == sorted((a, b) for a in labels for b in labels if a != b)
    assert [len(out[k][1]) for k in labels] == [4] * 4 and out["a"][2] == "a"
    # A callable that raises is dropped from later rounds; its entry is the exception.
    failing: list = []
    out = C.time_interleaved(record(failing, fail="d"), repeats=8, warmup=1)
    assert isinstance(out["d"], ValueError) and failing.count("d") == 3
    assert [len(out[k][1]) for k in "abc"] == [8] * 3


def test_bench_apply_race_runs_whole_cycles_of_the_balanced_orders():
    """bench_apply's race: after the warm-up call of each, whole cycles of the balanced orders, so that
    no contender always follows the same one (mpo used to run right after the rebuild peer's GEMM)."""
    sys.path.insert(0, str(BENCH))
    try:
        import bench_apply
    finally:
        sys.path.remove(str(BENCH))
    labels = "abcd"
    calls: list = []

    def make(label: str):
        def fn():
            calls.append(label)
            return label
        return fn

    medians, minima, outs = bench_apply.race([make(k) for k in labels], min_time=0.0, min_rounds=5, max_rounds=5)
    assert outs == list(labels) and len(medians) == len(minima) == 4
    assert calls[:4] == list(labels)  # the warm-up
    timed = calls[4:]
    assert len(timed) == 8 * 4  # 5 rounds asked for, rounded up to two whole cycles of 4 orders
    rounds = [timed[k : k + 4] for k in range(0, len(timed), 4)]
    pairs = sorted((r[k], r[k + 1]) for r in rounds for k in range(3))
    assert pairs == sorted((a, b) for a in labels for b in labels if a != b for _ in range(2))
