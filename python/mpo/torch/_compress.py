"""Compressing a model in place, counting its parameters, optimizer groups, saving and loading.

``compress`` swaps matching ``nn.Linear``, transformers ``Conv1D`` and ``nn.Embedding`` modules for MPO
layers (MPOP §4: the authors decomposed the word embedding, attention Q/K/V/O, both FFN matrices and the
pooler), decomposing a tied matrix once and never making a layer larger. With
``lightweight=True`` the central tensors are frozen and only the auxiliary tensors train (§4.1).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .._activation import Allocation, Calibration
from .._mpo import MPO
from .._validation import match_names
from ..io import TORCH_MODEL, atomic_path
from ._calibrate import activation_layer, activation_settings, check_calibration
from ._fisher import fisher_information
from ._layers import MODES, MPOConv1D, MPOEmbedding, MPOLayer, MPOLinear, MPOTiedLinear, is_conv1d, layer_for, weight_of

__all__ = [
    "LayerReport",
    "KeptDense",
    "CompressionReport",
    "MIN_SIDE",
    "ParameterReport",
    "ParameterRow",
    "compress",
    "activation_candidates",
    "mpo_layers",
    "tied_modules",
    "parameter_report",
    "optimizer_groups",
    "save",
    "load",
]

SAVE_FORMAT = TORCH_MODEL.tag()
LORA_RANK = 8


def mpo_layers(model: nn.Module) -> dict[str, MPOLayer]:
    """The model's MPO layers by qualified module name, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, MPOLayer)}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@dataclass(frozen=True)
class LayerReport:
    """One compressed matrix: its MPO's bonds and size, and the decomposition's error bound.

    A matrix tied across modules (GPT-2's wte and lm_head) is one report: ``name`` holds the MPO
    layer, ``tied`` the other module names that share it, and its parameters count once. A layer fitted
    to its inputs (``weights="activations"`` or ``allocate``) also reports ``weight_error``
    (||M - M'|| / ||M||), ``activation_error`` (||X(M - M')|| / ||XM|| on the calibration statistics) and
    ``held_out_error`` (the same on ``held_out`` statistics, when given); the others have None there.
    """

    name: str
    kind: str
    matrix_shape: tuple[int, int]
    bond_dims: tuple[int, ...]
    dense_params: int
    mpo_params: int
    relative_error_bound: float
    seconds: float
    tied: tuple[str, ...] = ()
    weight_error: float | None = None
    activation_error: float | None = None
    held_out_error: float | None = None

    @property
    def compression_ratio(self) -> float:
        """rho = MPO parameters / dense parameters of the matrix."""
        return self.mpo_params / self.dense_params


@dataclass(frozen=True)
class KeptDense:
    """A module :func:`compress` could have replaced and left dense, and why."""

    name: str
    kind: str
    matrix_shape: tuple[int, int]
    reason: str


@dataclass(frozen=True)
class CompressionReport:
    """What :func:`compress` did, layer by layer, and what it left dense; ``str()`` is a table."""

    layers: list[LayerReport] = field(default_factory=list)
    kept_dense: list[KeptDense] = field(default_factory=list)

    @property
    def dense_params(self) -> int:
        """Parameters of the replaced matrices before compression (a tied matrix once)."""
        return sum(r.dense_params for r in self.layers)

    @property
    def mpo_params(self) -> int:
        """Parameters of their MPO cores (a shared MPO once)."""
        return sum(r.mpo_params for r in self.layers)

    def __str__(self) -> str:
        fitted = any(r.activation_error is not None for r in self.layers)
        held = any(r.held_out_error is not None for r in self.layers)

        def cell(value: float | None) -> str:
            return f"{'-':>10}" if value is None else f"{value:>10.3g}"

        header = f"{'layer':<48} {'matrix':>13} {'bonds':<22} {'rho':>7} {'rel. bound':>10}"
        if fitted:
            header += f" {'weight err':>10} {'act. err':>10}" + (f" {'held out':>10}" if held else "")
        lines = [header]
        for r in self.layers:
            shape = f"{r.matrix_shape[0]}x{r.matrix_shape[1]}"
            line = (f"{r.name:<48} {shape:>13} {str(r.bond_dims):<22} {r.compression_ratio:>7.4f} "
                    f"{r.relative_error_bound:>10.3g}")
            if fitted:
                line += f" {cell(r.weight_error)} {cell(r.activation_error)}" + (f" {cell(r.held_out_error)}" if held else "")
            lines.append(line)
            if r.tied:
                lines.append(f"  shared with: {', '.join(r.tied)}")
        total = self.mpo_params / self.dense_params if self.dense_params else 0.0
        lines.append(
            f"{len(self.layers)} layers: {self.dense_params} -> {self.mpo_params} parameters (rho {total:.4f})"
        )
        if self.kept_dense:
            lines.append(f"{len(self.kept_dense)} modules kept dense:")
            for d in self.kept_dense:
                lines.append(f"  {d.name} ({d.kind}, {d.matrix_shape[0]}x{d.matrix_shape[1]}): {d.reason}")
        return "\n".join(lines)


