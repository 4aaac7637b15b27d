"""Budget mode of ``decompose(M, ratio=)``: per-bond max_bond of the sweep, chosen by their true error.

MPOP Algorithm 1 splits a remainder at every step (bonds 0..c-1 from the left, then n-2..c from the
right, c the central index) and cuts each split to its max_bond. Every cut is an orthogonal projection
of the current remainder, and later steps act inside the kept subspace, so the pieces each step discards
are mutually orthogonal: the sweep's true error is exactly

    ||M - MPO||_F^2 = sum over steps of the discarded lambda^2 of that step's remainder,

no bound and no densifying needed. A candidate (one max_bond per bond) is therefore scored exactly by
replaying the sweep, which the C++ core does (``_core.Sweep``, include/mpo/sweep.hpp: the sweep's own
splits and zero rule, cached by the max_bond of the steps before them). This module is only the search:
it starts at the largest uniform max_bond within the budget and moves parameters between bonds while
the true error falls (first improvement, halving step sizes), so the result is never worse than the
uniform one; a work limit keeps its cost near one extra sweep.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import _core

#: Search work beyond the uniform candidate's own sweep: this many times its flops, at least the floor
#: (so a small matrix, whose sweep is cheap, still gets a useful search).
_WORK_FACTOR = 1.0
_WORK_FLOOR = 1e9


def layout_params(pairs: Sequence[int], bonds: Sequence[int]) -> int:
    """sum_k d_(k-1) i_k j_k d_k for bonds d_1..d_(n-1) (d_0 = d_n = 1)."""
    b = [1, *bonds, 1]
    return sum(b[k] * p * b[k + 1] for k, p in enumerate(pairs))


def search(
    sweep: _core.Sweep, pairs: Sequence[int], start: Sequence[int], limits: Sequence[int], allowed: float
) -> tuple[list[int], float]:
    """Per-bond max_bond within ``limits`` whose sweep keeps <= ``allowed`` parameters, by true error.

    ``pairs`` are the cores' i_k j_k (what a bond's width costs, with ``layout_params``).

    Starts at ``start`` (the largest uniform cap within budget) and repeats: for each ordered pair of
    bonds (k, l), cheapest to replay first, shrink bond k by a step (an eighth of its size, halved
    down to 1) and grow bond l as far as the freed parameters allow; take the first move whose exact
    error is lower. Stops when no move
    helps or the work limit (see ``_WORK_FACTOR``) is spent. Returns (caps, squared error).
    """
    best = [int(x) for x in start]
    bonds, best_err = sweep.evaluate(best)
    budget_work = sweep.work + max(_WORK_FACTOR * sweep.work, _WORK_FLOOR)
    m = len(best)

    def fits(caps: list[int]) -> bool:
        return layout_params(pairs, sweep.evaluate(caps)[0]) <= allowed

    # Moves in order of cost: a move replays the sweep from the first step it changes, so moves between
    # bonds the sweep splits last (cached prefixes) come first.
    position = {bond: t for t, bond in enumerate(sweep.steps)}
    moves = sorted(((k, l) for k in range(m) for l in range(m) if k != l),
                   key=lambda kl: -min(position[kl[0]], position[kl[1]]))
    improved = True
    while improved and sweep.work < budget_work:
        improved = False
        for k, l in moves:
            if best[l] >= limits[l] or best[k] <= 1:
                continue
            step = max(best[k] // 8, 1)
            while step >= 1 and not improved and sweep.work < budget_work:
                cand = list(best)
                cand[k] -= step
                # Grow bond l by bisection on the parameter count of the caps themselves (an upper
                # bound on what the sweep keeps), then confirm with the sweep's kept bonds.
                lo, hi = best[l], limits[l]
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    trial = [*cand[:l], mid, *cand[l + 1 :]]
                    lo, hi = (mid, hi) if layout_params(pairs, trial) <= allowed else (lo, mid - 1)
                cand[l] = lo
                if cand[l] > best[l] and fits(cand):
                    _, err = sweep.evaluate(cand)
                    if err < best_err * (1 - 1e-12):
                        best, best_err, improved = cand, err, True
                    sweep.forget_all_but(best)
                step //= 2
            if improved:
                break
    return best, best_err


def ratio_floor_message(ratio: float, smallest: int, rows: int, cols: int) -> str:
    """The error message of a budget below every bond at 1."""
    return (
        f"ratio must be >= {smallest / (rows * cols):.6g} for these factors (every bond at 1 keeps "
        f"{smallest} parameters of {rows}x{cols}), got ratio = {ratio}; use a larger ratio or fewer cores n"
    )


def uniform_start(pairs: Sequence[int], limits: Sequence[int], allowed: float) -> list[int] | None:
    """min(limit_k, c) for the largest c whose layout fits ``allowed`` (None when c = 1 does not)."""
    def at(c: int) -> list[int]:
        return [min(lim, c) for lim in limits]

    if layout_params(pairs, at(1)) > allowed:
        return None
    lo, hi = 1, max(limits)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if layout_params(pairs, at(mid)) <= allowed else (lo, mid - 1)
    return at(lo)

