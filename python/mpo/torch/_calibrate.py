"""Calibration: the input statistics of a model's layers on real inputs, and what they are used for
(docs/ALGORITHMS.md §14): activation-aware layers, the model-wide budget and per-layer sensitivity.

``calibrate`` runs the model on the caller's batches with forward hooks on the compressible layers
(``nn.Linear`` and, when transformers is installed, its ``Conv1D``: both compute x @ M with M in x out)
and streams C = X^T X in float64 per layer, so memory does not grow with the number of tokens (its upper
triangle by BLAS's syrk when scipy is installed: half the multiplications of the full product). When a
batch is a dict with an ``attention_mask`` whose shape matches a layer input's leading axes, padding
tokens are left out: they are not text the model meets.
"""

from __future__ import annotations

import fnmatch
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .._activation import (
    DAMPING,
    ActivationStats,
    Allocation,
    Calibration,
    allocate,
    decompose_activations,
    svd_curve,
    whitened_basis,
)
from ._layers import MPOLinear, weight_of

__all__ = ["allocation", "calibrate", "check_calibration", "SensitivityReport", "SensitivityRow", "sensitivity", "activation_layer", "activation_settings", "model_allocation"]


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional: without it only nn.Linear is calibrated
        return None
    return Conv1D


def _compressible(model: nn.Module) -> dict[str, nn.Module]:
    kinds = tuple(t for t in (nn.Linear, _conv1d_type()) if t is not None)
    return {name: m for name, m in model.named_modules() if type(m) in kinds}


def _select(model: nn.Module, include, exclude, what: str = "calibrate") -> dict[str, nn.Module]:
    """The compressible layers matching include/exclude (fnmatch patterns on qualified names)."""
    found = _compressible(model)
    names = list(found)
    pats: dict[str, list[str]] = {}
    for key, value in (("include", include), ("exclude", exclude)):
        if value is None:
            pats[key] = []
        elif isinstance(value, str):
            pats[key] = [value]
        else:
            pats[key] = list(value)
            if not all(isinstance(p, str) for p in pats[key]):
                raise TypeError(f"{key} must be a string or a list of strings (fnmatch patterns), got {value!r}")
        for p in pats[key]:
            if not any(fnmatch.fnmatchcase(n, p) for n in names):
                raise ValueError(
                    f"{key} pattern {p!r} matches no Linear (or Conv1D) layer; the model has: {', '.join(names) or 'none'}"
                )
    chosen = {
        n: m
        for n, m in found.items()
        if (not pats["include"] or any(fnmatch.fnmatchcase(n, p) for p in pats["include"]))
        and not any(fnmatch.fnmatchcase(n, p) for p in pats["exclude"])
    }
    if not chosen:
        raise ValueError(f"{what}: include/exclude leave no layer; the model's layers are: {', '.join(names) or 'none'}")
    return chosen


def _in_features(module: nn.Module) -> int:
    # nn.Linear's weight is (out, in); transformers' Conv1D stores (in, out).
    return module.in_features if isinstance(module, nn.Linear) else weight_of(module).shape[0]


