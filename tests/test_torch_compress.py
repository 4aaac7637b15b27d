"""mpo.torch.compress, parameter_report, optimizer_groups, saving, and dimension squeezing on layers."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import mpo.torch as mt  # noqa: E402


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(120, 24)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(24, 48), nn.GELU(), nn.Linear(48, 24)) for _ in range(2)])
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, 5)

    def forward(self, ids):
        h = self.embed(ids)
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.norm(h)).mean(dim=1)


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return Toy()


IDS = torch.tensor([[1, 7, 99, 3], [0, 119, 5, 5]])


def test_compress_everything_at_full_bonds_keeps_outputs(toy, capsys):
    want = toy(IDS)
    report = mt.compress(toy, n=3, force=True)
    assert [r.name for r in report.layers] == ["embed", "blocks.0.0", "blocks.0.2", "blocks.1.0", "blocks.1.2", "head"]
    assert isinstance(toy.embed, mt.MPOEmbedding) and isinstance(toy.blocks[0][2], mt.MPOLinear)
    assert torch.allclose(toy(IDS), want, atol=1e-5)
    assert "[6/6] head" in capsys.readouterr().err
    assert "6 layers" in str(report)


def test_include_exclude_and_bad_patterns(toy):
    report = mt.compress(toy, include="blocks.*", exclude="*.2", n=3, progress=False, force=True)
    assert [r.name for r in report.layers] == ["blocks.0.0", "blocks.1.0"]
    assert isinstance(toy.head, nn.Linear)
    listed = r"matches none of: embed, blocks\.0\.2, blocks\.1\.2, head"  # blocks.*.0 are MPO layers now
    with pytest.raises(ValueError, match=r"include pattern 'encoder\.\*' " + listed + r" \(the model's Linear, Conv1D"):
        mt.compress(toy, include="encoder.*", progress=False)
    with pytest.raises(ValueError, match="include/exclude leave no module to compress"):
        mt.compress(toy, include="head", exclude="head", progress=False)


def test_an_unplannable_layer_is_named(toy):
    with pytest.raises(ValueError, match=r"cannot compress layer 'head' \(Linear\): .*"):
        mt.compress(toy, include="head", shape={"head": ((2, 2), (2, 2))}, progress=False, force=True)
    with pytest.raises(ValueError, match=r"shape names modules that are not compressed: \['nope'\]"):
        mt.compress(toy, include="head", shape={"nope": 2}, progress=False)


def test_lightweight_report_and_groups(toy):
    mt.compress(toy, n=3, lightweight=True, progress=False, force=True)
    report = mt.parameter_report(toy)
    assert [r.name for r in report.rows][0] == "embed"
    head = report.rows[-1]
    layer = toy.head
    assert head.pretrained == 24 * 5 + 5
    assert head.total == layer.num_params + 5
    assert head.trainable == head.total - layer.central.numel()
    assert head.lora == 8 * (24 + 5)
    assert report.trainable == sum(r.trainable for r in report.rows) < report.total
    assert "trainable fraction of MPO layers" in str(report)
    groups = mt.optimizer_groups(toy, lr=1e-3, mpo_lr=1e-2)
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    mpo_ids = {id(p) for p in groups[1]["params"]}
    assert id(layer.central) not in mpo_ids and id(layer.cores[0]) in mpo_ids
    assert sum(p.numel() for g in groups for p in g["params"]) == report.model_trainable
    with pytest.raises(ValueError, match="mpo_lr must be a positive number, got 0"):
        mt.optimizer_groups(toy, lr=1e-3, mpo_lr=0)


def test_state_dict_and_save_load_round_trip(toy, tmp_path):
    mt.compress(toy, n=3, max_bond=4, progress=False, force=True)
    toy.head.set_mpo(toy.head.to_mpo().truncate(max_bond=2))  # a squeezed layer's smaller cores
    with torch.no_grad():
        toy.norm.weight.mul_(1.5)
    want = toy(IDS)
    torch.manual_seed(1)
    fresh = Toy()
    mt.compress(fresh, n=3, max_bond=4, progress=False, force=True)
    fresh.load_state_dict(toy.state_dict())
    assert torch.equal(fresh(IDS), want)
    mt.save(toy, tmp_path / "model.pt")
    torch.manual_seed(2)
    restored = mt.load(Toy(), tmp_path / "model.pt")
    assert isinstance(restored.head, mt.MPOLinear) and restored.head.bond_dims == toy.head.bond_dims
    assert not restored.head.central.requires_grad
    assert torch.equal(restored(IDS), want)
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(Exception):
        mt.load(Toy(), tmp_path / "bad.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a model written by mpo.torch.save"):
        mt.load(Toy(), tmp_path / "other.pt")


def _squeezable(toy):
    mt.compress(toy, include="blocks.*", n=3, progress=False, force=True)
    target = toy(IDS).detach()

    def evaluate(model):
        return float(((model(IDS) - target) ** 2).mean().detach())

    return target, evaluate


def test_squeeze_cuts_the_cheapest_central_bond_and_rolls_back(toy):
    _, evaluate = _squeezable(toy)
    before = {n: layer.bond_dims for n, layer in mt.mpo_layers(toy).items()}
    calls = []
    spectra = {n: layer.to_mpo().spectra for n, layer in mt.mpo_layers(toy).items()}
    result = mt.squeeze(toy, lambda model: calls.append(1), evaluate, delta=1e-4, max_steps=50)
    assert result.stop == "threshold" and not result.history[-1].accepted
    first = result.history[0]
    smallest = min(
        (float(s[k][before[n][k] - 1]), n, k) for n, s in spectra.items() for k in (0, 1) if before[n][k] > 1
    )
    assert (first.name, first.bond) == smallest[1:]
    assert first.dropped == pytest.approx(smallest[0])
    accepted = [s for s in result.history if s.accepted]
    assert all(s.gap <= 1e-4 for s in accepted) and result.history[-1].gap > 1e-4
    # The rolled-back step is not in the model: it holds the last accepted bonds.
    assert {n: layer.bond_dims for n, layer in mt.mpo_layers(toy).items()} == {
        n: m.bond_dims for n, m in result.mpos.items()
    }
    assert evaluate(toy) == pytest.approx(accepted[-1].metric if accepted else result.start_metric, abs=1e-7)
    assert len(calls) == len(result.history)


def test_squeeze_callback_error_leaves_the_last_consistent_state(toy):
    _, evaluate = _squeezable(toy)
    state = {"calls": 0}

    def finetune(model):
        state["calls"] += 1
        with torch.no_grad():
            model.norm.bias.add_(0.01)  # a trained parameter outside the MPO layers
        if state["calls"] == 3:
            raise RuntimeError("fine-tuning failed")

    bonds, norm_bias = [], []

    def evaluate_and_record(model):
        bonds.append({n: layer.bond_dims for n, layer in mt.mpo_layers(model).items()})
        norm_bias.append(model.norm.bias.detach().clone())
        return 0.0  # every step is accepted

    with pytest.raises(RuntimeError, match="fine-tuning failed"):
        mt.squeeze(toy, finetune, evaluate_and_record, delta=1.0, max_steps=10)
    # Two steps were accepted; the third failed inside fine-tuning: the model is as after step two.
    assert {n: layer.bond_dims for n, layer in mt.mpo_layers(toy).items()} == bonds[2]
    assert torch.equal(toy.norm.bias, norm_bias[2])


def test_squeeze_bad_input(toy):
    with pytest.raises(ValueError, match="the model has no MPO layers"):
        mt.squeeze(toy, lambda m: None, lambda m: 0.0, delta=0.1, max_steps=1)
    mt.compress(toy, include="head", n=3, progress=False, force=True)
    with pytest.raises(ValueError, match=r"\['embed'\] are not MPO layers; the model's MPO layers are: head"):
        mt.squeeze(toy, lambda m: None, lambda m: 0.0, delta=0.1, max_steps=1, layers=["embed"])


def test_a_failing_layer_leaves_the_model_unchanged():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 2))
    with pytest.raises(ValueError, match=r"cannot compress layer '1' \(Linear\)"):
        mt.compress(model, ratio=0.05, progress=False, force=True)
    assert [type(m) for m in model] == [nn.Linear, nn.Linear]


def test_load_of_a_mismatched_state_leaves_the_model_as_it_was(tmp_path):
    small = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    mt.compress(small, n=2, progress=False, force=True)
    mt.save(small, tmp_path / "m.pt")
    other = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 5))
    before = [m.weight.detach().clone() for m in other]
    with pytest.raises(Exception):
        mt.load(other, tmp_path / "m.pt")
    assert [type(m) for m in other] == [nn.Linear, nn.Linear]
    assert all(torch.equal(m.weight, w) for m, w in zip(other, before))


def test_set_mpo_keeps_every_core_frozen_or_training():
    layer = mt.MPOLinear.from_linear(nn.Linear(24, 24), n=3)
    layer.requires_grad_(False)
    layer.set_mpo(layer.to_mpo().truncate(max_bond=2))
    assert [c.requires_grad for c in layer.cores] == [False, False, False]
    layer.lightweight(True)
    layer.set_mpo(layer.to_mpo().truncate(max_bond=1))
    assert [c.requires_grad for c in layer.cores] == [True, False, True]


def test_multihead_attention_out_proj_stays_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.MultiheadAttention(64, 4, batch_first=True))
    x = torch.randn(2, 5, 64)

    def run():
        h = model[0](x)
        return model[1](h, h, h)[0]

    report = mt.compress(model, max_bond=4, progress=False)
    assert [r.name for r in report.layers] == ["0"]
    reason = {d.name: d.reason for d in report.kept_dense}["1.out_proj"]
    assert "MultiheadAttention reads its weight directly" in reason
    assert run().shape == (2, 5, 64)  # MultiheadAttention still reads a dense out_proj.weight


def test_a_weight_also_held_outside_a_candidate_stays_dense():
    class Head(nn.Module):  # reads a tied weight through its own code, not as a Linear
        def __init__(self, weight):
            super().__init__()
            self.weight = weight

        def forward(self, h):
            return h @ self.weight.T

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(64, 32), nn.Linear(32, 32))
    model.append(Head(model[0].weight))
    report = mt.compress(model, max_bond=4, progress=False)
    assert [r.name for r in report.layers] == ["1"]
    reasons = {d.name: d.reason for d in report.kept_dense}
    assert "its weight is also 2.weight, which compress cannot replace" in reasons["0"]
    assert model[2].weight is model[0].weight
