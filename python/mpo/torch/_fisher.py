"""Fisher information of a model's weights from mini-batch gradients (FWSVD, docs/ALGORITHMS.md §10).

Î_w = mean over mini-batches of (∂L/∂w)², with the gradients zeroed before every batch: summing the
running gradients instead (a bug of one public re-implementation) squares sums of gradients, not
gradients. The per-row importance FWSVD weights a factorization with is Î summed over the other axis.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence, Sized
from typing import Any

import numpy as np
import torch

__all__ = ["fisher_information"]

_AXES = ("in", "out", None)


def _select(model: torch.nn.Module, modules: object) -> dict[str, torch.Tensor]:
    """name -> the 2-D ``weight`` of every module that gets an importance."""
    named = dict(model.named_modules())
    if modules is None:
        linears = {name: m.weight for name, m in named.items() if isinstance(m, torch.nn.Linear)}
        if not linears:
            raise ValueError("the model has no nn.Linear modules; pass modules= explicitly")
        return linears
    if isinstance(modules, (str, torch.nn.Module)) or not isinstance(modules, Sequence):
        raise TypeError(f"modules must be None or a sequence of module names or modules, got {modules!r}")
    by_id = {id(m): name for name, m in named.items()}
    chosen: dict[str, torch.nn.Module] = {}
    for item in modules:
        if isinstance(item, str):
            if item not in named:
                raise ValueError(f"the model has no module named {item!r}")
            chosen[item] = named[item]
        elif isinstance(item, torch.nn.Module):
            if id(item) not in by_id:
                raise ValueError(f"module {type(item).__name__} is not part of the model")
            chosen[by_id[id(item)]] = item
        else:
            raise TypeError(f"modules must hold module names or modules, got {item!r}")
    weights = {}
    for name, m in chosen.items():
        weight = getattr(m, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise ValueError(f"module {name!r} has no 2-D weight to weigh")
        weights[name] = weight
    return weights


def fisher_information(
    model: torch.nn.Module,
    data: Iterable[Any],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    modules: Sequence[str | torch.nn.Module] | None = None,
    *,
    axis: str | None = "in",
    progress: bool | Callable[[int, int | None, float], None] = False,
) -> dict[str, np.ndarray]:
    """Fisher importance of the weights of ``modules``: the mean over batches of squared gradients.

    Parameters
    ----------
    model : torch.nn.Module
        Used as it is (train or eval mode is the caller's choice); its gradients are zeroed before
        every batch and left zeroed (None) at the end.
    data : iterable of batches
        Each batch is handed to ``loss_fn`` unchanged.
    loss_fn : callable (model, batch) -> scalar tensor
        The task loss of one mini-batch.
    modules : None, or a sequence of module names or modules
        Whose ``weight`` (2-D, (out, in) as in nn.Linear) is measured; None takes every nn.Linear.
    axis : "in", "out" or None
        "in": one importance per input feature (Î summed over the output axis, length in_features),
        the row weights of the layer as ``x @ weight.T`` for ``mpo.decompose(weight.T, row_weights=)``
        and ``mpo.weighted_svd(weight, r, f, axis=1)``. "out": per output feature. None: Î itself.
    progress : bool or callable(batch_index, total or None, loss)
        True prints one line per batch to stderr; a callable is called after every batch.

    Returns
    -------
    dict name -> float64 NumPy array.
    """
    if axis not in _AXES:
        raise ValueError(f"axis must be one of {_AXES}, got {axis!r}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (model, batch) -> scalar loss, got {loss_fn!r}")
    weights = _select(model, modules)
    for name, weight in weights.items():
        if not weight.requires_grad:
            raise ValueError(f"the weight of {name!r} has requires_grad=False: its gradient cannot be measured")
    total = len(data) if isinstance(data, Sized) else None
    sums = {name: torch.zeros_like(weight, dtype=torch.float64) for name, weight in weights.items()}
    batches = 0
    try:
        for batch in data:
            # Zeroed per batch: each batch's own gradient is squared, never a running sum of them.
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}")
            loss.backward()
            with torch.no_grad():
                for name, weight in weights.items():
                    # No gradient: the loss does not depend on this weight in this batch (importance 0).
                    if weight.grad is not None:
                        sums[name] += weight.grad.detach().to(torch.float64) ** 2
            batches += 1
            value = float(loss.detach())
            if callable(progress):
                progress(batches, total, value)
            elif progress:
                print(f"fisher: batch {batches}/{total if total is not None else '?'} loss {value:.4g}", file=sys.stderr)
    finally:
        # Cleared also when loss_fn or data raises: no partial gradients are left on the model.
        model.zero_grad(set_to_none=True)
    if batches == 0:
        raise ValueError("data gave no batches: the Fisher information needs at least one")
    out = {}
    for name, acc in sums.items():
        mean = acc / batches
        if axis == "in":
            mean = mean.sum(dim=0)
        elif axis == "out":
            mean = mean.sum(dim=1)
        out[name] = mean.cpu().numpy()
    return out