def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    include=None,
    exclude=None,
    *,
    progress: bool | Callable[[int, int | None, int], None] = True,
) -> Calibration:
    """Run ``model`` on ``batches`` and collect each chosen layer's input statistics C = X^T X.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode (dropout off) under ``torch.no_grad``; its training flag is restored after.
    batches : iterable of model inputs
        A dict (any Mapping, such as a tokenizer's BatchEncoding) is passed as ``model(**batch)``, anything else as ``model(batch)``.
    include, exclude : str or list of str, optional
        fnmatch patterns on qualified module names, as in :func:`mpo.torch.compress`.
    progress : bool or callable(batch_index, total or None, tokens_so_far)
        True prints one line per batch to stderr.

    Returns
    -------
    mpo.Calibration
        name -> :class:`mpo.ActivationStats` (float64 C, its diagonal, the token count); ``save``/``load``
        write it to safetensors.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"calibrate expects a torch.nn.Module, got {type(model).__name__}")
    chosen = _select(model, include, exclude)
    syrk = _syrk()
    # Fortran order: BLAS's syrk updates it in place. Only the upper triangle is summed (half the products
    # of a full X^T X); the lower is filled from it at the end.
    grams = {n: np.zeros((_in_features(m), _in_features(m)), order="F") for n, m in chosen.items()}
    counts = {n: 0 for n in chosen}
    state: dict = {"mask": None}
    # The sums run between forward passes, not inside the hooks. Alternating torch's threads (the forward)
    # and the BLAS's (syrk) layer by layer left each pool's idle threads spinning beside the other's
    # work: with the default two threads of each on a 2-core machine, calibrating MiniLM-L6 took 8.3 s
    # against 1.6 s with either pool at one thread. Held inputs are bounded by PENDING_LIMIT bytes.
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        for name, rows in pending:
            _add_gram(syrk, grams[name], rows)
        pending.clear()

    def hook(name: str):
        def record(_module, inputs, _output):
            x = inputs[0].detach()
            mask = state["mask"]
            flat = x.reshape(-1, x.shape[-1])
            if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
                flat = flat[mask.reshape(-1).to(flat.device)]
            # A copy: the sum comes later, and the forward may still change its input in place.
            rows = flat.to("cpu", torch.float64, copy=True).numpy()
            if rows.shape[0]:
                pending.append((name, rows))
                if sum(r.nbytes for _, r in pending) > PENDING_LIMIT:  # a few dozen layers: a short sum
                    flush()
            counts[name] += rows.shape[0]

        return record

    total = len(batches) if isinstance(batches, Sized) else None
    handles = [m.register_forward_hook(hook(n)) for n, m in chosen.items()]
    was_training = model.training
    model.eval()
    seen = 0
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for seen, batch in enumerate(batches, 1):
                if isinstance(batch, Mapping):  # a dict, or transformers' BatchEncoding
                    mask = batch.get("attention_mask")
                    state["mask"] = mask.bool() if isinstance(mask, torch.Tensor) else None
                    model(**batch)
                else:
                    state["mask"] = None
                    model(batch)
                flush()
                tokens = max(counts.values())
                if callable(progress):
                    progress(seen, total, tokens)
                elif progress:
                    print(
                        f"calibrate: batch {seen}/{total if total is not None else '?'}, {tokens} tokens, "
                        f"{time.perf_counter() - start:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        pending.clear()  # after an error, do not keep up to PENDING_LIMIT bytes alive in the traceback
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("batches gave no batch: calibration needs at least one")
    missing = [n for n, c in counts.items() if c == 0]
    if missing:
        raise ValueError(f"these layers saw no input during calibration (not used by the forward pass?): {missing}")
    return Calibration({n: ActivationStats.from_upper(g, counts[n], copy=False) for n, g in grams.items()})


#: Bytes of layer inputs :func:`calibrate` holds before summing them into the statistics (each batch's are
#: summed after its forward pass, or earlier once they pass this).
PENDING_LIMIT = 256 * 2**20


def _syrk() -> Callable | None:
    """BLAS's dsyrk from scipy (optional), or None: then the full product is taken."""
    try:
        from scipy.linalg.blas import dsyrk
    except ImportError:
        return None
    return cast(Callable, dsyrk)


def _add_gram(syrk: Callable | None, gram: np.ndarray, rows: np.ndarray) -> None:
    """gram's upper triangle += that of rows^T rows (float64, in place): by syrk, half of a full product's
    multiplications (the calibration's main cost: a 1,536-wide FFN input costs 1,536^2 per token)."""
    if syrk is not None:
        # rows^T is (features x tokens) in Fortran order when rows is C-contiguous: C = A A^T + C.
        syrk(1.0, np.ascontiguousarray(rows).T, beta=1.0, c=gram, trans=0, lower=0, overwrite_c=1)
    else:
        gram += rows.T @ rows


