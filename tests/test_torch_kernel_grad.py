"""The C++ kernel with autograd (``mpo.torch._kernel.KernelProduct``) against the torch-ops route it
replaces: same outputs, same gradients, for every kind of product layer."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from mpo.torch import MPOEmbedding, MPOLinear, MPOTiedLinear  # noqa: E402
from mpo.torch import _kernel  # noqa: E402
from mpo.torch._kernel import KernelProduct, ProductSpec  # noqa: E402


def _pass(layer, x, wrt, kernel: bool, monkeypatch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Forward in mode "contract" with autograd, and the gradients of a fixed weighted sum."""
    monkeypatch.setattr(_kernel, "KERNEL_AUTOGRAD", kernel)
    with torch.enable_grad():
        out = layer(x, mode="contract")
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        grads = torch.autograd.grad((out * weights).sum(), wrt, allow_unused=True)
    return out.detach(), grads


def _layers():
    torch.manual_seed(0)
    plain = MPOLinear.from_linear(nn.Linear(30, 42), max_bond=5).double()
    padded = MPOLinear.from_linear(nn.Linear(97, 61), n=3, max_bond=4).double()
    assert padded.padded_shape != (97, 61)
    scaled = MPOLinear.from_linear(nn.Linear(24, 20), n=3, max_bond=3, row_weights=torch.rand(24) + 0.5).double()
    assert scaled.row_scale is not None
    source = MPOEmbedding.from_embedding(nn.Embedding(51, 30), n=3, max_bond=4).double()
    return {
        "plain": plain,
        "padded": padded,
        "row_scaled": scaled,
        "tied_transposed": MPOTiedLinear(source, mode="contract").double(),
        "tied": MPOTiedLinear(source, nn.Parameter(torch.randn(30)), transposed=False).double(),
    }


@pytest.mark.parametrize("name", ["plain", "padded", "row_scaled", "tied_transposed", "tied"])
def test_kernel_route_equals_the_torch_ops_route(name, monkeypatch):
    layer = _layers()[name]
    x = torch.randn(7, 3, layer.in_features, dtype=torch.float64, requires_grad=True)
    wrt = [x, *layer.cores, *(p for p in layer.parameters() if p.requires_grad and p.dim() == 1)]
    out_k, grads_k = _pass(layer, x, wrt, True, monkeypatch)
    out_t, grads_t = _pass(layer, x, wrt, False, monkeypatch)
    assert out_k.shape == (7, 3, layer.out_features)
    torch.testing.assert_close(out_k, out_t, rtol=1e-12, atol=1e-12)
    assert len(grads_k) == len(grads_t) == len(wrt)
    for got, want in zip(grads_k, grads_t):
        assert got is not None and want is not None
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12)


def test_gradcheck_of_the_function_both_orientations():
    torch.manual_seed(1)
    source = MPOLinear.from_linear(nn.Linear(10, 14), n=3, max_bond=3).double()
    cores = [c.detach().clone().requires_grad_() for c in source.cores]
    for transposed, width in ((False, 10), (True, 14)):
        spec = ProductSpec(transposed, width, 24 - width)
        x = torch.randn(4, width, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda inp, *cs: KernelProduct.apply(inp, spec, *cs), (x, *cores))


