"""Fisher-weighted MPO layers: from_linear(row_weights=), compress(weights=...), saving and squeezing them."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import mpo  # noqa: E402
import mpo.torch as mt  # noqa: E402


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 36), nn.Tanh(), nn.Linear(36, 12)).double()


def _batches():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(6, 24, generator=g, dtype=torch.float64) for _ in range(4)]


def _loss(model, batch):
    return (model(batch) ** 2).mean()


SHAPE = ((2, 3, 4), (3, 4, 3))  # 24 x 36, n = 3


def _weights(n, seed=0):
    return np.random.default_rng(seed).exponential(size=n) ** 3


def test_weighted_layer_is_the_weighted_mpo_of_the_linear():
    net = _net()
    w = _weights(24)
    layer = mt.MPOLinear.from_linear(net[0], SHAPE, max_bond=3, row_weights=w)
    want = mpo.decompose(net[0].weight.detach().numpy().T, SHAPE, max_bond=3, row_weights=w)
    assert layer.row_scale is not None
    np.testing.assert_allclose(layer.row_scale.numpy(), want.row_scale)
    np.testing.assert_allclose(layer.weight_matrix().detach().numpy(), want.to_dense(), atol=1e-12)
    assert layer.num_params == want.num_params == sum(c.numel() for c in layer.cores) + 24
    x = torch.randn(5, 24, dtype=torch.float64)
    dense = x.numpy() @ want.to_dense() + net[0].bias.detach().numpy()
    for mode in ("contract", "rebuild"):
        np.testing.assert_allclose(layer(x, mode=mode).detach().numpy(), dense, atol=1e-10)
    with torch.no_grad():  # the C++ kernel's path
        np.testing.assert_allclose(layer(x, mode="contract").numpy(), dense, atol=1e-10)


def test_weighted_layer_at_full_bonds_equals_the_linear_and_gradients_flow():
    net = _net()
    layer = mt.MPOLinear.from_linear(net[0], SHAPE, row_weights=torch.tensor(_weights(24)))
    x = torch.randn(7, 24, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(layer(x), net[0](x), atol=1e-10)
    layer(x).sum().backward()
    assert all(c.grad is not None and torch.isfinite(c.grad).all() for c in layer.cores)
    assert layer.row_scale.grad is None and not layer.row_scale.requires_grad  # a buffer: it never trains


def test_weighted_layer_lowers_the_weighted_error():
    net = _net()
    w = _weights(24, seed=1)
    W = net[0].weight.detach().numpy().T
    plain = mt.MPOLinear.from_linear(net[0], SHAPE, max_bond=3)
    weighted = mt.MPOLinear.from_linear(net[0], SHAPE, max_bond=3, row_weights=w)
    d = np.sqrt(w / w.max() + 1e-6)[:, None]

    def weighted_error(layer):
        return np.linalg.norm(d * (W - layer.weight_matrix().detach().numpy()))

    assert weighted_error(weighted) < weighted_error(plain)


def test_compress_with_fisher_weights_uses_fisher_information():
    net, reference = _net(), _net()
    importances = mt.fisher_information(reference, _batches(), _loss, ["0", "2"], axis="in")
    report = mt.compress(
        net, n=3, max_bond=3, weights="fisher", data=_batches(), loss_fn=_loss, progress=False, force=True
    )
    assert [r.name for r in report.layers] == ["0", "2"]
    for name, linear in (("0", reference[0]), ("2", reference[2])):
        layer = net.get_submodule(name)
        want = mpo.decompose(
            linear.weight.detach().numpy().T, (layer.in_shape, layer.out_shape), max_bond=3,
            row_weights=importances[name],
        )
        np.testing.assert_allclose(layer.row_scale.numpy(), want.row_scale)
        np.testing.assert_allclose(layer.weight_matrix().detach().numpy(), want.to_dense(), atol=1e-12)


def test_compress_with_a_dict_of_weights_weighs_only_those_layers():
    net = _net()
    mt.compress(net, n=3, max_bond=3, weights={"0": _weights(24)}, progress=False, force=True)
    assert net[0].row_scale is not None and net[2].row_scale is None


def test_weighted_layers_survive_state_dict_save_load_and_squeeze(tmp_path):
    net = _net()
    mt.compress(net, n=3, max_bond=4, weights={"0": _weights(24)}, progress=False, force=True)
    x = torch.randn(4, 24, dtype=torch.float64)
    want = net(x)
    fresh = _net()
    mt.compress(fresh, n=3, max_bond=4, progress=False, force=True)  # plain layers of the same core shapes
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh(x), want) and fresh[0].row_scale is not None
    mt.save(net, tmp_path / "model.pt")
    restored = mt.load(_net(), tmp_path / "model.pt")
    assert torch.equal(restored(x), want)
    # to_mpo keeps the scale; a cut of it stays weighted and set_mpo carries the scale along.
    m = net[0].to_mpo()
    assert m.row_scale is not None
    np.testing.assert_allclose(m.to_dense(), net[0].weight_matrix().detach().numpy(), atol=1e-12)
    net[0].set_mpo(m.truncate(max_bond=2))
    np.testing.assert_allclose(net[0].weight_matrix().detach().numpy(), m.truncate(max_bond=2).to_dense(), atol=1e-12)
    target = net(x).detach()
    result = mt.squeeze(net, lambda model: None, lambda model: float(((model(x) - target) ** 2).mean()),
                        delta=1e9, max_steps=2)
    assert len(result.history) == 2 and net[0].row_scale is not None


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"weights": "nope"}, ValueError, "weights must be None, 'fisher' or a dict of row weights, got 'nope'"),
        ({"weights": "fisher"}, ValueError, r"weights='fisher' needs data \(mini-batches\) and loss_fn"),
        ({"weights": {"1": np.ones(36)}}, ValueError, r"weights names modules that are not compressed Linear"),
        ({"weights": [1.0]}, TypeError, "weights must be None, 'fisher' or a dict of row weights, got list"),
        ({"data": _batches()}, ValueError, "data and loss_fn are used only with weights='fisher'"),
        ({"weights": {"0": np.ones(5)}}, ValueError, r"cannot compress layer '0' \(Linear\)"),
    ],
)
def test_bad_weights(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        mt.compress(_net(), n=3, progress=False, **kwargs)


def test_from_cores_with_a_row_scale_is_the_weighted_mpo():
    rng = np.random.default_rng(4)
    M, w = rng.standard_normal((24, 36)), _weights(24, seed=4)
    m = mpo.decompose(M, SHAPE, max_bond=4, row_weights=w)
    back = mpo.MPO.from_cores([c.copy() for c in m.cores], shape=m.shape, row_scale=m.row_scale)
    np.testing.assert_allclose(back.to_dense(), m.to_dense(), atol=1e-12)
    np.testing.assert_allclose(back.entropy(), mpo.decompose(m.to_dense(), SHAPE).entropy(), atol=1e-10)
    with pytest.raises(ValueError, match=r"row_scale must hold 24 values \(one per row\), got shape \(3,\)"):
        mpo.MPO.from_cores(m.cores, shape=m.shape, row_scale=np.ones(3))