def check_calibration(model: nn.Module, calibration: Calibration) -> None:
    """Raise ValueError unless every layer of ``calibration`` is a Linear (or Conv1D) of ``model`` whose
    input width equals the statistics' feature count: statistics of another model are refused before use.
    (The statistics themselves, finite, symmetric and float64, are checked when they are made or loaded.)"""
    if not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be an mpo.Calibration, got {type(calibration).__name__}")
    layers = _compressible(model)
    unknown = [name for name in calibration if name not in layers]
    if unknown:
        raise ValueError(
            f"the calibration has statistics for {len(unknown)} layers this model does not have as Linear or Conv1D "
            f"(statistics of another model?), first {unknown[0]!r}"
        )
    for name, stats in calibration.items():
        width = _in_features(layers[name])
        if stats.features != width:
            raise ValueError(
                f"the calibration's statistics of {name!r} are for {stats.features} input features; the layer has "
                f"{width} (statistics of another model?)"
            )


def _matrix(module: nn.Module) -> np.ndarray:
    """M = W.T (in x out) of a Linear, or the stored (in, out) weight of a Conv1D, in float64."""
    w = weight_of(module).detach().to("cpu", torch.float64).numpy()
    return w.T.copy() if isinstance(module, nn.Linear) else w.copy()


def activation_layer(
    module: nn.Module,
    stats: ActivationStats,
    *,
    n: int = 2,
    shape=None,
    max_bond=None,
    ratio: float | None = None,
    tol: float | None = None,
    scaling: str = "whiten",
    mode: str = "auto",
    held_out: ActivationStats | None = None,
) -> tuple[MPOLinear, Any]:
    """An MPOLinear for ``module`` fitted to its activations (:func:`mpo.decompose_activations`), and the fit
    (its ``held_out_error`` on ``held_out``, statistics of tokens the fit did not see, when given)."""
    if not isinstance(module, nn.Linear):
        raise TypeError(f"activation-aware layers replace nn.Linear, got {type(module).__name__}")
    fit = decompose_activations(
        _matrix(module), stats, n=n, shape=shape, max_bond=max_bond, ratio=ratio, tol=tol, scaling=scaling,
        held_out=held_out,
    )
    weight = module.weight
    return MPOLinear(fit.mpo, module.bias, mode=mode, dtype=weight.dtype, device=weight.device), fit


def allocation(
    model: nn.Module,
    calibration: Calibration,
    ratio: float,
    include=None,
    exclude=None,
    *,
    layer_weights=None,
) -> Allocation:
    """The model-wide budget :func:`compress` spends with ``allocate="model"``, to inspect or to pass as
    ``allocate=``: whitened-SVD ranks (or dense) for the chosen Linears within ``ratio`` times their
    parameters, minimising the summed (``layer_weights``-weighted) squared activation errors.
    ``SensitivityReport.layer_weights()`` gives weights measured on the model's output."""
    names = [n for n, m in _select(model, include, exclude, "allocation").items() if isinstance(m, nn.Linear)]
    return model_allocation(model, names, calibration, ratio, layer_weights=layer_weights)


def model_allocation(
    model: nn.Module,
    names: Sequence[str],
    calibration: Calibration,
    ratio: float,
    *,
    layer_weights=None,
    damping: float = DAMPING,
) -> Allocation:
    """Whitened-SVD ranks (or dense) for the named Linears within ratio times their dense parameters."""
    missing = [n for n in names if n not in calibration]
    if missing:
        raise ValueError(f"the calibration has no statistics for {missing}")
    curves = [svd_curve(n, _matrix(model.get_submodule(n)), calibration[n], damping=damping) for n in names]
    return allocate(curves, ratio=ratio, layer_weights=layer_weights)