def test_frozen_cores_and_input_get_no_gradient(monkeypatch):
    # Lightweight fine-tuning (MPOP §4): the central core frozen, only the auxiliary ones train.
    torch.manual_seed(2)
    layer = MPOLinear.from_linear(nn.Linear(30, 42), max_bond=5).double().lightweight()
    assert not layer.central.requires_grad
    x = torch.randn(5, 30, dtype=torch.float64)
    trained = [c for c in layer.cores if c.requires_grad]
    _, grads_k = _pass(layer, x, trained, True, monkeypatch)
    _, grads_t = _pass(layer, x, trained, False, monkeypatch)
    for got, want in zip(grads_k, grads_t):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12)
    # What autograd does not ask for, the backward does not compute.
    seen = {}

    def spy(ctx, grad):
        seen["needs"] = tuple(ctx.needs_input_grad)
        return original(ctx, grad)

    original = KernelProduct.backward
    monkeypatch.setattr(_kernel, "KERNEL_AUTOGRAD", True)
    monkeypatch.setattr(KernelProduct, "backward", staticmethod(spy))
    layer(x, mode="contract").sum().backward()
    central = layer.central_index
    assert seen["needs"][0] is False and seen["needs"][2 + central] is False
    assert layer.central.grad is None and all(c.grad is not None for c in layer.auxiliary)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_layers_train_in_float32(dtype, monkeypatch):
    # The kernel route widens to float32 and rounds each gradient once; the torch-ops route rounds in
    # the half type after every operation. Against the float64 gradients of the same (rounded) cores
    # and input, the kernel's are never further off on average, and within a few half ulps.
    torch.manual_seed(3)
    layer = MPOLinear.from_linear(nn.Linear(96, 80), max_bond=6).to(dtype)
    x = torch.randn(40, 96, dtype=dtype, requires_grad=True)
    exact_layer = MPOLinear.from_linear(nn.Linear(96, 80), max_bond=6).double()
    with torch.no_grad():
        for dst, src in zip(exact_layer.parameters(), layer.parameters()):
            dst.copy_(src.double())
    x64 = x.detach().double().requires_grad_()
    _, want = _pass(exact_layer, x64, [x64, *exact_layer.cores], False, monkeypatch)
    out_k, grads_k = _pass(layer, x, [x, *layer.cores], True, monkeypatch)
    _, grads_t = _pass(layer, x, [x, *layer.cores], False, monkeypatch)
    assert out_k.dtype == dtype
    for got, ops, exact in zip(grads_k, grads_t, want):
        assert got.dtype == dtype
        err_k = (got.double() - exact).abs()
        assert err_k.mean() <= (ops.double() - exact).abs().mean()
        assert err_k.max() <= 4 * torch.finfo(dtype).eps * exact.abs().max()


