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

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from . import _core

#: Search work beyond the uniform candidate's own sweep: this many times its flops, at least the floor
#: (so a small matrix, whose sweep is cheap, still gets a useful search).
_WORK_FACTOR = 1.0
_WORK_FLOOR = 1e9


def layout_params(pairs: Sequence[int], bonds: Sequence[int]) -> int:
    """sum_k d_(k-1) i_k j_k d_k for bonds d_1..d_(n-1) (d_0 = d_n = 1)."""
    b = [1, *bonds, 1]
    return sum(b[k] * p * b[k + 1] for k, p in enumerate(pairs))


class SearchResult(NamedTuple):
    """What :func:`search` found: the per-bond max_bond, its sweep's exact squared error, and how many
    candidates were scored exactly (sweep evaluations plus eigendecompositions of the central bound)."""

    max_bond: list[int]
    squared_error: float
    evaluations: int


def search(
    sweep: _core.Sweep, pairs: Sequence[int], start: Sequence[int], limits: Sequence[int], allowed: float
) -> SearchResult:
    """Per-bond max_bond within ``limits`` whose sweep keeps <= ``allowed`` parameters, by true error.

    ``pairs`` are the cores' i_k j_k (what a bond's width costs, with ``layout_params``); ``start`` is
    the largest uniform cap within budget. When the sweep's steps between bond c-1 (the last left one)
    and bond c (the last) keep everything, the parameters are first moved between those two bonds by
    :func:`central_pair` (a bound that is exact at its reference, so every round lowers the true
    error); then each other bond is shrunk by one where that lowers the exact error (the freed
    parameters go to bond c). Otherwise the pairwise local search :func:`local_search` runs.
    """
    best = [int(x) for x in start]
    if central_pair_applies(pairs, best, limits):
        best, err, count = central_pair(sweep, pairs, best, limits, allowed)
        if not math.isfinite(err):  # no candidate of the pair fitted (cannot happen from a fitting start)
            err = sweep.evaluate(best)[1]
            count += 1
        best, err, more = _outer_moves(sweep, pairs, best, err, limits, allowed)
        return SearchResult(best, err, count + more)
    return local_search(sweep, pairs, best, limits, allowed)


#: Rounds of the central-pair bound: each costs one eigendecomposition of the last step's Gram matrix;
#: the rounds stop earlier when the bound's best is its own reference (on MiniLM after 2-3 rounds).
_ROUNDS = 6
#: Multiply-adds of a replayed last split below which outer bonds are always probed (MiniLM's 384- and
#: 1536-wide matrices: 1e7-6e7; its 30522 x 384 embedding: 5e9, which is probed only by the bound).
_PROBE_WORK = 2e8
#: Flops of exact probes after the central-pair bound, at most (about one probe of MiniLM's embedding,
#: whose 768 x 768 eigenvalues and Gram updates cost ~1e9; a 384 x 384 matrix's splits allow 2-3).
_PROBE_LIMIT = 1e9
#: The last step's Gram matrix is side x side with side = prod of the pairs right of the central core;
#: beyond this the bound costs more than the local search's sweeps.
_MAX_SIDE = 2048


def central_pair_applies(pairs: Sequence[int], caps: Sequence[int], limits: Sequence[int]) -> bool:
    """Whether :func:`central_pair` can search these caps: n >= 3, and every right step before the last
    keeps its whole full bond (its split is then only a change of basis, which the bound skips)."""
    n = len(pairs)
    c = (n - 1) // 2
    if c < 1 or math.prod(pairs[c + 1 :]) > _MAX_SIDE:
        return False
    return all(
        caps[j] >= limits[j] and limits[j] == math.prod(pairs[j + 1 :]) for j in range(c + 1, n - 1)
    )


