"""mpo.torch.calibrate, compress(weights="activations" / allocate="model") and sensitivity on small
models, each checked against a direct computation."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import mpo  # noqa: E402
import mpo.torch as mt  # noqa: E402


class Tiny(nn.Module):
    """Two Linears; a dict batch passes ``x`` and an ``attention_mask`` (B, T)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(12, 20)
        self.b = nn.Linear(20, 8)

    def forward(self, x, attention_mask=None):
        return self.b(torch.relu(self.a(x)))


def _model():
    torch.manual_seed(0)
    return Tiny().double()


def _batches(count=3):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        x = torch.randn(4, 5, 12, generator=g, dtype=torch.float64) * torch.exp(torch.randn(12, generator=g, dtype=torch.float64))
        mask = torch.ones(4, 5, dtype=torch.long)
        mask[1, 3:] = 0
        mask[3, 1:] = 0
        out.append({"x": x, "attention_mask": mask})
    return out


def _captured(model, batches):
    """Inputs of every Linear recorded directly, padding rows dropped."""
    seen = {"a": [], "b": []}
    handles = [
        getattr(model, n).register_forward_hook(lambda m, i, o, n=n: seen[n].append(i[0].detach().clone()))
        for n in seen
    ]
    with torch.no_grad():
        masks = []
        for b in batches:
            model(**b)
            masks.append(b["attention_mask"].bool())
    for h in handles:
        h.remove()
    return {n: torch.cat([x[m] for x, m in zip(xs, masks)]).numpy() for n, xs in seen.items()}


def test_calibrate_streams_x_transpose_x_of_the_real_tokens():
    model, batches = _model(), _batches()
    cal = mt.calibrate(model, batches, progress=False)
    X = _captured(model, batches)
    assert list(cal) == ["a", "b"]
    for name in ("a", "b"):
        np.testing.assert_allclose(cal[name].gram, X[name].T @ X[name], rtol=1e-12, atol=1e-12)
        assert cal[name].tokens == len(X[name]) == 3 * (20 - 2 - 4)  # padding tokens left out
    # A plain tensor batch: every row counts.
    plain = mt.calibrate(model, [b["x"] for b in batches], include="a", progress=False)
    x = torch.cat([b["x"].reshape(-1, 12) for b in batches]).numpy()
    np.testing.assert_allclose(plain["a"].gram, x.T @ x, rtol=1e-12)
    assert list(plain) == ["a"]
    with pytest.raises(ValueError, match="matches no Linear"):
        mt.calibrate(model, batches, include="nothing*", progress=False)
    with pytest.raises(ValueError, match="no batch"):
        mt.calibrate(model, [], progress=False)


