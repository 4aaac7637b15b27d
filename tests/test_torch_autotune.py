"""MPOLinear's mode="auto": timed on this machine once per kind of pass, never a constant from another.

The choice itself is checked with runners of known speed (the faster one must win, and a cached choice
must not be timed again); the layer is checked against the dense F.linear for the answer, against its
own modes for the pick it reports, and for leaving the parameters' .grad untouched while it times.
"""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mpo.torch import MPOLinear  # noqa: E402
from mpo.torch import _autotune, _kernel  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_choices():
    _autotune.clear()
    yield
    _autotune.clear()


def test_choose_times_both_modes_once_and_keeps_the_faster():
    calls = []

    def run(mode):
        calls.append(mode)
        time.sleep(0.02 if mode == "contract" else 0.001)

    assert _autotune.choose(("k", 1), 1e6, 1e6, run) == "rebuild"
    assert sorted(set(calls)) == ["contract", "rebuild"] and len(calls) == 2 * _autotune.ROUNDS
    calls.clear()
    assert _autotune.choose(("k", 1), 1e6, 1e6, run) == "rebuild"
    assert calls == []  # cached: nothing timed again
    assert _autotune.choose(("k", 2), 1e6, 1e6, lambda mode: time.sleep(0.001 if mode == "contract" else 0.02)) == "contract"


def test_flops_settle_clear_cases_without_timing():
    def never(mode):
        raise AssertionError("timed although FLOPs settle it")

    assert _autotune.choose(("k", 3), 1.0, 10 * _autotune.FLOP_SLACK, never) == "contract"
    assert _autotune.choose(("k", 4), 2.0, 1.0, never) == "rebuild"
    assert _autotune.settled(1.0, 1.0) is None


@pytest.mark.parametrize("grad", [False, True])
def test_auto_equals_linear_and_reports_its_pick(grad):
    torch.manual_seed(0)
    linear = nn.Linear(96, 80)
    layer = MPOLinear.from_linear(linear, max_bond=6)
    x = torch.randn(40, 96)
    want = F.linear(x, layer.weight_matrix().T.detach(), layer.bias.detach())
    with torch.set_grad_enabled(grad):
        got = layer(x)
        assert (got.grad_fn is not None) == grad
        pick = layer.auto_mode(x)
        assert pick in ("contract", "rebuild")
        assert layer.forward_flops(40, autograd=grad)["auto"] == pick
        by_mode = layer(x, mode=pick)
    torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(by_mode.detach(), want, rtol=1e-4, atol=1e-4)


def test_timing_with_autograd_leaves_grads_alone():
    torch.manual_seed(1)
    layer = MPOLinear.from_linear(nn.Linear(64, 64), max_bond=4)
    x = torch.randn(256, 64, requires_grad=True)
    # Force a timed choice: FLOPs must not settle it for this test to mean anything.
    contract, rebuild = layer.forward_flops(256)["contract"], layer.forward_flops(256)["rebuild"]
    if _autotune.settled(contract, rebuild) is not None:
        pytest.skip("FLOPs settle this shape; nothing is timed")
    layer(x).sum().backward()
    grads = [c.grad.clone() for c in layer.cores]
    assert x.grad is not None
    x_grad = x.grad.clone()
    _autotune.clear()
    layer.auto_mode(x)  # times forward + backward passes of its own
    assert all(torch.equal(c.grad, g) for c, g in zip(layer.cores, grads))
    assert torch.equal(x.grad, x_grad)


def test_bfloat16_auto_matches_linear():
    torch.manual_seed(2)
    linear = nn.Linear(48, 64).to(torch.bfloat16)
    layer = MPOLinear.from_linear(linear)  # full bonds: equal to the Linear up to bfloat16 rounding
    x = torch.randn(64, 48, dtype=torch.bfloat16)
    with torch.no_grad():
        got = layer(x)
        want = linear(x)
    assert got.dtype == torch.bfloat16
    err = float((got.float() - want.float()).abs().max() / want.float().abs().max())
    assert err < 5e-2


def test_kinds_are_told_apart():
    layer = MPOLinear.from_linear(nn.Linear(32, 32), max_bond=4)
    cores = list(layer.cores)
    key = _autotune.mode_key
    assert key("linear", cores, (32, 32), 33, False) == key("linear", cores, (32, 32), 64, False)
    assert key("linear", cores, (32, 32), 64, False) != key("linear", cores, (32, 32), 64, True)
    assert key("linear", cores, (32, 32), 64, False) != key("linear", cores, (32, 32), 128, False)