def _fit(pairs: Sequence[int], caps: list[int], bond: int, limit: int, allowed: float) -> int:
    """The largest max_bond of ``bond`` (<= ``limit``) with the other caps as given that fits, 0 if none."""
    b = [1, *caps, 1]
    # layout_params is linear in bond's width: the cores on either side of it.
    slope = b[bond] * pairs[bond] + pairs[bond + 1] * b[bond + 2]
    rest = layout_params(pairs, [*caps[:bond], 0, *caps[bond + 1 :]])
    return max(0, min(limit, int((allowed - rest) // slope)))


def central_pair(
    sweep: _core.Sweep, pairs: Sequence[int], caps: list[int], limits: Sequence[int], allowed: float
) -> tuple[list[int], float, int]:
    """Parameters moved between bond c-1 and bond c (c the central index), the other caps fixed.

    A cut of bond c-1 to b keeps the first b rows R_b of that step's uncapped split R (rows a, each
    read as a pair_c x side matrix X_a); the steps between keep everything, so the last step splits
    R_b's unfolding, whose column Gram matrix is G(b) = sum_(a<b) X_a^T X_a, and the sweep's exact
    squared error is ||M||^2 - (sum of the largest b_c eigenvalues of G(b)).

    1. For any orthonormal V the sum of the b_c largest diagonal entries of V^T G(b) V is at most that
       eigenvalue sum (Ky Fan), so with V the eigenvectors of G(b_ref) it bounds the error from above
       for every b at once, from the products of a few rows of R with V, and equals it at b_ref. Each
       round takes the b (with the largest b_c that fits) of lowest bound, whose true error is at most
       the reference's, and makes it the next reference, until the reference is its own best.
    2. The bound is loose far from its reference and the error jagged in b, so the next best
       candidates of the last bound are scored exactly by the eigenvalues of G(b), while that costs
       less than the splits already made (and than ``_PROBE_LIMIT``).

    Returns (caps, exact squared error, candidates scored by an eigendecomposition).
    """
    n = len(pairs)
    c = (n - 1) // 2
    left, last = c - 1, c
    side = math.prod(pairs[c + 1 :])
    width = pairs[c]
    top = min(limits[left], sweep.last_left_count(caps))
    energy = sweep.energy
    # Exact probes after the bound: up to the work of the splits made so far, at most _PROBE_LIMIT.
    work_limit = min(sweep.work, _PROBE_LIMIT)
    b = max(1, min(caps[left], top))
    count = 0
    best, best_err = list(caps), math.inf

    def with_left(value: int) -> tuple[list[int], int]:
        trial = [*caps[:left], value, *caps[left + 1 :]]
        trial[last] = _fit(pairs, trial, last, limits[last], allowed)
        return trial, trial[last]

    ranked: list[tuple[float, bool, int]] = []
    for _ in range(_ROUNDS):
        # The bound for b' in [lo, hi]: diag(V^T G(b') V) = values -+ the rows between b and b'. Only
        # the directions a cut in the window can keep are needed (fewer columns: still a bound), so the
        # reference computes only those eigenpairs.
        reach = max(4, b // 4)
        lo, hi = max(1, b - reach), min(top, b + reach)
        keeps = [with_left(other)[1] for other in range(lo, hi + 1)]
        used = min(side, max(keeps) + 8)
        values = np.maximum(sweep.central_reference(caps, side, b, used), 0.0)
        count += 1
        here, keep = with_left(b)
        if keep >= 1:
            err = max(energy - float(values[:keep].sum()), 0.0)
            if err < best_err:
                best, best_err = here, err
        cumulative = np.vstack([np.zeros(used), np.cumsum(sweep.central_bound(lo, hi, used), axis=0)])
        ranked = []
        for other, keep in zip(range(lo, hi + 1), keeps):
            if keep < 1:
                continue
            diagonal = values[:used] + (cumulative[other - lo] - cumulative[b - lo])
            kept = float(np.sum(np.partition(diagonal, used - keep)[used - keep :])) if keep < used else float(diagonal.sum())
            ranked.append((-kept, other != b, other))
        ranked.sort()
        choice = ranked[0][2] if ranked else b
        if choice == b:
            break
        b = choice
    # The bound is loose far from its reference, and the error is jagged in b (b_c is rounded down to
    # what fits): the next best candidates of the last bound are scored exactly, by the eigenvalues of
    # G(b), best first, while that costs less than the splits already made.
    spent = 0.0
    for _, _, other in ranked[1:]:
        if spent >= work_limit:
            break
        if other == b:
            continue
        trial, keep = with_left(other)
        values = sweep.central_probe(other)
        count += 1
        spent += 4 / 3 * side**3 + abs(other - b) * width * side**2
        err = max(energy - float(values[:keep].sum()), 0.0)
        if err < best_err:
            best, best_err = trial, err
    return best, best_err, count


def _outer_moves(
    sweep: _core.Sweep, pairs: Sequence[int], caps: list[int], err: float, limits: Sequence[int], allowed: float
) -> tuple[list[int], float, int]:
    """Each bond outside the central pair shrunk a little, bond c regrown to fit, kept where the exact
    error falls; after a kept move the central pair is searched again. A probe replays at least the last
    split (its Gram matrix, side^2 per row of its unfolding), so probes are made only where that costs
    less than ``_PROBE_WORK`` or than the splits made before them. Returns (caps, error, scorings)."""
    n = len(pairs)
    c = (n - 1) // 2
    count = 0
    side = math.prod(pairs[c + 1 :])
    if side**2 * caps[c - 1] * pairs[c] > max(_PROBE_WORK, sweep.work):
        return caps, err, 0
    improved = True
    while improved:
        improved = False
        for j in [*range(c - 1), *range(c + 1, n - 1)]:
            if caps[j] <= 1:
                continue
            trial = list(caps)
            trial[j] -= 1
            trial[c] = _fit(pairs, trial, c, limits[c], allowed)
            # Shrink by as little as frees a parameter step for bond c (a quarter of bond j at most).
            while trial[c] <= caps[c] and trial[j] > max(1, caps[j] - max(2, caps[j] // 4)):
                trial[j] -= 1
                trial[c] = _fit(pairs, trial, c, limits[c], allowed)
            if trial[c] <= caps[c]:
                continue  # nothing freed reaches bond c: the error can only grow
            count += 1
            _, trial_err = sweep.evaluate(trial)
            if trial_err < err * (1 - 1e-12):
                caps, err, improved = trial, trial_err, True
                if central_pair_applies(pairs, caps, limits):
                    moved, moved_err, more = central_pair(sweep, pairs, caps, limits, allowed)
                    count += more
                    if moved_err < err:
                        caps, err = moved, moved_err
                sweep.forget_all_but(caps)
                break
    return caps, err, count


def local_search(
    sweep: _core.Sweep, pairs: Sequence[int], start: Sequence[int], limits: Sequence[int], allowed: float
) -> SearchResult:
    """The pairwise local search, for sweeps :func:`central_pair` does not apply to.

    Starts at ``start`` and repeats: for each ordered pair of bonds (k, l), cheapest to replay first,
    shrink bond k by a step (an eighth of its size, halved down to 1) and grow bond l as far as the
    freed parameters allow; take the first move whose exact error is lower. Stops when no move helps or
    the work limit (see ``_WORK_FACTOR``) is spent.
    """
    best = [int(x) for x in start]
    bonds, best_err = sweep.evaluate(best)
    count = 1
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
                    count += 1
                    if err < best_err * (1 - 1e-12):
                        best, best_err, improved = cand, err, True
                    sweep.forget_all_but(best)
                step //= 2
            if improved:
                break
    return SearchResult(best, best_err, count)


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

