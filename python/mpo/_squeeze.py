"""Dimension squeezing (MPOP §4.2, Algorithm 2), framework-free.

Start from a set of MPOs and the metric p they give. Each step cuts one dimension from one central
bond (a bond of a central tensor): the one whose next dropped singular value raises the error bound
least. That value is read from the stored spectra (Δε² = λ², docs/ALGORITHMS.md §12), so choosing costs no
SVD. Then the caller fine-tunes, and evaluates p̃. The loop stops when |p − p̃| > Δ (and that step is
rolled back: its MPOs are not kept) or after ``max_steps`` steps. Fine-tuning, evaluating and what
the metric means are the caller's: they come in as callbacks.

MPOs never change in place, so an exception raised by a callback leaves every MPO the caller holds as
it was; the steps accepted before it are reported to ``on_step`` as they happen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ._mpo import MPO

__all__ = ["SqueezeStep", "SqueezeResult", "squeeze", "central_bonds", "cut_central"]


def central_bonds(m: MPO) -> tuple[int, ...]:
    """The bonds of m's central tensor (bond k joins cores k and k+1): the ones squeezing cuts."""
    c = m.central_index
    return tuple(k for k in (c - 1, c) if 0 <= k < m.n - 1)


@dataclass(frozen=True)
class SqueezeStep:
    """One step: which bond of which MPO lost a dimension, what that cost, and the metric after it."""

    step: int
    name: object
    bond: int
    bond_dim: int
    dropped: float
    error_bound: float
    metric: float
    gap: float
    accepted: bool


@dataclass
class SqueezeResult:
    """The MPOs after squeezing, the starting metric, every step (the rolled-back one included)."""

    mpos: dict
    start_metric: float
    history: list[SqueezeStep] = field(default_factory=list)
    stop: str = ""


def _check_number(name: str, value: object, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}")
    return float(value)


def _cheapest_cut(mpos: Mapping, min_bond: int):
    best = None
    for name, m in mpos.items():
        for k in central_bonds(m):
            d = m.bond_dims[k]
            if d <= min_bond:
                continue
            cost = float(m.spectra[k][d - 1]) ** 2
            if best is None or cost < best[0]:
                best = (cost, name, k)
    return best


def squeeze(
    mpos: Mapping,
    finetune: Callable[[dict], Mapping | None],
    evaluate: Callable[[dict], float],
    *,
    delta: float,
    max_steps: int,
    min_bond: int = 1,
    on_step: Callable[[SqueezeStep, dict], None] | None = None,
) -> SqueezeResult:
    """Squeeze the central bonds of ``mpos`` one dimension at a time (MPOP Algorithm 2).

    Parameters
    ----------
    mpos : mapping name -> MPO
        The decomposed matrices (names are the caller's: layer names, indices).
    finetune : callable(dict name -> MPO) -> mapping or None
        Called after each cut with all MPOs (the cut one replaced). Returns the fine-tuned MPOs (for
        instance :meth:`MPO.from_cores` of trained cores, which brings them back to canonical form) or
        None to keep them as given.
    evaluate : callable(dict name -> MPO) -> float
        The metric p (a loss or a score). Called once on ``mpos`` for the start, then after each fine-tune.
    delta : float >= 0
        Stop when |p − p̃| > delta; the step that crossed it is rolled back.
    max_steps : int >= 0
        At most this many cuts.
    min_bond : int >= 1
        A central bond is never cut below this.
    on_step : callable(SqueezeStep, dict name -> MPO), optional
        Told every step, with the MPOs kept after it (the previous ones when the step was rolled back).

    Returns
    -------
    SqueezeResult
        ``mpos`` (the last accepted state), ``start_metric``, ``history`` and ``stop``
        ("threshold", "max_steps" or "exhausted": no central bond can lose a dimension).
        Exceptions raised by a callback propagate; the MPOs given in are never modified.
    """
    if not isinstance(mpos, Mapping) or not mpos:
        raise ValueError(f"mpos must be a non-empty mapping of name -> MPO, got {type(mpos).__name__}")
    for name, m in mpos.items():
        if not isinstance(m, MPO):
            raise TypeError(f"mpos[{name!r}] must be an MPO, got {type(m).__name__}")
    delta = _check_number("delta", delta, 0.0)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"max_steps must be an integer >= 0, got {max_steps!r}")
    if isinstance(min_bond, bool) or not isinstance(min_bond, int) or min_bond < 1:
        raise ValueError(f"min_bond must be an integer >= 1, got {min_bond!r}")
    if not callable(finetune) or not callable(evaluate):
        raise TypeError("finetune and evaluate must be callables taking a dict name -> MPO")

    current = dict(mpos)
    start = float(evaluate(dict(current)))
    result = SqueezeResult(mpos=current, start_metric=start, stop="max_steps")
    for step in range(1, max_steps + 1):
        cut = _cheapest_cut(current, min_bond)
        if cut is None:
            result.stop = "exhausted"
            break
        cost, name, k = cut
        m = current[name]
        caps = list(m.bond_dims)
        caps[k] -= 1
        trial = dict(current)
        trial[name] = m.truncate(max_bond=caps)
        tuned = finetune(dict(trial))
        if tuned is not None:
            trial.update(tuned)
        metric = float(evaluate(dict(trial)))
        gap = abs(metric - start)
        accepted = gap <= delta
        record = SqueezeStep(
            step=step,
            name=name,
            bond=k,
            bond_dim=caps[k],
            dropped=math.sqrt(cost),
            error_bound=trial[name].error_bound(),
            metric=metric,
            gap=gap,
            accepted=accepted,
        )
        result.history.append(record)
        if accepted:
            current = trial
            result.mpos = current
        if on_step is not None:
            on_step(record, dict(current))
        if not accepted:
            result.stop = "threshold"
            break
    return result


