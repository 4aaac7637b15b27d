"""Hugging Face checkpoints in, a compressed folder that loads out: mpo.io._hf, mpo compress on model
folders, and mpo.torch.from_pretrained / save_pretrained, on a small Llama (grouped-query attention) and a
small GPT-2 built from configs with random weights and saved in bfloat16 in several shards."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mpo.io import _hf
from mpo.io import _safetensors as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ml_dtypes = pytest.importorskip("ml_dtypes")

import mpo.torch as mt  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def mpo_cli(*args):
    return subprocess.run([sys.executable, "-m", "mpo", *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=900)


def tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def tiny_gpt2():
    config = transformers.GPT2Config(vocab_size=96, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    torch.manual_seed(1)
    return transformers.GPT2LMHeadModel(config)


def save_bf16(model, folder):
    model.to(torch.bfloat16).save_pretrained(folder, max_shard_size="40KB")
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 64}\n')
    assert (folder / "model.safetensors.index.json").exists()
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_bf16(tiny_llama(), tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return save_bf16(tiny_gpt2(), tmp_path_factory.mktemp("gpt2"))


def folder_hash(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(path.encode())
            h.update(open(path, "rb").read())
            h.update(oct(os.stat(path).st_mode).encode())
    return h.hexdigest()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


IDS = torch.tensor([[1, 5, 9, 33, 2, 70, 11, 4]])


# ----------------------------------------------------------------------------- reading checkpoints


def test_sharded_bf16_folder_is_read_bit_exactly(llama_dir):
    from safetensors import safe_open

    with _hf.open_checkpoint(llama_dir) as ckpt:
        assert len(ckpt.files) > 1 and ckpt.config["model_type"] == "llama"
        for path in ckpt.files:
            with safe_open(path, "pt") as f:
                for name in f.keys():
                    want = f.get_tensor(name)
                    got = ckpt.read(name)
                    assert got.dtype == ml_dtypes.bfloat16
                    assert np.array_equal(got.view(np.int16), want.view(torch.int16).numpy()), name


def test_index_that_points_outside_the_folder_is_refused(llama_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    index = json.loads((llama_dir / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        (bad / shard).write_bytes((llama_dir / shard).read_bytes())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../" + index["weight_map"][first]
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a plain file name"):
        _hf.open_checkpoint(bad)


# ----------------------------------------------------------------------------- the compressed folder


@pytest.fixture(scope="module")
def llama_out(llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "llama-mpo"
    proc = mpo_cli("compress", llama_dir, "-o", out, "--max-bond", "16")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_compressed_folder_layout(llama_dir, llama_out):
    out, proc = llama_out
    names = set(os.listdir(out))
    assert {"config.json", "generation_config.json", "tokenizer_config.json", _hf.MANIFEST, _hf.INDEX} <= names
    assert "model.safetensors" not in names and "model.safetensors.index.json" not in names
    assert (out / "tokenizer_config.json").read_bytes() == (llama_dir / "tokenizer_config.json").read_bytes()
    manifest = _hf.read_manifest(out)
    assert manifest["format"] == _hf.FORMAT and manifest["modules"]
    umask = os.umask(0)
    os.umask(umask)
    for name in names:
        assert os.stat(out / name).st_mode & 0o777 == 0o666 & ~umask, name
    with _hf.open_checkpoint(llama_dir) as src:
        _, ckpt = _hf.open_compressed(out)
        with ckpt:
            for path, entry in manifest["modules"].items():
                assert entry["dtype"] == "bfloat16" and ckpt.read(f"{path}.cores.0").dtype == ml_dtypes.bfloat16
                assert f"{path}.weight" not in ckpt.names
            for name in ckpt.names:  # every tensor not compressed: bit-exact
                if ".cores." not in name:
                    assert st_bits(ckpt.read(name)) == st_bits(src.read(name)), name


def st_bits(a):
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


def test_plain_transformers_refuses_the_compressed_folder(llama_out):
    out, _ = llama_out
    with pytest.raises(OSError, match="model.safetensors|pytorch_model.bin"):
        transformers.AutoModelForCausalLM.from_pretrained(out)


def test_llama_compressed_loads_generates_and_trains(llama_out):
    out, proc = llama_out
    model = mt.from_pretrained(out)
    layers = mt.mpo_layers(model)
    assert layers and type(model).__name__ == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.bfloat16
    dense = sum(p.numel() for p in tiny_llama().parameters())
    assert sum(p.numel() for p in model.parameters()) < dense
    generated = model.generate(IDS, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, IDS.shape[1] + 4)
    model.float().train()
    loss = model(IDS, labels=IDS).loss
    loss.backward()
    assert any(c.grad is not None for layer in layers.values() for c in layer.cores)


def test_save_pretrained_round_trips_exactly(llama_out, tmp_path):
    out, _ = llama_out
    model = mt.from_pretrained(out)
    again = tmp_path / "again"
    mt.save_pretrained(model, again, max_shard_size="30KB")
    reloaded = mt.from_pretrained(again)
    a, b = model.state_dict(), reloaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert torch.equal(logits(model, IDS), logits(reloaded, IDS))


def test_exact_compression_matches_the_original_logits(llama_dir, tmp_path):
    out = tmp_path / "exact"
    proc = mpo_cli("compress", llama_dir, "-o", out, "--exact", "--force", "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    original = transformers.LlamaForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    model = mt.from_pretrained(out, dtype=torch.float32)
    assert len(mt.mpo_layers(model)) == 2 * 7 + 2  # q k v o gate up down per layer, embed_tokens, lm_head
    want, got = logits(original, IDS), logits(model, IDS)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()


def test_gpt2_compressed_loads_and_generates(gpt2_dir, tmp_path):
    out = tmp_path / "gpt2"
    # Every Conv1D of the blocks and wte, which lm_head ties to: the folder stores wte's cores once and
    # from_pretrained gives lm_head a layer that reads them transposed.
    proc = mpo_cli("compress", gpt2_dir, "-o", out, "--max-bond", "16")
    assert proc.returncode == 0, proc.stderr
    model = mt.from_pretrained(out, dtype=torch.float32)
    layers = mt.mpo_layers(model)
    assert "transformer.wte" in layers and any(isinstance(m, mt.MPOConv1D) for m in layers.values())
    assert isinstance(model.lm_head, mt.MPOTiedLinear)
    with torch.no_grad():
        ids = IDS
        emb = model.transformer.wte.weight_matrix()  # vocab x hidden, from the shared cores
        states = torch.randn(1, 2, emb.shape[1])
        assert torch.allclose(model.lm_head(states), states @ emb.T, atol=1e-4)
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, IDS.shape[1] + 3)
    again = tmp_path / "again"
    mt.save_pretrained(model, again)
    reloaded = mt.from_pretrained(again, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, model(IDS).logits)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["{src}", "-o", "{src}"], "is the input"),
        (["{src}", "-o", "{link}"], "is the input"),
        (["{src}", "-o", "{src}/inner"], "is the input"),
        (["{src}"], "one of --max-bond, --ratio, --tol or --exact"),
        (["{src}", "--exact", "--max-bond", "4"], "--exact"),
        (["{src}", "--ratio", "0"], "ratio"),
        (["{src}", "--include", "nomatch*"], "'nomatch*' matches none of"),
        (["{src}", "--dtype", "int8"], "dtype"),
        (["{src}", "-o", "{existing}"], "was not written by mpo"),
        (["{missing}"], "does not exist"),
        (["{corrupt}"], "not a valid safetensors file"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_leaves_the_input_untouched(llama_dir, tmp_path, args, fragment):
    src = tmp_path / "src"
    os.symlink(llama_dir, tmp_path / "link")
    import shutil

    shutil.copytree(llama_dir, src)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(llama_dir, corrupt)
    shard = sorted(p for p in os.listdir(corrupt) if p.endswith(".safetensors"))[0]
    (corrupt / shard).write_bytes(b"\xff" * 8 + b"{}")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    os.symlink(src, tmp_path / "srclink")
    fill = {"src": src, "link": tmp_path / "srclink", "existing": existing, "missing": tmp_path / "nope",
            "corrupt": corrupt}
    argv = [a.format(**fill) for a in args]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out")]
    if not any(a in argv for a in ("--max-bond", "--ratio", "--tol", "--exact")) and not fragment.startswith("one of --max-bond"):
        argv += ["--max-bond", "8"]
    before = folder_hash(src), folder_hash(existing)
    proc = mpo_cli("compress", *argv)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpo: error: ") and fragment in lines[0], proc.stderr
    assert (folder_hash(src), folder_hash(existing)) == before
    assert not (tmp_path / "out").exists()
