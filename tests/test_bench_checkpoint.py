"""benchmarks/bench_checkpoint.py --quick runs end to end: the synthetic sharded bf16 folder is written,
compressed by the mpo command in a child process, checked, and the peak-RSS table printed."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("ml_dtypes")

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_checkpoint.py")


def test_quick_run(tmp_path):
    out = tmp_path / "figures.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, BENCH, "--quick", "--json", str(out)], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "peak RSS above baseline" in proc.stdout and "largest tensor as float32" in proc.stdout
    figures = json.loads(out.read_text())
    assert figures["tensors"] == 2 * 24 + 1 and figures["shards"] > 1
    # Two children's own peaks: the compress run imports what the baseline does, then reads and writes
    # tensors (in --quick mode too small to lift the peak above the imports' transients).
    assert figures["peak_rss"] >= figures["baseline_rss"] > 0
    assert figures["largest_f32"] == 2 * 128 * 3 * 128 * 4
