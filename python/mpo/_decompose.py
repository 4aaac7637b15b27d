"""``decompose``: a matrix to an MPO by MPOP Algorithm 1, and the budget-mode driver.

The sweep itself runs in the C++ core (``_core.decompose``); this module checks the input, pads the
matrix to its planned shape, weighs its rows (``row_weights``), and hands budget mode (``ratio``) to the
search of ``mpo._budget``, which scores per-bond max_bond by the sweep's true error. What the caps,
tol and ratio then cut from the result is the truncation policy's (``mpo._truncation``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from . import _budget, _core, _scaled
from ._mpo import MPO
from ._shape import ShapePlan, full_bonds, pad
from ._validation import as_matrix, parse_max_bond, parse_ratio, parse_shape, parse_tol
from ._weighted import plain_measures, weigh_rows

__all__ = ["decompose"]

#: Budget mode reports its search here at DEBUG level (``logging.getLogger("mpo.budget")``): the
#: chosen and starting max_bond, the candidates scored and the sweep's true error, also as record
#: attributes ``max_bond``, ``start``, ``evaluations`` and ``error``.
_LOG = logging.getLogger("mpo.budget")

_SVD_METHODS = ("auto", "exact")


def _budget_decompose(
    padded: np.ndarray,
    plan: ShapePlan,
    caps: Sequence[int] | None,
    ratio: float,
    shape: tuple[int, int],
    row_scale: np.ndarray | None,
    plain: tuple[float, list[np.ndarray]] | None,
    dtype: np.dtype,
) -> MPO | None:
    """Budget mode on the matrix itself: the sweep's per-bond caps searched by true error (``_budget``).

    None when the full bonds (within ``caps``) already fit the budget: the ordinary decomposition then
    meets it, and ``truncate(ratio=)`` only trims bonds wider than their neighbours feed.
    """
    rows, cols = shape
    pairs = [i * j for i, j in zip(plan.in_shape, plan.out_shape)]
    limits = list(full_bonds(plan.in_shape, plan.out_shape))
    if caps is not None:
        limits = [min(f, c) for f, c in zip(limits, caps)]
    # A row-weighted MPO's I row scales are parameters too: the cores get what is left.
    extra = 0 if row_scale is None else rows
    allowed = ratio * rows * cols - extra
    if _budget.layout_params(pairs, limits) <= allowed:
        return None
    start = _budget.uniform_start(pairs, limits, allowed)
    if start is None:
        smallest = _budget.layout_params(pairs, [1] * len(limits)) + extra
        raise ValueError(_budget.ratio_floor_message(ratio, smallest, rows, cols))
    # The search squares values (Gram matrices, energies): it runs on the matrix in units of a power of
    # two near its largest entry (exact), and the scale goes back on the central core, spectra, errors
    # and norm at the end (at 1e160 unscaled Gram matrices overflow). The C++ sweep (``_core.Sweep``) is
    # the sweep ``decompose`` runs, with its zero rule, in the data's precision; it divides by the unit
    # as it copies the matrix (no scaled copy here: 47 MB for MiniLM's embedding).
    unit = _scaled.unit(padded)
    sweep = _core.Sweep(padded, list(plan.in_shape), list(plan.out_shape), unit=unit)
    found = _budget.search(sweep, pairs, start, limits, allowed)
    best = found.max_bond
    if _LOG.isEnabledFor(logging.DEBUG):
        # The search's cost, for a user (or a benchmark) asking why budget mode took its time.
        _LOG.debug("budget search: %dx%d at ratio %g: max_bond %s from uniform %s, %d candidates scored",
                   rows, cols, ratio, best, start, found.evaluations,
                   extra={"max_bond": list(best), "start": list(start), "evaluations": found.evaluations,
                          "error": math.sqrt(found.squared_error) * unit})
    raw = sweep.build(best)
    central = (len(raw["cores"]) - 1) // 2
    cores = [np.ascontiguousarray(c, dtype=dtype) for c in raw["cores"]]
    cores[central] = np.ascontiguousarray(cores[central] * dtype.type(unit))  # the others are orthonormal
    if not np.isfinite(cores[central]).all():
        raise OverflowError(f"the central core would hold values beyond the largest {np.dtype(dtype).name}; "
                            "decompose in float64 or scale the matrix down")
    raw.update({
        "cores": cores,
        "spectra": [np.asarray(sp) * unit for sp in raw["spectra"]],
        "truncation_errors": np.asarray(raw["truncation_errors"]) * unit,
        "norm": float(raw["norm"]) * unit,
    })
    return _from_sweep(raw, shape, best, row_scale, plain, True)


def decompose(
    M: object,
    shape: object = None,
    *,
    n: int = 5,
    max_bond: int | Sequence[int] | None = None,
    tol: float | None = None,
    ratio: float | None = None,
    svd: str = "auto",
    row_weights: object = None,
) -> MPO:
    """Decompose a matrix into a Matrix Product Operator (MPOP Algorithm 1).

    Parameters
    ----------
    M : array_like, 2-D
        Real matrix (float32 and float64 are kept; integers become float64; any memory order).
    shape : None, int, or ((i_1, ..., i_n), (j_1, ..., j_n))
        None plans balanced factors with :func:`mpo.plan_shape` (zero-padding a side that has none);
        an int is n; explicit factors must multiply to M's sides.
    n : int
        Number of cores when ``shape`` is None (default 5, as in MPOP).
    max_bond : int or sequence of n-1 ints, optional
        Cap on every bond, or on each bond.
    tol : float in [0, 1), optional
        Relative Frobenius error target: the smallest bonds with sqrt(sum eps_k^2)/||M||_F <= tol.
        With ``max_bond`` too, the caps are applied first and tol cuts further while the bound allows
        (the result meets both). With neither, the MPO is exact with full bonds (Eq. 2).
    ratio : float in (0, 1], optional
        Budget mode: per-bond caps with ``compression_ratio <= ratio`` (MPOP Eq. 5) chosen to make the
        true error ||M - MPO||_F small. The sweep's error is exactly sqrt(sum eps_k^2) of the remainders
        it cuts, so caps are scored exactly: the search starts at the largest uniform cap that fits and
        moves parameters between bonds while the error falls (``mpo._budget``). The result is never
        worse than that uniform cap's sweep, and ``error_bound()`` equals its true error. A row-weighted
        decomposition scores the weighted error ||D (M - MPO)||_F and counts its I row scales. With
        ``max_bond`` too, no bond exceeds its cap; ``tol`` then cuts further while the bound allows.
    svd : {"auto", "exact"}
        "auto" lets a bond capped far below its full size use a randomized range finder whose
        convergence is checked (falling back to the exact route); "exact" always takes the exact route.
        Budget mode's search (``ratio`` below what the full bonds need) always splits exactly.
    row_weights : array_like of I values >= 0, optional
        Row importances (FWSVD, docs/ALGORITHMS.md §10): D M is decomposed with D = diag(sqrt(w/max(w) +
        1e-6)), so caps and tol act in the weighted norm, and the MPO keeps D^-1 as ``row_scale``
        (I more parameters). For column weights decompose M.T and use ``.T``.

    Returns
    -------
    MPO

    Examples
    --------
    >>> import numpy as np, mpo
    >>> M = np.random.default_rng(0).standard_normal((768, 768))
    >>> m = mpo.decompose(M, max_bond=64)
    >>> m.bond_dims
    (12, 64, 64, 12)
    >>> bool(np.linalg.norm(M - m.to_dense()) <= m.error_bound() * (1 + 1e-9))
    True
    """
    if svd not in _SVD_METHODS:
        raise ValueError(f"svd must be one of {_SVD_METHODS}, got {svd!r}")
    a = as_matrix(M)
    rows, cols = a.shape
    plan = parse_shape(shape, n, rows, cols)
    caps = parse_max_bond(max_bond, len(plan.in_shape) - 1)
    target = parse_tol(tol)
    budget = parse_ratio(ratio)
    weighted = None if row_weights is None else weigh_rows(a, row_weights, plan)
    padded = pad(a if weighted is None else weighted.matrix, plan.padded_shape)
    scale, plain = (weighted.row_scale, weighted.plain) if weighted is not None else (None, None)
    if budget is not None:
        searched = _budget_decompose(padded, plan, caps, budget, (rows, cols), scale, plain, a.dtype)
        if searched is not None:
            return searched if target is None else searched.truncate(tol=target)
    # Caps cut each remainder as the sweep goes (and may take the randomized route): the fast route.
    # A tol then cuts the stored canonical form further while the bound allows.
    raw = _core.decompose(
        padded,
        list(plan.in_shape),
        list(plan.out_shape),
        caps if caps is not None else [0] * (len(plan.in_shape) - 1),
        svd == "auto",
    )
    if target is not None or budget is not None:
        return _from_sweep(raw, (rows, cols), caps, scale, plain, False).truncate(tol=target, ratio=budget)
    return _from_sweep(raw, (rows, cols), caps, scale, plain, True)


def _from_sweep(
    raw: _core.DecomposeResult,
    shape: tuple[int, int],
    caps: Sequence[int] | None,
    row_scale: np.ndarray | None,
    plain: tuple[float, list[np.ndarray]] | None,
    sweep_exact: bool,
) -> MPO:
    """The MPO of ``_core.decompose``'s result; ``sweep_exact``: it is what the caller returns, so its
    truncation errors are the sweep's true error (``MPO.exact_error``)."""
    cut = raw["cut"]
    if row_scale is not None and plain is not None and any(cut):
        plain = _own_plain(raw["cores"], raw["spectra"], shape, row_scale, plain[0])
    return MPO(
        raw["cores"],
        shape=shape,
        spectra=raw["spectra"],
        truncation_errors=raw["truncation_errors"],
        norm=raw["norm"],
        cut_max_bonds=[cap if was_cut else 0 for cap, was_cut in zip(caps or [0] * len(cut), cut)],
        # A capped sweep cuts remainders, not M: its spectra are those of the MPO's own matrix.
        spectra_of_matrix=not any(cut),
        row_scale=row_scale,
        plain=plain,
        sweep_exact=sweep_exact,
    )


def _own_plain(
    cores: Sequence[np.ndarray], spectra: Sequence[np.ndarray], shape: tuple[int, int], row_scale: np.ndarray,
    norm: float,
) -> tuple[float, list[np.ndarray]]:
    """(||M||_F, the spectra of the cut MPO's own plain matrix diag(row_scale) @ cores): what a cut
    row-weighted MPO reports as its plain entropy (0 <= S_k <= ln d_k, docs/API.md), not M's spectra,
    whose entropy may exceed ln d_k. One exact sweep of the plain matrix, as ``MPO.truncate`` does."""
    cut = MPO(cores, shape=shape, spectra=spectra, truncation_errors=np.zeros(len(spectra)), norm=1.0)
    dense = cut.to_dense() * row_scale[:, None].astype(cut.dtype)
    return norm, plain_measures(dense, cut)[1]
