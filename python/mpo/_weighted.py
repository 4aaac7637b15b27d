"""Row-weighted factorization (FWSVD, Hsu et al., ICLR 2022; ALGORITHMS.md §6).

The problem: find a rank-r W' minimising ||D (W - W')||_F for a diagonal D = diag(sqrt(I_row + eps)),
where I_row is one importance per row (for FWSVD the row sum of the Fisher information). Because D is
diagonal and invertible it is solved in closed form: decompose D W, then undo D on the factor that
carries the row index. For an SVD (n = 2) D^-1 folds exactly into the left factor. For an MPO with
n > 2 the row index is the multi-index (i_1, ..., i_n) spread over every core, so an arbitrary diagonal
does not fold into one core: the weighted MPO keeps D^-1 as a per-row scale (see ``MPO.row_scale``).

Weights are normalised by their largest value before eps is added, so that multiplying the weights by
any positive constant changes nothing (the paper's "rescaling the importance changes nothing"), and
eps is relative to the most important row: a row of weight 0 still gets sqrt(eps) of its error counted.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import _core
from ._shape import pad
from ._validation import as_matrix

__all__ = ["WEIGHT_EPS", "LowRank", "WeightedRows", "row_scales", "weigh_rows", "weighted_svd"]

#: Relative guard added to normalised weights: d_i = sqrt(w_i / max(w) + eps).
WEIGHT_EPS = 1e-6


def row_scales(weights: object, length: int, eps: float = WEIGHT_EPS, *, what: str = "row_weights") -> np.ndarray:
    """The diagonal of D = diag(sqrt(w / max(w) + eps)) for ``length`` rows, as float64.

    Raises ValueError when the weights are not a 1-D array of ``length`` finite values >= 0 with at
    least one positive value, or when eps is not a finite number > 0; TypeError for non-real weights.
    """
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0 (the guard for zero weights), got {eps!r}")
    w = np.asarray(weights)
    if w.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be real numbers, got dtype {w.dtype}")
    w = w.astype(np.float64)
    if w.ndim != 1 or w.shape[0] != length:
        raise ValueError(f"{what} must be 1-D with one weight per row ({length}), got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{what} must be finite, got {int((~np.isfinite(w)).sum())} NaN or inf values")
    if (w < 0).any():
        i = int(np.flatnonzero(w < 0)[0])
        raise ValueError(f"{what} must be >= 0 (importances), got {what}[{i}] = {w[i]}")
    top = w.max()
    if top <= 0:
        raise ValueError(f"{what} must have at least one positive weight, got all zeros")
    return np.sqrt(w / top + float(eps))


@dataclass(frozen=True)
class LowRank:
    """W ≈ left @ right, the result of :func:`weighted_svd`.

    ``spectrum`` holds the singular values of the weighted matrix (D W, or W D for axis=1), all of them;
    ``plain_spectrum`` those of W. The weighted error is exact: ||D (W - left @ right)||_F =
    sqrt(sum of the dropped weighted singular values squared). ``error`` is the plain Frobenius error
    ||W - left @ right||_F, measured when the factors were made.
    """

    left: np.ndarray
    right: np.ndarray
    spectrum: np.ndarray
    plain_spectrum: np.ndarray
    weighted_error: float
    error: float
    weighted_norm: float
    norm: float

    @property
    def rank(self) -> int:
        """r, the inner dimension of left @ right."""
        return self.left.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        """(I, J) of W."""
        return (self.left.shape[0], self.right.shape[1])

    @property
    def num_params(self) -> int:
        """r (I + J): D^-1 is folded into a factor, so it costs nothing."""
        return self.left.size + self.right.size

    @property
    def compression_ratio(self) -> float:
        """num_params / (I J)."""
        return self.num_params / (self.shape[0] * self.shape[1])

    def relative_error(self, weighted: bool = False) -> float:
        """The error over the norm, plain (||W - W'|| / ||W||) or weighted (||D(W - W')|| / ||D W||)."""
        err, norm = (self.weighted_error, self.weighted_norm) if weighted else (self.error, self.norm)
        return err / norm if norm > 0 else 0.0

    def entropy(self, weighted: bool = False) -> float:
        """Entropy -sum v ln v of W's spectrum (plain) or of D W's (weighted), natural log."""
        return float(_core.entropy(self.spectrum if weighted else self.plain_spectrum))

    def to_dense(self) -> np.ndarray:
        """left @ right, the I x J approximation."""
        return self.left @ self.right


def weighted_svd(W: object, rank: int, row_weights: object, axis: int = 0, *, eps: float = WEIGHT_EPS) -> LowRank:
    """Fisher-weighted SVD: the rank-``rank`` W' minimising ||D (W - W')||_F (FWSVD).

    Parameters
    ----------
    W : array_like, 2-D, I x J
    rank : int, 1 <= rank <= min(I, J)
    row_weights : array_like, 1-D, >= 0
        One importance per index of ``axis`` (for FWSVD the Fisher information summed over the other
        axis). D = diag(sqrt(w / max(w) + eps)): only the ratios of the weights matter.
    axis : 0 or 1
        0: the weights index W's rows (length I), D W is decomposed and D^-1 folds into ``left``.
        1: they index W's columns (length J), W D is decomposed and D^-1 folds into ``right``. For a
        torch ``nn.Linear`` weight (out, in), axis=1 weights the input features.
    eps : float > 0
        Guard for zero weights, relative to the largest weight.

    Returns
    -------
    LowRank
        ``left`` (I x r) and ``right`` (r x J), W ≈ left @ right; float64, or float32 for float32 W.
        With uniform weights the result is the plain truncated SVD.
    """
    a = as_matrix(W)
    if axis not in (0, 1) or isinstance(axis, bool):
        raise ValueError(f"axis must be 0 (weights per row) or 1 (weights per column), got {axis!r}")
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"rank must be an integer, got {rank!r}")
    if not 1 <= rank <= min(a.shape):
        raise ValueError(f"rank must be in [1, min(I, J)] = [1, {min(a.shape)}], got {rank}")
    d = row_scales(row_weights, a.shape[axis], eps)
    work = a.astype(np.float64)
    scaled = work * d[:, None] if axis == 0 else work * d[None, :]
    u, s, vt = np.linalg.svd(scaled, full_matrices=False)
    r = int(rank)
    if axis == 0:
        left = (u[:, :r] * s[:r]) / d[:, None]
        right = vt[:r]
    else:
        left = u[:, :r] * s[:r]
        right = vt[:r] / d[None, :]
    error = float(np.linalg.norm(work - left @ right))
    dtype = a.dtype
    return LowRank(
        left=np.ascontiguousarray(left, dtype=dtype),
        right=np.ascontiguousarray(right, dtype=dtype),
        spectrum=s,
        plain_spectrum=np.linalg.svd(work, compute_uv=False),
        weighted_error=float(np.sqrt(np.sum(s[r:] ** 2))),
        error=error,
        weighted_norm=float(np.linalg.norm(s)),
        norm=float(np.linalg.norm(work)),
    )


class Layout(Protocol):
    """The factors of an MPO layout: a :class:`mpo.ShapePlan` or an :class:`mpo.MPO`."""

    @property
    def in_shape(self) -> tuple[int, ...]: ...

    @property
    def out_shape(self) -> tuple[int, ...]: ...

    @property
    def padded_shape(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class WeightedRows:
    """D M for ``decompose(..., row_weights=w)``, D^-1 per row, and M's plain norm and bond spectra."""

    matrix: np.ndarray
    row_scale: np.ndarray
    plain: tuple[float, list[np.ndarray]]


def weigh_rows(a: np.ndarray, row_weights: object, plan: Layout) -> WeightedRows:
    """Scale the rows of ``a`` by D and measure the plain (unweighted) spectra of ``a`` for ``plan``."""
    d = row_scales(row_weights, a.shape[0]).astype(a.dtype)
    # M's own spectra: the plain entropy is a property of M, not of the weighted cut, so one exact
    # sweep of M gives it (one more decomposition's time, paid only by weighted calls).
    return WeightedRows(a * d[:, None], 1.0 / d.astype(np.float64), plain_measures(a, plan))


def plain_measures(a: np.ndarray, layout: Layout) -> tuple[float, list[np.ndarray]]:
    """(||a||_F, the spectra of a's unfoldings) by one exact sweep, for ``layout``'s factors (a
    ShapePlan or an MPO: ``in_shape``, ``out_shape``, ``padded_shape``): the plain norm and spectra a
    row-weighted MPO reports."""
    n = len(layout.in_shape)
    raw = _core.decompose(pad(a, layout.padded_shape), list(layout.in_shape), list(layout.out_shape), [0] * (n - 1), False)
    return float(np.linalg.norm(a.astype(np.float64))), raw["spectra"]