# A matrix whose smaller side is below this stays dense unless forced: its MPO saves next to nothing
# and its factors are too short to carry bonds (T5's 32x4 relative_attention_bias came out at rho 1.69).
MIN_SIDE = 16


def _kind(module: nn.Module) -> str | None:
    """"linear", "conv1d" or "embedding" for the modules compress can replace, else None."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if is_conv1d(module):
        return "conv1d"
    return None


def _base_forward(module: nn.Module, kind: str):
    if kind == "linear":
        return nn.Linear.forward
    if kind == "embedding":
        return nn.Embedding.forward
    base = next(
        c
        for c in type(module).__mro__
        if issubclass(c, nn.Module) and c.__name__ == "Conv1D" and c.__module__.startswith("transformers.")
    )
    return base.forward


def _matrix_shape(module: nn.Module, kind: str) -> tuple[int, int]:
    """The shape of M, the matrix the MPO holds: W.T for a Linear, W for Conv1D and Embedding."""
    rows, cols = weight_of(module).shape
    return (cols, rows) if kind == "linear" else (rows, cols)


@dataclass
class _Group:
    """Modules that share one weight Parameter (one module, or a tie), in module order.

    ``members`` holds (module, kind, names): a module object can sit under several names.
    The owner, whose MPO every member serves, is the first Embedding, else the first member.
    """

    members: list[tuple[nn.Module, str, list[str]]]

    @property
    def owner(self) -> tuple[nn.Module, str, list[str]]:
        return next((m for m in self.members if m[1] == "embedding"), self.members[0])

    @property
    def names(self) -> list[str]:
        return [name for _, _, names in self.members for name in names]


def _groups(model: nn.Module) -> list[_Group]:
    """Every Linear, Conv1D and Embedding (subclasses included) of ``model``, grouped by shared weight."""
    names: dict[int, list[str]] = {}
    modules: dict[int, tuple[nn.Module, str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        kind = _kind(module)
        if kind is None or getattr(module, "weight", None) is None or module.weight.dim() != 2:
            continue
        modules.setdefault(id(module), (module, kind))
        names.setdefault(id(module), []).append(name)
    by_weight: dict[int, _Group] = {}
    for key, (module, kind) in modules.items():
        group = by_weight.setdefault(id(module.weight), _Group([]))
        group.members.append((module, kind, names[key]))
    return list(by_weight.values())


def _orientation(kind: str) -> bool:
    """Whether M is the transpose of the stored weight (a Linear) or the weight itself."""
    return kind == "linear"


def _structural_reason(group: _Group, holders: dict[int, list[str]]) -> str | None:
    """Why no MPO layer can stand in for this group whatever the setting, or None.

    ``holders`` maps a Parameter's id to every qualified name it has in the model.
    """
    owner, owner_kind, _ = group.owner
    ours = {f"{name}.weight" for name in group.names}
    others = [name for name in holders.get(id(owner.weight), []) if name not in ours]
    if others:
        return f"its weight is also {', '.join(others)}, which compress cannot replace (the tie would break)"
    for module, kind, names in group.members:
        if type(module).forward is not _base_forward(module, kind):
            return (
                f"{type(module).__name__} overrides forward(); an MPO layer would not run that code, "
                "so the module keeps its dense weight"
            )
        if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
            return "nn.MultiheadAttention's out_proj: MultiheadAttention reads its weight directly, not through forward()"
        if kind == "embedding" and (module.max_norm is not None or module.sparse):
            return "max_norm and sparse embeddings rewrite rows of a dense table; MPO cores have none"
    for module, kind, names in group.members:
        if module is owner:
            continue
        if kind == "embedding" and (owner_kind != "embedding" or module.padding_idx != owner.padding_idx):
            return f"tied embeddings {names[0]} and {group.owner[2][0]} differ (padding_idx or kind)"
    return None


def _tiny_reason(shape: tuple[int, int]) -> str | None:
    if min(shape) < MIN_SIDE:
        return f"tiny: the smaller side is below {MIN_SIDE} (force=True compresses it)"
    return None


def _build(group: _Group, shape, n, max_bond, tol, ratio, mode, row_weights) -> MPOLayer:
    """The MPO layer of the group's owner (row weights only for a plain, untied Linear)."""
    module = group.owner[0]
    # By type, as _kind chose the group's kind ("linear", "embedding", else "conv1d").
    if isinstance(module, nn.Linear):
        return MPOLinear.from_linear(module, shape, n, max_bond, tol, ratio, mode=mode, row_weights=row_weights)
    if isinstance(module, nn.Embedding):
        return MPOEmbedding.from_embedding(module, shape, n, max_bond, tol, ratio, mode=mode)
    return MPOConv1D.from_conv1d(module, shape, n, max_bond, tol, ratio, mode=mode)


