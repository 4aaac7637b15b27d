"""The library's C++ product kernel (``mpo._core.apply``) behind torch tensors, with and without autograd.

Without autograd a layer's "contract" mode calls the kernel directly. With autograd it calls
:class:`KernelProduct`, a ``torch.autograd.Function`` whose backward is written out:

- the input's gradient ``dL/dx = g @ P.T`` is one more pass of the kernel, through the same cores
  (P the product's in x out matrix, g the output's gradient);
- the cores' gradients come from ``dL/dP = x.T @ g``, one dense GEMM, sent back through the
  contraction of the cores into P (autograd over :func:`matrix_of`, a rebuild's FLOPs).

The torch-ops sweep it replaces (``_layers._sweep``) permutes and copies the whole (tokens x width)
state at every core, and its backward does it again: on one AVX2 core, for 4096 tokens through a
768 x 3072 layer at max_bond 4, it took 2.6x the time of ``nn.Linear``'s forward and backward, where
the contraction needs 16 % of the dense FLOPs. With this Function the same pass costs the kernel's
forward, one dense GEMM and a rebuild: 0.77x ``nn.Linear``'s forward and backward (two GEMMs when
the input needs no gradient).

bfloat16 and float16 layers run all of it in float32 (the values widen exactly; each gradient is
rounded once to its tensor's dtype): on CPUs without native bf16 arithmetic torch's bf16 GEMMs run
about 10x slower than float32 ones (the bf16 pass above: 0.14x ``nn.Linear``'s).

The switch :data:`KERNEL_AUTOGRAD` (set by ``mpo.torch.set_kernel_autograd``) turns the Function off:
torch ops then run the contraction with autograd, as before; the tests compare the two routes' outputs
and gradients. The Function's backward is not itself differentiable (``once_differentiable``): a second
derivative, e.g. a gradient penalty, needs ``set_kernel_autograd(False)`` or ``mode="rebuild"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.autograd.forward_ad as forward_ad
from torch.autograd.function import once_differentiable

from .. import _apply_route, _core
from . import _autotune

__all__ = [
    "KERNEL_AUTOGRAD",
    "KernelProduct",
    "ProductSpec",
    "dense_weight",
    "kernel_arrays",
    "kernel_dtype",
    "kernel_product",
    "matrix_of",
    "merge_cores",
    "set_kernel_autograd",
    "traced",
    "uses_kernel",
]

#: Whether a "contract" pass that needs autograd runs the C++ kernel through :class:`KernelProduct`
#: (True) or torch ops (False: slower on CPU, but twice differentiable).
KERNEL_AUTOGRAD = True

#: Core dtypes the C++ kernel runs in directly, and the half types it runs in float32 (exact widening).
_KERNEL_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_WIDENED_DTYPES = (torch.bfloat16, torch.float16)


def set_kernel_autograd(enabled: bool) -> bool:
    """Whether "contract" passes with autograd run the C++ kernel (:class:`KernelProduct`, the default)
    or torch ops (slower on the CPU, but differentiable twice, e.g. for a gradient penalty); returns
    the previous setting. The mode "auto" times the route in force (its choices are filed by route).
    """
    global KERNEL_AUTOGRAD
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    previous, KERNEL_AUTOGRAD = KERNEL_AUTOGRAD, enabled
    return previous


# torch.func's wrappers (grad, vmap, jvp) have no storage the kernel could read; torch has no public test
# for them, so a torch without this function (none known) just skips the check.
_is_transformed = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


def traced(t: torch.Tensor) -> bool:
    """Whether ``t`` is a torch.func transform's wrapper or carries a forward-mode tangent: only torch
    ops propagate those (the kernel would drop the tangent or fail on the wrapper)."""
    if _is_transformed is not None and _is_transformed(t):
        return True
    return forward_ad.unpack_dual(t).tangent is not None


def kernel_dtype(x: torch.Tensor, cores: Sequence[torch.Tensor]) -> np.dtype | None:
    """The NumPy dtype the C++ kernel runs a product of ``x`` with ``cores`` in, or None where it cannot
    (a tensor off the CPU, a dtype it has no route for, or a tensor under a torch.func transform or
    with a forward-mode tangent): then torch ops run it.

    float32 and float64 cores run in their own dtype; bfloat16 and float16 cores run in float32: their
    values widen exactly, so the kernel's float32 product is the exact product of the stored cores up
    to float32 rounding, which the single rounding back to the layer's dtype then dominates.
    """
    if x.device.type != "cpu" or any(c.device.type != "cpu" for c in cores):
        return None
    if any(traced(t) for t in (x, *cores)):
        return None
    dtypes = {c.dtype for c in cores}
    if len(dtypes) != 1:
        return None
    (dtype,) = dtypes
    if dtype in _KERNEL_DTYPES:
        return np.dtype(_KERNEL_DTYPES[dtype])
    if dtype in _WIDENED_DTYPES:
        return np.dtype(np.float32)
    return None


def uses_kernel(x: torch.Tensor, cores: Sequence[torch.Tensor], autograd: bool) -> bool:
    """Whether a "contract" pass of ``x`` through ``cores`` runs the C++ kernel (else torch ops)."""
    return kernel_dtype(x, cores) is not None and (not autograd or KERNEL_AUTOGRAD)


def kernel_arrays(tensors: Sequence[torch.Tensor], dtype: np.dtype) -> list[np.ndarray]:
    """The tensors as NumPy arrays of ``dtype`` (no copy when they already are), detached."""
    target = torch.float32 if dtype == np.float32 else torch.float64
    return [t.detach().to(target).numpy() for t in tensors]


def merge_cores(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Neighbouring cores multiplied into one: (d, i_a, j_a, e) x (e, i_b, j_b, f) -> (d, i_a i_b, j_a j_b, f).

    One core at a time, each step a small permute: for the whole chain (:func:`matrix_of`) this takes
    half the time of contracting the bonds first and permuting all 2n indices of the matrix at the end
    (384 x 1536 at max_bond 8, one AVX2 core: 1.5 against 3.1 ms forward, 6.0 against 7.9 ms forward
    and backward).
    """
    acc = cores[0]
    for c in cores[1:]:
        d, i, j, _ = acc.shape
        _, k, l, f = c.shape
        acc = torch.einsum("aijb,bklc->aikjlc", acc, c).reshape(d, i * k, j * l, f)
    return acc