def test_second_derivative_needs_the_torch_ops_route(monkeypatch):
    torch.manual_seed(4)
    layer = MPOLinear.from_linear(nn.Linear(12, 10), n=3, max_bond=4).double()
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)

    def penalty() -> torch.Tensor:
        with torch.enable_grad():
            (g,) = torch.autograd.grad(layer(x, mode="contract").pow(2).sum(), x, create_graph=True)
            return g.pow(2).sum()

    monkeypatch.setattr(_kernel, "KERNEL_AUTOGRAD", True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        penalty().backward()
    monkeypatch.setattr(_kernel, "KERNEL_AUTOGRAD", False)
    penalty().backward()
    assert all(c.grad is not None for c in layer.cores)


def test_flops_follow_the_route(monkeypatch):
    # With autograd, "contract" counts the plan of whichever route runs: the kernel's may merge cores
    # or start from the central one; the torch-ops sweep only goes left or right.
    torch.manual_seed(5)
    layer = MPOLinear.from_linear(nn.Linear(768, 768), max_bond=8)
    monkeypatch.setattr(_kernel, "KERNEL_AUTOGRAD", True)
    kernel = layer.forward_flops(64, autograd=True)["contract"]
    assert kernel == layer.forward_flops(64, autograd=False)["contract"]
    monkeypatch.setattr(_kernel, "KERNEL_AUTOGRAD", False)
    assert layer.forward_flops(64, autograd=True)["contract"] == layer.contract_plan(64)[2]


def test_kernel_product_refuses_what_it_cannot_run():
    spec = ProductSpec(False, 4, 4)
    cores = [torch.zeros(1, 2, 2, 1, dtype=torch.complex64), torch.zeros(1, 2, 2, 1, dtype=torch.complex64)]
    with pytest.raises(TypeError, match="the C\\+\\+ kernel runs CPU tensors of float32"):
        _kernel.kernel_product(torch.zeros(2, 4, dtype=torch.complex64), cores, spec)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("size", [(30, 42), (97, 61)])
def test_matrix_of_lays_out_the_transpose(dtype, size):
    # The rebuild mode hands F.linear M.T built in that layout: torch's bf16 GEMM on a CPU without
    # native bf16 ran 10x slower on a transposed view.
    torch.manual_seed(6)
    layer = MPOLinear.from_linear(nn.Linear(*size), n=3, max_bond=4).to(dtype)
    cores = list(layer.cores)
    m = _kernel.matrix_of(cores, layer.matrix_shape)
    t = _kernel.matrix_of(cores, layer.matrix_shape, transpose=True)
    assert m.shape == layer.matrix_shape and m.dtype == t.dtype == dtype
    assert t.is_contiguous()
    # The two layouts sum the same products in another order: equal to rounding (one ulp in bfloat16).
    tol = 1e-14 if dtype == torch.float64 else torch.finfo(dtype).eps
    torch.testing.assert_close(t, m.T, rtol=tol, atol=tol * float(m.detach().abs().max()))
    # Half cores are contracted in float32 and rounded once: within half an ulp of the exact matrix of
    # the stored cores, plus float32's accumulation error (rounding after every product is not).
    exact = _kernel.matrix_of([c.double() for c in cores], layer.matrix_shape)
    slack = (1e-6 if dtype == torch.bfloat16 else 1e-14) * exact.abs().max()
    assert torch.all((m.double() - exact).abs() <= torch.finfo(dtype).eps / 2 * exact.abs() + slack)


def test_set_kernel_autograd_switches_and_checks(monkeypatch):
    import mpo.torch as mt

    monkeypatch.setattr(_kernel, "KERNEL_AUTOGRAD", True)
    assert mt.set_kernel_autograd(False) is True
    assert _kernel.KERNEL_AUTOGRAD is False
    x = torch.zeros(2, 4)
    cores = [torch.zeros(1, 2, 2, 1), torch.zeros(1, 2, 2, 1)]
    assert not _kernel.uses_kernel(x, cores, autograd=True) and _kernel.uses_kernel(x, cores, autograd=False)
    assert mt.set_kernel_autograd(True) is False
    assert _kernel.uses_kernel(x, cores, autograd=True)
    with pytest.raises(TypeError, match="enabled must be a bool, got int"):
        mt.set_kernel_autograd(1)
    # "auto" files its timed choices by route: a choice made for one route is not reused for the other.
    layer = MPOLinear.from_linear(nn.Linear(30, 42), max_bond=5)
    keys = {}
    for enabled in (True, False):
        mt.set_kernel_autograd(enabled)
        keys[enabled] = (layer._mode_key(64, True), layer._mode_key(64, False))
    mt.set_kernel_autograd(True)
    assert keys[True][0] != keys[False][0] and keys[True][1] == keys[False][1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("size", [(30, 42), (97, 61)])
@pytest.mark.parametrize("transpose", [False, True])
def test_dense_weight_without_autograd_is_the_kernels_matrix(dtype, size, transpose, monkeypatch):
    torch.manual_seed(7)
    layer = MPOLinear.from_linear(nn.Linear(*size), n=3, max_bond=4).to(dtype)
    cores = list(layer.cores)
    calls = []
    real = _kernel._core.multiply_out
    monkeypatch.setattr(_kernel._core, "multiply_out", lambda *a: calls.append(a) or real(*a))
    want = _kernel.matrix_of(cores, layer.matrix_shape, transpose=transpose).detach()
    got = _kernel.dense_weight(cores, layer.matrix_shape, transpose=transpose, autograd=False)
    assert len(calls) == 1 and got.dtype == dtype and got.is_contiguous() and got.shape == want.shape
    tol = {torch.float32: 1e-6, torch.float64: 1e-14, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))
    # With autograd the torch ops build it, so gradients reach the cores.
    with torch.enable_grad():
        traced = _kernel.dense_weight(cores, layer.matrix_shape, transpose=transpose, autograd=True)
    assert len(calls) == 1 and traced.grad_fn is not None


def test_rebuild_takes_the_kernels_matrix_unless_a_core_needs_a_gradient(monkeypatch):
    torch.manual_seed(8)
    layer = MPOLinear.from_linear(nn.Linear(30, 42), max_bond=5).double()
    table = MPOEmbedding.from_embedding(nn.Embedding(51, 30), n=3, max_bond=4).double()
    calls = []
    real = _kernel._core.multiply_out
    monkeypatch.setattr(_kernel._core, "multiply_out", lambda *a: calls.append(a) or real(*a))
    x = torch.randn(6, 30, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 50, 7], [7, 3, 0]])
    with torch.enable_grad():
        want = layer(x, mode="rebuild")  # the cores train: torch ops build the weight
        (want_dx,) = torch.autograd.grad(want.sum(), x)
        want_rows = table(ids, mode="rebuild")
    assert calls == [] and want_rows.grad_fn is not None
    for c in [*layer.cores, *table.cores]:
        c.requires_grad_(False)
    with torch.enable_grad():
        got = layer(x, mode="rebuild")  # only x needs a gradient: the weight is a constant
        (got_dx,) = torch.autograd.grad(got.sum(), x)
        got_rows = table(ids, mode="rebuild")
    assert len(calls) == 2
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_dx, want_dx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_rows, want_rows.detach(), rtol=1e-12, atol=1e-12)


