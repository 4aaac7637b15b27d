"""Issue 15: every file reader validates before it trusts (W5, W6, U2, U3, F1), and the reader fuzz pass.

Bad files give ValueError naming the file and the rule (mpo.load, mpo.torch.load) or one
``mpo: error:`` line with exit status 2 (mpo inspect / rebuild). The fuzz pass (tests/fuzz_readers.py)
feeds random bytes and mutated valid files to every reader under a fixed time budget
(MPO_READER_FUZZ_SECONDS, default 20).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import fuzz_readers  # tests/, on the path through conftest.py
import mpo

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FUZZ_SECONDS = fuzz_readers.SECONDS


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mpo", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


def assert_usage_error(proc, *fragments):
    """Exit status 2, exactly one line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpo: error: "), proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def valid_npz(tmp_path_factory):
    folder = tmp_path_factory.mktemp("npz")
    m = mpo.decompose(np.random.default_rng(0).standard_normal((12, 10)), shape=((3, 4), (2, 5)), max_bond=3)
    path = folder / "valid.npz"
    m.save(path)
    return path


def _arrays(path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _write(path, arrays: dict):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


# ---------------------------------------------------------------- W5, U3: mpo.load


@pytest.mark.parametrize(
    "change, rule",
    [
        (lambda a: a.update(core_0=np.full_like(a["core_0"], np.nan)), "finite"),
        (lambda a: a.update(spectrum_0=a["spectrum_0"] * np.inf), "finite"),
        (lambda a: a.update(norm=np.array(np.nan)), "norm"),
        (lambda a: a.update(truncation_errors=a["truncation_errors"][None, :]), "truncation_errors"),
        (lambda a: a.update(core_0=a["core_0"].astype(np.complex64)), "dtype"),
        (lambda a: a.update(core_1=a["core_1"][:, :, :, :, None]), "4-way"),
        (lambda a: a.update(shape=np.array([10**30, 1], dtype=object)), "dtype"),
        (lambda a: a.pop("core_1"), "core"),
    ],
    ids=["nan-core", "inf-spectrum", "nan-norm", "2d-errors", "complex", "5-way", "object", "missing"],
)
def test_w5_u3_load_refuses_bad_arrays_naming_the_file(valid_npz, tmp_path, change, rule):
    arrays = _arrays(valid_npz)
    change(arrays)
    path = tmp_path / "bad.npz"
    try:
        _write(path, arrays)
    except ValueError:
        pytest.skip("numpy will not write this archive")
    with pytest.raises(ValueError) as info:
        mpo.load(path)
    assert "bad.npz" in str(info.value) and rule in str(info.value), str(info.value)


def test_u3_load_names_the_file_for_broken_archives(valid_npz, tmp_path):
    data = valid_npz.read_bytes()
    cases = {
        "truncated.npz": data[: len(data) // 2],  # BadZipFile
        "empty.npz": b"",
        "eof.npz": data[:30],
        "text.npz": b"not a zip file at all",
    }
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=name):
            mpo.load(path)


def test_u3_huge_declared_header_is_refused_before_allocating(valid_npz, tmp_path):
    # A .npy header declaring 175 TiB in a small file: NumPy's own reader tries to allocate it.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (2**44, 3)})
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(valid_npz) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename == "core_0.npy":
                payload = b"\x93NUMPY" + header.getvalue()[6:] + b"\0" * 64
            dst.writestr(info.filename, payload)
    with pytest.raises(ValueError, match="huge.npz"):
        mpo.load(path)


def test_c1_crafted_file_with_wrapping_sizes_is_refused_on_load(tmp_path):
    # The 37 KB file: row factors multiplying to 2**62 (apply wrapped batch * padded_in).
    p = (10, 10, 10, 10, 11, 11)
    cores = [np.ones((1, 2**q, 1, 1), np.float32) for q in p]
    m = mpo.MPO(cores, shape=(5, 1), spectra=[np.ones(1)] * 5, truncation_errors=np.zeros(5), norm=1.0)
    m.save(tmp_path / "evil.npz")
    try:
        loaded = mpo.load(tmp_path / "evil.npz")
    except ValueError as e:
        assert "evil.npz" in str(e)
        return
    with pytest.raises(ValueError, match="too large"):
        np.ones((2, 5), np.float32) @ loaded


# ---------------------------------------------------------------- F1: atomic writes


def test_f1_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    # A writer killed mid-write (SIGKILL) leaves .mpo-<pid>-*.tmp; the next write into the folder
    # removes it when that process is gone. Other files, and temps of live processes, stay.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".mpo-{int(dead.stdout)}-abc.tmp"
    stale.write_bytes(b"half")
    live = tmp_path / f".mpo-{os.getppid()}-def.tmp"
    live.write_bytes(b"writing")
    other = tmp_path / ".mpo-notes.tmp"
    other.write_bytes(b"not ours")
    m = mpo.decompose(np.eye(4))
    m.save(tmp_path / "m.npz")
    assert not stale.exists()
    assert live.exists() and other.exists()
    assert mpo.load(tmp_path / "m.npz").shape == (4, 4)


def test_f1_interrupt_anywhere_in_an_atomic_write_leaves_nothing(tmp_path, monkeypatch):
    import os as os_module

    m = mpo.decompose(np.eye(4))
    for victim in ("chmod", "replace"):
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        with monkeypatch.context() as patch:
            patch.setattr(os_module, victim, interrupted)
            with pytest.raises(KeyboardInterrupt):
                m.save(tmp_path / "m.npz")
        assert sorted(p.name for p in tmp_path.iterdir()) == [], victim


# ---------------------------------------------------------------- U2, W5, W6: the compressed checkpoint


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    from safetensors import numpy as safetensors_numpy

    folder = tmp_path_factory.mktemp("ckpt")
    rng = np.random.default_rng(1)
    safetensors_numpy.save_file({"layer.weight": rng.standard_normal((24, 16)).astype(np.float32),
                                 "layer.bias": rng.standard_normal(24).astype(np.float32)},
                                str(folder / "dense.safetensors"))
    proc = run_cli("compress", "dense.safetensors", "-o", "small.safetensors", "--max-bond", "4", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return folder / "small.safetensors"


def _rewrite(compressed, path, *, tensors=None, matrices=None):
    from safetensors import safe_open
    from safetensors import numpy as safetensors_numpy

    with safe_open(str(compressed), "np") as f:
        meta = dict(f.metadata())
        data = {k: f.get_tensor(k) for k in f.keys()}
    if tensors:
        tensors(data)
    if matrices is not None:
        info = json.loads(meta["matrices"])
        meta["matrices"] = json.dumps(matrices(info))
    safetensors_numpy.save_file(data, str(path), metadata=meta)
    return path


def _first_core(data):
    return next(k for k in data if "core_0" in k)


@pytest.mark.parametrize(
    "tensors, matrices, fragment",
    [
        (None, lambda info: 5, "matrices"),
        (None, lambda info: None, "matrices"),
        (None, lambda info: list(info), "matrices"),
        (None, lambda info: {k: {} for k in info}, "field"),
        (None, lambda info: {k: {**v, "dtype": "int8"} for k, v in info.items()}, "dtype"),
        (None, lambda info: {k: {**v, "dtype": "complex64"} for k, v in info.items()}, "dtype"),
        (None, lambda info: {k: {**v, "dtype": "no-such-type"} for k, v in info.items()}, "dtype"),
        (lambda d: d.__setitem__(_first_core(d), np.full_like(d[_first_core(d)], np.nan)), None, "finite"),
        (lambda d: d.__setitem__(next(k for k in d if k.endswith("norm")), np.array([np.inf])), None, "norm"),
        (lambda d: d.__setitem__(_first_core(d), np.ones((1, 3, 2, 7), np.float32)), None, "bond"),
    ],
    ids=["five", "null", "list", "no-fields", "int8", "complex64", "unknown", "nan-core", "inf-norm", "wrong-core"],
)
def test_u2_w5_w6_bad_checkpoints_are_one_line_and_status_2(compressed, tmp_path, tensors, matrices, fragment):
    try:
        path = _rewrite(compressed, tmp_path / "bad.safetensors", tensors=tensors, matrices=matrices)
    except (ValueError, MemoryError):
        pytest.skip("safetensors will not write this file")
    for command in (["inspect", path], ["rebuild", path, "-o", tmp_path / "out.safetensors"]):
        proc = run_cli(*command, cwd=tmp_path)
        assert_usage_error(proc, "bad.safetensors", fragment)
        assert not (tmp_path / "out.safetensors").exists()


# ---------------------------------------------------------------- the reader fuzz pass


def test_readers_survive_random_and_mutated_files(tmp_path):
    """Random bytes and mutations of valid files into every reader (tests/fuzz_readers.py, which
    tests/sanitize.sh also runs under ASan+UBSan): each either loads or raises ValueError naming the file."""
    counts = fuzz_readers.fuzz(tmp_path, FUZZ_SECONDS)
    assert all(n > 10 for n in counts.values()), counts


# ---------------------------------------------------------------- mpo.torch.load


def test_torch_load_validates_the_payload_and_names_the_file(tmp_path):
    torch = pytest.importorskip("torch")
    import mpo.torch as mt

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8))

    compressed = model()
    mt.compress(compressed, max_bond=2, progress=False, force=True)
    good = tmp_path / "good.pt"
    mt.save(compressed, good)
    x = torch.randn(3, 16)
    torch.testing.assert_close(mt.load(model(), good)(x), compressed(x))

    payload = torch.load(good, weights_only=True)
    bad_payloads = {
        "nan.pt": lambda p: p["state_dict"]["0.cores.1"].fill_(float("nan")),
        "huge.pt": lambda p: p["layers"]["0"].__setitem__("core_shapes", [[1, 2**20, 2**20, 1]] * 5),
        "kind.pt": lambda p: p["layers"]["0"].__setitem__("kind", "Evil"),
        "frozen.pt": lambda p: p["layers"]["0"].__setitem__("frozen", "yes"),
        "tie.pt": lambda p: p.__setitem__("ties", {"2": {"source": "nope", "transposed": True, "bias": True}}),
        # Found by the reader fuzz: a spec without its mode was a KeyError, not a refusal.
        "nomode.pt": lambda p: p["layers"]["0"].pop("mode"),
        "mode.pt": lambda p: p["layers"]["0"].__setitem__("mode", "evil"),
        "padding.pt": lambda p: p["layers"]["0"].__setitem__("padding_idx", 10**9),
        "unfit.pt": lambda p: p["state_dict"].__setitem__("0.bias", torch.ones(99)),
        "module.pt": lambda p: (p["layers"].__setitem__("7", p["layers"].pop("0")), p.__setitem__(
            "state_dict", {("7" + k[1:] if k.startswith("0.") else k): v for k, v in p["state_dict"].items()})),
        "embedding.pt": lambda p: p["layers"]["0"].__setitem__("kind", "MPOEmbedding"),
    }
    for name, change in bad_payloads.items():
        broken = torch.load(good, weights_only=True)
        change(broken)
        torch.save(broken, tmp_path / name)
        with pytest.raises(ValueError, match=name):
            mt.load(model(), tmp_path / name)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt"):
        mt.load(model(), tmp_path / "empty.pt")
    assert payload["format"].startswith("mpo.torch")
