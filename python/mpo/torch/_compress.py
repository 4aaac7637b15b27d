"""Compressing a model in place, counting its parameters, optimizer groups, saving and loading.

``compress`` swaps matching ``nn.Linear`` and ``nn.Embedding`` modules for MPO layers (MPOP §4: the
authors decomposed the word embedding, attention Q/K/V/O, both FFN matrices and the pooler). With
``lightweight=True`` the central tensors are frozen and only the auxiliary tensors train (§4.1).
"""

from __future__ import annotations

import fnmatch
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .._mpo import MPO
from ..io import TORCH_MODEL, atomic_path
from ._fisher import fisher_information
from ._layers import MPOEmbedding, MPOLayer, MPOLinear

__all__ = [
    "LayerReport",
    "CompressionReport",
    "ParameterReport",
    "ParameterRow",
    "compress",
    "mpo_layers",
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


def _patterns(value, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    patterns = list(value)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{what} must be a string or a list of strings (fnmatch patterns), got {value!r}")
    return patterns


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@dataclass(frozen=True)
class LayerReport:
    """One compressed layer: its matrix, the MPO's bonds and size, and the decomposition's error bound."""

    name: str
    kind: str
    matrix_shape: tuple[int, int]
    bond_dims: tuple[int, ...]
    dense_params: int
    mpo_params: int
    relative_error_bound: float
    seconds: float

    @property
    def compression_ratio(self) -> float:
        """rho = MPO parameters / dense parameters of the matrix."""
        return self.mpo_params / self.dense_params


@dataclass(frozen=True)
class CompressionReport:
    """What :func:`compress` did, layer by layer; ``str()`` is a table."""

    layers: list[LayerReport] = field(default_factory=list)

    @property
    def dense_params(self) -> int:
        """Parameters of the replaced matrices before compression."""
        return sum(r.dense_params for r in self.layers)

    @property
    def mpo_params(self) -> int:
        """Parameters of their MPO cores."""
        return sum(r.mpo_params for r in self.layers)

    def __str__(self) -> str:
        lines = [f"{'layer':<48} {'matrix':>13} {'bonds':<22} {'rho':>7} {'rel. bound':>10}"]
        for r in self.layers:
            shape = f"{r.matrix_shape[0]}x{r.matrix_shape[1]}"
            lines.append(
                f"{r.name:<48} {shape:>13} {str(r.bond_dims):<22} {r.compression_ratio:>7.4f} "
                f"{r.relative_error_bound:>10.3g}"
            )
        total = self.mpo_params / self.dense_params if self.dense_params else 0.0
        lines.append(
            f"{len(self.layers)} layers: {self.dense_params} -> {self.mpo_params} parameters (rho {total:.4f})"
        )
        return "\n".join(lines)


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
    weights=None,
    data=None,
    loss_fn=None,
) -> CompressionReport:
    """Replace matching Linear and Embedding modules of ``model`` by MPO layers, in place.

    Parameters
    ----------
    model : nn.Module
        Any module, a ``transformers`` model included.
    include, exclude : str or list of str, optional
        fnmatch patterns on qualified module names (``"encoder.layer.*.attention.*"``). By default
        every Linear and Embedding is compressed; ``exclude`` removes names from that set. A pattern
        that matches no Linear or Embedding raises ValueError listing the names there are.
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
    weights : None, "fisher", or dict
        Data-aware compression (FWSVD's weighting, ALGORITHMS.md §6) of the chosen Linear layers:
        ``"fisher"`` measures per-input-feature Fisher importances with
        :func:`mpo.torch.fisher_information` over ``data`` and ``loss_fn`` before any layer is replaced;
        a dict maps qualified Linear names to precomputed importances (in_features values). Each such
        layer becomes a row-weighted MPO whose cuts minimise the weighted error. Embeddings stay plain.
    data, loss_fn :
        The mini-batches and ``loss_fn(model, batch) -> scalar`` of ``weights="fisher"``.

    Returns
    -------
    CompressionReport
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress expects a torch.nn.Module, got {type(model).__name__}")
    candidates = [name for name, m in model.named_modules() if type(m) in (nn.Linear, nn.Embedding)]
    includes, excludes = _patterns(include, "include"), _patterns(exclude, "exclude")
    for what, pats in (("include", includes), ("exclude", excludes)):
        for pattern in pats:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in candidates):
                raise ValueError(
                    f"{what} pattern {pattern!r} matches no Linear or Embedding module; the model has: "
                    + (", ".join(candidates) if candidates else "none")
                )
    chosen = [
        name
        for name in candidates
        if (not includes or any(fnmatch.fnmatchcase(name, p) for p in includes))
        and not any(fnmatch.fnmatchcase(name, p) for p in excludes)
    ]
    if not chosen:
        raise ValueError(
            "include/exclude leave no module to compress; the model's Linear and Embedding modules are: "
            + (", ".join(candidates) if candidates else "none")
        )
    shapes = dict(shape or {})
    unknown = sorted(set(shapes) - set(chosen))
    if unknown:
        raise ValueError(f"shape names modules that are not compressed: {unknown}; compressed are: {chosen}")
    row_weights = _row_weights(model, chosen, weights, data, loss_fn, progress)
    layers, built = [], []
    for count, name in enumerate(chosen, 1):
        module = model.get_submodule(name)
        start = time.perf_counter()
        try:
            if isinstance(module, nn.Linear):
                layer = MPOLinear.from_linear(
                    module, shapes.get(name), n, max_bond, tol, ratio, mode=mode, row_weights=row_weights.get(name)
                )
            else:
                layer = MPOEmbedding.from_embedding(module, shapes.get(name), n, max_bond, tol, ratio, mode=mode)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"cannot compress layer {name!r} ({type(module).__name__}): {exc}") from exc
        layer.lightweight(lightweight)
        built.append((name, layer))
        report = LayerReport(
            name=name,
            kind=type(module).__name__,
            matrix_shape=layer.matrix_shape,
            bond_dims=layer.bond_dims,
            dense_params=math.prod(layer.matrix_shape),
            mpo_params=layer.num_params,
            relative_error_bound=layer.decomposition_bound,
            seconds=time.perf_counter() - start,
        )
        layers.append(report)
        if progress:
            print(
                f"[{count}/{len(chosen)}] {name}: {report.matrix_shape[0]}x{report.matrix_shape[1]} -> bonds "
                f"{report.bond_dims}, rho {report.compression_ratio:.4f}, relative bound "
                f"{report.relative_error_bound:.3g} ({report.seconds:.2f} s)",
                file=sys.stderr,
                flush=True,
            )
    # Swapped in only once every layer is built: a layer that fails leaves the model as it was.
    for name, layer in built:
        _set_module(model, name, layer)
    return CompressionReport(layers)


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
    The authors gave the MPO tensors their own learning rate (ALGORITHMS.md §3).
    """
    for what, value in (("lr", lr), ("mpo_lr", mpo_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{what} must be a positive number, got {value!r}")
    core_ids = {id(c) for layer in mpo_layers(model).values() for c in layer.cores}
    mpo_params, other = [], []
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
    payload = {"format": SAVE_FORMAT, "layers": layers, "state_dict": model.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(model: nn.Module, path) -> nn.Module:
    """Restore a model written by :func:`save` into ``model``, an uncompressed model of the same
    architecture (for instance ``BertModel(config)``): its named Linear/Embedding modules become MPO
    layers with the saved core shapes, then the saved state_dict is loaded. Returns ``model``.
    """
    payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    tag = payload.get("format") if isinstance(payload, dict) else None
    if not (isinstance(tag, str) and tag.startswith(TORCH_MODEL.kind + "/")):
        raise ValueError(f"{os.fspath(path)!r} is not a model written by mpo.torch.save (format {SAVE_FORMAT})")
    TORCH_MODEL.check_version(tag.partition("/")[2], repr(os.fspath(path)))
    originals, layers = {}, {}
    for name, spec in payload["layers"].items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the saved MPO layer {name!r} has no module of that name in this model") from None
        originals[name] = module
        layers[name] = _empty_layer(spec, module, name)
    for name, layer in layers.items():
        _set_module(model, name, layer)
    try:
        model.load_state_dict(payload["state_dict"])
    except BaseException:
        # A state that does not fit leaves the model as it was, not with zero placeholder layers.
        for name, module in originals.items():
            _set_module(model, name, module)
        raise
    return model


def _empty_layer(spec: dict, module: nn.Module, name: str) -> MPOLayer:
    # Cores of the saved shapes (their values come from the state_dict) on the module's dtype and device.
    ref = next(module.parameters(), None) if isinstance(module, nn.Module) else None
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    device = ref.device if ref is not None else None
    shapes = [tuple(s) for s in spec["core_shapes"]]
    placeholder = MPO(
        [torch.zeros(s, dtype=torch.float64).numpy() for s in shapes],
        shape=tuple(spec["matrix_shape"]),
        spectra=[torch.ones(s[3], dtype=torch.float64).numpy() for s in shapes[:-1]],
        truncation_errors=[0.0] * (len(shapes) - 1),
        norm=0.0,
    )
    if spec["kind"] == "MPOLinear":
        if not isinstance(module, (nn.Linear, MPOLinear)):
            raise ValueError(f"the saved MPOLinear {name!r} is a {type(module).__name__} in this model")
        bias = getattr(module, "bias", None)
        layer = MPOLinear(placeholder, bias, mode=spec["mode"], dtype=dtype, device=device)
    else:
        if not isinstance(module, (nn.Embedding, MPOEmbedding)):
            raise ValueError(f"the saved MPOEmbedding {name!r} is a {type(module).__name__} in this model")
        layer = MPOEmbedding(
            placeholder, padding_idx=spec["padding_idx"], mode=spec["mode"], dtype=dtype, device=device
        )
    for core, frozen in zip(layer.cores, spec["frozen"]):
        core.requires_grad_(not frozen)
    return layer
