"""MPO layers for PyTorch: ``MPOLinear``, ``MPOConv1D``, ``MPOEmbedding`` and ``MPOTiedLinear``
(MPOP §4, docs/ALGORITHMS.md §9 and §12).

A layer holds the n cores T_k[d_{k-1}, i_k, j_k, d_k] of its weight matrix M as Parameters, the bias
dense. M is laid out as the MPO of the library, always in x out for a product: for a Linear,
M = W.T (in_features x out_features), so that y = x @ M + b; for transformers' Conv1D (GPT-2), which
stores W as in x out and computes x @ W + b, M = W; for an Embedding, M is the weight
(num_embeddings x embedding_dim) and a lookup reads rows of M. A Linear tied to an Embedding
(``MPOTiedLinear``) reads the embedding's cores transposed, x @ M.T. Each layer's ``weight`` is a
:class:`WeightView`: the dense weight's shape, dtype and device, without values. Padding added by shape planning is invisible: inputs are zero-padded, outputs sliced.

Two ways to run the forward pass:

- "contract": pass the input through the cores one at a time (the O(n m d^3) route of MPOP Table 2);
- "rebuild": contract the cores into M (what the authors' layers did) and call the dense op.

On the CPU, "contract" runs the library's C++ kernel (``mpo._core.apply`` and ``rows``, the code
behind ``X @ m`` and ``m.rows``), which does the contraction without the copies of torch's permutes.
With autograd a Linear's kernel pass goes through ``_kernel.KernelProduct``, whose backward is the
kernel again for the input's gradient and one dense GEMM sent back through the rebuild for the cores'
(see ``mpo.torch._kernel``); an embedding's lookup with autograd, and any pass off the CPU, runs in
torch ops, through which gradients reach the cores directly. The kernel reads float32 and float64;
bfloat16 and float16 layers run it in float32 (cores and input widen exactly, each result is rounded
once to its dtype), which is both faster than torch's half-precision ops on a CPU and closer to the
exact product.

``mode="auto"`` takes the faster of the two as timed on this machine the first time a layer meets a
kind of forward pass (``_autotune``: shapes, dtype, autograd or not, rows rounded up to a power of
two; for an embedding, the number of distinct ids), unless FLOPs alone settle it (``forward_flops``).
"""


from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import _core
from .._decompose import decompose
from .._mpo import MPO
from . import _autotune, _kernel
from ._kernel import (
    KernelProduct,
    ProductSpec,
    dense_weight,
    kernel_arrays,
    kernel_dtype,
    kernel_product,
    matrix_of,
    merge_cores,
)

__all__ = [
    "MODES",
    "MPOConv1D",
    "MPOEmbedding",
    "MPOLayer",
    "MPOLinear",
    "MPOTiedLinear",
    "WeightView",
    "is_conv1d",
    "layer_for",
]

MODES = ("auto", "contract", "rebuild")


def _needs_autograd(x: torch.Tensor, params) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))


