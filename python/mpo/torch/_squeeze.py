"""Dimension squeezing on a model's MPO layers: :func:`mpo.squeeze` wired to torch.

Trained cores are not in canonical form, and their bonds are not ordered by singular values: before
each cut every layer's cores are re-canonicalised (``MPO.from_cores``), so that the spectra the choice
reads, and the slice that cuts, are those of the trained matrices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._squeeze import SqueezeResult, cut_central, squeeze as _squeeze
from ._compress import mpo_layers

__all__ = ["squeeze", "squeeze_to"]


def squeeze(
    model: nn.Module,
    finetune: Callable[[nn.Module], None],
    evaluate: Callable[[nn.Module], float],
    *,
    delta: float,
    max_steps: int,
    layers=None,
    min_bond: int = 1,
) -> SqueezeResult:
    """Squeeze the central bonds of ``model``'s MPO layers (MPOP Algorithm 2), in place.

    ``finetune(model)`` trains the model after each cut (the cores are new Parameters after a cut, so
    it builds its optimizer each time, e.g. from :func:`optimizer_groups`); ``evaluate(model)`` returns
    the metric. ``layers`` limits squeezing to some MPO layers (qualified names; all by default).

    On return the model holds the last accepted state: the step that moved the metric by more than
    ``delta`` is rolled back, trained parameters outside the MPO layers included. If a callback raises,
    the model is put back into the state after the last accepted step and the exception propagates.
    """
    chosen = _chosen_layers(model, layers, "squeeze")
    # By name, not identity: a cut replaces the core Parameters.
    core_prefixes = tuple(f"{name}.cores." for name in chosen)

    def snapshot() -> dict:
        # Everything else fine-tuning may change, so that a rollback restores it too.
        return {
            name: p.detach().clone()
            for name, p in model.named_parameters()
            if p.requires_grad and not name.startswith(core_prefixes)
        }

    def write(mpos: dict, others: dict) -> None:
        for name, m in mpos.items():
            chosen[name].set_mpo(m)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in others.items():
                params[name].copy_(value)

    def read() -> dict:
        return {name: layer.to_mpo() for name, layer in chosen.items()}

    committed = {"mpos": read(), "others": snapshot()}

    def tune(mpos: dict) -> dict:
        write(mpos, committed["others"])
        finetune(model)
        return read()

    def measure(mpos: dict) -> float:
        write(mpos, {})
        with torch.no_grad():
            return float(evaluate(model))

    def keep(record, mpos: dict) -> None:
        if record.accepted:
            committed["mpos"] = mpos
            committed["others"] = snapshot()

    try:
        result = _squeeze(
            committed["mpos"], tune, measure, delta=delta, max_steps=max_steps, min_bond=min_bond, on_step=keep
        )
    except BaseException:
        write(committed["mpos"], committed["others"])
        raise
    write(committed["mpos"], committed["others"])
    return result


def squeeze_to(model: nn.Module, params: int, *, layers=None, min_bond: int = 1) -> dict[str, tuple[int, ...]]:
    """Cut the central bonds of ``model``'s MPO layers in Algorithm 2's order until their cores hold at
    most ``params`` parameters, in place, without fine-tuning (:func:`mpo.cut_central`).

    One call with the final size is direct truncation; calls with shrinking sizes and fine-tuning in
    between are dimension squeezing in stages. Trained cores are re-canonicalised first, so the order
    reads the spectra of the trained matrices. Each layer keeps which cores train. Returns the new bond
    dimensions of the layers that were cut. The cores of a cut layer are new Parameters: build the
    optimizer again.
    """
    chosen = _chosen_layers(model, layers, "squeeze_to")
    cut = cut_central({name: layer.to_mpo() for name, layer in chosen.items()}, params, min_bond=min_bond)
    changed = {}
    for name, m in cut.items():
        if m.bond_dims != chosen[name].bond_dims:
            chosen[name].set_mpo(m)
            changed[name] = m.bond_dims
    return changed


def _chosen_layers(model: nn.Module, layers, what: str) -> dict:
    """The MPO layers named in ``layers`` (all of the model's by default), by name; ValueError naming
    the unknown ones or the lack of any."""
    found = mpo_layers(model)
    if not found:
        raise ValueError(f"{what}: the model has no MPO layers; run mpo.torch.compress first")
    names = list(found) if layers is None else list(layers)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValueError(f"{what}: {unknown} are not MPO layers; the model's MPO layers are: {', '.join(found)}")
    return {n: found[n] for n in names}
