"""The truncation policy: ``max_bond``, ``tol`` and ``ratio`` turned into the bonds to keep.

Everything here works on the arrays an MPO holds (its spectra, truncation errors, factors and bonds)
and returns bond sizes or error arrays; cutting the cores themselves is :meth:`mpo.MPO.truncate`'s job.
Every spectrum is descending, so a cut to ``keep[k]`` drops the tail ``spectra[k][keep[k]:]``.

Two regimes, told apart by ``spectra_of_matrix``: when the stored spectra are those of the decomposed
matrix's own unfoldings (an exact decomposition and its cuts), a further cut's error adds to the old
one in quadrature (MPOP Eq. 4); when they are the MPO's own matrix's (a sweep that cut remainders), the
new cut's error adds to the old by the triangle inequality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._budget import ratio_floor_message

__all__ = [
    "consistent",
    "dropped_energy",
    "combined_errors",
    "bonds_for_max_bond",
    "bonds_for_tol",
    "bonds_for_ratio",
    "cut_max_bonds_after",
]


def consistent(bonds: Sequence[int], in_shape: Sequence[int], out_shape: Sequence[int]) -> bool:
    """No bond exceeds what its neighbours can feed: d_k <= d_(k-1) i_k j_k and d_k <= i_(k+1) j_(k+1) d_(k+1)."""
    pairs = [i * j for i, j in zip(in_shape, out_shape)]
    padded = [1, *bonds, 1]
    return all(
        padded[k + 1] <= padded[k] * pairs[k] and padded[k + 1] <= pairs[k + 1] * padded[k + 2]
        for k in range(len(bonds))
    )


def dropped_energy(spectra: Sequence[np.ndarray], keep: Sequence[int]) -> np.ndarray:
    """delta_k^2: the energy a cut to ``keep`` drops at each bond."""
    return np.array([float(np.sum(s[r:] ** 2)) for s, r in zip(spectra, keep)])


def combined_errors(errors: np.ndarray, dropped: np.ndarray, spectra_of_matrix: bool) -> np.ndarray:
    """Per-bond eps_k of an MPO with truncation errors ``errors`` followed by a cut dropping ``dropped``
    (delta_k^2) per bond."""
    old = errors**2
    if spectra_of_matrix:
        return np.sqrt(old + dropped)
    # Triangle inequality ||M - M''|| <= E + D with E^2 = sum eps^2, D^2 = sum delta^2, spread over
    # the bonds: eps'^2 = eps^2 (1 + D/E) + delta^2 (1 + E/D) sums to exactly (E + D)^2.
    e, d = math.sqrt(float(old.sum())), math.sqrt(float(dropped.sum()))
    if e == 0 or d == 0:
        return np.sqrt(old + dropped)
    return np.sqrt(old * (1 + d / e) + dropped * (1 + e / d))


def bonds_for_max_bond(bonds: Sequence[int], max_bond: Sequence[int], cut_max_bonds: Sequence[int]) -> list[int]:
    """Every bond cut to its ``max_bond``; an error for a max_bond above a bond that was already cut below it.

    ``cut_max_bonds[k]`` is the max_bond bond k was cut at earlier (0: never cut): the singular values
    beyond it are gone, so no later cut can give them back.
    """
    for k, cap in enumerate(max_bond):
        if cap > bonds[k] and cut_max_bonds[k] and cap > cut_max_bonds[k]:
            raise ValueError(
                f"truncate cannot grow bond {k} from {bonds[k]} to max_bond {cap}: it was cut at "
                f"{cut_max_bonds[k]} and the discarded singular values are gone; decompose the "
                "matrix again for larger bonds"
            )
    return [min(r, cap) for r, cap in zip(bonds, max_bond)]


def cut_max_bonds_after(
    cut_max_bonds: Sequence[int], keep: Sequence[int], dropped: np.ndarray, max_bond: Sequence[int] | None
) -> list[int]:
    """The ``cut_max_bonds`` of an MPO after a cut to ``keep`` that dropped ``dropped`` per bond: a bond
    that lost energy records the max_bond it was asked for (or its new size), the smaller of old and new."""
    out = []
    for k, (old, r) in enumerate(zip(cut_max_bonds, keep)):
        if dropped[k] > 0:
            asked = max_bond[k] if max_bond is not None and max_bond[k] <= r else r
            old = min(old, asked) if old else asked
        out.append(old)
    return out


def bonds_for_tol(
    spectra: Sequence[np.ndarray], errors: np.ndarray, norm: float, spectra_of_matrix: bool, tol: float
) -> list[int]:
    """The smallest bonds whose error bound stays <= tol * norm, dropping the globally smallest lambda^2 first."""
    # Most bond removed per unit of error budget. Each spectrum is descending, so the smallest values
    # always sit at the tails.
    keep = [len(s) for s in spectra]
    allowed = tol * norm
    spent = float(np.sum(errors**2))
    if spectra_of_matrix:
        budget = allowed**2 - spent
    else:
        budget = max(allowed - math.sqrt(spent), 0.0) ** 2
    if budget <= 0:
        return keep
    values = np.concatenate([s[1:] ** 2 for s in spectra])
    owners = np.concatenate([np.full(len(s) - 1, k) for k, s in enumerate(spectra)])
    order = np.argsort(values, kind="stable")
    within = np.cumsum(values[order]) <= budget
    drop = np.bincount(owners[order[within]].astype(np.intp), minlength=len(keep))
    return [r - int(d) for r, d in zip(keep, drop)]


def bonds_for_ratio(
    spectra: Sequence[np.ndarray],
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    shape: tuple[int, int],
    ratio: float,
    extra_params: int = 0,
) -> list[int]:
    """Per-bond sizes with at most ratio * I * J parameters and the least dropped lambda^2.

    ``extra_params`` counts parameters beside the cores (a row-weighted MPO's I row scales): the cores
    get what is left. Greedy on the stored spectra: drop next the singular value with the smallest
    lambda^2 per parameter saved. Shrinking bond k by one saves d_(k-1) i_k j_k + i_(k+1) j_(k+1)
    d_(k+1) parameters (more when a neighbour then exceeds what it can be fed), which depends on the
    neighbours' current sizes, so the scores are recomputed after every drop. Greedy is not optimal in
    general; the best uniform max_bond that fits the budget is also evaluated and kept when it drops
    less, so budget mode's bound is never above a uniform max_bond's. Both candidates shrink
    monotonically as ``ratio`` falls, so the bound is monotone in ``ratio``.
    """
    rows, cols = shape
    allowed = ratio * rows * cols - extra_params
    pairs = [i * j for i, j in zip(in_shape, out_shape)]

    def fed(bonds: Sequence[int]) -> list[int]:
        # A bond wider than its neighbours can feed (d_k > d_(k-1) i_k j_k or > i_(k+1) j_(k+1)
        # d_(k+1)) shrinks to what they feed when the cut is re-canonicalised.
        b = [1, *bonds, 1]
        changed = True
        while changed:
            changed = False
            for k in range(1, len(b) - 1):
                fit = min(b[k], b[k - 1] * pairs[k - 1], pairs[k] * b[k + 1])
                changed, b[k] = changed or fit != b[k], fit
        return b[1:-1]

    def layout(bonds: Sequence[int]) -> int:
        b = [1, *bonds, 1]
        return sum(b[k] * p * b[k + 1] for k, p in enumerate(pairs))

    def params(bonds: Sequence[int]) -> int:
        return layout(fed(bonds))

    bonds = [len(s) for s in spectra]
    if layout(bonds) <= allowed:
        return bonds
    smallest = params([1] * len(bonds)) + extra_params
    if smallest > allowed + extra_params:
        raise ValueError(ratio_floor_message(ratio, smallest, rows, cols))
    greedy = list(bonds)
    total = params(greedy)
    while total > allowed:
        best, best_score = -1, math.inf
        for k, r in enumerate(greedy):
            if r <= 1:
                continue
            greedy[k] = r - 1
            after = params(greedy)
            greedy[k] = r
            if after < total:  # a drop that saves nothing only adds to the bound
                score = float(spectra[k][r - 1]) ** 2 / (total - after)
                if score < best_score:
                    best, best_score = k, score
        if best < 0:
            # No single drop saves a parameter: two neighbours each feed the other's excess. Drop
            # the smallest tail value; a later drop then frees the parameters.
            best = min((k for k, r in enumerate(greedy) if r > 1), key=lambda k: spectra[k][greedy[k] - 1])
        greedy[best] -= 1
        total = params(greedy)
    # The largest uniform max_bond within budget (parameters grow with it, dropped energy shrinks).
    cap = max(bonds)
    while params([min(b, cap) for b in bonds]) > allowed:
        cap -= 1
    uniform = [min(b, cap) for b in bonds]
    choice = greedy
    if float(dropped_energy(spectra, uniform).sum()) < float(dropped_energy(spectra, greedy).sum()):
        choice = uniform
    # Bonds that only exceed what their neighbours feed (rounding-level singular values kept by
    # the sweep) would make the cut return the MPO unchanged, over budget: cut them to fit.
    return fed(choice) if choice == bonds else choice
