"""Compressing a checkpoint on Dask workers (issue 19): equal to the serial run byte for byte, a worker
killed mid-run changes nothing, an interrupted run (an exception, or SIGKILL of the whole job) resumes
to the same output, a progress file of another run is refused, and --workers without dask says what to
install. One LocalCluster of two processes serves the whole module."""

import contextlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from mpo import cli
from mpo.io import _dask, _hf
from mpo.io._workfolder import PROGRESS, WORK

pytest.importorskip("ml_dtypes")
pytest.importorskip("distributed")

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")
PYTHONPATH = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(_hf.__file__))))  # python/
# A tiny Llama-3: 2 layers of 7 matrices (FFN 160; K/V 8 x 64, tiny, stay dense), embedding and lm_head 96 x 64.
SPEC = dict(hidden=64, ffn=160, kv=8, vocab=96, layers=2)
SETTINGS = dict(max_bond=6, n=3)


def _writer():
    sys.path.insert(0, BENCH)
    try:
        import bench_distributed
    finally:
        sys.path.remove(BENCH)
    return bench_distributed.write_llama_folder


@pytest.fixture(scope="module")
def client():
    with _dask.local_client(2) as c:
        yield c


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama") / "tiny-llama"
    sizes = _writer()(str(folder), SPEC, SPEC["layers"], shard_bytes=20_000)
    assert sizes["shards"] > 2  # several shards: tasks open different files
    return folder


@pytest.fixture(scope="module")
def serial(source, tmp_path_factory):
    # In this process, on any kernel thread count: these matrices are far below the size at which mpo's
    # products fork threads (whose count changes the order of the sums, and so the last bits).
    out = tmp_path_factory.mktemp("serial") / "out"
    result = _hf.compress_checkpoint(source, out, **SETTINGS)
    return out, result


def _start_environment() -> dict[str, str]:
    # What the process was started with (glibc reads its MALLOC_* variables then), not os.environ now.
    with open("/proc/self/environ", "rb") as f:
        pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode() for k, v in pairs}


def test_local_workers_start_with_the_allocator_settings_and_report_their_own_peak(client):
    for env in client.run(_start_environment).values():
        for name, value in _dask.KEEP_FREED_MEMORY.items():
            assert env.get(name) == value, (name, env.get(name))
    # A worker's peak is its own: this process touches 400 MB more than any worker ever holds, and
    # Linux would have handed that peak to a spawned worker through getrusage's ru_maxrss.
    big = np.ones(50_000_000)
    mine = _hf.peak_rss_kb()
    assert mine is not None and mine > 400_000
    del big
    before = {name: os.environ.get(name) for name in (*_dask.KEEP_FREED_MEMORY, "OMP_NUM_THREADS")}
    with _dask.local_client(1) as fresh:
        (peak,) = fresh.run(_hf.peak_rss_kb).values()
    assert 0 < peak < mine - 300_000
    # The nanny wrote its spawn environment into this process's os.environ; closing put it back.
    assert {name: os.environ.get(name) for name in before} == before


def files(folder) -> dict[str, bytes]:
    """Every file of an output folder, by name (the work folder must be gone)."""
    names = sorted(os.listdir(folder))
    assert WORK not in names
    return {name: (folder / name).read_bytes() for name in names}