def weight_of(module: nn.Module) -> torch.Tensor:
    """``module.weight``, checked to be a tensor (nn.Module's attribute lookup is typed Tensor | Module)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor, got {type(weight).__name__}")
    return weight


def bias_of(module: nn.Module) -> torch.Tensor | None:
    """``module.bias`` when it is a tensor, else None (no bias, or ``bias=False``)."""
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def _bias_parameter(bias: torch.Tensor, ref: torch.Tensor) -> nn.Parameter:
    # A bias Parameter of the cores' dtype and device is kept as it is, not copied: a bias tied to
    # another module (BERT's decoder.bias is cls.predictions.bias) stays tied and counts once.
    if isinstance(bias, nn.Parameter) and bias.dtype == ref.dtype and bias.device == ref.device:
        return bias
    return nn.Parameter(bias.detach().clone().to(dtype=ref.dtype, device=ref.device))


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def _decompose(matrix: np.ndarray, shape, n, max_bond, tol, ratio, row_weights=None) -> MPO:
    # Decompose in float64 whatever the layer's dtype: the float32 cores are then the rounding of
    # exact ones, so full bonds reproduce the layer to float32 rounding.
    kwargs = {"shape": shape, "n": n, "max_bond": max_bond, "tol": tol, "ratio": ratio, "row_weights": row_weights}
    return decompose(np.asarray(matrix, dtype=np.float64), **kwargs)


def _sweep(x: torch.Tensor, cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """x (B, prod i_k) through the cores left to right: one GEMM per core, returns (B, prod j_k)."""
    batch = x.shape[0]
    # State (B, done j's, rest i's, d): each core eats (d_{k-1}, i_k) and emits (j_k, d_k).
    state = x.reshape(batch, 1, x.shape[1], 1)
    for c in cores:
        d, i, j, d_next = c.shape
        done, rest = state.shape[1], state.shape[2] // i
        s = state.reshape(batch, done, i, rest, d).permute(0, 1, 3, 4, 2)  # (B, done, rest, d, i)
        s = s.reshape(batch * done * rest, d * i) @ c.reshape(d * i, j * d_next)
        state = s.reshape(batch, done, rest, j, d_next).permute(0, 1, 3, 2, 4).reshape(batch, done * j, rest, d_next)
    return state.reshape(batch, -1)


class WeightView(torch.Tensor):
    """The ``weight`` of an MPO layer: a tensor with the dense weight's shape, dtype and device and
    no values (no memory is allocated).

    Model code reads a layer's ``weight`` for its metadata (T5: ``self.wo.weight.dtype`` decides a
    cast; others read ``.device`` or ``.shape``). An MPO layer holds its matrix as cores, so it
    answers those reads truthfully and refuses, with a TypeError naming the layer, any read of
    values: a silent zero or stale matrix would be a wrong answer. The values are
    ``layer.weight_matrix()`` (in the MPO's orientation, see the module docstring).
    """

    _owner: str  # the layer's class name, for the error message

    @staticmethod
    def __new__(cls, shape: tuple[int, ...], like: torch.Tensor, owner: str) -> WeightView:
        view = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=like.dtype, device=like.device)
        view._owner = owner
        return view

    # The parameter is torch's (Tensor.__repr__ is untyped); mypy 2.4 reports any typed override of it
    # as incompatible, even one with the same keyword and a wider type.
    def __repr__(self, *, tensor_contents: object = None) -> str:  # type: ignore[override]
        return f"WeightView(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}, owner={self._owner})"

    # torch declares __torch_dispatch__ as a plain function attribute (``_disabled_torch_dispatch_impl``),
    # while a subclass must define it as a classmethod (torch's own subclass docs): the override is right.
    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[override]
        owner = next((a._owner for a in args if isinstance(a, WeightView)), "an MPO layer")
        raise TypeError(
            f"{owner}.weight has no values: the matrix is held as MPO cores (shape, dtype and device "
            f"are real); use weight_matrix() to rebuild it (operation {func})"
        )


class _LinearProduct(nn.Module):
    """``y = x @ M + b`` (or ``x @ M.T + b``) through MPO cores: what MPOLinear and MPOTiedLinear share.

    A class using it sets in_features, out_features, mode, bias, row_scale and defines three hooks:
    ``_product_cores()`` -> (cores, transposed), ``_linear_weight(cores, autograd)`` -> the product's
    matrix as ``F.linear`` takes it ((out x in), contiguous), and ``_product_rebuild_flops()``. A
    forward pass reads the cores once (a ParameterList hands them out at ~2 us each) and passes them on.
    """

    in_features: int
    out_features: int
    mode: str
    bias: torch.Tensor | None
    row_scale: torch.Tensor | None

    def _product_cores(self) -> tuple[list[torch.Tensor], bool]:
        raise NotImplementedError

    def _linear_weight(self, cores: list[torch.Tensor], autograd: bool) -> torch.Tensor:
        raise NotImplementedError

    def _product_rebuild_flops(self) -> int:
        raise NotImplementedError

    def contract_plan(self, batch: int) -> tuple[str, tuple[int, ...], float]:
        """The torch-ops sweep of "contract" for ``batch`` rows: ("left" or "right", core groups, FLOPs).
        It runs where the C++ kernel does not: off the CPU, or with autograd after
        ``mpo.torch.set_kernel_autograd(False)``.

        The library's planner (the one :meth:`mpo.MPO.matmul_flops` reports) chooses which runs of
        neighbouring cores to multiply together first; of its orders the torch path runs the two
        sweeps, left to right and right to left, and takes the one with fewer FLOPs.
        """
        cores, transposed = self._product_cores()
        shapes = [list(c.shape) for c in cores]
        plans = []
        for sweep in ("left", "right"):
            _, _, flops, groups, _ = _core.apply_plan(shapes, int(batch), transposed, sweep)
            plans.append((sweep, tuple(groups), float(flops)))
        return min(plans, key=lambda plan: plan[2])  # the first of equals: "left" on a tie

    def forward_flops(self, batch: int, *, autograd: bool = True) -> dict:
        """FLOPs of each mode for ``batch`` input rows and the mode "auto" picks.

        "contract" counts the C++ kernel's FLOP-cheapest plan, which may also start from the central
        core (from 32 rows the kernel may run another sweep order near it that was timed faster,
        ``mpo._apply_route.choose_sweep``), where the kernel runs this pass (on the CPU; with
        ``autograd`` too unless ``mpo.torch.set_kernel_autograd`` turned that off), else the torch-ops sweep of :meth:`contract_plan`; with autograd both modes
        count the forward product only (the backward of each adds a dense GEMM). "auto" is the mode FLOPs
        alone settle, else the one timed for this kind of pass in the layer's dtype (see
        :meth:`auto_mode`), else None (not yet timed: the first such forward pass times both).
        """
        contract, rebuild = self._mode_flops(batch, autograd)
        pick = _autotune.settled(contract, rebuild) or _autotune.chosen(self._mode_key(batch, autograd))
        return {"contract": contract, "rebuild": rebuild, "auto": pick}

    # ----------------------------------------------------------------- mode="auto", timed
    def _mode_flops(self, batch: int, autograd: bool) -> tuple[float, float]:
        cores, transposed = self._product_cores()
        if _kernel.uses_kernel(cores[0], cores, autograd):  # the kernel's plan, with or without autograd
            contract = float(_core.apply_plan([list(c.shape) for c in cores], int(batch), transposed, "auto")[2])
        else:
            contract = self.contract_plan(batch)[2]
        return contract, float(self._product_rebuild_flops() + 2 * batch * self.in_features * self.out_features)

    def _mode_key(self, batch: int, autograd: bool, product: tuple[list[torch.Tensor], bool] | None = None) -> tuple:
        cores, transposed = product or self._product_cores()
        # With autograd the route also depends on the switch (the key already holds dtype and device).
        route = bool(autograd and _kernel.KERNEL_AUTOGRAD)
        extras = (self.bias is not None, self.row_scale is not None, transposed, route)
        return _autotune.mode_key("linear", list(cores), (self.in_features, self.out_features), batch, autograd, extras)

    def auto_mode(self, x: torch.Tensor, *, autograd: bool | None = None) -> str:
        """The mode ``mode="auto"`` runs for input ``x`` (..., in_features): "contract" or "rebuild".

        The faster of the two on this machine for this kind of pass, timed on a random input like
        ``x`` the first time (with the backward pass when autograd is on) and remembered for the
        process, unless FLOPs alone settle it. ``autograd`` defaults to whether this pass needs it.
        """
        product = self._product_cores()
        if autograd is None:
            autograd = _needs_autograd(x, product[0])
        return self._auto(x, autograd, product)

    def _auto(self, x: torch.Tensor, autograd: bool, product: tuple[list[torch.Tensor], bool]) -> str:
        batch = max(1, math.prod(x.shape[:-1]))
        key = self._mode_key(batch, autograd, product)
        known = _autotune.chosen(key)
        if known is not None:  # the common case: no FLOP count, no probe
            return known
        contract, rebuild = self._mode_flops(batch, autograd)
        if any(_kernel.traced(t) for t in (x, *product[0])):
            # Under a torch.func transform (vmap, grad, jvp) no probe can run (random inputs, extra
            # passes): FLOPs decide, and the choice is not filed for untransformed passes.
            return "contract" if contract <= rebuild else "rebuild"
        like = x.reshape(-1, x.shape[-1]) if x.numel() else x.new_zeros(batch, self.in_features)
        run = _autotune.probe_runner(lambda inp, mode: self(inp, mode=mode), like, list(self.parameters()), autograd)
        return _autotune.choose(key, contract, rebuild, run)

    def _contract(self, x: torch.Tensor, autograd: bool, product: tuple[list[torch.Tensor], bool]) -> torch.Tensor:
        batch = x.shape[0]
        cores, transposed = product
        if _kernel.uses_kernel(x, cores, autograd):
            spec = ProductSpec(transposed, self.in_features, self.out_features)
            return KernelProduct.apply(x, spec, *cores) if autograd else kernel_product(x, cores, spec)
        if transposed:
            # The MPO of M.T: each core's in and out factors swapped (a view, no copy).
            cores = [c.permute(0, 2, 1, 3) for c in cores]
        padded_in = math.prod(c.shape[1] for c in cores)
        padded_out = math.prod(c.shape[2] for c in cores)
        if padded_in != self.in_features:
            x = F.pad(x, (0, padded_in - self.in_features))
        sweep, groups, _ = self.contract_plan(batch)
        merged, start = [], 0
        for size in groups:
            merged.append(merge_cores(cores[start : start + size]))
            start += size
        cores = merged
        if sweep == "right":
            # Right to left is left to right on the MPO with the factor order reversed: reverse the
            # row digits of x, the cores (bonds swapped) and, at the end, the column digits.
            digits = range(len(cores), 0, -1)
            x = x.reshape(batch, *(c.shape[1] for c in cores)).permute(0, *digits).reshape(batch, -1)
            out_digits = [c.shape[2] for c in reversed(cores)]
            cores = [c.permute(3, 1, 2, 0) for c in reversed(cores)]
        out = _sweep(x, cores)
        if sweep == "right":
            out = out.reshape(batch, *out_digits).permute(0, *range(len(cores), 0, -1)).reshape(batch, -1)
        return out[:, : self.out_features] if padded_out != self.out_features else out

    def forward(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """``x @ M + b`` for x of shape (..., in_features); ``mode`` overrides the layer's mode."""
        mode = _check_mode(mode or self.mode)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: input has {x.shape[-1]} features (last axis), the layer takes "
                f"{self.in_features}"
            )
        lead = x.shape[:-1]
        batch = math.prod(lead)
        product = self._product_cores()
        cores = product[0]
        autograd = _needs_autograd(x, cores)
        if mode == "auto":
            mode = self._auto(x, autograd, product) if batch else "rebuild"
        if self.row_scale is not None:
            x = x * self.row_scale  # x @ diag(s) C = (x * s) @ C
        if mode == "rebuild" or batch == 0:
            # The weight needs autograd's graph only where a core needs a gradient (not for x's alone).
            return F.linear(x, self._linear_weight(cores, _needs_autograd(cores[0], cores)), self.bias)
        out = self._contract(x.reshape(batch, x.shape[-1]), autograd, product)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)