def matrix_of(cores: Sequence[torch.Tensor], shape: tuple[int, int], *, transpose: bool = False) -> torch.Tensor:
    """M (``shape``, padding removed) contracted from cores T_k[d, i_k, j_k, e], differentiable;
    M.T, laid out as such (contiguous), with ``transpose``.

    bfloat16 and float16 cores are contracted in float32 and the result rounded once (more accurate
    than rounding after every product, and faster on CPUs without native half arithmetic).
    """
    dtype = cores[0].dtype
    if dtype in _WIDENED_DTYPES:
        cores = [c.to(torch.float32) for c in cores]
    if transpose:  # the MPO of M.T: each core's in and out factors swapped (views)
        cores = [c.permute(0, 2, 1, 3) for c in cores]
    # The row-major layout of docs/ALGORITHMS.md §1: (i_1..i_n) x (j_1..j_n), or (j..) x (i..) for M.T.
    dense = merge_cores(cores)[0, :, :, 0]
    rows, cols = shape[::-1] if transpose else shape
    if tuple(dense.shape) != (rows, cols):
        dense = dense[:rows, :cols]
        if transpose:  # a weight for F.linear: contiguous, as the layout promises
            dense = dense.contiguous()
    return dense.to(dtype)


def dense_weight(
    cores: Sequence[torch.Tensor], shape: tuple[int, int], *, transpose: bool, autograd: bool
) -> torch.Tensor:
    """M of ``shape`` (M.T, laid out as such, with ``transpose``) for a rebuild: :func:`matrix_of` when
    autograd needs it, else multiplied out by the C++ kernel where it runs (``_core.multiply_out``:
    0.3 ms against 1.5 ms in torch ops for a 384 x 1536 matrix at max_bond 8 on one AVX2 core, where
    the dense product of 4096 tokens takes 53 ms).
    """
    dtype = None if autograd else kernel_dtype(cores[0], cores)
    if dtype is None:
        # Contiguous whichever way round: a sliced (padded) M is a view, and F.linear / F.embedding read
        # a strided weight on slower paths (bfloat16 GEMM: 10x).
        return matrix_of(cores, shape, transpose=transpose).contiguous()
    arrays = kernel_arrays(cores, dtype)
    if transpose:  # the MPO of M.T: each core's in and out factors swapped
        arrays = [np.ascontiguousarray(a.transpose(0, 2, 1, 3)) for a in arrays]
    dense = torch.from_numpy(_core.multiply_out(arrays, dtype.name))
    rows, cols = shape[::-1] if transpose else shape
    if tuple(dense.shape) != (rows, cols):
        dense = dense[:rows, :cols].contiguous()
    return dense.to(cores[0].dtype)