def _exact_matrix(layer) -> torch.Tensor:
    """The layer's M from its stored cores, contracted in float64 (the padding sliced off)."""
    cores = [c.detach().double() for c in layer.cores]
    m = cores[0]
    for c in cores[1:]:
        a, i, j, _ = m.shape
        m = torch.einsum("aijb,bklc->aikjlc", m, c).reshape(a, i * c.shape[1], j * c.shape[2], c.shape[3])
    return m[0, : layer.in_features, : layer.out_features, 0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_layers_contract_in_the_float32_kernel_without_autograd(dtype, monkeypatch):
    # No bias: the kernel's output is rounded once, from float32, to the layer's dtype.
    torch.manual_seed(3)
    layer = MPOLinear.from_linear(nn.Linear(96, 80, bias=False).to(dtype), max_bond=6, mode="contract")
    x = torch.randn(50, 96, dtype=dtype)
    exact = x.double() @ _exact_matrix(layer)
    with torch.no_grad():
        got = layer(x)
    assert got.dtype == dtype
    # Round to nearest: within half an ulp of the exact product, plus float32's accumulation error.
    bound = torch.finfo(dtype).eps / 2 * exact.abs() + 1e-5 * exact.abs().max()
    assert torch.all((got.double() - exact).abs() <= bound)
    # The torch-ops route (taken with autograd when the kernel's is off) rounds after every core: never
    # closer on average.
    monkeypatch.setattr(_kernel, "KERNEL_AUTOGRAD", False)
    with torch.enable_grad():
        ops = layer(x.clone().requires_grad_(True)).detach()
    assert (got.double() - exact).abs().mean() <= (ops.double() - exact).abs().mean()


def test_kernel_dtype_rule():
    from mpo.torch._layers import kernel_dtype

    x = torch.zeros(2, 3)
    assert kernel_dtype(x, [torch.zeros(1, dtype=torch.float64)]) == "float64"
    assert kernel_dtype(x, [torch.zeros(1, dtype=torch.bfloat16)]) == "float32"
    assert kernel_dtype(x, [torch.zeros(1), torch.zeros(1, dtype=torch.float64)]) is None  # mixed: torch ops
    assert kernel_dtype(x, [torch.zeros(1, dtype=torch.complex64)]) is None


@pytest.mark.parametrize("grad", [False, True])
def test_embedding_auto_is_timed_once_per_kind_of_lookup(grad, monkeypatch):
    from mpo.torch import MPOEmbedding

    torch.manual_seed(4)
    layer = MPOEmbedding.from_embedding(nn.Embedding(600, 48), max_bond=8)
    ids = torch.randint(0, 600, (3, 70))
    count = len(torch.unique(ids))
    flops = layer.forward_flops(count, autograd=grad)
    if _autotune.settled(flops["contract"], flops["rebuild"]) is not None:
        pytest.skip("FLOPs settle this shape; nothing is timed")
    assert flops["auto"] is None  # not timed yet
    timed = []
    real = _autotune.choose

    def spy(key, contract, rebuild, run):
        timed.append(key)
        return real(key, contract, rebuild, run)

    monkeypatch.setattr(_autotune, "choose", spy)
    want = layer.weight_matrix().detach()[ids]
    with torch.set_grad_enabled(grad):
        first = layer(ids)
        second = layer(ids)
        by_mode = {mode: layer(ids, mode=mode).detach() for mode in ("contract", "rebuild")}
    pick = layer.forward_flops(count, autograd=grad)["auto"]
    assert pick in ("contract", "rebuild") and len(timed) == 1  # the second lookup takes the cached choice
    assert timed[0][0] == "embedding" and _autotune.chosen(timed[0]) == pick
    torch.testing.assert_close(first.detach(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second.detach(), by_mode[pick], rtol=0, atol=0)


@pytest.mark.parametrize("how", ["torch", "env"])
def test_reproducible_auto_takes_the_cheaper_mode_without_timing(how, monkeypatch):
    # Under torch.use_deterministic_algorithms(True) or MPO_DETERMINISTIC=1 "auto" must pick the same
    # mode on every run: the one needing fewer FLOPs, never a timing.
    def never(mode):
        raise AssertionError("timed although a reproducible choice was asked for")

    was = torch.are_deterministic_algorithms_enabled()
    if how == "torch":
        torch.use_deterministic_algorithms(True)
    else:
        monkeypatch.setenv("MPO_DETERMINISTIC", "1")
    try:
        assert _autotune.reproducible()
        assert _autotune.choose(("r", 1), 1.0, 1.2, never) == "contract"
        assert _autotune.choose(("r", 2), 1.2, 1.0, never) == "rebuild"
        assert _autotune.choose(("r", 3), 1.0, 1.0, never) == "contract"  # a tie: contract
        # A real layer: the pick is the FLOP rule's, and the answer the dense one's.
        torch.manual_seed(0)
        layer = MPOLinear.from_linear(nn.Linear(96, 80), max_bond=6)
        x = torch.randn(40, 96)
        with torch.no_grad():
            flops = layer.forward_flops(40, autograd=False)
            want = "contract" if flops["contract"] <= flops["rebuild"] else "rebuild"
            assert _autotune.settled(flops["contract"], flops["rebuild"]) or layer.auto_mode(x) == want
            torch.testing.assert_close(layer(x), layer(x, mode="rebuild"), rtol=1e-4, atol=1e-4)
    finally:
        torch.use_deterministic_algorithms(was)
    # A timed choice and a reproducible one are filed apart: the timed kind is chosen afresh.
    monkeypatch.delenv("MPO_DETERMINISTIC", raising=False)
    key = _autotune.mode_key("linear", list(layer.cores), (96, 80), 40, False)
    monkeypatch.setenv("MPO_DETERMINISTIC", "1")
    assert _autotune.mode_key("linear", list(layer.cores), (96, 80), 40, False) != key


def test_deterministic_variable_is_checked(monkeypatch):
    from mpo import _timed_choice

    for value, want in (("", False), ("0", False), ("1", True), (" 1 ", True)):
        monkeypatch.setenv("MPO_DETERMINISTIC", value)
        assert _timed_choice.deterministic() is want
    monkeypatch.setenv("MPO_DETERMINISTIC", "yes")
    with pytest.raises(ValueError, match=r"MPO_DETERMINISTIC must be 0 or 1 \(or unset\), got 'yes'"):
        _timed_choice.deterministic()