def _stand_ins(group: _Group, layer: MPOLayer, mode: str) -> dict[str, nn.Module]:
    """Name -> the module that replaces it: the layer itself for the owner and for members that hold
    the weight the same way with the same bias; a :class:`MPOTiedLinear` reading the layer's cores
    (transposed where the member's M is the owner's transposed) for the others."""
    owner, owner_kind, _ = group.owner
    out: dict[str, nn.Module] = {}
    for module, kind, names in group.members:
        same = module is owner or (
            kind == owner_kind and (kind == "embedding" or getattr(module, "bias", None) is getattr(owner, "bias", None))
        )
        stand_in: nn.Module
        if same:
            stand_in = layer
        else:
            transposed = _orientation(kind) != _orientation(owner_kind)
            stand_in = MPOTiedLinear(layer, getattr(module, "bias", None), transposed=transposed, mode=mode)
        for name in names:
            out[name] = stand_in
    return out


def compress(
    model: nn.Module,
    include=None,
    exclude=None,
    *,
    n: int = 5,
    max_bond=None,
    tol: float | None = None,
    ratio: float | None = None,
    shape=None,
    lightweight: bool = True,
    mode: str = "auto",
    progress: bool = True,
    force: bool = False,
    weights=None,
    data=None,
    loss_fn=None,
    calibration=None,
    allocate: str | Allocation | None = None,
    scaling: str = "auto",
    held_out=None,
) -> CompressionReport:
    """Replace matching Linear, Conv1D and Embedding modules of ``model`` by MPO layers, in place.

    What is replaced, and how (docs/GUIDE.md has the details):

    - ``nn.Linear`` (M = W.T), transformers' ``Conv1D`` (GPT-2; M = W, which it stores in x out) and
      ``nn.Embedding`` (M = W), subclasses included unless they override ``forward`` (OPT's
      positional embedding adds an offset there): those stay dense, with the reason in the report.
    - Tied weights (one Parameter in several modules: GPT-2's wte and lm_head, T5's shared, encoder
      and decoder embeddings and lm_head) are decomposed once: one MPO layer serves every module of
      the tie, a Linear tied to an Embedding reading its cores transposed (:class:`MPOTiedLinear`).
      The report counts the matrix once and names the modules that share it. A tie is compressed
      only when include/exclude choose all of its modules.
    - A layer never grows: a matrix whose smaller side is below ``MIN_SIDE`` (16), or whose MPO at
      this setting has at least as many parameters as the matrix, stays dense unless ``force``.

    Every module left dense that include/exclude chose is listed in ``report.kept_dense`` with
    the reason.

    Parameters
    ----------
    model : nn.Module
        Any module, a ``transformers`` model included.
    include, exclude : str or list of str, optional
        fnmatch globs on qualified module names (``"encoder.layer.*.attention.*"``), the syntax the
        ``mpo`` command uses too (:func:`mpo._validation.match_names`). By default every candidate
        is chosen; ``exclude`` removes names from that set. A pattern that matches no candidate
        raises ValueError listing the names there are.
    n, max_bond, tol, ratio :
        As in :func:`mpo.decompose`, for every layer.
    shape : dict, optional
        Explicit factors for some layers: qualified name -> shape as :func:`mpo.decompose` takes it.
    lightweight : bool
        Freeze the central tensors so only the auxiliary tensors train (MPOP §4.1).
    mode : {"auto", "contract", "rebuild"}
        The new layers' forward mode.
    progress : bool
        Print one line per layer to stderr as it is decomposed.
    force : bool
        Compress tiny matrices and matrices whose MPO is not smaller than they are.
    weights : None, "fisher", or dict
        Data-aware compression (FWSVD's weighting, docs/ALGORITHMS.md §10) of the chosen, untied
        ``nn.Linear`` layers: ``"fisher"`` measures per-input-feature Fisher importances with
        :func:`mpo.torch.fisher_information` over ``data`` and ``loss_fn`` before any layer is
        replaced; a dict maps qualified Linear names to precomputed importances (in_features
        values). Each such layer becomes a row-weighted MPO whose cuts minimise the weighted error.
        Embeddings, Conv1D and tied layers stay plain.
    data, loss_fn :
        The mini-batches and ``loss_fn(model, batch) -> scalar`` of ``weights="fisher"``.
        ``weights="activations"`` fits every chosen Linear to its inputs instead
        (:func:`mpo.decompose_activations` with ``scaling``, ``n``, ``max_bond``, ``tol``, ``ratio``;
        ``n=2`` is the whitened SVD of SVD-LLM), from ``calibration`` (:func:`mpo.torch.calibrate`).
    calibration : mpo.Calibration, optional
        Input statistics per layer, for ``weights="activations"`` and ``allocate="model"``.
    allocate : None, "model" or mpo.Allocation
        "model" spends one budget, ``ratio`` times the chosen Linears' parameters, over all of them: each
        gets the whitened-SVD rank (or stays dense) that minimises the summed squared activation error
        (:func:`mpo.allocate`, read from one spectrum per layer); the allocation is printed with progress.
        An Allocation (:func:`mpo.torch.allocation`, for instance with sensitivity weights) is used as given.
    scaling : str
        :data:`mpo.SCALINGS` member or "auto" (whitening for n = 2, diagonal for n > 2).
    held_out : mpo.Calibration, optional
        Statistics of tokens the calibration did not see (:func:`mpo.torch.calibrate` on other batches):
        each layer fitted to its inputs reports its activation error on them too (``held_out_error``),
        beside the weight error, the activation error on ``calibration`` and the bound. They score the
        result only; nothing is fitted to them.

    Returns
    -------
    CompressionReport
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress expects a torch.nn.Module, got {type(model).__name__}")
    groups = _groups(model)
    candidates = [name for group in groups for name in group.names]
    try:
        chosen = set(match_names(candidates, include, exclude))
    except ValueError as exc:
        raise ValueError(f"{exc} (the model's Linear, Conv1D and Embedding modules)") from None
    if not chosen:
        raise ValueError(
            "include/exclude leave no module to compress; the model's Linear, Conv1D and Embedding modules are: "
            + (", ".join(candidates) if candidates else "none")
        )
    shapes = dict(shape or {})
    unknown = sorted(set(shapes) - chosen)
    if unknown:
        raise ValueError(f"shape names modules that are not compressed: {unknown}; compressed are: {sorted(chosen)}")
    todo, kept = _choose_groups(model, groups, chosen, force)
    plain_linears = [g.names[0] for g in todo if _plain_linear(g)]
    fitted = activation_settings(
        model, plain_linears, calibration, weights=weights, allocate=allocate, n=n, max_bond=max_bond,
        ratio=ratio, tol=tol, scaling=scaling, progress=progress,
    )
    activations = weights == "activations" or allocate is not None
    if held_out is not None:
        if not activations:
            raise ValueError("held_out scores the layers fitted to their inputs: it goes with "
                             "weights='activations' or allocate=, which are not given")
        if not isinstance(held_out, Calibration):
            raise TypeError(f"held_out must be an mpo.Calibration (mpo.torch.calibrate on other batches), "
                            f"got {type(held_out).__name__}")
        missing = [name for name, setting in fitted.items() if setting is not None and name not in held_out]
        if missing:
            raise ValueError(f"held_out has no statistics for the fitted layers {missing}")
        try:
            check_calibration(model, held_out)  # every width, before any layer is fitted
        except ValueError as exc:
            raise ValueError(f"held_out: {exc}") from None
    row_weights = {} if activations else _row_weights(model, plain_linears, weights, data, loss_fn, progress)
    layers, swaps = [], {}
    for count, group in enumerate(todo, 1):
        module, kind, names = group.owner
        name = names[0]
        group_shape = next((shapes[k] for k in group.names if k in shapes), None)
        start = time.perf_counter()
        if name in fitted and fitted[name] is None:
            reason = "the model-wide allocation keeps it dense (its parameters buy more elsewhere)"
            kept.append(KeptDense(name, type(module).__name__, _matrix_shape(module, kind), reason))
            continue
        layer: MPOLayer
        fit = None
        try:
            if name in fitted:
                layer, fit = activation_layer(module, calibration[name], shape=group_shape, mode=mode,
                                              held_out=None if held_out is None else held_out[name], **fitted[name])
            else:
                layer = _build(group, group_shape, n, max_bond, tol, ratio, mode, row_weights.get(name))
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"cannot compress layer {name!r} ({type(module).__name__}): {exc}") from exc
        dense = math.prod(layer.matrix_shape)
        if layer.num_params >= dense and not force:
            kept.append(
                KeptDense(
                    name,
                    type(module).__name__,
                    layer.matrix_shape,
                    f"its MPO would have {layer.num_params} parameters, not fewer than the matrix's {dense} "
                    f"(rho {layer.num_params / dense:.3f}) at this setting; force=True compresses it",
                )
            )
            if progress:
                print(f"[{count}/{len(todo)}] {name}: kept dense ({kept[-1].reason})", file=sys.stderr, flush=True)
            continue
        layer.lightweight(lightweight)
        swaps.update(_stand_ins(group, layer, mode))
        report = LayerReport(
            name=name,
            kind=type(module).__name__,
            matrix_shape=layer.matrix_shape,
            bond_dims=layer.bond_dims,
            dense_params=dense,
            mpo_params=layer.num_params,
            relative_error_bound=layer.decomposition_bound,
            seconds=time.perf_counter() - start,
            tied=tuple(k for k in group.names if k != name),
            weight_error=None if fit is None else fit.weight_error,
            activation_error=None if fit is None else fit.activation_error,
            held_out_error=None if fit is None else fit.held_out_error,
        )
        layers.append(report)
        if progress:
            errors = "" if fit is None else (
                f", weight error {fit.weight_error:.3g}, activation error {fit.activation_error:.3g}"
                + ("" if fit.held_out_error is None else f" ({fit.held_out_error:.3g} held out)")
            )
            print(
                f"[{count}/{len(todo)}] {name}: {report.matrix_shape[0]}x{report.matrix_shape[1]} -> bonds "
                f"{report.bond_dims}, rho {report.compression_ratio:.4f}, relative bound "
                f"{report.relative_error_bound:.3g}{errors} ({report.seconds:.2f} s)",
                file=sys.stderr,
                flush=True,
            )
    # Swapped in only once every layer is built: a layer that fails leaves the model as it was.
    for name, stand_in in swaps.items():
        _set_module(model, name, stand_in)
    order = {name: k for k, name in enumerate(candidates)}
    return CompressionReport(layers, sorted(kept, key=lambda d: order[d.name]))


def _plain_linear(group: _Group) -> bool:
    # Data-aware fits (Fisher rows, activation statistics) serve plain, untied Linear layers only.
    return len(group.names) == 1 and group.members[0][1] == "linear"


def activation_candidates(model: nn.Module) -> list[str]:
    """The modules ``compress(weights="activations")`` fits to their inputs when chosen: every untied
    ``nn.Linear`` that an MPO layer can replace (the others, Conv1D and tied or overriding modules, are
    compressed plainly or stay dense). The ``mpo`` command's ``--calibration`` applies the same rule."""
    holders: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        holders.setdefault(id(p), []).append(name)
    return [g.names[0] for g in _groups(model) if _plain_linear(g) and _structural_reason(g, holders) is None]