def activation_settings(
    model: nn.Module,
    chosen: Sequence[str],
    calibration: Calibration | None,
    *,
    weights,
    allocate: str | Allocation | None,
    n: int,
    max_bond,
    ratio: float | None,
    tol: float | None,
    scaling: str,
    progress: bool,
) -> dict:
    """For ``compress(weights="activations")`` and ``compress(allocate="model")``: the keyword arguments
    of :func:`activation_layer` per chosen Linear, or None for a Linear the allocation keeps dense.

    ``scaling="auto"`` is the whitening for n = 2 (SVD-LLM) and the diagonal scaling for n > 2, the
    better of the two on MiniLM (docs/RESULTS.md, bench_function).
    """
    if not (allocate is None or allocate == "model" or isinstance(allocate, Allocation)):
        raise ValueError(
            f"allocate must be None, 'model' (one budget over all chosen layers) or an mpo.Allocation, got {allocate!r}"
        )
    if weights != "activations" and allocate is None:
        if calibration is not None:
            raise ValueError("calibration is used only with weights='activations' or allocate='model'")
        return {}
    if not isinstance(calibration, Calibration):
        raise ValueError(
            "weights='activations' and allocate='model' need calibration=mpo.torch.calibrate(model, batches), "
            f"got {type(calibration).__name__}"
        )
    linears = [name for name in chosen if isinstance(model.get_submodule(name), nn.Linear)]
    missing = [name for name in linears if name not in calibration]
    if missing:
        raise ValueError(f"the calibration has no statistics for the chosen layers {missing}")
    if scaling == "auto":
        scaling = "whiten" if n == 2 or allocate is not None else "diagonal"
    if isinstance(allocate, Allocation):
        if sorted(allocate.settings) != sorted(linears):
            raise ValueError(
                f"the allocation covers {sorted(allocate.settings)}, the chosen Linear layers are {sorted(linears)}"
            )
        plan = allocate
    elif allocate == "model":
        if ratio is None or max_bond is not None or tol is not None:
            raise ValueError("allocate='model' spends ratio over all chosen layers: give ratio, and neither max_bond nor tol")
        plan = model_allocation(model, linears, calibration, ratio)
    if allocate is not None:
        if progress:
            print(plan, file=sys.stderr, flush=True)
        return {
            name: None if setting[0] == "dense" else {"n": 2, "max_bond": setting[1], "scaling": scaling}
            for name, setting in plan.settings.items()
        }
    return {name: {"n": n, "max_bond": max_bond, "ratio": ratio, "tol": tol, "scaling": scaling} for name in linears}


@dataclass(frozen=True)
class SensitivityRow:
    """One layer compressed alone: its size, activation error and the model's score then."""

    name: str
    params: int
    dense_params: int
    activation_error: float
    score: float
    loss: float


@dataclass(frozen=True)
class SensitivityReport:
    """:func:`sensitivity`'s answer: ``baseline`` (the untouched model's score) and one row per layer."""

    baseline: float
    rows: list

    def layer_weights(self, floor: float = 1e-6) -> dict:
        """Each layer's loss per unit of its squared activation error: weights for :func:`mpo.allocate`."""
        out = {}
        for r in self.rows:
            err2 = r.activation_error**2
            out[r.name] = max(r.loss, 0.0) / err2 + floor if err2 > 0 else floor
        return out

    def __str__(self) -> str:
        lines = [f"{'layer':<48} {'share':>7} {'act. error':>10} {'score':>9} {'loss':>9}"]
        for r in sorted(self.rows, key=lambda r: -r.loss):
            lines.append(
                f"{r.name:<48} {r.params / r.dense_params:>7.3f} {r.activation_error:>10.4f} {r.score:>9.4f} {r.loss:>9.4f}"
            )
        lines.append(f"baseline score {self.baseline:.4f}; rows sorted by loss (spare the top layers)")
        return "\n".join(lines)


def _block_of(model: nn.Module, name: str) -> tuple[str, int] | None:
    """(path of the nn.ModuleList, index) of the outermost repeated block holding layer ``name``, or None."""
    parts = name.split(".")
    for k in range(len(parts) - 1):
        container = model.get_submodule(".".join(parts[:k])) if k else model
        if isinstance(container, nn.ModuleList) and parts[k].isdigit():
            return ".".join(parts[:k]), int(parts[k])
    return None


_LEAVES = (type(None), bool, int, float, str)


