"""MPOLinear and MPOEmbedding: equality with the dense layers, both forward modes, gradients."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import mpo  # noqa: E402
from mpo.torch import MPOEmbedding, MPOLinear  # noqa: E402


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return nn.Linear(30, 42)


@pytest.mark.parametrize("mode", ["contract", "rebuild", "auto"])
@pytest.mark.parametrize("grad", [True, False])
def test_full_bonds_equal_the_linear(linear, mode, grad):
    layer = MPOLinear.from_linear(linear, mode=mode)
    x = torch.randn(3, 5, 30)
    with torch.set_grad_enabled(grad):
        got, want = layer(x), linear(x)
    assert got.shape == (3, 5, 42)
    assert torch.allclose(got, want, atol=2e-6, rtol=1e-5)


def test_padded_sides_are_invisible():
    torch.manual_seed(1)
    lin = nn.Linear(97, 61, bias=False)
    layer = MPOLinear.from_linear(lin, n=3)
    assert layer.padded_shape != (97, 61)
    x = torch.randn(4, 97)
    for mode in ("contract", "rebuild"):
        assert torch.allclose(layer(x, mode=mode), lin(x), atol=2e-6)
        with torch.no_grad():
            assert torch.allclose(layer(x, mode=mode), lin(x), atol=2e-6)


def test_capped_layer_matches_the_capped_mpo(linear):
    layer = MPOLinear.from_linear(linear, max_bond=3)
    m = mpo.decompose(linear.weight.detach().double().numpy().T, max_bond=3)
    assert layer.bond_dims == m.bond_dims
    x = torch.randn(6, 30)
    want = torch.from_numpy(x.double().numpy() @ m.to_dense()).float() + linear.bias.detach()
    for mode in ("contract", "rebuild"):
        assert torch.allclose(layer(x, mode=mode), want, atol=1e-5)


def test_gradcheck_float64_both_modes():
    torch.manual_seed(2)
    lin = nn.Linear(12, 10).double()
    layer = MPOLinear.from_linear(lin, n=3, max_bond=4)
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    for mode in ("contract", "rebuild"):
        assert torch.autograd.gradcheck(lambda inp, *cores: layer(inp, mode=mode), (x, *layer.cores))


def test_gradients_reach_every_core(linear):
    layer = MPOLinear.from_linear(linear, mode="contract")
    layer(torch.randn(2, 30)).sum().backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in layer.cores)


def test_auto_picks_from_flops_or_times_the_modes():
    # FLOPs settle the clear cases; the others are timed at the first pass (tests/test_torch_autotune.py).
    torch.manual_seed(3)
    layer = MPOLinear.from_linear(nn.Linear(768, 768), max_bond=4)
    small = layer.forward_flops(1, autograd=True)
    assert small["contract"] < small["rebuild"]
    x = torch.randn(1, 768)
    layer(x)
    assert layer.forward_flops(1, autograd=True)["auto"] == layer.auto_mode(x) in ("contract", "rebuild")


def test_mode_and_input_checks(linear):
    with pytest.raises(ValueError, match=r"mode must be one of \('auto', 'contract', 'rebuild'\), got 'fast'"):
        MPOLinear.from_linear(linear, mode="fast")
    with pytest.raises(TypeError, match="from_linear expects a torch.nn.Linear, got Embedding"):
        MPOLinear.from_linear(nn.Embedding(4, 4))
    layer = MPOLinear.from_linear(linear)
    with pytest.raises(ValueError, match="input has 29 features"):
        layer(torch.randn(2, 29))


def test_set_mpo_keeps_freezing_and_dtype(linear):
    layer = MPOLinear.from_linear(linear).lightweight()
    smaller = layer.to_mpo().truncate(max_bond=2)
    layer.set_mpo(smaller)
    assert layer.bond_dims == smaller.bond_dims
    assert not layer.central.requires_grad and all(c.requires_grad for c in layer.auxiliary)
    assert layer.cores[0].dtype == torch.float32
    with pytest.raises(ValueError, match=r"set_mpo: the MPO is \(4, 4\), this layer's matrix is \(30, 42\)"):
        layer.set_mpo(mpo.decompose(np.eye(4), n=2))


@pytest.fixture
def embedding():
    torch.manual_seed(4)
    return nn.Embedding(1000, 48, padding_idx=0)


@pytest.mark.parametrize("mode", ["contract", "rebuild", "auto"])
@pytest.mark.parametrize("grad", [True, False])
def test_embedding_full_bonds(embedding, mode, grad):
    layer = MPOEmbedding.from_embedding(embedding, mode=mode)
    ids = torch.tensor([[0, 5, 999, 5], [17, 3, 3, 640]])
    with torch.set_grad_enabled(grad):
        got = layer(ids)
    assert got.shape == (2, 4, 48)
    assert torch.allclose(got, embedding(ids), atol=2e-6)
    assert layer.padding_idx == 0


def test_embedding_rows_gradcheck():
    torch.manual_seed(5)
    emb = nn.Embedding(60, 6).double()
    layer = MPOEmbedding.from_embedding(emb, n=3, max_bond=3)
    ids = torch.tensor([1, 59, 7, 1])
    cores = tuple(layer.cores)
    assert torch.autograd.gradcheck(lambda *c: layer(ids, mode="contract"), cores)


def test_embedding_bad_ids_and_modules(embedding):
    layer = MPOEmbedding.from_embedding(embedding)
    with pytest.raises(IndexError, match="id 1000 is out of range for an embedding of 1000 rows"):
        layer(torch.tensor([1, 1000]))
    with pytest.raises(TypeError, match="from_embedding expects a torch.nn.Embedding, got Linear"):
        MPOEmbedding.from_embedding(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="max_norm and sparse embeddings are not supported"):
        MPOEmbedding.from_embedding(nn.Embedding(10, 4, max_norm=1.0))


def test_lightweight_freezes_only_the_central_tensor(linear):
    layer = MPOLinear.from_linear(linear).lightweight()
    frozen = [not c.requires_grad for c in layer.cores]
    assert frozen == [k == layer.central_index for k in range(layer.n)]
    assert layer.lightweight(False).central.requires_grad


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    n=st.sampled_from([2, 3, 4]),
    cap=st.one_of(st.none(), st.integers(1, 6)),
    batch=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_every_mode_is_the_mpo_product(rows, cols, n, cap, batch, seed):
    """Property: for any sides (padded or not), n and cap, every path computes x @ M + b of the MPO."""
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(rows, cols).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(cols, rows, generator=gen, dtype=torch.float64))
    layer = MPOLinear.from_linear(lin, n=n, max_bond=cap)
    dense = torch.from_numpy(layer.to_mpo().to_dense())
    x = torch.randn(batch, rows, generator=gen, dtype=torch.float64)
    want = x @ dense + lin.bias.detach()
    for mode in ("contract", "rebuild"):
        assert torch.allclose(layer(x, mode=mode), want, atol=1e-10)  # torch ops, with autograd
        with torch.no_grad():
            assert torch.allclose(layer(x, mode=mode), want, atol=1e-10)  # the C++ kernel for contract
    ids = torch.randint(0, rows, (batch,), generator=gen)
    emb = MPOEmbedding(layer.to_mpo(), dtype=torch.float64)  # the same matrix, read by rows
    for mode in ("contract", "rebuild"):
        assert torch.allclose(emb(ids, mode=mode), dense[ids], atol=1e-10)
        with torch.no_grad():
            assert torch.allclose(emb(ids, mode=mode), dense[ids], atol=1e-10)


@pytest.mark.parametrize("mode", ["contract", "rebuild"])
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("transposed", [True, False])
def test_tied_linear_reads_the_source_cores(mode, grad, transposed):
    from mpo.torch import MPOTiedLinear

    torch.manual_seed(1)
    table = nn.Embedding(50, 30)
    source = MPOEmbedding.from_embedding(table, n=3, max_bond=6)
    M = source.weight_matrix().detach()
    bias = torch.randn(50 if transposed else 30)
    head = MPOTiedLinear(source, nn.Parameter(bias), transposed=transposed, mode=mode)
    x = torch.randn(4, 30 if transposed else 50)
    with torch.set_grad_enabled(grad):
        got = head(x)
    want = x @ (M.T if transposed else M) + bias  # an oracle from the rebuilt matrix
    assert torch.allclose(got, want, atol=1e-5)
    assert list(head.parameters()) == [head.bias]  # the cores belong to the source, counted there
    assert head.cores[0] is source.cores[0]


def test_tied_linear_on_a_padded_source_and_its_gradient():
    from mpo.torch import MPOTiedLinear

    torch.manual_seed(2)
    source = MPOEmbedding.from_embedding(nn.Embedding(51, 30), n=3, max_bond=4)
    head = MPOTiedLinear(source, mode="contract")
    x = torch.randn(3, 30, dtype=torch.float32)
    assert torch.allclose(head(x), x @ source.weight_matrix().detach().T, atol=1e-5)
    head(x).sum().backward()
    assert all(c.grad is not None for c in source.cores)
    with pytest.raises(TypeError, match="MPOTiedLinear needs an MPO layer as its source, got Linear"):
        MPOTiedLinear(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"bias must have shape \(51,\), got \(30,\)"):
        MPOTiedLinear(source, torch.zeros(30))


def test_weight_view_describes_every_layer_without_values():
    from mpo.torch import WeightView

    torch.manual_seed(3)
    linear = MPOLinear.from_linear(nn.Linear(30, 42).double(), n=3, max_bond=4)
    table = MPOEmbedding.from_embedding(nn.Embedding(50, 30), n=3, max_bond=4)
    for layer, shape, dtype in ((linear, (42, 30), torch.float64), (table, (50, 30), torch.float32)):
        view = layer.weight
        assert isinstance(view, WeightView) and tuple(view.shape) == shape and view.dtype == dtype
        assert view.device == layer.cores[0].device and not view.requires_grad
        with pytest.raises(TypeError, match=f"{type(layer).__name__}.weight has no values"):
            view.clone()
    assert "weight" not in dict(linear.named_parameters()) and "weight" not in linear.state_dict()


def test_conv1d_keeps_its_orientation():
    transformers = pytest.importorskip("transformers")
    from mpo.torch import MPOConv1D, layer_for

    torch.manual_seed(4)
    conv = transformers.pytorch_utils.Conv1D(42, 30)  # nf=42 outputs, nx=30 inputs: weight 30 x 42
    with torch.no_grad():
        conv.bias.normal_()
    layer = MPOConv1D.from_conv1d(conv, n=3)
    x = torch.randn(2, 5, 30)
    assert torch.allclose(layer(x), conv(x), atol=1e-5)
    assert torch.allclose(layer.weight_matrix(), conv.weight, atol=1e-6)  # M = W, not W.T
    assert (layer.nx, layer.nf) == (30, 42) and tuple(layer.weight.shape) == (30, 42)
    with pytest.raises(TypeError, match="from_conv1d expects a transformers Conv1D, got Linear"):
        MPOConv1D.from_conv1d(nn.Linear(30, 42))
    rebuilt = layer_for("conv1d", layer.to_mpo(), conv.bias)
    assert isinstance(rebuilt, MPOConv1D) and torch.allclose(rebuilt(x), conv(x), atol=1e-5)


def test_layer_for_builds_each_kind():
    from mpo.torch import layer_for

    m = mpo.decompose(np.arange(50 * 30, dtype=np.float64).reshape(50, 30) % 7, n=3)
    assert type(layer_for("linear", m, torch.zeros(30))).__name__ == "MPOLinear"
    table = layer_for("embedding", m, padding_idx=0)
    assert isinstance(table, MPOEmbedding) and table.padding_idx == 0
    np.testing.assert_allclose(table(torch.tensor([3])).detach().numpy()[0], m.to_dense()[3], atol=1e-5)
    with pytest.raises(ValueError, match=r"kind must be one of \['conv1d', 'embedding', 'linear'\], got 'lstm'"):
        layer_for("lstm", m)
    with pytest.raises(ValueError, match="an embedding layer has no bias"):
        layer_for("embedding", m, torch.zeros(30))


@pytest.fixture
def fresh_route_choices():
    from mpo import _apply_route

    _apply_route.clear()
    yield
    _apply_route.clear()


def _timed_layer():
    """An MPOLinear (256 -> 144, float64) whose cheapest kernel plan at 64 tokens is not "right", but
    "right" is a timed alternative (strategies.assert_right_is_timed)."""
    from strategies import TIMED_SHAPE, assert_right_is_timed

    rng = np.random.default_rng(14)
    m = mpo.decompose(rng.standard_normal((256, 144)), TIMED_SHAPE, max_bond=6)
    assert_right_is_timed([list(c.shape) for c in m.cores], 64)
    x = torch.from_numpy(rng.standard_normal((64, 256)))
    return MPOLinear(m, mode="contract", dtype=torch.float64), x, x.numpy() @ m.to_dense()


def test_contract_runs_the_sweep_order_timed_for_its_kind_of_product(monkeypatch, fresh_route_choices):
    # The layer's kernel products take the same timed sweep order as X @ m (mpo._apply_route): with
    # every order but "right" slowed, a contract pass of 64 tokens must run "right" from then on.
    from strategies import favour_sweep

    layer, x, want = _timed_layer()
    ran = favour_sweep(monkeypatch, "right")
    with torch.no_grad():
        np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-10, atol=1e-10)
        assert set(ran) == {"auto", "right"}  # timed
        ran.clear()
        np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-10, atol=1e-10)
    assert ran == ["right"]


def test_contract_under_torch_determinism_times_no_sweep_order(monkeypatch, fresh_route_choices):
    # torch.use_deterministic_algorithms(True): the kernel runs its FLOP-cheapest plan, untimed, so
    # that every run rounds the same way.
    from strategies import favour_sweep

    layer, x, want = _timed_layer()
    ran = favour_sweep(monkeypatch, "right")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.no_grad():
            np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-10, atol=1e-10)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert ran == ["auto", "auto"]