def test_the_synthetic_checkpoint_has_the_llama_layout(source):
    config = json.loads((source / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 2
    with _hf.open_checkpoint(source) as ckpt:
        shapes = {name: ckpt.info(name).shape for name in ckpt.names}
        assert {ckpt.info(name).dtype for name in ckpt.names} == {"BF16"}
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (64, 64)
    assert shapes["model.layers.1.self_attn.k_proj.weight"] == (8, 64)  # grouped-query K/V
    assert shapes["model.layers.1.mlp.down_proj.weight"] == (64, 160)
    assert shapes["model.embed_tokens.weight"] == shapes["lm_head.weight"] == (96, 64)
    assert len([n for n in shapes if n.startswith("model.layers.0.")]) == 9  # 7 matrices and 2 norms


def test_workers_get_the_largest_matrices_first_and_the_output_keeps_source_order(source, serial, tmp_path,
                                                                                   monkeypatch):
    seen = []

    def in_order(fn, tasks, *, client=None, window=None, name="mpo"):
        tasks = list(tasks)
        seen.extend(t.name for t in tasks)
        return _dask.run_tasks(fn, tasks, client=None)  # in this process, in the order given

    monkeypatch.setattr(_hf, "run_tasks", in_order)
    out = tmp_path / "out"
    _hf.compress_checkpoint(source, out, client=object(), **SETTINGS)  # any client: run_tasks is replaced
    with _hf.open_checkpoint(source) as ckpt:
        size = {name: int(np.prod(ckpt.info(name).shape)) for name in seen}
        rank = {name: k for k, name in enumerate(ckpt.names)}
    assert sorted(seen, key=rank.__getitem__) != seen  # not the source order
    for a, b in zip(seen, seen[1:]):  # largest first; equal sizes in source order
        assert size[a] > size[b] or (size[a] == size[b] and rank[a] < rank[b]), (a, b)
    assert files(out) == files(serial[0])


def test_dask_output_is_byte_identical_to_serial(source, serial, client, tmp_path):
    out_serial, want = serial
    assert want.rows and want.dense  # both paths taken: compressed, and left dense (K/V, tiny)
    out = tmp_path / "out"
    seen = []
    got = _hf.compress_checkpoint(source, out, client=client, window=3,
                                  progress=lambda done, total, label: seen.append((done, total)), **SETTINGS)
    assert files(out) == files(out_serial)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in got.rows]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in want.rows]
    assert got.dense == want.dense and got.resumed == 0
    total = len(want.rows) + len(want.dense)
    assert seen[0] == (0, total) and seen[-1] == (total, total) and len(seen) == total + 1


def test_a_worker_killed_mid_run_changes_nothing(source, serial, client, tmp_path):
    before = set(client.run(os.getpid).values())
    victim = sorted(before)[0]
    killed = []

    def kill_one(done, total, label):
        if done == 1 and not killed:  # tasks are in flight on both workers (window 4)
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    out = tmp_path / "out"
    _hf.compress_checkpoint(source, out, client=client, window=4, progress=kill_one, **SETTINGS)
    assert killed and files(out) == files(serial[0])
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it, for the tests that follow
    assert victim not in set(client.run(os.getpid).values())


def stop_after(k):
    def progress(done, total, label):
        if done == k:
            raise KeyboardInterrupt

    return progress