def _copy(obj: Any) -> Any:
    """A copy of a block's inputs or output whose tensors are cloned; raises TypeError on anything else
    (a cache object, a dataclass): such a block is not replayed."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, _LEAVES):
        return obj
    if type(obj) in (tuple, list):
        return type(obj)(_copy(x) for x in obj)
    if type(obj) is dict:
        return {k: _copy(v) for k, v in obj.items()}
    raise TypeError(type(obj).__name__)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and a.device == b.device and torch.equal(a, b))
    if type(a) is not type(b):
        return False
    if type(a) in (tuple, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


class _Prefix:
    """Replays the blocks before a compressed layer (sensitivity's saving, exact).

    Compressing one layer of block k leaves blocks 0..k-1 of its nn.ModuleList unchanged: during the
    baseline evaluation every block's calls (inputs and output) are recorded, and while layer k's
    variant is scored a block before it returns its recorded output, but only when its inputs equal the
    recorded ones exactly (same tensors bit for bit; a deterministic block then computes the same
    output). Any difference (an evaluate that changes its batches, a block run in another order) runs
    the block itself, so the scores are those of running the whole model.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.model = model
        self.blocks = {name: _block_of(model, name) for name in names}
        self.calls: dict[tuple[str, int], list | None] = {}
        for found in set(b for b in self.blocks.values() if b is not None):
            self.calls[found] = []

    def _block(self, key: tuple[str, int]) -> nn.Module:
        # _block_of found key[0] to be an nn.ModuleList (or Sequential) of blocks.
        return cast(nn.ModuleList, self.model.get_submodule(key[0]))[key[1]]

    @contextmanager
    def record(self) -> Iterator[None]:
        """Record every block's calls during one evaluation."""
        handles = [self._block(key).register_forward_hook(self._recorder(key), with_kwargs=True) for key in self.calls]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _recorder(self, key):
        def hook(_module, args, kwargs, output):
            calls = self.calls[key]
            if calls is None:
                return
            try:
                calls.append((_copy(args), _copy(kwargs), _copy(output)))
            except TypeError:  # an input or output that cannot be compared or copied: never replayed
                self.calls[key] = None

        return hook

    @contextmanager
    def replay(self, name: str) -> Iterator[None]:
        """Replay the recorded blocks before ``name``'s block (an instance ``forward`` shadows the class's)."""
        found = self.blocks.get(name)
        keys = [] if found is None else [k for k in self.calls if k[0] == found[0] and k[1] < found[1]]
        keys = [k for k in keys if self.calls[k] is not None and "forward" not in vars(self._block(k))]
        for key in keys:
            block = self._block(key)
            recorded = self.calls[key]
            assert recorded is not None  # keys holds only blocks whose calls were recorded
            block.forward = self._replayer(block, recorded)
        try:
            yield
        finally:
            for key in keys:
                del self._block(key).forward

    @staticmethod
    def _replayer(block: nn.Module, calls: list):
        run = type(block).forward
        position = [0]

        def forward(*args, **kwargs):
            k = position[0]
            position[0] += 1
            if k < len(calls) and _same(calls[k][0], args) and _same(calls[k][1], kwargs):
                return _copy(calls[k][2])
            return run(block, *args, **kwargs)

        return forward


def _whitened_variant(
    module: nn.Linear, stats: ActivationStats, n: int, max_bond, ratio: float | None, scaling: str
) -> tuple[nn.Linear, int, int, float] | None:
    """Sensitivity's whitened SVD of one Linear as a dense nn.Linear of the rank-r product (the layer,
    its SVD-layout parameters r (I + J), I J, its activation error), or None where this route does not
    apply (n > 2, another scaling, no single rank): the same function as :func:`activation_layer`'s
    MPOLinear up to rounding, from one eigendecomposition (:func:`mpo.whitened_basis`) instead of a
    decomposition, the fold and the layer's set-up."""
    one_rank = isinstance(max_bond, int) and not isinstance(max_bond, bool)
    if n != 2 or scaling != "whiten" or (ratio is None and not one_rank):
        return None
    basis = whitened_basis(_matrix(module), stats)
    rank, approx, error = basis.fit(ratio=ratio, max_bond=max_bond)
    weight = module.weight
    layer = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                      device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(approx.T.copy()))
        if module.bias is not None:
            layer.bias.copy_(module.bias)
    rows, cols = approx.shape
    return layer, rank * (rows + cols), rows * cols, error