class MPOLayer(nn.Module):
    """What MPOLinear and MPOEmbedding share: the cores, their canonical-form round trip, freezing."""

    def __init__(self, m: MPO, *, mode: str = "auto", dtype=None, device=None) -> None:
        super().__init__()
        self.mode = _check_mode(mode)
        rows, cols = m.shape
        self.matrix_shape = (rows, cols)
        #: The decomposition's relative error bound (MPOP Eq. 4 over ||M||_F) when the layer was made.
        self.decomposition_bound = m.relative_error_bound()
        self.cores = nn.ParameterList()
        self._set_cores(m.cores, dtype=dtype or torch.get_default_dtype(), device=device)

    # ----------------------------------------------------------------- structure
    def _set_cores(self, cores: Sequence, *, dtype, device, frozen: bool = False) -> None:
        self.cores = nn.ParameterList(
            nn.Parameter(torch.tensor(np.array(c), dtype=dtype, device=device))
            for c in cores
        )
        if frozen:
            self.central.requires_grad_(False)

    @property
    def n(self) -> int:
        """Number of cores."""
        return len(self.cores)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """In factors i_1..i_n of M (padded)."""
        return tuple(c.shape[1] for c in self.cores)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Out factors j_1..j_n of M (padded)."""
        return tuple(c.shape[2] for c in self.cores)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(prod i_k, prod j_k)."""
        return (math.prod(self.in_shape), math.prod(self.out_shape))

    @property
    def bond_dims(self) -> tuple[int, ...]:
        """d_1..d_{n-1}."""
        return tuple(c.shape[3] for c in list(self.cores)[:-1])

    @property
    def central_index(self) -> int:
        """(n-1)//2, the central tensor's index (as in :class:`mpo.MPO`)."""
        return (self.n - 1) // 2

    @property
    def central(self) -> nn.Parameter:
        """The central tensor: the bulk of the parameters, frozen in lightweight fine-tuning."""
        return self.cores[self.central_index]

    @property
    def auxiliary(self) -> list[nn.Parameter]:
        """Every core but the central one: what lightweight fine-tuning trains."""
        return [c for k, c in enumerate(self.cores) if k != self.central_index]

    @property
    def num_params(self) -> int:
        """Parameters of the cores (the bias not included)."""
        return sum(c.numel() for c in self.cores)

    @property
    def compression_ratio(self) -> float:
        """rho = core parameters / (I*J) of the original matrix (MPOP Eq. 5)."""
        return self.num_params / math.prod(self.matrix_shape)

    def lightweight(self, enabled: bool = True) -> MPOLayer:
        """Freeze the central tensor and train the auxiliary tensors (MPOP §4.1); False unfreezes it."""
        for c in self.auxiliary:
            c.requires_grad_(True)
        self.central.requires_grad_(not enabled)
        return self

    def to_mpo(self) -> MPO:
        """The current (possibly trained) cores as an :class:`mpo.MPO` in canonical form, float64.

        Re-canonicalisation keeps the matrix and measures its spectra, so cuts made from the result are
        the optimal cuts of the trained matrix's unfoldings.
        """
        cores = [c.detach().to("cpu", torch.float64).numpy() for c in self.cores]
        return MPO.from_cores(cores, shape=self.matrix_shape)

    def set_mpo(self, m: MPO) -> None:
        """Replace the cores by ``m``'s (for instance a truncated MPO), keeping dtype, device and freezing.

        The Parameters are new objects: an optimizer built before must be built again.
        """
        if tuple(m.shape) != self.matrix_shape:
            raise ValueError(f"set_mpo: the MPO is {m.shape}, this layer's matrix is {self.matrix_shape}")
        ref = self.cores[0]
        trains = [c.requires_grad for c in self.cores]
        self._set_cores(m.cores, dtype=ref.dtype, device=ref.device)
        if len(trains) == len(self.cores):  # every core keeps its own freezing
            for core, flag in zip(self.cores, trains):
                core.requires_grad_(flag)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A squeezed model's cores are smaller than a freshly compressed one's: take the stored shapes so
        # that a state_dict round trip restores squeezed layers too.
        keys = [f"{prefix}cores.{k}" for k in range(self.n)]
        if all(k in state_dict for k in keys):
            frozen = [not c.requires_grad for c in self.cores]
            ref = self.cores[0]
            for k, key in enumerate(keys):
                if tuple(state_dict[key].shape) != tuple(self.cores[k].shape):
                    self.cores[k] = nn.Parameter(
                        torch.empty(state_dict[key].shape, dtype=ref.dtype, device=ref.device),
                        requires_grad=not frozen[k],
                    )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------- the matrix
    def weight_matrix(self) -> torch.Tensor:
        """M (I x J, padding removed) contracted from the cores, differentiable."""
        return matrix_of(list(self.cores), self.matrix_shape)

    def rebuild_flops(self) -> int:
        """FLOPs of :meth:`weight_matrix`: one GEMM per core after the first."""
        flops, rows = 0, self.cores[0].shape[1] * self.cores[0].shape[2]
        for c in list(self.cores)[1:]:
            flops += 2 * rows * c.numel()
            rows *= c.shape[1] * c.shape[2]
        return flops

    def extra_repr(self) -> str:
        return (
            f"matrix_shape={self.matrix_shape}, in_shape={self.in_shape}, out_shape={self.out_shape}, "
            f"bond_dims={self.bond_dims}, rho={self.compression_ratio:.4g}, mode={self.mode!r}"
        )