def test_an_interrupted_run_resumes_to_the_same_output(source, serial, client, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _hf.compress_checkpoint(source, out, progress=stop_after(5), **SETTINGS)
    progress = json.loads((out / WORK / PROGRESS).read_text())
    assert len(progress["finished"]) == 5 and not (out / _hf.MANIFEST).exists()
    with pytest.raises(ValueError, match="unfinished mpo compress run"):
        _hf.read_manifest(out)
    # Resumed on the workers: the serial and the distributed runs are one code path.
    result = _hf.compress_checkpoint(source, out, client=client, **SETTINGS)
    assert result.resumed == 5 and files(out) == files(serial[0])


def test_an_interrupt_before_any_matrix_is_finished_leaves_nothing(source, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _hf.compress_checkpoint(source, tmp_path / "out", progress=stop_after(0), **SETTINGS)
    assert os.listdir(tmp_path) == []


def test_sigkill_of_the_whole_job_then_the_same_command_finishes(source, serial, tmp_path):
    out = tmp_path / "out"
    # The job kills itself with SIGKILL after its third matrix: no handler, no cleanup runs.
    script = (f"import os, signal\nfrom mpo.io import _hf\n"
              f"def progress(done, total, label):\n"
              f"    if done == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
              f"_hf.compress_checkpoint({str(source)!r}, {str(out)!r}, progress=progress, **{SETTINGS!r})\n")
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(json.loads((out / WORK / PROGRESS).read_text())["finished"]) == 3
    cmd = [sys.executable, "-m", "mpo", "compress", str(source), "-o", str(out), "--max-bond", "6", "--n", "3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed: 3 of" in proc.stderr and "model.layers.0.self_attn.q_proj" in proc.stdout
    assert files(out) == files(serial[0])


@pytest.fixture
def interrupted(source, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _hf.compress_checkpoint(source, out, progress=stop_after(4), **SETTINGS)
    return out


def test_another_setting_is_refused_on_an_unfinished_run(source, interrupted):
    with pytest.raises(ValueError, match=r"unfinished run with other settings: .*\"max_bond\": 6.* there, "
                                         r".*\"max_bond\": 4.* now"):
        _hf.compress_checkpoint(source, interrupted, max_bond=4, n=3)


def test_a_tampered_progress_file_is_refused(source, interrupted):
    path = interrupted / WORK / PROGRESS
    data = json.loads(path.read_text())
    tampered = dict(data, tensors=data["tensors"][1:])
    path.write_text(json.dumps(tampered))
    with pytest.raises(ValueError, match="unfinished run with other list of matrices to compress"):
        _hf.compress_checkpoint(source, interrupted, **SETTINGS)
    name = data["tensors"][0]
    path.write_text(json.dumps(dict(data, finished={**data["finished"], name: "../../etc/passwd"})))
    with pytest.raises(ValueError, match="remove the folder"):
        _hf.compress_checkpoint(source, interrupted, **SETTINGS)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        _hf.compress_checkpoint(source, interrupted, **SETTINGS)


def test_a_matrix_file_of_another_matrix_is_not_taken_as_finished(source, interrupted):
    work = interrupted / WORK
    first, second = sorted(p for p in os.listdir(work) if p.startswith("m-"))[:2]
    (work / second).write_bytes((work / first).read_bytes())  # a file copied in: the wrong tensor inside
    with pytest.raises(ValueError, match="of another run"):
        _hf.compress_checkpoint(source, interrupted, **SETTINGS)


def test_cores_that_do_not_match_their_record_are_refused(source, interrupted):
    from mpo.io import _safetensors as st

    path = interrupted / WORK / "m-00000.safetensors"  # the embedding, compressed
    with st.SafetensorsReader(path) as r:
        meta, cores = r.metadata, [r.read(name) for name in r.names]
    st.save_file(path, {f"cores.{k}": c for k, c in enumerate(cores[:-1])}, meta)  # a core missing
    with pytest.raises(ValueError, match="not those its record describes"):
        _hf.compress_checkpoint(source, interrupted, **SETTINGS)


def test_a_changed_source_is_refused(source, tmp_path):
    copy = tmp_path / "src"
    copy.mkdir()
    for p in source.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _hf.compress_checkpoint(copy, out, progress=stop_after(2), **SETTINGS)
    shard = sorted(copy.glob("model-*.safetensors"))[-1]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))  # rewritten since
    with pytest.raises(ValueError, match="a shard was rewritten since"):
        _hf.compress_checkpoint(copy, out, **SETTINGS)


def test_cli_on_a_running_scheduler_and_on_local_workers(source, serial, client, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert cli.main(["compress", str(source), "-o", str(out), "--max-bond", "6", "--n", "3",
                     "--scheduler", client.scheduler.address]) == 0
    assert "model.layers.1.mlp.down_proj" in capsys.readouterr().out
    assert files(out) == files(serial[0])
    # --workers N asks local_client for N processes (a cluster of its own is started by the benchmark's
    # test; here the module's cluster stands in for it, to keep this file fast).
    asked = []

    def local_client(workers):
        asked.append(workers)
        return contextlib.nullcontext(client)

    monkeypatch.setattr(_dask, "local_client", local_client)
    out = tmp_path / "out-local"
    assert cli.main(["compress", str(source), "-o", str(out), "--max-bond", "6", "--n", "3", "--workers", "3"]) == 0
    assert asked == [3] and files(out) == files(serial[0])


def test_workers_without_dask_say_what_to_install(source, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` raises ImportError
    out = tmp_path / "out"
    assert cli.main(["compress", str(source), "-o", str(out), "--max-bond", "6", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['mpo: error: compressing on Dask workers needs dask.distributed: pip install "mpo[distributed]"']
    assert not out.exists()


def test_workers_need_a_folder_output(source, tmp_path, capsys):
    single = tmp_path / "w.safetensors"
    _hf.SafetensorsWriter(str(single)).close()
    assert cli.main(["compress", str(single), "-o", str(tmp_path / "o.safetensors"), "--max-bond", "6",
                     "--workers", "2"]) == 2
    assert "give -o a folder name" in capsys.readouterr().err


def test_a_bad_scheduler_address_is_one_line(source, tmp_path, capsys, monkeypatch):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code = cli.main(["compress", str(source), "-o", str(tmp_path / "o"), "--max-bond", "6",
                         "--scheduler", "tcp://127.0.0.1:9"])
    assert code == 2
    assert "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'" in capsys.readouterr().err


def test_ctrl_c_in_the_command_says_how_to_resume(source, serial, tmp_path, monkeypatch, capsys):
    from mpo.cli import _commands

    monkeypatch.setattr(_commands, "progress", stop_after(3))
    out = tmp_path / "out"
    args = ["compress", str(source), "-o", str(out), "--max-bond", "6", "--n", "3"]
    assert cli.main(args) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli.main(args) == 0
    assert "resumed: 3 of" in capsys.readouterr().err and files(out) == files(serial[0])