def _params_with(layer, change):
    return {k: change(k, v.detach()) for k, v in layer.named_parameters()}


@pytest.mark.parametrize("mode", ["contract", "rebuild", "auto"])
def test_torch_func_and_forward_mode_take_torch_ops(mode):
    # torch.func's wrappers have no storage the kernel could read, and a forward-mode tangent would be
    # dropped by it: both go to torch ops, with the gradients and tangents of the plain route.
    from torch.func import functional_call, grad, jvp

    torch.manual_seed(9)
    layer = MPOLinear.from_linear(nn.Linear(30, 42), n=3, max_bond=4).double()
    x = torch.randn(3, 30, dtype=torch.float64)

    def loss(params):
        return functional_call(layer, params, (x,), {"mode": mode}).pow(2).sum()

    got = grad(loss)(_params_with(layer, lambda k, v: v))
    with torch.enable_grad():
        want = torch.autograd.grad(layer(x, mode=mode).pow(2).sum(), list(layer.parameters()))
    for (name, _), w in zip(layer.named_parameters(), want):
        torch.testing.assert_close(got[name], w, rtol=1e-12, atol=1e-12)

    # Tangent along every core's direction d: against a central difference of the output.
    base = _params_with(layer, lambda k, v: v)
    direction = {k: torch.randn_like(v) if k.startswith("cores") else torch.zeros_like(v) for k, v in base.items()}
    _, tangent = jvp(lambda p: functional_call(layer, p, (x,), {"mode": mode}), (base,), (direction,))
    step = 1e-6
    ahead = functional_call(layer, {k: v + step * direction[k] for k, v in base.items()}, (x,), {"mode": mode})
    behind = functional_call(layer, {k: v - step * direction[k] for k, v in base.items()}, (x,), {"mode": mode})
    torch.testing.assert_close(tangent, (ahead - behind).detach() / (2 * step), rtol=1e-6, atol=1e-7)
    with torch.autograd.forward_ad.dual_level():
        duals = {k: torch.autograd.forward_ad.make_dual(v, direction[k]) for k, v in base.items()}
        out = functional_call(layer.requires_grad_(False), duals, (x,), {"mode": mode})
        dual_tangent = torch.autograd.forward_ad.unpack_dual(out).tangent
    assert dual_tangent is not None
    torch.testing.assert_close(dual_tangent, tangent, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # vmap over a batch of inputs
        batched = torch.stack([x, 2 * x])
        torch.testing.assert_close(torch.vmap(lambda t: layer(t, mode=mode))(batched), layer(batched, mode=mode),
                                   rtol=1e-12, atol=1e-12)


def test_weight_of_a_padded_tied_head_is_contiguous_with_autograd():
    torch.manual_seed(10)
    source = MPOEmbedding.from_embedding(nn.Embedding(51, 30), n=3, max_bond=4)
    assert source.padded_shape != source.matrix_shape
    for transpose in (False, True):
        weight = _kernel.dense_weight(list(source.cores), source.matrix_shape, transpose=transpose, autograd=True)
        assert weight.is_contiguous() and weight.grad_fn is not None