def cut_central(mpos: Mapping, params: int, *, min_bond: int = 1) -> dict:
    """Algorithm 2's cuts without the fine-tuning: drop central-bond dimensions, cheapest first, until
    the MPOs hold at most ``params`` core parameters in all.

    The order is :func:`squeeze`'s (the smallest next dropped λ² over every central bond of every MPO),
    so a staged squeeze that fine-tunes between calls and a direct truncation to the same size cut the
    same bonds. Returns name -> MPO (untouched MPOs are the same objects). Raises ValueError when the
    central bonds cannot shrink that far (every one at ``min_bond``), naming the smallest size there is.
    """
    if not isinstance(mpos, Mapping) or not mpos:
        raise ValueError(f"mpos must be a non-empty mapping of name -> MPO, got {type(mpos).__name__}")
    for name, m in mpos.items():
        if not isinstance(m, MPO):
            raise TypeError(f"mpos[{name!r}] must be an MPO, got {type(m).__name__}")
    if isinstance(params, bool) or not isinstance(params, int) or params < 0:
        raise ValueError(f"params must be an integer >= 0, got {params!r}")
    if isinstance(min_bond, bool) or not isinstance(min_bond, int) or min_bond < 1:
        raise ValueError(f"min_bond must be an integer >= 1, got {min_bond!r}")
    caps = {name: list(m.bond_dims) for name, m in mpos.items()}
    pairs = {name: [i * j for i, j in zip(m.in_shape, m.out_shape)] for name, m in mpos.items()}

    def saving(name: object, k: int) -> int:
        # One dimension less on bond k removes a slice of each neighbouring core.
        b = [1, *caps[name], 1]
        return b[k] * pairs[name][k] + pairs[name][k + 1] * b[k + 2]

    result = dict(mpos)
    total = sum(m.num_params for m in mpos.values())
    while total > params:
        best = None
        for name, m in mpos.items():
            for k in central_bonds(m):
                d = caps[name][k]
                if d > min_bond:
                    cost = float(m.spectra[k][d - 1]) ** 2
                    if best is None or cost < best[0]:
                        best = (cost, name, k)
        if best is None:
            raise ValueError(
                f"cut_central: the central bonds cannot shrink below {total} parameters "
                f"(every one is at min_bond={min_bond}); asked for {params}"
            )
        _, name, k = best
        total -= saving(name, k)
        caps[name][k] -= 1
        if total <= params:
            # The estimate ignores bonds a cut leaves wider than their neighbours feed, which truncate
            # shrinks too: the true count is at most the estimate. Count it exactly once it fits.
            for key in caps:
                if caps[key] != list(mpos[key].bond_dims):
                    result[key] = mpos[key].truncate(max_bond=caps[key])
            total = sum(m.num_params for m in result.values())
    return result