class ProductSpec(NamedTuple):
    """What :class:`KernelProduct` needs besides the tensors: the product is ``x @ M`` (``x @ M.T``
    when ``transposed``), M of ``matrix_shape`` (in x out, or out x in when transposed)."""

    transposed: bool
    in_features: int
    out_features: int

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features) if self.transposed else (self.in_features, self.out_features)


def _product(
    cores: Sequence[torch.Tensor], x: torch.Tensor, transposed: bool, out_width: int, dtype: np.dtype
) -> np.ndarray:
    flat = np.ascontiguousarray(kernel_arrays([x], dtype)[0])
    arrays = kernel_arrays(cores, dtype)
    shapes = [a.shape for a in arrays]
    batch = flat.shape[0]

    def run(plan: str) -> np.ndarray:
        return _core.apply(arrays, transposed, flat, False, out_width, plan)

    if _autotune.reproducible():  # torch's deterministic mode: no timed choice, the FLOP-cheapest plan
        return run("auto")
    # The sweep order timed fastest for this kind of product, as X @ m takes it (FLOPs alone mislead);
    # the cores are cast at every call, so the cheapest plan cannot keep its merges.
    key = _apply_route.sweep_key(shapes, transposed, False, batch, dtype, keep_merges=False)
    plan, result = _apply_route.choose_sweep(key, shapes, batch, transposed, run)
    return run(plan) if result is None else result


def kernel_product(x: torch.Tensor, cores: Sequence[torch.Tensor], spec: ProductSpec) -> torch.Tensor:
    """``x @ M`` (x 2-D, on the CPU) by the C++ kernel in :func:`kernel_dtype`, without autograd."""
    dtype = kernel_dtype(x, cores)
    if dtype is None:
        raise TypeError(f"the C++ kernel runs CPU tensors of float32, float64, bfloat16 or float16, got "
                        f"{x.dtype} on {x.device} with cores {sorted({str(c.dtype) for c in cores})}")
    return torch.from_numpy(_product(cores, x, spec.transposed, spec.out_features, dtype)).to(x.dtype)


class KernelProduct(torch.autograd.Function):
    """``x @ M`` by the C++ kernel with a written-out backward (see the module docstring).

    ``KernelProduct.apply(x, spec, *cores)``: x (batch, in_features) on the CPU, spec a
    :class:`ProductSpec`, cores the MPO's T_k (float32, float64, or half types run in float32).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, spec: ProductSpec, *cores: torch.Tensor) -> torch.Tensor:
        ctx.spec = spec
        ctx.save_for_backward(x, *cores)
        return kernel_product(x, cores, spec)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, *cores = ctx.saved_tensors
        spec: ProductSpec = ctx.spec
        dtype = kernel_dtype(x, cores)
        assert dtype is not None  # the forward ran the kernel on these tensors
        wide = torch.float32 if dtype == np.float32 else torch.float64
        grad_x = None
        if ctx.needs_input_grad[0]:
            # dL/dx = g @ P.T: the kernel through the same cores, the other way round.
            grad_x = torch.from_numpy(_product(cores, grad, not spec.transposed, spec.in_features, dtype)).to(x.dtype)
        wanted = [k for k in range(len(cores)) if ctx.needs_input_grad[2 + k]]
        grads: list[torch.Tensor | None] = [None] * len(cores)
        if wanted:
            # dL/dP = x.T @ g (in x out), then back through the contraction of the cores into P.
            dense_grad = x.to(wide).T @ grad.to(wide)
            with torch.enable_grad():
                leaves = [c.detach().to(wide).requires_grad_(k in wanted) for k, c in enumerate(cores)]
                matrix = matrix_of(leaves, spec.matrix_shape)
                product = matrix.T if spec.transposed else matrix
                found = torch.autograd.grad(product, [leaves[k] for k in wanted], dense_grad)
            for k, g in zip(wanted, found):
                grads[k] = g.to(cores[k].dtype)
        return (grad_x, None, *grads)
