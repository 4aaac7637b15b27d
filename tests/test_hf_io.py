"""mpo.io._hf without torch: folders read and written, manifests validated, outputs that would destroy
something refused, and the one include/exclude glob matcher."""

import json
import os

import numpy as np
import pytest

from mpo._validation import match_names
from mpo.io import _hf
from mpo.io import _safetensors as st

ml_dtypes = pytest.importorskip("ml_dtypes")


def write_folder(folder, tensors, shards=2):
    """A Hugging Face folder: config.json, the tensors split over ``shards`` files and their index."""
    folder.mkdir(exist_ok=True)
    names = list(tensors)
    weight_map = {}
    for k in range(shards):
        shard = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[k::shards]}
        st.save_file(folder / shard, part)
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "toy"}))
    (folder / "tokenizer.json").write_text("{}")
    return folder


def toy_tensors():
    rng = np.random.default_rng(0)
    return {
        "a.weight": rng.standard_normal((64, 48)).astype(ml_dtypes.bfloat16),
        "a.bias": rng.standard_normal(64).astype(ml_dtypes.bfloat16),
        "tiny.weight": rng.standard_normal((2, 64)).astype(ml_dtypes.bfloat16),
        "norm.weight": np.ones(48, dtype=ml_dtypes.bfloat16),
        "ids": np.arange(7, dtype=np.int64),
    }


def test_compress_checkpoint_streams_a_sharded_folder(tmp_path):
    src = write_folder(tmp_path / "src", toy_tensors())
    out = tmp_path / "out"
    result = _hf.compress_checkpoint(src, out, max_bond=4, max_shard_size=400)
    assert [r["name"] for r in result.rows] == ["a"]
    assert "side below" in result.dense["tiny"]
    manifest = _hf.read_manifest(out)
    entry = manifest["modules"]["a"]
    assert entry["orientation"] == "weight" and entry["dtype"] == "bfloat16" and entry["bias"] == "a.bias"
    assert manifest["dense"]["tiny"] == result.dense["tiny"]
    assert sorted(os.listdir(out)) == sorted(
        ["config.json", "tokenizer.json", _hf.MANIFEST, _hf.INDEX]
        + [f for f in os.listdir(out) if f.startswith("mpo-") and f.endswith(".safetensors")]
    )
    _, ckpt = _hf.open_compressed(out)
    with ckpt:
        assert len(ckpt.files) > 1  # shards of 400 bytes
        for name, a in toy_tensors().items():
            if name != "a.weight":
                assert ckpt.read(name).tobytes() == a.tobytes() and ckpt.read(name).dtype == a.dtype
        cores = [ckpt.read(f"a.cores.{k}").astype(np.float64) for k in range(len(entry["in_factors"]))]
    import mpo

    m = mpo.MPO.from_cores(cores, shape=tuple(entry["shape"]))
    want = toy_tensors()["a.weight"].astype(np.float64)
    # The cores are the bf16 rounding of the max_bond 4 MPO: within the bound plus bf16 rounding.
    error = np.linalg.norm(m.to_dense() - want) / np.linalg.norm(want)
    assert error <= result.rows[0]["bound"] + 0.02


def test_force_compresses_tiny_and_larger_matrices(tmp_path):
    src = write_folder(tmp_path / "src", toy_tensors())
    result = _hf.compress_checkpoint(src, tmp_path / "out", force=True, dtype="float32")
    assert {r["name"] for r in result.rows} == {"a", "tiny"} and not result.dense
    assert _hf.read_manifest(tmp_path / "out")["modules"]["a"]["dtype"] == "float32"


def test_not_smaller_stays_dense_with_the_reason(tmp_path):
    src = write_folder(tmp_path / "src", toy_tensors())
    result = _hf.compress_checkpoint(src, tmp_path / "out")  # exact: full bonds are larger
    assert "not smaller" in result.dense["a"] and "rho" in result.dense["a"]


def test_output_folders_that_would_destroy_something_are_refused(tmp_path):
    src = write_folder(tmp_path / "src", toy_tensors())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="was not written by mpo"):
        _hf.compress_checkpoint(src, mine, max_bond=4)
    assert os.listdir(mine) == ["notes.txt"]
    out = tmp_path / "out"
    _hf.compress_checkpoint(src, out, max_bond=4)
    _hf.compress_checkpoint(src, out, max_bond=2)  # an earlier mpo output is replaced
    assert _hf.read_manifest(out)["modules"]["a"]["bonds"][0] <= 2
    assert [p for p in os.listdir(tmp_path) if p.startswith(".mpo-")] == []


def test_a_failure_leaves_no_folder(tmp_path):
    src = write_folder(tmp_path / "src", toy_tensors())

    def stop(done, total, label):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _hf.compress_checkpoint(src, tmp_path / "out", max_bond=4, progress=stop)
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_same_location():
    assert _hf.same_location("/a/b", "/a/b/")
    assert _hf.same_location("/a/b", "/a/b/c") and _hf.same_location("/a/b/c", "/a/b")
    assert not _hf.same_location("/a/b", "/a/bc")


def test_same_location_sees_links(tmp_path):
    (tmp_path / "x").mkdir()
    os.symlink(tmp_path / "x", tmp_path / "y")
    assert _hf.same_location(str(tmp_path / "x"), str(tmp_path / "y"))


def test_checkpoint_errors(tmp_path):
    src = write_folder(tmp_path / "src", toy_tensors())
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"]["a.weight"] = "model-00002-of-00002.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="does not hold it"):
        _hf.open_checkpoint(src)
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        _hf.open_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format": "x"}, "not an mpo manifest"),
        ({"format_version": 99}, "format version 99"),
        ({"modules": {"a": {"kind": "conv9"}}}, "kind 'conv9'"),
    ],
)
def test_manifest_validation(tmp_path, change, message):
    manifest = {**_hf.manifest_template(), **change}
    (tmp_path / _hf.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=message):
        _hf.read_manifest(tmp_path)


def test_parse_size():
    assert _hf.parse_size("2GB") == 2 * 10**9 and _hf.parse_size("64KiB") == 65536 and _hf.parse_size(10) == 10
    with pytest.raises(ValueError, match="KB, MB, GB"):
        _hf.parse_size("lots")


def test_match_names_is_one_glob_syntax():
    names = ["enc.0.q", "enc.0.k", "enc.1.q", "head"]
    assert match_names(names, None, None) == names
    assert match_names(names, "enc.*.q", None) == ["enc.0.q", "enc.1.q"]
    assert match_names(names, ["enc.*", "head"], exclude="*.k") == ["enc.0.q", "enc.1.q", "head"]
    with pytest.raises(ValueError, match=r"include pattern 'enc\.\[' matches none of"):
        match_names(names, "enc.[", None)
    assert match_names(names, "enc.*", "enc.*") == []
    with pytest.raises(TypeError, match="string or a list of strings"):
        match_names(names, [3], None)


def test_ratio_with_max_bond_is_decompose_budget_under_caps(tmp_path):
    import mpo

    src = write_folder(tmp_path / "src", toy_tensors())
    result = _hf.compress_checkpoint(src, tmp_path / "out", ratio=0.3, max_bond=4)
    want = mpo.decompose(toy_tensors()["a.weight"].astype(np.float32), ratio=0.3, max_bond=4)
    (row,) = result.rows
    assert tuple(row["bonds"]) == want.bond_dims and max(row["bonds"]) <= 4 and row["rho"] <= 0.3