def _choose_groups(
    model: nn.Module, groups: list[_Group], chosen: set[str], force: bool
) -> tuple[list[_Group], list[KeptDense]]:
    """The groups to decompose, and the chosen modules that stay dense whatever the setting, with why."""
    holders: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        holders.setdefault(id(p), []).append(name)
    todo, kept = [], []
    for group in groups:
        picked = [name for name in group.names if name in chosen]
        if not picked:
            continue
        module, kind, names = group.owner
        shape = _matrix_shape(module, kind)
        left_out = [name for name in group.names if name not in chosen]
        reason = _structural_reason(group, holders)
        if reason is None and left_out:
            reason = f"tied with {', '.join(left_out)}, which include/exclude leave out (choose all of a tie)"
        if reason is None and not force:
            reason = _tiny_reason(shape)
        if reason is None:
            todo.append(group)
            continue
        for member, member_kind, member_names in group.members:
            for name in member_names:
                if name in chosen:
                    kept.append(KeptDense(name, type(member).__name__, _matrix_shape(member, member_kind), reason))
    return todo, kept


def _row_weights(model: nn.Module, chosen: list[str], weights, data, loss_fn, progress: bool) -> dict:
    """Per-input-feature importances of the chosen Linear layers for ``compress(weights=...)``."""
    linears = [name for name in chosen if isinstance(model.get_submodule(name), nn.Linear)]
    if weights is None:
        if data is not None or loss_fn is not None:
            raise ValueError("data and loss_fn are used only with weights='fisher'")
        return {}
    if isinstance(weights, str):
        if weights != "fisher":
            raise ValueError(f"weights must be None, 'fisher' or a dict of row weights, got {weights!r}")
        if data is None or loss_fn is None:
            raise ValueError("weights='fisher' needs data (mini-batches) and loss_fn(model, batch) -> scalar")
        if not linears:
            raise ValueError("weights='fisher' weighs Linear layers, and none is chosen for compression")
        return fisher_information(model, data, loss_fn, linears, axis="in", progress=progress)
    if not isinstance(weights, dict):
        raise TypeError(f"weights must be None, 'fisher' or a dict of row weights, got {type(weights).__name__}")
    unknown = sorted(set(weights) - set(linears))
    if unknown:
        raise ValueError(f"weights names modules that are not compressed Linear layers: {unknown}; those are: {linears}")
    return dict(weights)