def sensitivity(
    model: nn.Module,
    calibration: Calibration,
    evaluate: Callable[[nn.Module], float],
    include=None,
    exclude=None,
    *,
    n: int = 2,
    max_bond=None,
    ratio: float | None = 0.5,
    scaling: str = "whiten",
    progress: bool = True,
    reuse_prefix: bool = True,
) -> SensitivityReport:
    """Per layer, what ``evaluate(model)`` (higher is better) loses when only that layer is compressed.

    Each chosen Linear is replaced in turn by its activation-aware MPO layer (:func:`activation_layer`
    with ``n``, ``max_bond``, ``ratio``, ``scaling``), the model scored, and the layer put back: the
    model is unchanged afterwards. ``loss`` = baseline - score.

    ``reuse_prefix`` (default True) saves most of the repeated work: a layer inside the k-th block of an
    ``nn.ModuleList`` (a transformer layer) does not change blocks 0..k-1, so those return the outputs
    recorded in the baseline evaluation whenever their inputs are bit for bit the recorded ones (else
    they run). The scores are the same as without it; it holds every block's inputs and outputs over
    one evaluation in memory (False turns it off).

    For n = 2 with ``scaling="whiten"`` (the default) and a ``ratio`` or one integer ``max_bond``, each
    layer's variant is the whitened SVD's rank-r product as a dense ``nn.Linear``, read from one
    eigendecomposition (:func:`mpo.whitened_basis`): the same function as :func:`activation_layer`'s
    MPOLinear up to rounding, with the same parameters and activation error, at a fraction of the
    decomposition's cost. Other settings build :func:`activation_layer`.

    Cost: one evaluation per layer (with ``reuse_prefix``, of the blocks from the layer's onward), so
    ``evaluate`` sets it. It need not score every calibration input: the weights only rank the layers.
    On MiniLM-L6 the allocation weighted by a sensitivity scored on 8 of the 96 calibration sentences
    (evenly spaced) gave held-out cosines within 0.001 of the one scored on all 96, at shares 0.5 and
    0.7 (bench_function's ``--sensitivity-sentences``, checked in its full run; docs/RESULTS.md), at
    8/96 of the forward passes.
    """
    if not callable(evaluate):
        raise TypeError(f"evaluate must be callable(model) -> float, got {evaluate!r}")
    chosen = _select(model, include, exclude, "sensitivity")
    chosen = {k: v for k, v in chosen.items() if isinstance(v, nn.Linear)}
    for name in chosen:
        if name not in calibration:
            raise ValueError(f"the calibration has no statistics for layer {name!r}")
    prefix = _Prefix(model, list(chosen)) if reuse_prefix else None
    if prefix is not None:
        with prefix.record():
            baseline = float(evaluate(model))
    else:
        baseline = float(evaluate(model))
    rows = []
    for count, (name, module) in enumerate(chosen.items(), 1):
        linear = cast(nn.Linear, module)  # chosen holds only the Linears
        layer: nn.Module
        variant = _whitened_variant(linear, calibration[name], n, max_bond, ratio, scaling)
        if variant is None:
            fitted, fit = activation_layer(
                linear, calibration[name], n=n, max_bond=max_bond, ratio=ratio, scaling=scaling
            )
            layer, params, dense_params = fitted, fitted.num_params, math.prod(fitted.matrix_shape)
            act_error = fit.activation_error
        else:
            layer, params, dense_params, act_error = variant
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        try:
            if prefix is not None:
                with prefix.replay(name):
                    score = float(evaluate(model))
            else:
                score = float(evaluate(model))
        finally:
            setattr(parent, child, module)
        row = SensitivityRow(name, params, dense_params, float(act_error), score, baseline - score)
        rows.append(row)
        if progress:
            print(
                f"sensitivity [{count}/{len(chosen)}] {name}: activation error {row.activation_error:.4f}, "
                f"score {score:.4f} (loss {row.loss:.4f})",
                file=sys.stderr,
                flush=True,
            )
    return SensitivityReport(baseline, rows)
