"""mpo compress MODEL_DIR --calibration STATS: the activation-aware folder equals what
mpo.torch.compress(weights="activations") / compress(allocate="model") makes of the same model, tensor for
tensor, and a statistics file that does not belong to the model is refused with one line and exit 2."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import mpo  # noqa: E402
import mpo.torch as mt  # noqa: E402
from mpo.cli import main  # noqa: E402

INCLUDE = "encoder.*"


def tiny_bert(hidden=64, seed=0):
    config = transformers.BertConfig(vocab_size=100, hidden_size=hidden, intermediate_size=2 * hidden,
                                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    torch.manual_seed(seed)
    return transformers.BertModel(config).eval()


def stats_of(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    batches = [{"input_ids": torch.randint(0, 100, (4, 16), generator=g),
                "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(3)]
    return mt.calibrate(model, batches, include=INCLUDE, progress=False)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    model = tiny_bert()
    model.save_pretrained(folder)
    calibration = stats_of(model)
    calibration.save(folder.parent / "stats.safetensors")
    return folder, folder.parent / "stats.safetensors", calibration


@pytest.mark.parametrize("args, kwargs", [
    (["--n", "2", "--ratio", "0.5"], {"n": 2, "ratio": 0.5, "weights": "activations"}),
    (["--n", "5", "--ratio", "0.5"], {"n": 5, "ratio": 0.5, "weights": "activations"}),
    (["--ratio", "0.4", "--allocate", "model"], {"ratio": 0.4, "allocate": "model"}),
])
def test_cli_equals_torch_compress_tensor_for_tensor(bert, tmp_path, capsys, args, kwargs):
    folder, stats, calibration = bert
    out = tmp_path / "out"
    assert main(["compress", str(folder), "-o", str(out), "--include", INCLUDE, "--calibration", str(stats), *args]) == 0
    table = capsys.readouterr().out
    assert "act_error" in table.splitlines()[0]
    got = mt.from_pretrained(out).state_dict()
    oracle = transformers.BertModel.from_pretrained(folder).eval()
    mt.compress(oracle, include=INCLUDE, calibration=calibration, progress=False, lightweight=False, **kwargs)
    want = oracle.state_dict()
    assert set(got) == set(want)
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, rtol=0, atol=1e-6, msg=name)
    # The table's activation error is the statistics' own: recompute one row from the stored layer.
    layer = "encoder.layer.0.attention.self.query"
    M = oracle.get_submodule(layer).weight_matrix().detach().double().numpy()
    dense = transformers.BertModel.from_pretrained(folder).get_submodule(layer).weight.detach().double().numpy().T
    row = next(line for line in table.splitlines() if line.startswith(layer + " "))
    assert row.split()[-4] == f"{mpo.activation_error(dense, M, calibration[layer]):.4f}"
    if "--allocate" in args:
        manifest = json.loads((out / "mpo_manifest.json").read_text())
        assert all(e["in_factors"][1] == 1 for e in manifest["modules"].values())  # whitened SVDs


def test_held_out_statistics_score_each_fitted_layer_and_change_nothing(bert, tmp_path, capsys):
    folder, stats, calibration = bert
    held = stats_of(transformers.BertModel.from_pretrained(folder).eval(), seed=7)
    held_path = tmp_path / "held.safetensors"
    held.save(held_path)
    base = ["compress", str(folder), "--include", INCLUDE, "--calibration", str(stats), "--n", "2", "--ratio", "0.5"]
    assert main([*base, "-o", str(tmp_path / "plain")]) == 0
    assert "held_out" not in capsys.readouterr().out.splitlines()[0]
    assert main([*base, "-o", str(tmp_path / "scored"), "--held-out", str(held_path)]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0].split()
    assert header[header.index("act_error") + 1] == "held_out"
    got, want = mt.from_pretrained(tmp_path / "scored").state_dict(), mt.from_pretrained(tmp_path / "plain").state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    layer = "encoder.layer.1.output.dense"
    M = mt.from_pretrained(tmp_path / "scored").get_submodule(layer).weight_matrix().detach().double().numpy()
    dense = transformers.BertModel.from_pretrained(folder).get_submodule(layer).weight.detach().double().numpy().T
    row = next(line for line in table.splitlines() if line.startswith(layer + " ")).split()
    assert row[-4] == f"{mpo.activation_error(dense, M, held[layer]):.4f}"
    assert row[-5] == f"{mpo.activation_error(dense, M, calibration[layer]):.4f}"
    assert row[-4] != row[-5]
    # Refused with one line and exit 2: without --calibration, and statistics of another model.
    code = main(["compress", str(folder), "-o", str(tmp_path / "x"), "--ratio", "0.5", "--held-out", str(held_path)])
    assert code == 2 and "--held-out scores the layers --calibration fits" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    stats_of(tiny_bert(hidden=32)).save(other)
    code = main([*base, "-o", str(tmp_path / "y"), "--held-out", str(other)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("mpo: error: --held-out"), err
    assert not (tmp_path / "y").exists()


def write_grams(path, grams, tokens=None):
    from safetensors.numpy import save_file
    meta = {"format": "mpo.activations", "version": "1",
            "tokens": json.dumps(tokens or {name: 10 for name in grams})}
    save_file({f"{name}.gram": g for name, g in grams.items()}, str(path), metadata=meta)


@pytest.mark.parametrize("case, fragment", [
    ("other_model", "statistics of another model"),
    ("wrong_shape", "input features"),
    ("unknown_layer", "does not have as Linear"),
    ("nan", "finite"),
    ("float32", "float64"),
    ("not_stats", "not an activation statistics file"),
])
def test_a_calibration_that_does_not_fit_the_model_is_refused(bert, tmp_path, capsys, case, fragment):
    folder, stats, calibration = bert
    bad = tmp_path / "bad.safetensors"
    layer = "encoder.layer.0.attention.self.query"
    if case == "other_model":
        stats_of(tiny_bert(hidden=32)).save(bad)
    elif case == "wrong_shape":
        write_grams(bad, {layer: np.eye(32)})
    elif case == "unknown_layer":
        write_grams(bad, {"decoder.layer.0.fc": np.eye(64)})
    elif case == "nan":
        g = np.eye(64)
        g[3, 3] = np.nan
        write_grams(bad, {layer: g})
    elif case == "float32":
        write_grams(bad, {layer: np.eye(64, dtype=np.float32)})
    else:
        from safetensors.numpy import save_file
        save_file({"x": np.eye(2)}, str(bad))
    out = tmp_path / "out"
    code = main(["compress", str(folder), "-o", str(out), "--ratio", "0.5", "--calibration", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("mpo: error: --calibration") and fragment in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("args, fragment", [
    (["--ratio", "0.5", "--allocate", "model"], "--allocate model spends --ratio"),  # no --calibration
    (["--max-bond", "4", "--allocate", "model", "--calibration", "STATS"], "--allocate model spends --ratio"),
])
def test_allocate_needs_calibration_and_ratio(bert, tmp_path, capsys, args, fragment):
    folder, stats, _ = bert
    args = [str(stats) if a == "STATS" else a for a in args]
    code = main(["compress", str(folder), "-o", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err


WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "it", "was", "red", "blue", "sky"]


def test_mpo_calibrate_equals_torch_calibrate_on_the_same_lines(tmp_path, capsys):
    folder = tmp_path / "bert"
    model = tiny_bert()
    model.save_pretrained(folder)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab))
    tokenizer.save_pretrained(folder)
    lines = ["the cat sat on the mat", "a dog ran far away", "it was red", "the sky was blue", "", "a cat ran"]
    (tmp_path / "text.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "stats.safetensors"
    argv = ["calibrate", str(folder), "--text", str(tmp_path / "text.txt"), "-o", str(out), "--include", INCLUDE,
            "--batch-size", "2"]
    assert main(argv) == 0
    got = mpo.Calibration.load(out)
    kept = [line for line in lines if line]
    batches = [tokenizer(kept[k : k + 2], padding=True, return_tensors="pt") for k in range(0, len(kept), 2)]
    want = mt.calibrate(model, batches, include=INCLUDE, progress=False)
    assert list(got) == list(want)
    for name in want:
        assert got[name].tokens == want[name].tokens
        np.testing.assert_allclose(got[name].gram, want[name].gram, rtol=1e-12, atol=1e-9)
    # A folder without a tokenizer, and a text file that is not there: one line, exit 2, no file.
    bare = tmp_path / "bare"
    model.save_pretrained(bare)
    capsys.readouterr()
    for args, fragment in ((["calibrate", str(bare), "--text", str(tmp_path / "text.txt"), "-o", str(tmp_path / "x.st")],
                            "cannot load the model and its tokenizer"),
                           (["calibrate", str(folder), "--text", str(tmp_path / "none.txt"), "-o", str(tmp_path / "x.st")],
                            "does not exist")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
        assert not (tmp_path / "x.st").exists()
