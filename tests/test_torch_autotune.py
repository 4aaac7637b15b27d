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
from mpo.torch import _autotune  # noqa: E402


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