@dataclass(frozen=True)
class ParameterRow:
    """Parameter counts of one MPO layer (MPOP Table 3's columns), beside LoRA r=8 on the same matrix."""

    name: str
    pretrained: int
    total: int
    trainable: int
    lora: int


@dataclass(frozen=True)
class ParameterReport:
    """Per MPO layer and in total: the dense layer's parameters ("pre-trained", what fine-tuning the
    original trains), the MPO layer's parameters (total), those that train, and LoRA's r=8 count.

    ``model_total`` and ``model_trainable`` count the whole model, MPO layers or not.
    """

    rows: list[ParameterRow]
    model_total: int
    model_trainable: int

    @property
    def pretrained(self) -> int:
        """Sum of the dense layers' parameters."""
        return sum(r.pretrained for r in self.rows)

    @property
    def total(self) -> int:
        """Sum of the MPO layers' parameters."""
        return sum(r.total for r in self.rows)

    @property
    def trainable(self) -> int:
        """Sum of the MPO layers' trainable parameters."""
        return sum(r.trainable for r in self.rows)

    @property
    def lora(self) -> int:
        """What LoRA with r=8 would train on the same layers."""
        return sum(r.lora for r in self.rows)

    @property
    def trainable_fraction(self) -> float:
        """trainable / total over the MPO layers (MPOP: about 9 % with full bonds)."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        lines = [f"{'layer':<48} {'pre-trained':>12} {'total':>10} {'trainable':>10} {'LoRA r=8':>9}"]
        for r in [*self.rows, ParameterRow("MPO layers", self.pretrained, self.total, self.trainable, self.lora)]:
            lines.append(f"{r.name:<48} {r.pretrained:>12} {r.total:>10} {r.trainable:>10} {r.lora:>9}")
        lines.append(
            f"trainable fraction of MPO layers {self.trainable_fraction:.2%}; whole model: "
            f"{self.model_trainable} of {self.model_total} parameters trainable"
        )
        return "\n".join(lines)


def _count(params, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in params if p.requires_grad or not trainable_only)


def parameter_report(model: nn.Module) -> ParameterReport:
    """Count pre-trained / total / trainable parameters of every MPO layer of ``model`` (and LoRA r=8).

    Biases count in all three columns (they stay dense); LoRA's count is r (I + J) per matrix.
    """
    rows = []
    for name, layer in mpo_layers(model).items():
        rows_, cols = layer.matrix_shape
        bias = getattr(layer, "bias", None)
        bias_count = bias.numel() if bias is not None else 0
        rows.append(
            ParameterRow(
                name=name,
                pretrained=rows_ * cols + bias_count,
                total=_count(layer.parameters()),
                trainable=_count(layer.parameters(), trainable_only=True),
                lora=LORA_RANK * (rows_ + cols),
            )
        )
    return ParameterReport(rows, _count(model.parameters()), _count(model.parameters(), trainable_only=True))


def optimizer_groups(model: nn.Module, lr: float, mpo_lr: float) -> list[dict]:
    """Parameter groups for a torch optimizer: MPO cores at ``mpo_lr``, every other parameter at ``lr``.

    Frozen parameters (a lightweight layer's central tensor) are left out; empty groups are dropped.
    The authors gave the MPO tensors their own learning rate (docs/ALGORITHMS.md §12).
    """
    for what, value in (("lr", lr), ("mpo_lr", mpo_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{what} must be a positive number, got {value!r}")
    core_ids = {id(c) for layer in mpo_layers(model).values() for c in layer.cores}
    mpo_params: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (mpo_params if id(p) in core_ids else other).append(p)
    groups = [{"params": other, "lr": float(lr)}, {"params": mpo_params, "lr": float(mpo_lr)}]
    return [g for g in groups if g["params"]]


def save(model: nn.Module, path) -> None:
    """Write a compressed model's state to ``path``: its state_dict and where its MPO layers are.

    :func:`load` puts MPO layers back into an uncompressed model of the same architecture and loads
    the state into it. The file is written to a temporary name and renamed into place.
    """
    layers = {}
    for name, layer in mpo_layers(model).items():
        layers[name] = {
            "kind": type(layer).__name__,
            "matrix_shape": list(layer.matrix_shape),
            "core_shapes": [list(c.shape) for c in layer.cores],
            "frozen": [not c.requires_grad for c in layer.cores],
            "mode": layer.mode,
            "padding_idx": getattr(layer, "padding_idx", None),
        }
    payload = {"format": SAVE_FORMAT, "layers": layers, "ties": tied_modules(model), "state_dict": model.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def tied_modules(model: nn.Module) -> dict[str, dict]:
    """Where ``model`` shares an MPO layer: name -> {"source": the MPO layer's name, "transposed"}.

    A name that holds the MPO layer itself under a second name (T5's ``encoder.embed_tokens`` and
    ``shared``) has ``transposed`` None; an :class:`MPOTiedLinear` (GPT-2's ``lm_head``) has its
    flag and ``bias`` (whether it has one). The MPO layers are named as in :func:`mpo_layers`.
    """
    first = {id(layer): name for name, layer in mpo_layers(model).items()}
    ties: dict[str, dict[str, object]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, MPOLayer) and first.get(id(module)) != name:
            ties[name] = {"source": first[id(module)], "transposed": None, "bias": None}
        elif isinstance(module, MPOTiedLinear):
            if id(module.source) not in first:
                raise ValueError(f"{name!r} reads an MPO layer that is not part of this model")
            ties[name] = {
                "source": first[id(module.source)],
                "transposed": module.transposed,
                "bias": module.bias is not None,
            }
    return ties


def load(model: nn.Module, path) -> nn.Module:
    """Restore a model written by :func:`save` into ``model``, an uncompressed model of the same
    architecture (for instance ``BertModel(config)``): its named Linear/Embedding modules become MPO
    layers with the saved core shapes, then the saved state_dict is loaded. Returns ``model``.
    """
    source = repr(os.fspath(path))
    try:
        payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"cannot read a model from {source}: no such file") from None
    except Exception as exc:  # any failure to unpickle untrusted bytes is the file's fault
        raise ValueError(f"cannot read a model from {source}: {type(exc).__name__}: {exc}") from None
    tag = payload.get("format") if isinstance(payload, dict) else None
    if not (isinstance(tag, str) and tag.startswith(TORCH_MODEL.kind + "/")):
        raise ValueError(f"{source} is not a model written by mpo.torch.save (format {SAVE_FORMAT})")
    TORCH_MODEL.check_version(tag.partition("/")[2], source)
    _check_payload(payload, source)
    originals: dict[str, nn.Module] = {}
    layers: dict[str, MPOLayer] = {}
    for name, spec in payload["layers"].items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{source}: the saved MPO layer {name!r} has no module of that name in this model") from None
        originals[name] = module
        layers[name] = _empty_layer(spec, module, f"{source}: the saved {spec['kind']} {name!r}")
    swaps: dict[str, nn.Module] = dict(layers)
    for name, tie in payload.get("ties", {}).items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{source}: the saved tied module {name!r} has no module of that name in this model") from None
        originals[name] = module
        shared = layers[tie["source"]]  # _check_payload: a tie's source is a saved layer
        if tie["transposed"] is None:
            swaps[name] = shared
        else:
            bias = getattr(module, "bias", None) if tie["bias"] else None
            swaps[name] = MPOTiedLinear(shared, bias, transposed=tie["transposed"], mode=shared.mode)
    for name, layer in swaps.items():
        _set_module(model, name, layer)
    try:
        model.load_state_dict(payload["state_dict"])
    except BaseException as exc:
        # A state that does not fit leaves the model as it was, not with zero placeholder layers.
        for name, module in originals.items():
            _set_module(model, name, module)
        if isinstance(exc, RuntimeError):  # load_state_dict's missing/unexpected keys, size mismatches
            raise ValueError(f"{source}: its state does not fit this model: {exc}") from None
        raise
    return model


#: The layer classes :func:`save` writes and :func:`load` rebuilds.
_SAVED_KINDS = ("MPOLinear", "MPOConv1D", "MPOEmbedding")


def _check_payload(payload: dict, source: str) -> None:
    """ValueError naming ``source`` and the rule unless the payload of :func:`save` is well formed: a
    state_dict of tensors, layers with a known kind, a 2-int matrix shape and 4-int core shapes whose
    sizes are those of the saved cores (so no placeholder is larger than the file), finite MPO cores."""
    state = payload.get("state_dict")
    layers = payload.get("layers")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: the entry 'state_dict' must map names to tensors")
    if not isinstance(layers, dict):
        raise ValueError(f"{source}: the entry 'layers' must map layer names to their specs")

    def ints(value: object, count: int | None) -> bool:
        return (isinstance(value, (list, tuple)) and (count is None or len(value) == count)
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in value))

    for name, spec in layers.items():
        where = f"{source}: the layer {name!r}"
        if not isinstance(spec, dict) or spec.get("kind") not in _SAVED_KINDS:
            raise ValueError(f"{where} must have a kind of {_SAVED_KINDS}")
        shapes = spec.get("core_shapes")
        if not ints(spec.get("matrix_shape"), 2) or not (isinstance(shapes, list) and len(shapes) >= 2
                                                         and all(ints(c, 4) for c in shapes)):
            raise ValueError(f"{where} needs a matrix_shape of 2 ints and n >= 2 core_shapes of 4 ints >= 1")
        frozen = spec.get("frozen")
        if not (isinstance(frozen, list) and len(frozen) == len(shapes) and all(isinstance(f, bool) for f in frozen)):
            raise ValueError(f"{where} needs one bool per core in 'frozen'")
        if spec.get("mode") not in MODES:
            raise ValueError(f"{where} needs a 'mode' of {MODES}, got {spec.get('mode')!r}")
        padding = spec.get("padding_idx")
        if padding is not None and not (isinstance(padding, int) and not isinstance(padding, bool)
                                        and -spec["matrix_shape"][0] <= padding < spec["matrix_shape"][0]):
            raise ValueError(f"{where} needs a 'padding_idx' of None or a row of its matrix, got {padding!r}")
        saved = [(f"{name}.cores.{k}", state.get(f"{name}.cores.{k}")) for k in range(len(shapes))]
        if [None if v is None else tuple(v.shape) for _, v in saved] != [tuple(c) for c in shapes]:
            raise ValueError(f"{where}: its core_shapes {shapes} are not the shapes of its saved cores")
        for key, core in saved:
            if core is None or not core.is_floating_point() or not bool(torch.isfinite(core).all()):
                raise ValueError(f"{where}: the saved core {key!r} must hold finite floating-point values")
    ties = payload.get("ties", {})
    if not isinstance(ties, dict):
        raise ValueError(f"{source}: the entry 'ties' must map module names to their sources")
    for name, tie in ties.items():
        if not (isinstance(tie, dict) and tie.get("source") in layers and tie.get("transposed") in (None, True, False)
                and tie.get("bias") in (None, True, False)):
            raise ValueError(f"{source}: the tie {name!r} must name a saved layer as its source, with "
                             "'transposed' and 'bias' each None, true or false")


def _empty_layer(spec: dict, module: nn.Module, where: str) -> MPOLayer:
    # Cores of the saved shapes (their values come from the state_dict) on the module's dtype and device.
    ref = next(module.parameters(), None) if isinstance(module, nn.Module) else None
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    device = ref.device if ref is not None else None
    shapes = [tuple(s) for s in spec["core_shapes"]]
    try:
        placeholder = MPO(
            [torch.zeros(s, dtype=torch.float64).numpy() for s in shapes],
            shape=tuple(spec["matrix_shape"]),
            spectra=[torch.ones(s[3], dtype=torch.float64).numpy() for s in shapes[:-1]],
            truncation_errors=[0.0] * (len(shapes) - 1),
            norm=0.0,
        )
    except ValueError as exc:  # core shapes that do not make the saved matrix: the file's fault, named
        raise ValueError(f"{where}: {exc}") from None
    if spec["kind"] in ("MPOLinear", "MPOConv1D"):
        kind = "linear" if spec["kind"] == "MPOLinear" else "conv1d"
        if _kind(module) != kind and type(module).__name__ != spec["kind"]:
            raise ValueError(f"{where} is a {type(module).__name__} in this model")
        bias = getattr(module, "bias", None)
        layer = layer_for(kind, placeholder, bias, mode=spec["mode"], dtype=dtype, device=device)
    else:
        if not isinstance(module, (nn.Embedding, MPOEmbedding)):
            raise ValueError(f"{where} is a {type(module).__name__} in this model")
        layer = MPOEmbedding(
            placeholder, padding_idx=spec["padding_idx"], mode=spec["mode"], dtype=dtype, device=device
        )
    for core, frozen in zip(layer.cores, spec["frozen"]):
        core.requires_grad_(not frozen)
    return layer
