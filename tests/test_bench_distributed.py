"""benchmarks/bench_distributed.py --quick runs end to end: the synthetic Llama folder is written, compressed
serially and on 1 and 2 Dask workers (each output byte-identical to the serial one, or the run fails), and
the figures and the labelled projection are written as JSON."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("ml_dtypes")
pytest.importorskip("distributed")

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_distributed.py")


def test_quick_run(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, BENCH, "--quick", "--json", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PROJECTION (not measured" in proc.stdout and "2 workers over 1" in proc.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"] == "bench_distributed" and data["quick"] is True
    assert data["machine"]["cpu_count"] == os.cpu_count()
    # 2 layers of 7 matrices, each run compressing all of them into the same bytes as the serial run.
    assert data["checkpoint"]["decoder_matrices"] == 14
    runs = data["runs"]
    assert set(runs) == {"serial", "1 worker", "2 workers"}
    assert all(r["identical_to_serial"] and r["matrices"] == 14 for r in runs.values())
    assert len(runs["2 workers"]["peak_rss_mb"]) == 2 and len(runs["1 worker"]["peak_rss_mb"]) == 1
    for r in runs.values():  # the task phase and the assembly split the wall time
        assert 0 < r["tasks_s"] <= r["wall_s"] and r["assembly_s"] == pytest.approx(r["wall_s"] - r["tasks_s"])
    # The target's speedup is the task phase's; the end-to-end one is reported beside it.
    assert data["speedup_2_over_1"] == pytest.approx(runs["2 workers"]["task_matrices_per_s"] / runs["1 worker"]["task_matrices_per_s"])
    assert data["speedup_2_over_1_end_to_end"] == pytest.approx(runs["2 workers"]["matrices_per_s"] / runs["1 worker"]["matrices_per_s"])
    # The projection: 8B has 32 x 7 + 2 = 226 matrices, 70B 80 x 7 + 2 = 562; one worker is the sum of
    # the per-shape times x the overhead, 8 workers divide that by 8 x the efficiency, and the assembly
    # (seconds per GB x the bf16 embedding and head, 2 x 2004 x 256 x 2 bytes) is added to each.
    seconds = data["shape_seconds"]
    h, f, kv = 256, 896, 64
    layer = [(h, h), (kv, h), (kv, h), (h, h), (f, h), (f, h), (h, f)]
    tasks = (32 * sum(seconds[f"{r}x{c}"] for r, c in layer) + 2 * seconds[f"2004x{h}"]) * data["overhead"]
    assembly = data["assembly_s_per_gb"] * 2 * 2 * 2004 * h / 1e9
    hours = data["projection_hours"]["llama-3-8b"]
    assert hours["1"] == pytest.approx((tasks + assembly) / 3600)
    assert hours["8"] == pytest.approx((tasks / (8 * data["efficiency"]) + assembly) / 3600)
    assert set(data["projection_hours"]["llama-3-70b"]) == {"1", "8", "64"}
    assert "projection" in data["projection_note"]