class MPOLinear(_LinearProduct, MPOLayer):
    """``y = x @ M + b`` with M = W.T held as MPO cores: a drop-in for :class:`torch.nn.Linear`."""

    def __init__(self, m: MPO, bias: torch.Tensor | None = None, *, mode: str = "auto", dtype=None, device=None):
        """Wrap ``m`` (an MPO of the in_features x out_features matrix W.T) with an optional bias."""
        super().__init__(m, mode=mode, dtype=dtype, device=device)
        self.in_features, self.out_features = self.matrix_shape
        # A Fisher-weighted layer (from_linear(row_weights=)) is diag(row_scale) @ (cores' matrix): the
        # scale multiplies the input features, is fixed (a buffer, not trained) and is saved with the
        # state_dict. None for a plain layer.
        self.register_buffer("row_scale", None)
        self._set_row_scale(m.row_scale)
        if bias is None:
            self.register_parameter("bias", None)
        else:
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
            self.bias = _bias_parameter(bias, self.cores[0])

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        shape=None,
        n: int = 5,
        max_bond=None,
        tol: float | None = None,
        ratio: float | None = None,
        *,
        mode: str = "auto",
        row_weights=None,
    ) -> MPOLinear:
        """Decompose ``linear.weight.T`` (see :func:`mpo.decompose` for shape, n, max_bond, tol, ratio).

        The cores take the Linear's dtype and device; the bias is copied dense. With neither max_bond,
        tol nor ratio the bonds are full and the layer equals ``linear`` to rounding. ``row_weights``
        (one importance per input feature, e.g. from :func:`mpo.torch.fisher_information`) makes the
        Fisher-weighted MPO (FWSVD's weighting, docs/ALGORITHMS.md §10): cuts minimise the weighted error.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear expects a torch.nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        if isinstance(row_weights, torch.Tensor):
            row_weights = row_weights.detach().to("cpu", torch.float64).numpy()
        m = _decompose(weight.to("cpu", torch.float64).numpy().T, shape, n, max_bond, tol, ratio, row_weights)
        return cls(m, linear.bias, mode=mode, dtype=weight.dtype, device=weight.device)

    def _set_row_scale(self, scale) -> None:
        ref = self.cores[0]
        self.row_scale = None if scale is None else torch.tensor(np.array(scale), dtype=ref.dtype, device=ref.device)

    @property
    def num_params(self) -> int:
        """Parameters of the cores, plus the row scale of a Fisher-weighted layer (the bias not included)."""
        return super().num_params + (0 if self.row_scale is None else self.row_scale.numel())

    def weight_matrix(self) -> torch.Tensor:
        """M = W.T (in_features x out_features) contracted from the cores (row-scaled when weighted)."""
        dense = super().weight_matrix()
        return dense if self.row_scale is None else dense * self.row_scale[:, None]

    def to_mpo(self) -> MPO:
        """The current cores as an :class:`mpo.MPO` in canonical form, float64, with the row scale of a
        Fisher-weighted layer (whose cuts then stay optimal in the weighted norm)."""
        if self.row_scale is None:
            return super().to_mpo()
        cores = [c.detach().to("cpu", torch.float64).numpy() for c in self.cores]
        scale = self.row_scale.detach().to("cpu", torch.float64).numpy()
        return MPO.from_cores(cores, shape=self.matrix_shape, row_scale=scale)

    def set_mpo(self, m: MPO) -> None:
        """Replace the cores (and the row scale) by ``m``'s; see :meth:`MPOLayer.set_mpo`."""
        super().set_mpo(m)
        self._set_row_scale(m.row_scale)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A weighted layer's state carries its row scale: make room for it in a plain placeholder layer.
        key = f"{prefix}row_scale"
        if key in state_dict and self.row_scale is None:
            ref = self.cores[0]
            self.row_scale = torch.empty(state_dict[key].shape, dtype=ref.dtype, device=ref.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _product_cores(self) -> tuple[list[torch.Tensor], bool]:
        return list(self.cores), False

    def _linear_weight(self, cores: list[torch.Tensor], autograd: bool) -> torch.Tensor:
        # M.T built in that layout (not a transposed view: torch's bfloat16 GEMM on a CPU took 10x as
        # long with one), without the row scale: forward scales x instead.
        return dense_weight(cores, self.matrix_shape, transpose=True, autograd=autograd)

    def _product_rebuild_flops(self) -> int:
        return self.rebuild_flops()

    @property
    def weight(self) -> WeightView:
        """What a reader of ``nn.Linear.weight`` may ask: shape (out_features, in_features), dtype,
        device; no values (see :class:`WeightView`; :meth:`weight_matrix` gives M = W.T)."""
        return WeightView((self.out_features, self.in_features), self.cores[0], type(self).__name__)


class MPOConv1D(MPOLinear):
    """A drop-in for transformers' ``Conv1D`` (GPT-2, GPT): ``y = x @ W + b`` with W stored
    in_features x out_features (nx x nf), so the MPO's M is W itself, not its transpose.

    The layer computes exactly what :class:`MPOLinear` computes (x @ M + b); only what it reports as
    ``weight`` (shape (nx, nf)) and its ``nx``/``nf`` attributes follow Conv1D.
    """

    def __init__(self, m: MPO, bias: torch.Tensor | None = None, *, mode: str = "auto", dtype=None, device=None):
        """Wrap ``m`` (an MPO of the nx x nf weight W) with an optional bias of nf values."""
        super().__init__(m, bias, mode=mode, dtype=dtype, device=device)
        self.nx, self.nf = self.matrix_shape

    @classmethod
    def from_conv1d(
        cls,
        conv: nn.Module,
        shape=None,
        n: int = 5,
        max_bond=None,
        tol: float | None = None,
        ratio: float | None = None,
        *,
        mode: str = "auto",
    ) -> MPOConv1D:
        """Decompose ``conv.weight`` (nx x nf) as it is: y = x @ W + b needs no transpose."""
        if not is_conv1d(conv):
            raise TypeError(f"from_conv1d expects a transformers Conv1D, got {type(conv).__name__}")
        weight = weight_of(conv).detach()
        m = _decompose(weight.to("cpu", torch.float64).numpy(), shape, n, max_bond, tol, ratio)
        return cls(m, bias_of(conv), mode=mode, dtype=weight.dtype, device=weight.device)

    @property
    def weight(self) -> WeightView:
        """What a reader of ``Conv1D.weight`` may ask: shape (nx, nf), dtype, device; no values."""
        return WeightView((self.nx, self.nf), self.cores[0], type(self).__name__)


class MPOTiedLinear(_LinearProduct):
    """A Linear whose weight is tied to another module's, served by that module's MPO layer.

    Transformers tie the output projection to the input embedding (GPT-2 wte/lm_head, OPT, T5,
    Llama with ``tie_word_embeddings``): one parameter E (vocab x hidden) serves the lookup E[ids] and
    the product x @ E.T. Compressed, E is one :class:`MPOEmbedding` and this layer reads its cores on
    every call, transposed (``transposed=True``: y = x @ M.T + b, the cores' i and j swapped, no copy
    of the matrix) or as they are (y = x @ M + b, for a Linear tied to a Linear). Training the shared
    cores changes both uses, as training the tied parameter did.

    The source is not registered as a child module: its cores appear once in ``parameters()`` and in
    ``state_dict()`` (under the source's name); this layer owns only its bias.
    """

    _source: MPOLayer

    def __init__(self, source: MPOLayer, bias: torch.Tensor | None = None, *, transposed: bool = True, mode: str = "auto"):
        """Serve x @ M.T (``transposed``) or x @ M with M the cores' matrix of ``source``."""
        super().__init__()
        if not isinstance(source, MPOLayer):
            raise TypeError(f"MPOTiedLinear needs an MPO layer as its source, got {type(source).__name__}")
        object.__setattr__(self, "_source", source)  # outside _modules: the cores are counted and saved once
        self.transposed = bool(transposed)
        self.mode = _check_mode(mode)
        if getattr(source, "row_scale", None) is not None:
            raise ValueError("MPOTiedLinear: a row-weighted source (row_scale) cannot be shared")
        rows, cols = source.matrix_shape
        self.in_features, self.out_features = (cols, rows) if self.transposed else (rows, cols)
        self.row_scale = None
        ref = source.cores[0]
        if bias is None:
            self.register_parameter("bias", None)
        else:
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
            self.bias = _bias_parameter(bias, ref)

    @property
    def source(self) -> MPOLayer:
        """The MPO layer whose cores this layer reads."""
        return self._source

    @property
    def cores(self):
        """The source's cores (shared Parameters, not copies)."""
        return self._source.cores

    def _product_cores(self) -> tuple[list[torch.Tensor], bool]:
        return list(self._source.cores), self.transposed

    def _linear_weight(self, cores: list[torch.Tensor], autograd: bool) -> torch.Tensor:
        # x @ M.T takes M as F.linear's weight; x @ M takes M.T, built in that layout.
        shape = self._source.matrix_shape
        return dense_weight(cores, shape, transpose=not self.transposed, autograd=autograd)

    def _product_rebuild_flops(self) -> int:
        return self._source.rebuild_flops()

    @property
    def weight(self) -> WeightView:
        """What a reader of ``nn.Linear.weight`` may ask: shape (out_features, in_features), dtype,
        device; no values (the source's :meth:`~MPOLayer.weight_matrix` has them)."""
        return WeightView((self.out_features, self.in_features), self._source.cores[0], type(self).__name__)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, transposed={self.transposed}"


class MPOEmbedding(MPOLayer):
    """An :class:`torch.nn.Embedding` whose weight is held as MPO cores; lookups read rows of M."""

    def __init__(self, m: MPO, *, padding_idx: int | None = None, mode: str = "auto", dtype=None, device=None):
        """Wrap ``m`` (an MPO of the num_embeddings x embedding_dim weight)."""
        super().__init__(m, mode=mode, dtype=dtype, device=device)
        self.num_embeddings, self.embedding_dim = self.matrix_shape
        self.padding_idx = padding_idx

    @classmethod
    def from_embedding(
        cls,
        embedding: nn.Embedding,
        shape=None,
        n: int = 5,
        max_bond=None,
        tol: float | None = None,
        ratio: float | None = None,
        *,
        mode: str = "auto",
    ) -> MPOEmbedding:
        """Decompose ``embedding.weight`` (see :func:`mpo.decompose`).

        ``padding_idx`` is kept for the rebuild path's ``F.embedding``; rows share the cores, so the
        padding row cannot be exempt from training as a dense row is.

        max_norm and sparse gradients are not supported: they would rewrite rows of a matrix that no
        longer exists as such.
        """
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"from_embedding expects a torch.nn.Embedding, got {type(embedding).__name__}")
        if embedding.max_norm is not None or embedding.sparse:
            raise ValueError("from_embedding: max_norm and sparse embeddings are not supported")
        weight = embedding.weight.detach()
        m = _decompose(weight.to("cpu", torch.float64).numpy(), shape, n, max_bond, tol, ratio)
        return cls(m, padding_idx=embedding.padding_idx, mode=mode, dtype=weight.dtype, device=weight.device)

    @property
    def weight(self) -> WeightView:
        """What a reader of ``nn.Embedding.weight`` may ask: shape (num_embeddings, embedding_dim),
        dtype, device; no values (:meth:`weight_matrix` has them)."""
        return WeightView(self.matrix_shape, self.cores[0], type(self).__name__)

    def rows_flops(self, count: int) -> int:
        """FLOPs of reading ``count`` distinct rows through the cores (what "contract" runs)."""
        cores = list(self.cores)
        flops, done = 0, cores[0].shape[2]
        for c in cores[1:]:
            flops += 2 * count * done * c.shape[0] * c.shape[2] * c.shape[3]
            done *= c.shape[2]
        return flops

    def forward_flops(self, count: int, *, autograd: bool = True) -> dict:
        """FLOPs of each mode for ``count`` distinct ids and the mode "auto" picks: the one FLOPs alone
        settle, else the one timed for this kind of lookup (see :meth:`auto_mode`), else None (not yet
        timed: the first such lookup times both)."""
        contract = self.rows_flops(count)
        rebuild = self.rebuild_flops()
        pick = _autotune.settled(contract, rebuild) or _autotune.chosen(self._mode_key(count, autograd))
        return {"contract": contract, "rebuild": rebuild, "auto": pick}

    def _mode_key(self, count: int, autograd: bool) -> tuple:
        return _autotune.mode_key("embedding", list(self.cores), self.matrix_shape, count, autograd, (self.padding_idx,))

    def auto_mode(self, count: int, *, autograd: bool) -> str:
        """The mode ``mode="auto"`` runs for a lookup of ``count`` distinct ids: "contract" or "rebuild".

        The faster of the two on this machine for this kind of lookup, timed the first time on ``count``
        random distinct ids (with the backward pass when autograd is on) and remembered for the process,
        unless FLOPs alone settle it.
        """
        key = self._mode_key(count, autograd)
        known = _autotune.chosen(key)
        if known is not None:
            return known
        ids = torch.randperm(self.num_embeddings, device=self.cores[0].device)[:count]
        run = _autotune.probe_runner(lambda inp, mode: self(inp, mode=mode), ids, list(self.parameters()), autograd,
                                     probe=ids)
        return _autotune.choose(key, self.rows_flops(count), self.rebuild_flops(), run)

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        # Row r of M is the product over k of the slices T_k[:, i_k(r), :, :]; ids are split into their
        # in factors (i_1..i_n), most significant first, as in the row-major layout.
        digits, rest = [], ids
        for i in reversed(self.in_shape):
            digits.append(rest % i)
            rest = rest // i
        digits.reverse()
        cores = list(self.cores)
        state = cores[0][0, digits[0]]  # (N, j_1, d_1)
        for c, digit in zip(cores[1:], digits[1:]):
            count, done, d = state.shape
            piece = c.permute(1, 0, 2, 3)[digit]  # (N, d_{k-1}, j_k, d_k)
            state = torch.bmm(state, piece.reshape(count, d, -1)).reshape(count, done * c.shape[2], c.shape[3])
        out = state.reshape(len(ids), self.padded_shape[1])
        return out[:, : self.embedding_dim] if out.shape[1] != self.embedding_dim else out

    def _table(self, autograd: bool) -> torch.Tensor:
        # M for F.embedding: by the C++ kernel where no gradient needs the torch ops' graph.
        return dense_weight(list(self.cores), self.matrix_shape, transpose=False, autograd=autograd)

    def forward(self, ids: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """Rows of M for integer ``ids`` of any shape; ``mode`` overrides the layer's mode."""
        mode = _check_mode(mode or self.mode)
        autograd = _needs_autograd(ids, self.cores)
        if mode == "rebuild" or ids.numel() == 0:
            return F.embedding(ids, self._table(autograd), self.padding_idx)
        unique, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
        if unique[0] < 0 or unique[-1] >= self.num_embeddings:
            bad = unique[0] if unique[0] < 0 else unique[-1]
            raise IndexError(f"id {int(bad)} is out of range for an embedding of {self.num_embeddings} rows")
        if mode == "auto" and self.auto_mode(len(unique), autograd=autograd) == "rebuild":
            return F.embedding(ids, self._table(autograd), self.padding_idx)
        dtype = None if autograd else kernel_dtype(unique, list(self.cores))
        if dtype is not None:
            cores = kernel_arrays(list(self.cores), dtype)
            found = _core.rows(cores, False, unique.numpy().astype(np.int64), self.embedding_dim, dtype.name)
            table = torch.from_numpy(found).to(self.cores[0].dtype)
        else:
            table = self._rows(unique)
        return table[inverse].reshape(*ids.shape, self.embedding_dim)


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is (a subclass of) transformers' ``Conv1D``, found without importing transformers."""
    return any(c.__name__ == "Conv1D" and c.__module__.startswith("transformers.") for c in type(module).__mro__)


LAYER_KINDS = {"linear": MPOLinear, "conv1d": MPOConv1D, "embedding": MPOEmbedding}


def layer_for(kind: str, m: MPO, bias: torch.Tensor | None = None, **kw) -> MPOLayer:
    """The MPO layer of ``kind`` holding ``m``: "linear" (M = W.T of an nn.Linear), "conv1d"
    (M = W of a transformers Conv1D) or "embedding" (M = W of an nn.Embedding).

    ``bias`` goes to linear and conv1d layers; ``kw`` (mode, dtype, device, and padding_idx for an
    embedding) to the layer's constructor.
    """
    if kind not in LAYER_KINDS:
        raise ValueError(f"kind must be one of {sorted(LAYER_KINDS)}, got {kind!r}")
    if kind == "embedding":
        if bias is not None:
            raise ValueError("an embedding layer has no bias")
        return MPOEmbedding(m, **kw)
    return LAYER_KINDS[kind](m, bias, **kw)
