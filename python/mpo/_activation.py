"""Activation-aware compression: calibration statistics, whitened SVD, scaled MPOs, model-wide budgets
(docs/ALGORITHMS.md §14).

A layer computes y = x M (M = W.T for ``nn.Linear``, in x out). What the model loses is ||X (M - M')||_F
over the activations X it meets, not ||M - M'||_F. Everything here needs only C = X^T X (accumulated in
float64 over calibration tokens): with C = L L^T, ||X E||_F^2 = tr(E^T C E) = ||L^T E||_F^2.

- Whitened SVD (SVD-LLM): truncate L^T M to rank r and fold L^-T back into the left factor. This is the
  exact minimiser of ||L^T (M - M')||_F over rank r (Eckart-Young in the whitened space).
- Diagonal scaling (ASVD's idea): D = diag(sqrt(C_ii)), the root-mean-square of each input feature,
  decomposed as the row weights of ``mpo.decompose(M, row_weights=diag C)`` (D^-1 kept as ``row_scale``).
- Kronecker whitening: C ~ C_1 (x) ... (x) C_n along the MPO's in factors (i_1..i_n), C_k = K_k^2 with
  K_1 (x) ... (x) K_n the nearest Kronecker product of C^(1/2), a rank-one fit of the rearranged matrix
  (Van Loan-Pitsianis, alternating over the factors). L = L_1 (x) ... (x) L_n then folds into the cores
  at no parameter cost: core k's i_k index is multiplied by L_k^-T. For n = 2 in the SVD layout
  ((I, 1) x (1, J)) the product is C itself and this is the whitened SVD. For n > 2 each factor is
  shrunk toward the identity by a beta chosen on the calibration statistics (:func:`shrink_kronecker`):
  the nearest product alone loses to no whitening on MiniLM. Whether it beats the diagonal form is
  measured, not assumed (benchmarks/bench_function.py, docs/RESULTS.md).

The damping rule, for a C that is singular (fewer tokens than features, dead features) or indefinite by
rounding: factor C + lam I with lam = alpha * mean(diag C), alpha = ``damping`` (default 1e-4); when the
Cholesky factorisation fails alpha is multiplied by 10 (from 1e-12 when it was 0) until it succeeds, up
to alpha = 1. lam is relative to C's own scale, so rescaling C (more tokens, a scaled input) changes
nothing, and C = c I gives L = sqrt(c (1 + alpha)) I: the plain method.

Errors are reported with the undamped C: the damping only chooses the factor, the activation error is
that of the statistics themselves. The SVD layout's rank-r fit for in >= out
(:func:`_whitened_layout_fit`) multiplies by C + lam I and never factors it: alpha is taken as given.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._decompose import decompose
from ._mpo import MPO
from ._validation import as_matrix, parse_max_bond, parse_ratio, parse_shape
from ._weighted import LowRank, row_scales

__all__ = [
    "ACTIVATIONS_FORMAT",
    "ACTIVATIONS_VERSION",
    "DAMPING",
    "SCALINGS",
    "SHRINKAGES",
    "ActivationFit",
    "ActivationStats",
    "Allocation",
    "Calibration",
    "LayerCurve",
    "WhitenedBasis",
    "Whitening",
    "activation_error",
    "allocate",
    "decompose_activations",
    "kronecker_factors",
    "shrink_kronecker",
    "svd_curve",
    "whitened_basis",
    "whitened_svd",
    "whitening",
]

#: alpha of the damping rule: C + alpha * mean(diag C) * I is factored (see the module docstring).
DAMPING = 1e-4
_DAMPING_STEP = 10.0
_DAMPING_FLOOR = 1e-12
ACTIVATIONS_FORMAT = "mpo.activations"
ACTIVATIONS_VERSION = 1
#: How ``decompose_activations`` uses the statistics.
SCALINGS = ("none", "diagonal", "whiten", "diagonal+whiten", "fisher")
#: The shrinkages beta that ``shrinkage="auto"`` tries for a Kronecker whitening (n > 2), each scored by
#: its activation error on the calibration statistics: 0 is the fitted Kronecker product unshrunk, 1 no
#: whitening (the plain or diagonal form), so the choice is never worse on the statistics than the
#: unwhitened form (docs/ALGORITHMS.md §14).
SHRINKAGES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


#: Columns per block of :func:`_mirror_upper`: a block of a wide layer's C (1536 x 128 doubles) stays in cache.
_MIRROR_BLOCK = 128


def _mirror_upper(g: np.ndarray) -> None:
    """Fill g's strictly lower triangle from its upper one, in place, a column block at a time: one
    transposed pass over the whole matrix misses the cache on every element (measured 5x slower on a
    1536 x 1536 C)."""
    n = g.shape[0]
    for j in range(0, n, _MIRROR_BLOCK):
        stop = min(j + _MIRROR_BLOCK, n)
        lower = np.tri(n - j, stop - j, -1, dtype=bool)  # (row i, column k) of the block with i > k
        g[j:, j:stop] = np.where(lower, g[j:stop, j:].T, g[j:, j:stop])


# --------------------------------------------------------------------------------------------- statistics
class ActivationStats:
    """The input statistics of one layer: C = X^T X (float64), its diagonal and the token count.

    Made by :meth:`from_inputs`, :meth:`merge`, ``mpo.torch.calibrate`` or :meth:`Calibration.load`.
    The Gram matrix is read-only; two statistics of the same layer merge by adding (more tokens).
    """

    _gram: np.ndarray
    _tokens: int

    def __init__(self, gram: object, tokens: int) -> None:
        """Wrap C = X^T X of ``tokens`` rows of X; checked square, finite, symmetric, diagonal >= 0."""
        g = np.asarray(gram)
        if g.dtype.kind not in "fiu":
            raise TypeError(f"gram must hold real numbers, got dtype {g.dtype}")
        g = np.array(g, dtype=np.float64)
        if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
            raise ValueError(f"gram must be a square, non-empty matrix (features x features), got shape {g.shape}")
        if not np.isfinite(g).all():
            raise ValueError(f"gram must be finite, got {int((~np.isfinite(g)).sum())} NaN or inf values")
        scale = float(np.abs(g).max())
        if float(np.abs(g - g.T).max()) > 1e-8 * max(scale, 1e-300):
            raise ValueError("gram must be symmetric (X^T X): its largest asymmetry is above 1e-8 of its largest entry")
        self._set((g + g.T) / 2, tokens)

    def _set(self, gram: np.ndarray, tokens: int) -> None:
        """Checks shared by the constructors (a symmetric, finite float64 ``gram`` this object now owns)."""
        if (np.diag(gram) < 0).any():
            i = int(np.flatnonzero(np.diag(gram) < 0)[0])
            raise ValueError(f"gram's diagonal holds sums of squares and must be >= 0, got gram[{i}, {i}] = {gram[i, i]}")
        if isinstance(tokens, bool) or not isinstance(tokens, numbers.Integral) or tokens < 1:
            raise ValueError(f"tokens must be an integer >= 1 (rows of X summed into gram), got {tokens!r}")
        self._gram = _frozen(gram)
        self._tokens = int(tokens)
        self._whitenings: dict[float, Whitening] = {}

    @classmethod
    def from_upper(cls, upper: object, tokens: int, *, copy: bool = True) -> ActivationStats:
        """Statistics from the upper triangle of C = X^T X (diagonal included), as BLAS's ``syrk``
        accumulates it; the strictly lower triangle of ``upper`` is not read.

        C is symmetric by construction here, so the constructor's symmetry check (two transposed passes
        over C, most of its cost for a wide layer) is not needed; square, finite, diagonal >= 0 and
        ``tokens`` are checked as there. ``copy=False`` hands over ``upper`` when it is a writeable,
        contiguous float64 array: its lower triangle is filled in place and it becomes the statistics'
        read-only C (no second C in memory; a copy is made otherwise).
        """
        u = np.asarray(upper)
        if u.dtype.kind not in "fiu":
            raise TypeError(f"upper must hold real numbers, got dtype {u.dtype}")
        if u.ndim != 2 or u.shape[0] != u.shape[1] or u.shape[0] == 0:
            raise ValueError(f"upper must be a square, non-empty matrix (features x features), got shape {u.shape}")
        owned = (not copy and u.dtype == np.float64 and u.flags.writeable
                 and (u.flags.c_contiguous or u.flags.f_contiguous))
        g = u if owned else np.array(u, dtype=np.float64, order="F")
        _mirror_upper(g)
        if not np.isfinite(g).all():
            raise ValueError(f"gram must be finite, got {int((~np.isfinite(g)).sum())} NaN or inf values")
        stats = cls.__new__(cls)
        # g is symmetric: its transpose is the same C, and row-major when g is column-major (no copy).
        stats._set(g if g.flags.c_contiguous else g.T, tokens)
        return stats

    @classmethod
    def from_inputs(cls, X: object) -> ActivationStats:
        """The statistics of the rows of ``X`` (tokens x features): C = X^T X in float64."""
        x = as_matrix(X).astype(np.float64)
        return cls(x.T @ x, x.shape[0])

    @property
    def gram(self) -> np.ndarray:
        """C = X^T X, features x features, float64, read-only."""
        return self._gram

    @property
    def diagonal(self) -> np.ndarray:
        """diag(C): each input feature's sum of squares over the tokens."""
        return _frozen(np.diag(self._gram).copy())

    def whitening(self, damping: float = DAMPING) -> Whitening:
        """:func:`whitening` of this C, computed once per ``damping`` (C is read-only): the sensitivity
        pass, the allocation's spectra and the final fits of one layer share one Cholesky factor."""
        if isinstance(damping, bool) or not isinstance(damping, numbers.Real):
            return whitening(self._gram, damping)  # raises, naming the rule
        key = float(damping)
        if key not in self._whitenings:
            found = whitening(self._gram, damping)
            found.factor.setflags(write=False)
            self._whitenings[key] = found
        return self._whitenings[key]

    @property
    def tokens(self) -> int:
        """How many rows of X were summed into C."""
        return self._tokens

    @property
    def features(self) -> int:
        """The layer's input width (C is features x features)."""
        return self._gram.shape[0]

    def merge(self, other: ActivationStats) -> ActivationStats:
        """The statistics of both token sets: grams and counts add."""
        if not isinstance(other, ActivationStats):
            raise TypeError(f"merge expects ActivationStats, got {type(other).__name__}")
        if other.features != self.features:
            raise ValueError(f"cannot merge statistics of {self.features} and {other.features} features")
        return ActivationStats(self._gram + other.gram, self._tokens + other.tokens)

    __add__ = merge

    def save(self, path: str | os.PathLike) -> None:
        """Write these statistics alone to ``path`` (a one-layer :class:`Calibration` named "layer")."""
        Calibration({"layer": self}).save(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationStats:
        """Read statistics written by :meth:`save` (a file with exactly one layer)."""
        calibration = Calibration.load(path)
        if len(calibration) != 1:
            raise ValueError(f"{os.fspath(path)!r} holds {len(calibration)} layers; use Calibration.load")
        return next(iter(calibration.values()))

    def __repr__(self) -> str:
        return f"ActivationStats(features={self.features}, tokens={self._tokens})"


class Calibration(Mapping):
    """Per-layer :class:`ActivationStats` by layer name: what ``mpo.torch.calibrate`` returns.

    Saves to and loads from one safetensors file (``save``/``load``): one float64 tensor
    ``<name>.gram`` per layer, and the format, version and token counts in the header's metadata.
    """

    def __init__(self, layers: Mapping[str, ActivationStats]) -> None:
        """Wrap a mapping name -> ActivationStats (names are non-empty strings)."""
        items = dict(layers)
        for name, stats in items.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"layer names must be non-empty strings, got {name!r}")
            if not isinstance(stats, ActivationStats):
                raise TypeError(f"layer {name!r}: expected ActivationStats, got {type(stats).__name__}")
        self._layers = items

    def __getitem__(self, name: str) -> ActivationStats:
        try:
            return self._layers[name]
        except KeyError:
            raise KeyError(f"no statistics for layer {name!r}; there are: {', '.join(self._layers) or 'none'}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def merge(self, other: Calibration) -> Calibration:
        """Both calibrations' tokens: layers in both are merged, layers in one are kept."""
        if not isinstance(other, Calibration):
            raise TypeError(f"merge expects a Calibration, got {type(other).__name__}")
        out = dict(self._layers)
        for name, stats in other.items():
            out[name] = out[name].merge(stats) if name in out else stats
        return Calibration(out)

    def save(self, path: str | os.PathLike) -> None:
        """Write every layer's statistics to ``path`` (safetensors), atomically."""
        from safetensors.numpy import save_file

        from .io import atomic_path

        tensors = {f"{name}.gram": np.ascontiguousarray(s.gram) for name, s in self._layers.items()}
        meta = {
            "format": ACTIVATIONS_FORMAT,
            "version": str(ACTIVATIONS_VERSION),
            "tokens": json.dumps({name: s.tokens for name, s in self._layers.items()}),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        """Read a file written by :meth:`save`, validating its header and every tensor before use."""
        from safetensors import safe_open

        where = os.fspath(path)
        if not os.path.isfile(where):
            raise FileNotFoundError(f"no activation statistics file at {where!r}")
        try:
            handle = safe_open(where, framework="np")
        except Exception as exc:  # safetensors raises its own error type for a malformed header
            raise ValueError(f"{where!r} is not a readable safetensors file: {exc}") from None
        with handle as f:
            meta = f.metadata() or {}
            if meta.get("format") != ACTIVATIONS_FORMAT:
                raise ValueError(f"{where!r} is not an activation statistics file (format {ACTIVATIONS_FORMAT!r})")
            if meta.get("version") != str(ACTIVATIONS_VERSION):
                raise ValueError(
                    f"{where!r} has activation statistics version {meta.get('version')!r}; "
                    f"this mpo reads version {ACTIVATIONS_VERSION}"
                )
            try:
                tokens = json.loads(meta.get("tokens", ""))
            except json.JSONDecodeError:
                raise ValueError(f"{where!r}: the token counts in the header are not JSON") from None
            if not isinstance(tokens, dict):
                raise ValueError(f"{where!r}: the token counts must map layer names to integers")
            keys = set(f.keys())
            wanted = {f"{name}.gram" for name in tokens}
            if keys != wanted:
                raise ValueError(f"{where!r}: tensors {sorted(keys ^ wanted)} do not match the layers in the header")
            layers = {}
            for name, count in tokens.items():
                try:
                    gram = f.get_tensor(f"{name}.gram")
                    if gram.dtype != np.float64:
                        raise ValueError(f"gram must be float64, got {gram.dtype}")
                    layers[name] = ActivationStats(gram, count)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{where!r}: layer {name!r}: {exc}") from None
        return cls(layers)

    def __repr__(self) -> str:
        return f"Calibration({len(self._layers)} layers)"


# ---------------------------------------------------------------------------------------------- whitening
@dataclass(frozen=True)
class Whitening:
    """C + lam I = factor @ factor.T (``factor`` lower triangular) and the alpha the damping rule settled on."""

    factor: np.ndarray
    alpha: float
    lam: float


def _damping_ladder(alpha: float) -> Iterator[float]:
    yield alpha
    step = max(alpha, _DAMPING_FLOOR)
    if alpha == 0:
        yield step
    while step * _DAMPING_STEP <= 1.0 * (1 + 1e-9):
        step *= _DAMPING_STEP
        yield step


def _damping_alpha(damping: object) -> float:
    """``damping`` as alpha of the damping rule, or ValueError naming the rule."""
    value = float(damping) if isinstance(damping, numbers.Real) and not isinstance(damping, bool) else math.nan
    if not 0 <= value <= 1:  # also NaN and non-numbers
        raise ValueError(f"damping must be a number in [0, 1] (alpha of lam = alpha * mean(diag C)), got {damping!r}")
    return value


def whitening(gram: object, damping: float = DAMPING) -> Whitening:
    """The lower Cholesky factor L of C + lam I by the damping rule of this module's docstring.

    lam = alpha * mean(diag C), alpha starting at ``damping`` and multiplied by 10 while Cholesky fails
    (from 1e-12 when ``damping`` is 0), up to 1. Raises ValueError for a C whose diagonal is all zero
    (no activation was seen), a ``damping`` outside [0, 1], or a C that is not a Gram matrix.
    """
    alpha0 = _damping_alpha(damping)
    c = np.asarray(gram, dtype=np.float64)
    mean = float(np.mean(np.diag(c)))
    if not mean > 0:
        raise ValueError("the statistics are all zero (mean(diag C) = 0): there is no activation to whiten by")
    for alpha in _damping_ladder(alpha0):
        lam = alpha * mean
        shifted = np.array(c)  # C + lam I without an identity matrix beside it
        shifted.flat[:: c.shape[0] + 1] += lam
        try:
            return Whitening(np.linalg.cholesky(shifted), alpha, lam)
        except np.linalg.LinAlgError:
            continue
    raise ValueError("C + mean(diag C) I is not positive definite: the statistics are not a Gram matrix X^T X")


def activation_error(M: object, approx: object, stats: ActivationStats) -> float:
    """||X (M - approx)||_F / ||X M||_F from C alone: sqrt(tr(E^T C E) / tr(M^T C M)), C undamped."""
    m = np.asarray(M, dtype=np.float64)
    e = m - np.asarray(approx, dtype=np.float64)
    c = stats.gram
    num = float(np.sum((c @ e) * e))
    den = float(np.sum((c @ m) * m))
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


def _whiten(L: np.ndarray, a: np.ndarray) -> np.ndarray:
    """L^T a for a lower-triangular whitening factor L (its upper triangle is not read), C-ordered: BLAS's triangular product
    when scipy is there (half the multiplications of L.T @ a; measured 35 ms against 44 ms for
    1536 x 1536 times 1536 x 384 on one thread), the plain product otherwise."""
    try:
        from scipy.linalg.blas import dtrmm
    except ImportError:  # scipy is optional
        return L.T @ a
    # In Fortran order a (C order, I x J) is a^T and L (C order) is the upper-triangular L^T: the product
    # a^T (L^T)^T = a^T L, transposed back, is L^T a, with no copy of either.
    b = np.ascontiguousarray(a, dtype=np.float64)
    lower = np.ascontiguousarray(L, dtype=np.float64)
    return np.asarray(dtrmm(1.0, lower.T, b.T, side=1, lower=0, trans_a=1)).T


def _solve_upper(U: np.ndarray, B: np.ndarray) -> np.ndarray:
    try:
        from scipy.linalg import solve_triangular
    except ImportError:  # scipy is optional: a general solve gives the same answer, slower
        return np.linalg.solve(U, B)
    return solve_triangular(U, B, lower=False)


def _check_features(stats: object, rows: int, what: str = "activations") -> None:
    if not isinstance(stats, ActivationStats):
        raise TypeError(f"{what} must be ActivationStats, got {type(stats).__name__}")
    if stats.features != rows:
        raise ValueError(f"{what} are for {stats.features} input features, M has {rows} rows (M is in x out: W.T)")


def _check_rank(rank: object, a: np.ndarray) -> int:
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"rank must be an integer, got {rank!r}")
    if not 1 <= int(rank) <= min(a.shape):
        raise ValueError(f"rank must be in [1, min(I, J)] = [1, {min(a.shape)}], got {rank}")
    return int(rank)


def whitened_svd(M: object, rank: int, stats: ActivationStats, *, damping: float = DAMPING) -> LowRank:
    """SVD-LLM: the rank-``rank`` M' minimising ||L^T (M - M')||_F, with C + lam I = L L^T.

    L^T M = U S V^T is truncated and L^-T folded into the left factor: ``left`` = L^-T U_r S_r (I x r),
    ``right`` = V_r^T, so the result has the plain SVD's r (I + J) parameters. In the returned
    :class:`mpo.LowRank` "weighted" means whitened: ``spectrum`` is that of L^T M and
    ``weighted_error`` = ||L^T (M - M')||_F exactly (the dropped singular values); ``error`` is the
    plain ||M - M'||_F. :func:`activation_error` gives ||X (M - M')|| / ||X M|| with the undamped C.
    """
    a = as_matrix(M)
    r = _check_rank(rank, a)
    _check_features(stats, a.shape[0])
    work = a.astype(np.float64)
    L = whitening(stats.gram, damping).factor
    u, s, vt = np.linalg.svd(_whiten(L, work), full_matrices=False)
    left = _solve_upper(L.T, u[:, :r] * s[:r])  # L^-T (U_r S_r): a triangular solve, no inverse formed
    right = vt[:r]
    return LowRank(
        left=np.ascontiguousarray(left, dtype=a.dtype),
        right=np.ascontiguousarray(right, dtype=a.dtype),
        spectrum=s,
        plain_spectrum=np.linalg.svd(work, compute_uv=False),
        weighted_error=float(np.sqrt(np.sum(s[r:] ** 2))),
        error=float(np.linalg.norm(work - left @ right)),
        weighted_norm=float(np.linalg.norm(s)),
        norm=float(np.linalg.norm(work)),
    )


def _ratio_rank(rows: int, cols: int, ratio: float, max_bond: object) -> int:
    """The SVD layout's rank for ``ratio``: one bond, so the budget is the largest r with
    r (I + J) <= ratio I J (any scaling folds into the left factor), capped by ``max_bond``."""
    rank = int(parse_ratio(ratio) * rows * cols // (rows + cols))
    if rank < 1:
        raise ValueError(f"ratio {ratio} is below a rank-1 SVD's share {(rows + cols) / (rows * cols):.4g}")
    caps = parse_max_bond(max_bond, 1)
    return rank if caps is None else min(rank, caps[0])


def _small_gram(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """A A^T when A has no more rows than columns, else A^T A, and whether it was A A^T: the smaller
    Gram, whose eigenvalues are the squared singular values of A."""
    return (a @ a.T, True) if a.shape[0] <= a.shape[1] else (a.T @ a, False)


@dataclass(frozen=True)
class WhitenedBasis:
    """The whitened SVD of M (in x out) read from one symmetric eigendecomposition: what
    :func:`whitened_basis` returns.

    With C + lam I = L L^T and A = L^T M, the squared singular values of A are the eigenvalues of its
    smaller Gram (A A^T when in <= out, A^T A otherwise), and its eigenvectors are A's singular vectors
    on that side. The rank-r whitened SVD (:func:`whitened_svd`'s M', the optimum of ||L^T (M - M')||)
    is then M V_r V_r^T (right vectors: no triangular solve, as L^-T A = M) or L^-T U_r U_r^T A (left
    vectors). ``spectrum`` (descending) is A's; ``basis`` holds the singular vectors of the chosen
    ``side`` ("left" or "right") as columns in the same order.

    Why: one ``eigh`` of a min(in, out)-square matrix costs a fraction of an SVD of A with vectors
    (LAPACK's gesdd) or of :func:`mpo.decompose`, and any rank is then a projection. The eigenvalues'
    absolute accuracy is eps * s_1^2, not eps * s_k s_1, so singular values below about 1e-8 s_1 are
    not resolved; an error of the truncation is computed from its residual, not from the tail of the
    spectrum, and is exact to rounding.
    """

    matrix: np.ndarray
    whitened: np.ndarray
    factor: np.ndarray
    lam: float
    spectrum: np.ndarray
    basis: np.ndarray
    side: str

    def truncation(self, rank: int) -> np.ndarray:
        """M' (in x out, float64): the rank-``rank`` whitened SVD of M."""
        return self._truncate(_check_rank(rank, self.matrix))[0]

    def _truncate(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """(M', L^T M'): the truncation and its whitened form, both from the basis (no product with L)."""
        if self.side == "right":
            v = self.basis[:, :r]
            return (self.matrix @ v) @ v.T, (self.whitened @ v) @ v.T
        u = self.basis[:, :r]
        projected = u.T @ self.whitened
        return _solve_upper(self.factor.T, u) @ projected, u @ projected

    def _error(self, approx: np.ndarray, white_approx: np.ndarray) -> float:
        # ||X E||^2 = ||L^T E||^2 - lam ||E||^2 with L L^T = C + lam I (as in decompose_activations).
        num = float(np.sum((self.whitened - white_approx) ** 2)) - self.lam * float(np.sum((self.matrix - approx) ** 2))
        den = float(np.sum(self.whitened**2)) - self.lam * float(np.sum(self.matrix**2))
        return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0

    def activation_error(self, approx: object) -> float:
        """||X (M - approx)||_F / ||X M||_F with the undamped C, for any ``approx`` of M's shape."""
        a = np.asarray(approx, dtype=np.float64)
        if a.shape != self.matrix.shape:
            raise ValueError(f"approx must have M's shape {self.matrix.shape}, got {a.shape}")
        return self._error(a, _whiten(self.factor, a))

    def fit(self, *, ratio: float | None = None, max_bond: int | None = None) -> tuple[int, np.ndarray, float]:
        """(rank, M', activation error of M') for a share ``ratio`` of M's parameters in the SVD layout
        (r (I + J) <= ratio I J, capped by ``max_bond``) or for the rank ``max_bond`` alone: the rank
        the n = 2 form of :func:`decompose_activations` takes for the same arguments, and the error
        it reports (undamped C), here read from the basis without a product with L."""
        rows, cols = self.matrix.shape
        if ratio is not None:
            rank = _ratio_rank(rows, cols, ratio, max_bond)
        elif isinstance(max_bond, numbers.Integral) and not isinstance(max_bond, bool) and max_bond >= 1:
            rank = min(int(max_bond), rows, cols)
        else:
            raise ValueError(f"WhitenedBasis.fit needs ratio, or max_bond as one integer rank >= 1, got max_bond={max_bond!r}")
        approx, white = self._truncate(rank)
        return rank, approx, self._error(approx, white)


def whitened_basis(M: object, stats: ActivationStats, *, damping: float = DAMPING) -> WhitenedBasis:
    """The whitened SVD of M for ``stats`` from one eigendecomposition of the smaller Gram of L^T M
    (:class:`WhitenedBasis`): every rank's truncation and activation error without a new factorisation.
    The Cholesky factor is the statistics' cached one (:meth:`ActivationStats.whitening`)."""
    a = as_matrix(M).astype(np.float64)
    _check_features(stats, a.shape[0])
    w = stats.whitening(damping)
    white = _whiten(w.factor, a)
    gram, left = _small_gram(white)
    values, vectors = np.linalg.eigh(gram)
    order = slice(None, None, -1)  # eigh is ascending; the singular values are wanted descending
    return WhitenedBasis(
        matrix=a,
        whitened=white,
        factor=w.factor,
        lam=w.lam,
        spectrum=np.sqrt(np.clip(values[order], 0.0, None)),
        basis=np.ascontiguousarray(vectors[:, order]),
        side="left" if left else "right",
    )


#: Below this squared relative activation error (1e-3 relative) a right-side fit's error is recomputed
#: from its residual: read from the Gram it carries an absolute error of about eps * tr(M^T C M).
_RESOLVED = 1e-6


@dataclass(frozen=True)
class _LayoutFit:
    """The rank-r whitened SVD in the SVD layout: M' = left @ right (right's rows orthonormal), its
    relative activation error (undamped C), its relative whitened error (the bound) and the alpha."""

    left: np.ndarray
    right: np.ndarray
    approx: np.ndarray
    activation_error: float
    bound: float
    alpha: float


def _layout_gram(a: np.ndarray, stats: ActivationStats, damping: float) -> tuple[np.ndarray, float, float]:
    """(the smaller Gram of A = L^T M, alpha, lam) for the SVD layout's whitened SVD: for I >= J,
    A^T A = M^T (C + lam I) M with lam = damping * mean(diag C) and no factor of C (so no ladder);
    for I < J, A A^T with L the statistics' cached factor (the damping rule's ladder)."""
    rows, cols = a.shape
    if rows < cols:
        w = stats.whitening(damping)
        white = _whiten(w.factor, a)
        return white @ white.T, w.alpha, w.lam
    alpha = _damping_alpha(damping)
    c = stats.gram
    mean = float(np.mean(np.diag(c)))
    if not mean > 0:
        raise ValueError("the statistics are all zero (mean(diag C) = 0): there is no activation to whiten by")
    lam = alpha * mean
    damped = c @ a
    damped += lam * a
    gram = a.T @ damped
    return (gram + gram.T) / 2, alpha, lam


def _whitened_layout_fit(a: np.ndarray, stats: ActivationStats, rank: int, damping: float) -> _LayoutFit:
    """SVD-LLM's rank-``rank`` whitened SVD of M (in x out, float64) from one eigendecomposition of the
    smaller Gram of A = L^T M (L L^T = C + lam I): the same M' as truncating an SVD of A and folding
    L^-T back (:func:`whitened_svd`), at a fraction of its cost (:class:`WhitenedBasis` explains why).

    - in >= out (right side): A^T A = M^T (C + lam I) M needs no factor of C at all, and M' = M V_r V_r^T.
      Without a Cholesky factorisation there is no damping ladder: lam = damping * mean(diag C) as
      given (C + lam I is only multiplied, never factored, so it need not be positive definite).
    - in < out (left side): L is the statistics' cached factor (the ladder as usual), A A^T's top
      eigenvectors U_r give U_r^T A = S_r V_r^T, whose right vectors come from a QR factorisation
      (orthonormal to rounding, no division by small singular values): M' = L^-T U_r R^T Q^T.
    """
    rows, cols = a.shape
    r = min(rank, rows, cols)
    c = stats.gram
    if rows >= cols:
        gram, alpha, lam = _layout_gram(a, stats, damping)
        _, vectors = np.linalg.eigh(gram)
        v = vectors[:, ::-1][:, :r]
        left = a @ v
        right = np.ascontiguousarray(v.T)
        approx = left @ right
        e = a - approx
        lost = lam * float(np.sum(e**2))
        # ||L^T E||^2 = tr((I - P) A^T A (I - P)) = tr(A^T A) - tr(V_r^T A^T A V_r) for E = M (I - P),
        # P = V_r V_r^T, and ||X E||^2 = ||L^T E||^2 - lam ||E||^2 (lam's part from E itself).
        white_norm = float(np.trace(gram))
        den = white_norm - lam * float(np.sum(a**2))
        num = white_norm - float(np.sum((gram @ v) * v)) - lost
        if den > 0 and num < _RESOLVED * den:
            num = float(np.sum((c @ e) * e))  # too small to read from the Gram: the residual itself
        bound = math.sqrt(max(num + lost, 0.0) / white_norm) if white_norm > 0 else 0.0
    else:
        w = stats.whitening(damping)
        alpha, lam = w.alpha, w.lam
        white = _whiten(w.factor, a)
        _, vectors = np.linalg.eigh(white @ white.T)
        u = vectors[:, ::-1][:, :r]
        projected = u.T @ white  # S_r V_r^T
        q, tri = np.linalg.qr(projected.T)
        left = _solve_upper(w.factor.T, u @ tri.T)
        right = np.ascontiguousarray(q.T)
        approx = left @ right
        residual = float(np.sum((white - u @ projected) ** 2))
        white_norm = float(np.sum(white**2))
        num = residual - lam * float(np.sum((a - approx) ** 2))
        den = white_norm - lam * float(np.sum(a**2))
        bound = math.sqrt(residual / white_norm) if white_norm > 0 else 0.0
    error = math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0
    return _LayoutFit(left, right, approx, error, bound, alpha)


# ------------------------------------------------------------------------------------ Kronecker whitening
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def kronecker_factors(gram: object, factors: Sequence[int], *, sweeps: int = 8) -> list[np.ndarray]:
    """C ~ c C_1 (x) ... (x) C_n (row-major index order) for the in factors ``factors``, each C_k PSD.

    The nearest Kronecker product in Frobenius norm is a rank-one fit of C rearranged as a tensor with
    one (i_k, i_k') index pair per factor (Van Loan-Pitsianis); it is found by alternating updates
    started from identities (the first update of each factor is then its partial trace). Each update
    contracts C with PSD factors, which keeps every C_k positive semi-definite. Each C_k is returned
    with unit Frobenius norm: the scale c is dropped, as whitening does not depend on it.
    """
    c = np.asarray(gram, dtype=np.float64)
    sizes = [int(f) for f in factors]
    n = len(sizes)
    if math.prod(sizes) != c.shape[0]:
        raise ValueError(f"factors {tuple(sizes)} multiply to {math.prod(sizes)}, C has {c.shape[0]} rows")
    if 2 * n > len(_LETTERS):
        raise ValueError(f"at most {len(_LETTERS) // 2} factors are supported, got {n}")
    # (i_1..i_n, i_1'..i_n') -> (i_1, i_1', i_2, i_2', ...)
    t = c.reshape(sizes + sizes).transpose([p for k in range(n) for p in (k, n + k)])
    pairs = [_LETTERS[2 * k : 2 * k + 2] for k in range(n)]
    out = [np.eye(s) / math.sqrt(s) for s in sizes]
    for _ in range(max(1, int(sweeps))):
        for k in range(n):
            rest = [m for m in range(n) if m != k]
            spec = "".join(pairs) + "".join("," + pairs[m] for m in rest) + "->" + pairs[k]
            f = np.einsum(spec, t, *(out[m] for m in rest), optimize=True)
            f = (f + f.T) / 2
            norm = float(np.linalg.norm(f))
            out[k] = f / norm if norm > 0 else np.eye(sizes[k]) / math.sqrt(sizes[k])
    return out


def shrink_kronecker(factors: Sequence[np.ndarray], shrinkage: float) -> list[np.ndarray]:
    """Each Kronecker factor pulled toward the identity: (1 - beta) C_k / mean(diag C_k) + beta I.

    A Kronecker product spreads a few outlier features' weight over whole slices of the in factors, and
    whitening by it can lose more than it gains (docs/ALGORITHMS.md §14). Shrinking each factor toward
    the identity (as a shrinkage estimator of a covariance does) keeps the product Kronecker, so it
    still folds into the cores; beta = 0 is the product as given (up to scale, which whitening
    ignores), beta = 1 the identity (no whitening). Raises ValueError for beta outside [0, 1] and for a
    factor that is not a finite square matrix with a positive mean diagonal.
    """
    beta = _shrinkage_value(shrinkage)
    if isinstance(factors, np.ndarray) and factors.ndim < 3:
        raise ValueError(f"factors must be a sequence of square matrices C_k, got one array of shape {factors.shape}")
    out = []
    for k, raw in enumerate(factors):
        c = np.asarray(raw, dtype=np.float64)
        if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 1:
            raise ValueError(f"Kronecker factor {k} must be a square matrix, got shape {c.shape}")
        if not np.all(np.isfinite(c)):
            raise ValueError(f"Kronecker factor {k} has non-finite entries")
        mean = float(np.mean(np.diag(c)))
        if not mean > 0:
            raise ValueError(f"Kronecker factor {k} must have a positive mean diagonal (a PSD factor), got {mean:.6g}")
        out.append((1.0 - beta) * (c / mean) + beta * np.eye(c.shape[0]))
    return out


def _shrinkage_value(shrinkage: object) -> float:
    """beta in [0, 1] as a float, or ValueError naming the rule."""
    if isinstance(shrinkage, bool) or not isinstance(shrinkage, numbers.Real) or not 0.0 <= float(shrinkage) <= 1.0:
        raise ValueError(f"shrinkage must be 'auto' or a number in [0, 1], got {shrinkage!r}")
    return float(shrinkage)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """The symmetric square root of a PSD matrix (negative eigenvalues from rounding clipped to 0)."""
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _along_rows(matrix: np.ndarray, mats: Sequence[np.ndarray], transpose: bool) -> np.ndarray:
    """(A_1 (x) ... (x) A_n) X (or with every A_k^T) for X of shape (i_1..i_n, J), row-major."""
    sizes = [m.shape[0] for m in mats]
    x = matrix.reshape(sizes + [matrix.shape[1]])
    for k, a in enumerate(mats):
        if a.shape == (1, 1) and a[0, 0] == 1.0:
            continue  # a unit factor (i_k = 1): the identity, not a pass over the whole matrix
        op = a.T if transpose else a
        x = np.moveaxis(np.tensordot(op, x, axes=([1], [k])), 0, k)
    return x.reshape(matrix.shape)


def _fold(cores: Sequence[np.ndarray], factors: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Core k's i_k index multiplied by L_k^-T: the MPO of (L_1 (x) ... (x) L_n)^-T (the cores' matrix)."""
    out = []
    for core, L in zip(cores, factors):
        c = np.asarray(core, dtype=np.float64)
        d, i, j, e = c.shape
        # One triangular solve against the core (i x d j e), not the inverse of L^T times it: I^2 d j e
        # operations instead of I^3 for the SVD layout's (1, I, 1, r) core.
        rhs = np.moveaxis(c, 1, 0).reshape(i, d * j * e)
        out.append(np.moveaxis(_solve_upper(L.T, rhs).reshape(i, d, j, e), 0, 1))
    return out


# ------------------------------------------------------------------------------------ one call for every form
@dataclass(frozen=True)
class ActivationFit:
    """What :func:`decompose_activations` made and how well it does, in the weights and the activations.

    ``mpo`` is the approximation (for ``n=2`` an MPO with factors (I, 1) x (1, J): a truncated SVD).
    ``activation_error`` is ||X (M - M')||_F / ||X M||_F on the statistics it was fitted to (None
    without statistics), ``held_out_error`` the same on ``held_out`` statistics (None without them),
    ``weight_error`` ||M - M'||_F / ||M||_F, and ``bound`` the decomposition's relative error bound in
    the norm it minimised (whitened, scaled or plain: MPOP Eq. 4 there). ``alpha`` is the damping the
    rule settled on (None when nothing was factored). ``shrinkage`` is the beta of a Kronecker whitening
    (:func:`shrink_kronecker`; None where C was not approximated by a Kronecker product).
    """

    mpo: MPO
    scaling: str
    activation_error: float | None
    held_out_error: float | None
    weight_error: float
    bound: float
    alpha: float | None
    shrinkage: float | None = None

    @property
    def num_params(self) -> int:
        """Parameters of the MPO (a row scale included)."""
        return self.mpo.num_params


def decompose_activations(
    M: object,
    activations: ActivationStats | None,
    *,
    n: int = 5,
    shape: object = None,
    max_bond: int | Sequence[int] | None = None,
    ratio: float | None = None,
    tol: float | None = None,
    scaling: str = "whiten",
    row_weights: object = None,
    damping: float = DAMPING,
    held_out: ActivationStats | None = None,
    shrinkage: float | str = "auto",
) -> ActivationFit:
    """Decompose M (in x out: ``W.T`` of a Linear) for the activations it meets: one call for every form.

    Parameters
    ----------
    M : array_like, I x J
    activations : ActivationStats of I features, or None (only with scaling "none" or "fisher")
    n : int
        2 is the truncated SVD (the MPO with factors (I, 1) x (1, J), rank = ``max_bond``); n > 2 an MPO
        whose factors :func:`mpo.plan_shape` chooses. ``shape`` gives factors explicitly.
    max_bond, ratio, tol :
        As in :func:`mpo.decompose`, acting in the norm the scaling sets (budget mode counts a row scale).
    scaling : one of ``SCALINGS``
        "none": plain. "diagonal": ASVD's D = diag(sqrt(diag C)); kept as the row scale for n > 2 (I more
        parameters), folded into the left factor for n = 2. "whiten": whitening along the in factors by
        a Kronecker product K_1^2 (x) ... (x) K_n^2 ~ C (K the nearest Kronecker product of C^(1/2)),
        shrunk by ``shrinkage`` and folded into the cores at no parameter cost (for n = 2 in the SVD
        layout C itself: exactly SVD-LLM's whitened SVD). "diagonal+whiten": the diagonal first, then
        the Kronecker whitening of D^-1 C D^-1. "fisher": ``row_weights`` (Fisher importances per
        input feature, FWSVD) as the diagonal.
    damping : float
        alpha of the damping rule (module docstring).
    held_out : ActivationStats, optional
        Statistics of tokens the fit did not see, for ``held_out_error``.
    shrinkage : "auto" or float in [0, 1]
        For a Kronecker whitening (n > 2), how far each factor is pulled toward the identity
        (:func:`shrink_kronecker`; 0: the fitted product, 1: no whitening). "auto" decomposes at every
        beta of ``SHRINKAGES`` and keeps the one of lowest activation error on ``activations`` (never
        ``held_out``): len(SHRINKAGES) decompositions. With ``tol`` alone the fits differ in size, and
        the smallest is kept (then the lower error). Where C itself whitens (the SVD layout) the
        whitening is exact and only "auto" or 0 is accepted.

    Returns
    -------
    ActivationFit
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    if not (isinstance(shrinkage, str) and shrinkage == "auto"):
        _shrinkage_value(shrinkage)
    a = as_matrix(M).astype(np.float64)
    rows, cols = a.shape
    if activations is not None:
        _check_features(activations, rows)
    elif scaling not in ("none", "fisher"):
        raise ValueError(f"scaling {scaling!r} needs activation statistics, got activations=None")
    if held_out is not None:
        _check_features(held_out, rows, "held_out")
    if (scaling == "fisher") != (row_weights is not None):
        raise ValueError("row_weights (Fisher importances per input feature) go with scaling='fisher' and only with it")
    svd_layout = n == 2 and shape is None
    if svd_layout:
        shape = ((rows, 1), (1, cols))
    plan = parse_shape(shape, n, rows, cols)
    if not isinstance(shrinkage, str):
        if scaling not in ("whiten", "diagonal+whiten"):
            raise ValueError(f"shrinkage acts on a Kronecker whitening (scaling 'whiten' or 'diagonal+whiten'), "
                             f"got shrinkage={shrinkage!r} with scaling {scaling!r}")
        if sum(s > 1 for s in plan.in_shape) <= 1 and float(shrinkage) != 0.0:
            raise ValueError(f"shrinkage applies to a Kronecker whitening (n > 2); this layout whitens by C itself, "
                             f"so it must be 'auto' or 0, got {shrinkage!r}")
    if svd_layout and ratio is not None:
        max_bond, ratio = _ratio_rank(rows, cols, ratio, max_bond), None
    weights = {"diagonal": None if activations is None else activations.diagonal, "fisher": row_weights}.get(scaling)
    alpha = None
    whitened_parts = None  # (L^T M, its truncation, lam) when L L^T = C + lam I exactly: the error's cheap form
    scored: tuple[np.ndarray, float] | None = None  # a Kronecker whitening's approximation and activation error
    shrunk: float | None = None
    layout: _LayoutFit | None = None
    if svd_layout and scaling == "whiten" and tol is None and activations is not None:
        # SVD-LLM at a given rank: one eigendecomposition of the smaller Gram of L^T M, not a decomposition
        # of it, the fold and two rebuilds (the same M' to rounding; tests/test_activation.py).
        caps = parse_max_bond(max_bond, 1)
        if caps is not None:
            layout = _whitened_layout_fit(a, activations, caps[0], damping)
    if layout is not None:
        r = layout.right.shape[0]
        # The left factor is the central core and the right one's rows are orthonormal: mixed canonical.
        m = MPO.from_cores([layout.left.reshape(1, rows, 1, r), layout.right.reshape(r, 1, cols, 1)],
                           shape=(rows, cols), mixed_canonical=True)
        bound, alpha = layout.bound, layout.alpha
    elif scaling == "none" or (weights is not None and not svd_layout):
        # A diagonal over the multi-index (i_1..i_n) does not fold into one core: decompose's row weights.
        m = decompose(a, shape, n=n, row_weights=weights, max_bond=max_bond, ratio=ratio, tol=tol)
        bound = m.relative_error_bound(weighted=m.row_scale is not None)
    else:
        scale = None
        work = a
        if weights is not None:  # the SVD layout: the diagonal is the first factor, folded exactly
            gram = np.diag(row_scales(weights, rows) ** 2)
        else:
            # Every scaling but "none" and "fisher" was checked above to come with statistics.
            assert activations is not None
            gram = activations.gram
            if scaling == "diagonal+whiten":
                d = row_scales(activations.diagonal, rows)
                scale = 1.0 / d
                gram = gram * scale[:, None] * scale[None, :]
                work = a * d[:, None]
        padded_rows = plan.padded_shape[0]
        if padded_rows != rows:
            # The padding rows of M are zero: give them the mean variance so that C stays invertible.
            big = np.eye(padded_rows) * float(np.mean(np.diag(gram)))
            big[:rows, :rows] = gram
            gram = big
        if plan.padded_shape != work.shape:
            padded = np.zeros(plan.padded_shape)
            padded[:rows, :cols] = work
            work = padded
        sizes = list(plan.in_shape)
        wide = [k for k, s in enumerate(sizes) if s > 1]
        cores_ratio = ratio
        if scale is not None and ratio is not None:
            # The row scale kept beside the cores costs I parameters: the cores get what is left.
            cores_ratio = (ratio * rows * cols - rows) / (plan.padded_shape[0] * plan.padded_shape[1])
            if not cores_ratio > 0:
                raise ValueError(f"ratio {ratio} leaves no parameter for the cores beside the {rows} row scales")
        # A fold that changes only the central core keeps decompose's mixed canonical form (the SVD layout:
        # L^-T acts on the left factor alone), so the bonds need ordering, not three sweeps.
        central = (len(sizes) - 1) // 2
        canonical = all(s == 1 for k, s in enumerate(sizes) if k != central)

        def fit(pieces: dict[int, np.ndarray]) -> tuple[MPO, MPO, np.ndarray, float | None]:
            """Whitened by the factors of ``pieces`` (in factor -> its C_k) and folded back: (the MPO, the
            whitened matrix's MPO, the whitened matrix, the damping alpha)."""
            factors, alphas = [], []
            for k, s in enumerate(sizes):
                if s == 1:
                    factors.append(np.ones((1, 1)))
                    continue
                w = (activations.whitening(damping) if activations is not None and pieces[k] is activations.gram
                     else whitening(pieces[k], damping))
                factors.append(w.factor)
                alphas.append(w.alpha)
            # One wide in factor: its L^T acts on the rows directly (the others are 1 x 1 ones).
            white = _whiten(factors[wide[0]], work) if len(wide) == 1 else _along_rows(work, factors, transpose=True)
            inner = decompose(white, (plan.in_shape, plan.out_shape), max_bond=max_bond, ratio=cores_ratio, tol=tol)
            folded = MPO.from_cores(_fold(inner.cores, factors), shape=(rows, cols), row_scale=scale,
                                    mixed_canonical=canonical)
            return folded, inner, white, (max(alphas) if alphas else None)

        if len(wide) == 1:
            # One nontrivial in factor (the SVD layout): the Kronecker product is C itself, the whitening
            # exact, and nothing to shrink.
            m, inner, whitened, alpha = fit({wide[0]: gram})
            bound = inner.relative_error_bound()
            if activations is not None and gram is activations.gram and whitened.shape == a.shape:
                whitened_parts = (whitened, inner.to_dense(), activations.whitening(damping).lam)
        else:
            # Every Kronecker route comes with statistics ("whiten" and "diagonal+whiten" need them).
            assert activations is not None
            # The nearest Kronecker product of C^(1/2), squared: (K_1 (x) ... (x) K_n)^2 = K_1^2 (x) ... (x)
            # K_n^2 ~ C. The square root narrows the outlier features' dynamic range, so a few of them no
            # longer decide the fit (on MiniLM-L6 it lowered the held-out activation error of 24-27 of the 36
            # encoder layers against the product of C itself, docs/RESULTS.md); an exact product stays exact.
            nearest = [k @ k for k in kronecker_factors(_psd_sqrt(gram), sizes)]
            betas = SHRINKAGES if isinstance(shrinkage, str) else (float(shrinkage),)
            # With max_bond or ratio every beta gets the same cut, and the lowest activation error wins. With
            # tol alone each fit is as small as its own norm allows, so sizes differ: the smallest wins
            # (then the lower error), as a tol asks for the smallest MPO within it.
            by_size = tol is not None and max_bond is None and ratio is None
            best_key: tuple[float, ...] | None = None
            for beta in betas:
                trial, inner, _, trial_alpha = fit(dict(enumerate(shrink_kronecker(nearest, beta))))
                trial_approx = trial.to_dense()
                # Scored on the fitted statistics only, so that held_out stays unseen by the choice.
                trial_error = activation_error(a, trial_approx, activations)
                key = (float(trial.num_params), trial_error) if by_size else (trial_error,)
                if best_key is None or key < best_key:
                    best_key = key
                    m, bound, alpha, shrunk = trial, inner.relative_error_bound(), trial_alpha, beta
                    scored = (trial_approx, trial_error)
    approx = layout.approx if layout is not None else scored[0] if scored is not None else m.to_dense()
    act_error: float | None
    if layout is not None:
        act_error = layout.activation_error
    elif scored is not None:
        act_error = scored[1]
    elif whitened_parts is not None:
        # ||X E||^2 = tr(E^T C E) = ||L^T E||^2 - lam ||E||^2 with L L^T = C + lam I, and L^T E is the
        # whitened matrix less its truncation: the same value as activation_error without its two
        # I x I x J products.
        white, kept, lam = whitened_parts
        num = float(np.sum((white - kept) ** 2)) - lam * float(np.sum((a - approx) ** 2))
        den = float(np.sum(white**2)) - lam * float(np.sum(a**2))
        act_error = math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0
    else:
        act_error = None if activations is None else activation_error(a, approx, activations)
    return ActivationFit(
        mpo=m,
        scaling=scaling,
        activation_error=act_error,
        held_out_error=None if held_out is None else activation_error(a, approx, held_out),
        weight_error=float(np.linalg.norm(a - approx) / np.linalg.norm(a)),
        bound=bound,
        alpha=alpha,
        shrinkage=shrunk,
    )


# ------------------------------------------------------------------------------------ model-wide budgets
@dataclass(frozen=True)
class LayerCurve:
    """The settings one layer may take: parameters and relative squared activation error of each.

    ``settings[p]`` names point p (``("svd", r)``, ``("dense",)``, or what the caller chose);
    ``errors[p]`` is ||X (M - M'_p)||^2 / ||X M||^2. The dense layer (``dense_params``, error 0) is
    always a choice: :func:`allocate` adds it.
    """

    name: str
    dense_params: int
    params: tuple[int, ...]
    errors: tuple[float, ...]
    settings: tuple[tuple, ...]

    def __post_init__(self) -> None:
        if not (len(self.params) == len(self.errors) == len(self.settings)):
            raise ValueError(
                f"layer {self.name!r}: params, errors and settings must have one entry per point, got "
                f"{len(self.params)}, {len(self.errors)} and {len(self.settings)}"
            )
        if any(p < 0 for p in self.params) or any(not (e >= 0) for e in self.errors):
            raise ValueError(f"layer {self.name!r}: parameters and errors must be >= 0")


def svd_curve(name: str, M: object, stats: ActivationStats, *, damping: float = DAMPING) -> LayerCurve:
    """Every rank of the whitened SVD of M, read from one spectrum: rank r costs r (I + J) parameters
    and leaves sum_{k > r} s_k^2 / sum s_k^2 of the (whitened) activation energy, s the spectrum of L^T M.
    Ranks whose size reaches the dense matrix's are left out (the dense layer is cheaper)."""
    a = as_matrix(M).astype(np.float64)
    rows, cols = a.shape
    _check_features(stats, rows)
    # The squared singular values of L^T M are the eigenvalues of its smaller Gram: eigvalsh of a
    # min(I, J)-square matrix costs a fraction of an SVD of L^T M (the error of the tail sums is
    # eps * s_1^2 absolute, far below any error the allocation compares). For I >= J that Gram is
    # M^T (C + lam I) M, with no factor of C, as in the fit the allocation then makes.
    energy = np.clip(np.linalg.eigvalsh(_layout_gram(a, stats, damping)[0])[::-1], 0.0, None)
    s = np.sqrt(energy)
    total = float(energy.sum())
    tail = np.concatenate([np.cumsum(energy[::-1])[::-1][1:], [0.0]])  # tail[r-1] = sum_{k >= r} s_k^2
    ranks = [r for r in range(1, len(s) + 1) if r * (rows + cols) < rows * cols]
    return LayerCurve(
        name=name,
        dense_params=rows * cols,
        params=tuple(r * (rows + cols) for r in ranks),
        errors=tuple(float(tail[r - 1] / total) if total > 0 else 0.0 for r in ranks),
        settings=tuple(("svd", r) for r in ranks),
    )


@dataclass(frozen=True)
class Allocation:
    """One setting per layer from :func:`allocate`; ``settings``, ``params``, ``errors`` (relative squared
    activation errors) and ``dense`` (the dense layers' parameters) by layer name. ``uniform_errors`` is the
    comparison: each layer's relative squared error at the same share of its own parameters (budget over
    the dense total; the largest setting within it), None for a layer with no setting that small."""

    settings: dict
    params: dict
    errors: dict
    dense: dict
    budget: int
    uniform_errors: dict = field(default_factory=dict)

    @property
    def total_params(self) -> int:
        """Parameters of all chosen settings."""
        return int(sum(self.params.values()))

    @property
    def dense_params(self) -> int:
        """Parameters of all the layers left dense."""
        return int(sum(self.dense.values()))

    @property
    def summed_error(self) -> float:
        """The objective (unweighted): the sum over layers of the relative squared activation errors."""
        return float(sum(self.errors.values()))

    @property
    def uniform_summed_error(self) -> float | None:
        """The same sum at the same share on every layer (None when some layer has no setting that small)."""
        values = [self.uniform_errors.get(name) for name in self.settings]
        known = [float(v) for v in values if v is not None]
        return None if not values or len(known) < len(values) else float(sum(known))

    def __str__(self) -> str:
        share = self.budget / self.dense_params if self.dense_params else 0.0
        lines = [f"{'layer':<48} {'setting':<12} {'params':>10} {'share':>7} {'act. error':>10} "
                 f"{f'at {share:.3f}':>10}"]
        for name, setting in self.settings.items():
            label = " ".join(str(x) for x in setting)
            uniform = self.uniform_errors.get(name)
            lines.append(
                f"{name:<48} {label:<12} {self.params[name]:>10} "
                f"{self.params[name] / self.dense[name]:>7.3f} {math.sqrt(self.errors[name]):>10.4f} "
                f"{'-' if uniform is None else f'{math.sqrt(uniform):.4f}':>10}"
            )
        lines.append(
            f"{len(self.settings)} layers: {self.dense_params} -> {self.total_params} parameters "
            f"(share {self.total_params / self.dense_params:.4f}, budget {self.budget}); "
            f"summed squared activation error {self.summed_error:.4g}"
        )
        uniform_sum = self.uniform_summed_error
        lines.append(
            f"the same share {share:.4f} on every layer (last column): "
            + ("some layer has no setting that small" if uniform_sum is None
               else f"summed squared activation error {uniform_sum:.4g}")
        )
        return "\n".join(lines)


def _hull(points: list[tuple[int, float, int]]) -> list[tuple[int, float, int]]:
    """The lower convex hull of (params, error, index) points, params ascending, error descending."""
    pts = sorted(points, key=lambda p: (p[0], p[1]))
    # Drop dominated points: more parameters must buy a smaller error.
    kept: list[tuple[int, float, int]] = []
    for p in pts:
        if kept and p[0] == kept[-1][0]:
            continue
        if kept and p[1] >= kept[-1][1]:
            continue
        kept.append(p)
    hull: list[tuple[int, float, int]] = []
    for p in kept:
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            # Remove the middle point when it lies on or above the chord from hull[-2] to p.
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def allocate(
    curves: Sequence[LayerCurve],
    *,
    budget: int | None = None,
    ratio: float | None = None,
    layer_weights: Mapping[str, float] | None = None,
) -> Allocation:
    """Choose one setting per layer minimising sum_l w_l e_l^2 within one parameter budget.

    e_l^2 is a layer's relative squared activation error (``LayerCurve.errors``), w_l its weight (1, or
    ``layer_weights[name]``: a measured sensitivity, for instance). ``budget`` counts parameters;
    ``ratio`` sets it to ratio times the layers' dense parameters. Every layer starts dense and the
    greedy step that saves parameters at the smallest error per parameter is taken until the budget is
    met, along each layer's lower convex hull: read from the stored curves, no decomposition per step.
    On convex curves (a whitened SVD's) this is optimal up to the last step.
    """
    curves = list(curves)
    if not curves:
        raise ValueError("allocate needs at least one layer curve")
    names = [c.name for c in curves]
    if len(set(names)) != len(names):
        raise ValueError("layer curves must have distinct names")
    dense = sum(c.dense_params for c in curves)
    if (budget is None) == (ratio is None):
        raise ValueError("give exactly one of budget (parameters) and ratio (share of the dense parameters)")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        budget = int(ratio * dense)
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 1:
        raise ValueError(f"budget must be a positive integer (parameters), got {budget!r}")
    weights = dict(layer_weights or {})
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"layer_weights names layers without curves: {unknown}")
    hulls, position = {}, {}
    for c in curves:
        w = float(weights.get(c.name, 1.0))
        if not (w >= 0 and math.isfinite(w)):
            raise ValueError(f"layer weight of {c.name!r} must be finite and >= 0, got {w}")
        points = [(int(p), w * float(e), k) for k, (p, e) in enumerate(zip(c.params, c.errors)) if p < c.dense_params]
        points.append((c.dense_params, 0.0, -1))  # the layer left dense
        hulls[c.name] = _hull(points)
        position[c.name] = len(hulls[c.name]) - 1
    smallest = sum(h[0][0] for h in hulls.values())
    if smallest > budget:
        raise ValueError(
            f"the budget {budget} is below the smallest setting of every layer ({smallest} parameters)"
        )
    total = sum(hulls[n][position[n]][0] for n in names)
    while total > budget:
        best, best_rate = None, math.inf
        for n in names:
            k = position[n]
            if k == 0:
                continue
            (p0, e0, _), (p1, e1, _) = hulls[n][k - 1], hulls[n][k]
            rate = (e0 - e1) / (p1 - p0)
            if rate < best_rate:
                best, best_rate = n, rate
        assert best is not None  # smallest <= budget < total: some layer can still step down
        position[best] -= 1
        total = sum(hulls[n][position[n]][0] for n in names)
    by_name = {c.name: c for c in curves}
    settings, params, errors = {}, {}, {}
    for n in names:
        p, _, k = hulls[n][position[n]]
        settings[n] = ("dense",) if k < 0 else tuple(by_name[n].settings[k])
        params[n] = int(p)
        errors[n] = 0.0 if k < 0 else float(by_name[n].errors[k])
    # The comparison: every layer at the same share of its own parameters (its largest setting within it).
    share = budget / dense
    uniform: dict[str, float | None] = {}
    for c in curves:
        # The largest setting within the share (a curve's points need not be sorted), the lower error of
        # equal sizes; the dense layer when the share allows it.
        within = [(int(p), -float(e)) for p, e in zip(c.params, c.errors) if p <= share * c.dense_params]
        uniform[c.name] = 0.0 if c.dense_params <= share * c.dense_params else (-max(within)[1] if within else None)
    return Allocation(settings, params, errors, {c.name: c.dense_params for c in curves}, int(budget), uniform)