class InPlace(nn.Module):
    """Changes a Linear's input in place after the Linear has read it (as in-place residuals can)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 4)

    def forward(self, x):
        y = self.a(x)
        x.mul_(3.0)
        return y


@pytest.mark.parametrize("limit", [0, None])
def test_calibrate_sums_the_inputs_as_the_layer_saw_them(limit, monkeypatch):
    # The sums run after each forward pass (or once PENDING_LIMIT bytes are held): what they sum must be
    # the input as the layer read it, not as the forward left it.
    from mpo.torch import _calibrate

    if limit is not None:
        monkeypatch.setattr(_calibrate, "PENDING_LIMIT", limit)  # sum inside the hook, at once
    torch.manual_seed(2)
    model = InPlace().double()
    batches = [torch.randn(5, 6, dtype=torch.float64) for _ in range(3)]
    seen = torch.cat([b.clone() for b in batches]).numpy()
    cal = mt.calibrate(model, batches, progress=False)
    np.testing.assert_allclose(cal["a"].gram, seen.T @ seen, rtol=1e-12)
    assert cal["a"].tokens == 15


def test_calibrate_sums_the_same_statistics_without_scipy(monkeypatch):
    # With scipy the upper triangle is summed by BLAS's syrk; without it, by the full product.
    from mpo.torch import _calibrate

    model, batches = _model(), _batches()
    X = _captured(model, batches)
    monkeypatch.setattr(_calibrate, "_syrk", lambda: None)
    cal = mt.calibrate(model, batches, progress=False)
    for name in ("a", "b"):
        np.testing.assert_allclose(cal[name].gram, X[name].T @ X[name], rtol=1e-12, atol=1e-12)
        assert np.array_equal(cal[name].gram, cal[name].gram.T)


def test_compress_with_activations_is_the_whitened_svd():
    model, batches = _model(), _batches()
    cal = mt.calibrate(model, batches, progress=False)
    W = model.a.weight.detach().numpy().T.copy()
    mt.compress(model, include="a", n=2, max_bond=3, weights="activations", calibration=cal, progress=False, force=True)
    assert isinstance(model.a, mt.MPOLinear) and isinstance(model.b, nn.Linear)
    want = mpo.whitened_svd(W, 3, cal["a"]).to_dense()
    np.testing.assert_allclose(model.a.weight_matrix().detach().numpy(), want, atol=1e-10)
    assert model.a.num_params == 3 * (12 + 20)
    with pytest.raises(ValueError, match="calibration"):
        mt.compress(_model(), weights="activations", n=2, max_bond=3, progress=False, force=True)


def test_compress_reports_weight_activation_and_held_out_errors(capsys):
    model, batches = _model(), _batches(4)
    cal = mt.calibrate(model, batches[:3], progress=False)
    held = mt.calibrate(model, batches[3:], progress=False)
    W = {n: getattr(model, n).weight.detach().numpy().T.copy() for n in ("a", "b")}
    report = mt.compress(model, n=2, max_bond=3, weights="activations", calibration=cal, held_out=held,
                         progress=True, force=True)
    err = capsys.readouterr().err
    for r in report.layers:
        approx = getattr(model, r.name).weight_matrix().detach().numpy()
        assert r.weight_error == pytest.approx(np.linalg.norm(W[r.name] - approx) / np.linalg.norm(W[r.name]), rel=1e-9)
        assert r.activation_error == pytest.approx(mpo.activation_error(W[r.name], approx, cal[r.name]), rel=1e-9)
        assert r.held_out_error == pytest.approx(mpo.activation_error(W[r.name], approx, held[r.name]), rel=1e-9)
        assert r.held_out_error != pytest.approx(r.activation_error, rel=1e-6)  # other tokens, another value
        assert f"({r.held_out_error:.3g} held out)" in err
    table = str(report)
    assert "weight err" in table and "act. err" in table and "held out" in table
    # The held-out statistics only score: the layers are those of a run without them.
    again = _model()
    mt.compress(again, n=2, max_bond=3, weights="activations", calibration=cal, progress=False, force=True)
    for n in ("a", "b"):
        np.testing.assert_array_equal(getattr(again, n).weight_matrix().detach().numpy(),
                                      getattr(model, n).weight_matrix().detach().numpy())
    # Plain layers report no activation errors, and their table has no such columns.
    plain = mt.compress(_model(), n=2, max_bond=3, progress=False, force=True)
    assert all(r.activation_error is None and r.held_out_error is None for r in plain.layers)
    assert "act. err" not in str(plain)
    with pytest.raises(ValueError, match="held_out scores the layers fitted to their inputs"):
        mt.compress(_model(), n=2, max_bond=3, held_out=held, progress=False, force=True)
    with pytest.raises(TypeError, match="held_out must be an mpo.Calibration"):
        mt.compress(_model(), n=2, max_bond=3, weights="activations", calibration=cal, held_out={"a": 1},
                    progress=False, force=True)
    only_a = mt.calibrate(_model(), batches[3:], include="a", progress=False)
    with pytest.raises(ValueError, match=r"held_out has no statistics for the fitted layers \['b'\]"):
        mt.compress(_model(), n=2, max_bond=3, weights="activations", calibration=cal, held_out=only_a,
                    progress=False, force=True)
    # Statistics of the wrong width are refused before any layer is fitted, naming the rule.
    wrong = mpo.Calibration({"a": mpo.ActivationStats(np.eye(5), 3), "b": held["b"]})
    fresh = _model()
    with pytest.raises(ValueError, match=r"held_out: .*'a' are for 5 input features; the layer has 12"):
        mt.compress(fresh, n=2, max_bond=3, weights="activations", calibration=cal, held_out=wrong,
                    progress=False, force=True)
    assert isinstance(fresh.a, nn.Linear) and isinstance(fresh.b, nn.Linear)


def test_model_allocation_spends_one_budget_and_beats_the_uniform_share(capsys):
    model, batches = _model(), _batches(6)
    cal = mt.calibrate(model, batches, progress=False)
    originals = {n: getattr(model, n).weight.detach().numpy().T.copy() for n in ("a", "b")}
    uniform = _model()
    mt.compress(uniform, n=2, ratio=0.4, weights="activations", calibration=cal, progress=False, force=True)
    mt.compress(model, ratio=0.4, allocate="model", calibration=cal, progress=True, force=True)
    assert "summed squared activation error" in capsys.readouterr().err  # the allocation is printed
    dense = sum(w.size for w in originals.values())

    def summed(m):
        total, params = 0.0, 0
        for n, W in originals.items():
            layer = getattr(m, n)
            approx = layer.weight_matrix().detach().numpy() if isinstance(layer, mt.MPOLinear) else W
            params += layer.num_params if isinstance(layer, mt.MPOLinear) else W.size
            total += mpo.activation_error(W, approx, cal[n]) ** 2
        return total, params

    got, params = summed(model)
    base, base_params = summed(uniform)
    assert params <= 0.4 * dense and base_params <= 0.4 * dense
    assert got <= base * (1 + 1e-9)


def test_sensitivity_scores_one_layer_at_a_time_and_restores_the_model():
    model, batches = _model(), _batches()
    cal = mt.calibrate(model, batches, progress=False)
    x = batches[0]["x"]
    with torch.no_grad():
        want = model(x)

    def evaluate(m):
        with torch.no_grad():
            return float(torch.nn.functional.cosine_similarity(m(x).reshape(-1), want.reshape(-1), dim=0))

    report = mt.sensitivity(model, cal, evaluate, n=2, max_bond=2, ratio=None, progress=False)
    assert isinstance(model.a, nn.Linear) and isinstance(model.b, nn.Linear)  # put back
    assert report.baseline == pytest.approx(1.0)
    for row in report.rows:
        other = _model()
        mt.compress(other, include=row.name, n=2, max_bond=2, weights="activations", calibration=cal, progress=False, force=True)
        assert row.score == pytest.approx(evaluate(other), rel=1e-9)
        assert row.loss == pytest.approx(report.baseline - row.score)
    assert "baseline score" in str(report)
    assert set(report.layer_weights()) == {"a", "b"}


def test_calibration_round_trips_through_safetensors(tmp_path):
    model, batches = _model(), _batches()
    cal = mt.calibrate(model, batches, progress=False)
    cal.save(tmp_path / "cal.safetensors")
    back = mpo.Calibration.load(tmp_path / "cal.safetensors")
    for name in cal:
        assert np.array_equal(back[name].gram, cal[name].gram) and back[name].tokens == cal[name].tokens


def test_a_precomputed_allocation_is_used_as_given():
    model, batches = _model(), _batches(6)
    cal = mt.calibrate(model, batches, progress=False)
    plan = mt.allocation(model, cal, 0.4, layer_weights={"a": 10.0, "b": 0.1})
    mt.compress(model, ratio=0.4, allocate=plan, calibration=cal, progress=False, force=True)
    for name, setting in plan.settings.items():
        layer = getattr(model, name)
        if setting[0] == "dense":
            assert isinstance(layer, nn.Linear)
        else:
            assert isinstance(layer, mt.MPOLinear) and layer.num_params == plan.params[name]
    with pytest.raises(ValueError, match="covers"):
        mt.compress(_model(), include="a", ratio=0.4, allocate=plan, calibration=cal, progress=False, force=True)


def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                     num_attention_heads=4, max_position_embeddings=32)
    torch.manual_seed(3)
    model = transformers.BertModel(config).eval()
    g = torch.Generator().manual_seed(4)
    batches = [{"input_ids": torch.randint(0, 50, (3, 10), generator=g),
                "attention_mask": torch.ones(3, 10, dtype=torch.long)} for _ in range(2)]
    return model, batches


def test_sensitivity_whitened_route_scores_as_the_mpo_layers_do():
    # sensitivity's n = 2 whitened layers are dense products of one eigendecomposition's truncation; the
    # oracle swaps in activation_layer's MPOLinear (the decomposition, the fold) and scores the model.
    model, batches = _tiny_bert()  # float32; value 32 -> 32, intermediate 32 -> 64, output 64 -> 32
    cal = mt.calibrate(model, batches, include="encoder.*", progress=False)
    with torch.no_grad():
        want = [model(**b).last_hidden_state for b in batches]

    def evaluate(m):
        with torch.no_grad():
            return float(sum(torch.nn.functional.cosine_similarity(m(**b).last_hidden_state, w, dim=-1).mean()
                             for b, w in zip(batches, want)))

    chosen = ["*.0.attention.self.value", "*.1.intermediate.dense", "*.2.output.dense"]
    report = mt.sensitivity(model, cal, evaluate, include=chosen, n=2, ratio=0.5, progress=False)
    assert len(report.rows) == 3
    for row in report.rows:
        other = copy.deepcopy(model)
        mt.compress(other, include=row.name, n=2, ratio=0.5, weights="activations", calibration=cal,
                    scaling="whiten", progress=False, force=True)
        layer, module = other.get_submodule(row.name), model.get_submodule(row.name)
        fit = mpo.decompose_activations(module.weight.detach().double().numpy().T, cal[row.name], n=2, ratio=0.5)
        assert isinstance(layer, mt.MPOLinear)
        assert row.params == layer.num_params and row.dense_params == module.weight.numel()
        assert row.activation_error == pytest.approx(fit.activation_error, rel=1e-9)
        # float32 layers: the dense product and the two-factor product round differently.
        assert abs(row.score - evaluate(other)) <= 1e-5 and row.loss > 0
    assert all(isinstance(model.get_submodule(r.name), nn.Linear) for r in report.rows)  # put back


@pytest.mark.parametrize("shifting", [False, True])
def test_sensitivity_replaying_earlier_blocks_gives_the_scores_of_full_runs(shifting):
    model, batches = _tiny_bert()
    cal = mt.calibrate(model, batches, include="encoder.*", progress=False)
    with torch.no_grad():
        want = [model(**b).last_hidden_state for b in batches]
    state = {"calls": 0}

    def evaluate(m):
        # shifting: other token ids on every call, so no recorded block input matches: every block runs.
        state["calls"] += 1
        shift = state["calls"] if shifting else 0
        with torch.no_grad():
            return float(sum(
                torch.nn.functional.cosine_similarity(
                    m(input_ids=(b["input_ids"] + shift) % 50, attention_mask=b["attention_mask"]).last_hidden_state,
                    w, dim=-1).mean()
                for b, w in zip(batches, want)))

    runs = {"n": 0}
    probe = model.encoder.layer[0].attention.self.query.register_forward_hook(lambda *a: runs.__setitem__("n", runs["n"] + 1))
    state["calls"] = 0
    chosen = ["*.query", "*.value"]  # 2 per block, 3 blocks
    fast = mt.sensitivity(model, cal, evaluate, include=chosen, n=2, ratio=0.5, progress=False)
    fast_runs, runs["n"] = runs["n"], 0
    state["calls"] = 0
    slow = mt.sensitivity(model, cal, evaluate, include=chosen, n=2, ratio=0.5, progress=False, reuse_prefix=False)
    probe.remove()
    assert fast.baseline == slow.baseline
    assert [(r.name, r.score) for r in fast.rows] == [(r.name, r.score) for r in slow.rows]
    assert all(type(b).forward is not None and "forward" not in vars(b) for b in model.encoder.layer)  # restored
    # The probed query of block 0 runs in the baseline and in every score but its own; replayed, only in
    # the baseline and block 0's other score, unless the inputs change.
    assert len(fast.rows) == 6
    assert runs["n"] == (1 + 5) * len(batches)
    assert fast_runs == ((1 + 5) if shifting else (1 + 1)) * len(batches)
