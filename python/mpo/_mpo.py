"""The MPO value: a matrix as a Matrix Product Operator (MPOP §3), its structure and its measures.

An ``MPO`` is a thin, immutable holder of arrays produced by the C++ core (``mpo._core``): the cores in
mixed canonical form around the central tensor, every bond's spectrum, and the local truncation errors.
All measures (bound, entropy, compression ratio) are read from those arrays; none densifies the matrix.
Other modules read an MPO only through its public read-only views (``stored_cores``, ``transposed``,
``row_scale``, ``cut_max_bonds``, ``spectra_of_matrix``, ``plain_spectra``) and its array form
(:meth:`MPO.to_arrays` / :meth:`MPO.from_arrays`).

Who does what: ``_truncation`` chooses the bonds a cut keeps, ``_apply`` runs products through the
kernel, ``io`` writes and reads files, ``_decompose`` makes MPOs from matrices.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import _apply, _core, _runtime_gemm, _scaled, _truncation, io
from ._result import measured_relative_error
from ._shape import full_bonds
from ._validation import check_mpo_arrays, parse_max_bond, parse_ratio, parse_tol
from ._weighted import plain_measures

__all__ = ["MPO", "load"]


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


#: How far from the identity an orthonormal core's Gram matrix may be (largest entry's deviation):
#: rounding of the splits that made it, with room for long chains and wide bonds.
_ORTHONORMAL_TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}


def _check_mixed_canonical(cores: Sequence[np.ndarray]) -> None:
    """ValueError unless cores left of the central index are left-orthonormal and those right of it
    right-orthonormal (what ``MPO.from_cores(..., mixed_canonical=True)`` relies on)."""
    c = (len(cores) - 1) // 2
    for k, core in enumerate(cores):
        if k == c:
            continue
        d, i, j, e = core.shape
        # Left of the centre the columns of the (d i j) x e unfolding are orthonormal; right, the rows of d x (i j e).
        unfolding = core.reshape(d * i * j, e) if k < c else core.reshape(d, i * j * e).T
        gram = unfolding.T.astype(np.float64) @ unfolding.astype(np.float64)
        deviation = float(np.abs(gram - np.eye(gram.shape[0])).max())
        tol = _ORTHONORMAL_TOL[core.dtype]
        if deviation > tol:
            side = "left" if k < c else "right"
            raise ValueError(
                f"mixed_canonical=True needs core {k} {side}-orthonormal (central index {c}); its Gram matrix "
                f"is {deviation:.3g} from the identity (tolerance {tol:g}): use mixed_canonical=False"
            )


class MPO:
    """A matrix M (I x J) as a Matrix Product Operator: n cores T_k[d_{k-1}, i_k, j_k, d_k].

    Made by :func:`mpo.decompose`, :meth:`MPO.truncate`, :meth:`MPO.from_cores` or :func:`mpo.load`.
    The cores are in mixed canonical form: cores left of the central tensor are left-orthonormal, cores
    right of it right-orthonormal, and every bond is ordered by the singular values of the matrix's
    unfolding at that bond (``spectra``). Cutting a bond is therefore the optimal cut of that unfolding,
    and ``error_bound()`` bounds the Frobenius error of any set of cuts (MPOP Eq. 4).

    Arrays handed out are read-only views; the MPO never changes after it is made.
    """

    def __init__(
        self,
        cores: Sequence[np.ndarray],
        *,
        shape: tuple[int, int],
        spectra: Sequence[np.ndarray],
        truncation_errors: Sequence[float] | np.ndarray,
        norm: float,
        cut_max_bonds: Sequence[int] | None = None,
        spectra_of_matrix: bool = True,
        row_scale: np.ndarray | None = None,
        plain: tuple[float, Sequence[np.ndarray]] | None = None,
        sweep_exact: bool = False,
        transposed: bool = False,
        limits: Sequence[int] | None = None,
    ) -> None:
        """Assemble an MPO from canonical-form arrays; most users want :func:`mpo.decompose`.

        ``cut_max_bonds[k]`` is 0 when bond k still holds every nonzero singular value, else the
        largest bond :meth:`truncate` may be asked for there (the max_bond it was cut at).
        ``spectra_of_matrix`` says the spectra are those of the decomposed matrix's own unfoldings (an
        exact decomposition and its cuts), so that further cuts add to the bound in quadrature.
        Consistency of shapes is checked; canonical form is the caller's promise (use
        :meth:`from_cores` for arbitrary cores).

        A row-weighted MPO (``decompose(..., row_weights=w)``) passes ``row_scale`` (D^-1, one value per
        row of the unpadded matrix): the cores then hold D M and the MPO is diag(row_scale) @ cores.
        ``plain`` is (||M||_F, spectra of M's unfoldings), kept for the plain-norm measures.
        ``sweep_exact`` says the cores are straight from Algorithm 1's sweep of the matrix, whose true
        error the truncation errors then give (:meth:`exact_error`).

        ``transposed=True`` makes the MPO of the transpose of the matrix these arrays describe: the
        cores, ``shape`` and ``row_scale`` are given in their stored orientation and read transposed
        (no copy; see :attr:`T`). ``limits`` is the deprecated name of ``cut_max_bonds``.
        """
        if limits is not None:
            warnings.warn("MPO(limits=) is deprecated: use cut_max_bonds=", DeprecationWarning, stacklevel=2)
            if cut_max_bonds is not None:
                raise TypeError("give cut_max_bonds or its deprecated name limits, not both")
            cut_max_bonds = limits
        cores = [np.asarray(c) for c in cores]
        if len(cores) < 2:
            raise ValueError(f"an MPO needs n >= 2 cores, got {len(cores)}")
        dtype = cores[0].dtype
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"cores must have dtype float32 or float64, got {dtype}")
        for k, c in enumerate(cores):
            if c.ndim != 4:
                raise ValueError(f"core {k} must be 4-way (d_(k-1), i_k, j_k, d_k), got shape {c.shape}")
            if c.dtype != dtype:
                raise TypeError(f"all cores must share one dtype: core 0 is {dtype}, core {k} is {c.dtype}")
            left = 1 if k == 0 else cores[k - 1].shape[3]
            if c.shape[0] != left:
                raise ValueError(
                    f"bond {k - 1} disagrees: core {k - 1} ends with {left}, core {k} starts with {c.shape[0]}"
                    if k
                    else f"the first core's left bond must be 1, got {c.shape[0]}"
                )
        if cores[-1].shape[3] != 1:
            raise ValueError(f"the last core's right bond must be 1, got {cores[-1].shape[3]}")
        n = len(cores)
        if len(spectra) != n - 1:
            raise ValueError(f"need n-1 = {n - 1} spectra, got {len(spectra)}")
        # Finite values, sizes the kernels can take, 1-D spectra and errors: arrays may come from any file.
        check_mpo_arrays(cores, spectra, truncation_errors, norm, cut_max_bonds if cut_max_bonds is not None else limits)
        if len(spectra) != n - 1 or len(truncation_errors) != n - 1:
            raise ValueError(
                f"need n-1 = {n - 1} spectra and truncation errors, got {len(spectra)} and {len(truncation_errors)}"
            )
        # The stored, contiguous cores; a transposed MPO hands them to the kernel with a flag instead
        # of copying transposed ones, and shows the views ``c.transpose(0, 2, 1, 3)`` as its cores.
        self._base = [_frozen(np.ascontiguousarray(c)) for c in cores]
        self._transposed = bool(transposed)
        self._cores = [c.transpose(0, 2, 1, 3) for c in self._base] if self._transposed else list(self._base)
        self._spectra = [_frozen(np.asarray(s, dtype=np.float64).copy()) for s in spectra]
        for k, s in enumerate(self._spectra):
            if s.shape != (self._base[k].shape[3],):
                raise ValueError(f"spectrum {k} has {s.shape} values for a bond of {self._base[k].shape[3]}")
        self._errors = _frozen(np.asarray(truncation_errors, dtype=np.float64).copy())
        self._cut_max_bonds = tuple(int(x) for x in (cut_max_bonds if cut_max_bonds is not None else [0] * (n - 1)))
        if len(self._cut_max_bonds) != n - 1:
            raise ValueError(f"need n-1 = {n - 1} cut_max_bonds, got {len(self._cut_max_bonds)}")
        self._spectra_of_matrix = bool(spectra_of_matrix)
        padded = (math.prod(c.shape[1] for c in self._base), math.prod(c.shape[2] for c in self._base))
        rows, cols = (int(x) for x in shape)
        if not (1 <= rows <= padded[0] and 1 <= cols <= padded[1]):
            raise ValueError(f"shape {shape} does not fit the cores' padded shape {padded}")
        self._shape = (cols, rows) if self._transposed else (rows, cols)
        self._norm = float(norm)
        self._sweep_exact = bool(sweep_exact)
        self._row_scale: np.ndarray | None = None
        self._plain: tuple[float, list[np.ndarray]] | None = None
        if row_scale is not None:
            scale = np.asarray(row_scale, dtype=np.float64)
            if scale.shape != (rows,) or not (np.isfinite(scale).all() and (scale > 0).all()):
                raise ValueError(f"row_scale must hold {rows} finite values > 0, got shape {scale.shape}")
            self._row_scale = _frozen(scale.copy())
            if plain is None or len(plain[1]) != n - 1:
                raise ValueError(
                    f"a row-weighted MPO needs plain = (norm, n-1 = {n - 1} spectra) of the unweighted matrix"
                )
            plain_spectra = [_frozen(np.asarray(p, dtype=np.float64).copy()) for p in plain[1]]
            if not (math.isfinite(float(plain[0])) and all(np.isfinite(p).all() and p.ndim == 1 for p in plain_spectra)):
                raise ValueError("a row-weighted MPO's plain norm and spectra must be finite and 1-D")
            self._plain = (float(plain[0]), plain_spectra)

    def _prod(self, axis: int) -> int:
        return math.prod(c.shape[axis] for c in self._cores)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_cores(
        cls,
        cores: Sequence[np.ndarray],
        shape: tuple[int, int] | None = None,
        *,
        row_scale: object = None,
        mixed_canonical: bool = False,
    ) -> MPO:
        """Bring arbitrary cores (for instance trained ones) to canonical form and measure their spectra.

        The matrix they represent is unchanged (up to rounding); bonds may shrink where singular values
        are zero. ``shape`` is the unpadded (I, J), by default the cores' full padded shape.
        ``row_scale`` (I values > 0) makes a row-weighted MPO, diag(row_scale) @ (the cores' matrix), as
        ``decompose(..., row_weights=)`` does: cuts stay optimal in the weighted norm, and the plain
        spectra are measured by one exact sweep of the plain matrix.

        ``mixed_canonical=True`` says the cores are in mixed canonical form already: those left of the
        central core left-orthonormal, those right of it right-orthonormal, as ``decompose`` leaves them
        and as a change of the central core alone keeps them. Then one split per bond orders them
        instead of three sweeps. The claim is checked (each such core's Gram matrix within rounding of
        the identity; ValueError otherwise), since a false one would give wrong spectra.
        """
        if row_scale is not None:
            base = cls.from_cores(cores, shape, mixed_canonical=mixed_canonical)
            scale = np.asarray(row_scale, dtype=np.float64)
            rows, cols = base.shape
            if scale.shape != (rows,):
                raise ValueError(f"row_scale must hold {rows} values (one per row), got shape {scale.shape}")
            return cls(
                base._base,
                shape=base.shape,
                spectra=base._spectra,
                truncation_errors=base._errors,
                norm=base._norm,
                row_scale=scale,
                plain=plain_measures(base.to_dense() * scale[:, None].astype(base.dtype), base),
            )
        cores = [np.asarray(c) for c in cores]
        if not cores:
            raise ValueError("an MPO needs n >= 2 cores, got 0")
        given = np.result_type(*cores)
        if given.kind not in "fiub":
            raise TypeError(f"cores must be real, got dtype {given}")
        dtype = np.dtype(np.float32 if given == np.float32 else np.float64)
        cores = [np.ascontiguousarray(c, dtype=dtype) for c in cores]
        for k, c in enumerate(cores):
            if c.ndim != 4:
                raise ValueError(f"core {k} must be 4-way (d_(k-1), i_k, j_k, d_k), got shape {c.shape}")
            if not np.isfinite(c).all():
                raise ValueError(f"core {k} must be finite, it holds NaN or inf")
        if mixed_canonical:
            _check_mixed_canonical(cores)
            new_cores, spectra = _core.order_bonds(cores, np.dtype(dtype).name)
        else:
            new_cores, spectra = _core.canonicalize(cores, np.dtype(dtype).name)
        padded = (math.prod(c.shape[1] for c in cores), math.prod(c.shape[2] for c in cores))
        norm = float(np.linalg.norm(spectra[0]))
        return cls(
            new_cores,
            shape=padded if shape is None else shape,
            spectra=spectra,
            truncation_errors=np.zeros(len(cores) - 1),
            norm=norm,
        )

    # ----------------------------------------------------------------- structure
    @property
    def cores(self) -> list[np.ndarray]:
        """The n cores, core k shaped (d_{k-1}, i_k, j_k, d_k), read-only."""
        return list(self._cores)

    @property
    def n(self) -> int:
        """Number of cores."""
        return len(self._cores)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """In factors i_1..i_n (of the padded row count)."""
        return tuple(c.shape[1] for c in self._cores)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Out factors j_1..j_n (of the padded column count)."""
        return tuple(c.shape[2] for c in self._cores)

    @property
    def shape(self) -> tuple[int, int]:
        """(I, J) of the original matrix; padding is invisible."""
        return self._shape

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(prod i_k, prod j_k): the shape the cores represent, zero rows/columns included."""
        return (self._prod(1), self._prod(2))

    @property
    def dtype(self) -> np.dtype:
        """float32 or float64, the dtype of the decomposed matrix."""
        return self._cores[0].dtype

    @property
    def bond_dims(self) -> tuple[int, ...]:
        """d_1..d_{n-1}, the n-1 bond dimensions."""
        return tuple(c.shape[3] for c in self._cores[:-1])

    @property
    def full_bond_dims(self) -> tuple[int, ...]:
        """The full bonds of MPOP Eq. 2 for these factors (an exact MPO of a generic matrix has them)."""
        return full_bonds(self.in_shape, self.out_shape)

    @property
    def central_index(self) -> int:
        """(n-1)//2, the index of the central tensor."""
        return (self.n - 1) // 2

    @property
    def central(self) -> np.ndarray:
        """The central tensor: it holds most parameters and stays frozen in lightweight fine-tuning."""
        return self._cores[self.central_index]

    @property
    def auxiliary(self) -> list[np.ndarray]:
        """The auxiliary tensors: every core but the central one, in order."""
        c = self.central_index
        return [core for k, core in enumerate(self._cores) if k != c]

    @property
    def stored_cores(self) -> list[np.ndarray]:
        """The cores as stored, C-contiguous and read-only: ``cores`` itself, or for a transposed MPO
        (``m.T``, see :attr:`transposed`) the cores of the matrix it is the transpose of. The kernel
        reads these with a flag instead of copying transposed cores."""
        return list(self._base)

    @property
    def transposed(self) -> bool:
        """True when this MPO reads :attr:`stored_cores` (and ``row_scale``) transposed: made by ``.T``."""
        return self._transposed

    # ----------------------------------------------------------------- spectra and errors
    @property
    def spectra(self) -> list[np.ndarray]:
        """Singular values of every bond's unfolding (descending, float64), kept from the decomposition.

        For an exact decomposition (and any ``truncate`` of one, and ``tol`` mode) they are those of M's
        unfoldings, cut to the stored bonds. A decomposition with ``max_bond`` cuts each remainder of
        the sequential SVD as it goes (the fast route); its spectra are then those of the matrix the
        MPO represents, which is what later cuts act on.
        """
        return list(self._spectra)

    @property
    def truncation_errors(self) -> np.ndarray:
        """Local truncation error per bond, eps_k = sqrt(sum of discarded lambda^2) (docs/ALGORITHMS.md §5).

        The squared-sum form is the one for which MPOP Eq. 4's bound is a theorem; Eq. 3 of the paper
        prints a plain sum.
        """
        return self._errors

    @property
    def norm(self) -> float:
        """||M||_F of the decomposed matrix."""
        return self._norm if self._plain is None else self._plain[0]

    @property
    def weighted_norm(self) -> float:
        """||D M||_F for a row-weighted MPO (the norm its spectra and tol refer to), else ||M||_F."""
        return self._norm

    @property
    def row_scale(self) -> np.ndarray | None:
        """D^-1 of a row-weighted MPO (one value per row of M, read-only), None for a plain MPO.

        The cores hold the canonical form of D M; the matrix is diag(row_scale) @ (cores' matrix). An
        arbitrary diagonal does not fold into the first core when n > 2 (the row index is the
        multi-index (i_1, ..., i_n)), so the scale is kept apart and applied in every operation.
        For ``m.T`` it scales the columns.
        """
        return self._row_scale

    @property
    def plain_spectra(self) -> list[np.ndarray]:
        """The spectra of the plain matrix M's unfoldings: those kept from the decomposition of a
        row-weighted MPO (whose :attr:`spectra` are D M's), else :attr:`spectra`."""
        return list(self._spectra if self._plain is None else self._plain[1])

    @property
    def spectra_of_matrix(self) -> bool:
        """True when :attr:`spectra` are those of the decomposed matrix's own unfoldings (an exact
        decomposition and its cuts): a further cut's error then adds to the bound in quadrature.
        False when they are the MPO's own matrix's (a sweep that cut remainders)."""
        return self._spectra_of_matrix

    @property
    def cut_max_bonds(self) -> tuple[int, ...]:
        """Per bond, the max_bond it was cut at (0: it still holds every nonzero singular value).

        :meth:`truncate` cannot grow a bond beyond it: the discarded singular values are gone.
        """
        return self._cut_max_bonds

    def error_bound(self, weighted: bool = False) -> float:
        """sqrt(sum_k eps_k^2) >= ||M - MPO(M)||_F (MPOP Eq. 4, the TT-SVD theorem).

        For a row-weighted MPO the eps_k are those of D M: ``weighted=True`` gives sqrt(sum eps_k^2) >=
        ||D (M - MPO)||_F, and the plain bound is max(row_scale) times it (||D^-1 x|| <= max(D^-1) ||x||).
        """
        bound = float(_core.error_bound(self._errors.tolist()))
        if self._row_scale is None or weighted:
            return bound
        return bound * float(self._row_scale.max())

    def exact_error(self) -> float | None:
        """||M - MPO||_F for the matrix M this MPO was decomposed from, when known without rebuilding.

        An MPO straight from :func:`decompose`'s sweep (exact, ``max_bond``, or budget mode's ``ratio``)
        knows it. Each step of Algorithm 1 projects the remainder onto orthonormal columns (rows), so
        the errors the steps make are mutually orthogonal and ||M_p - MPO||_F^2 = sum eps_k^2 exactly for
        the zero-padded M_p: the bound is attained. What the MPO puts into the padding (rows and columns
        beyond M's, read with the kernel's row lookup) is then subtracted. The result carries the
        accuracy of the eps_k (relative 1e-3 of the error or better, see `cancellation` in
        csrc/decompose/shortcuts.hpp) and misses the rounding of the arithmetic (an exact MPO reports 0
        where the rebuild differs from M by ~1e-7 ||M||_F in float32, ~1e-15 in float64); it costs the
        padding lookups instead of a rebuild.

        None for every other MPO: cut later by :meth:`truncate` or ``tol``, made by :meth:`from_cores`
        or :func:`load`, or row-weighted (its sweep's error is the weighted one). Measure
        ``np.linalg.norm(M - m.to_dense())`` for those.
        """
        if not self._sweep_exact or self._row_scale is not None:
            return None
        # Energies in units of the largest error (squares of 1e160 overflow, of 1e-170 vanish).
        unit = _scaled.unit(self._errors)
        energy = float(np.sum((self._errors / unit) ** 2))
        # In the stored cores' orientation, which the row lookups below read.
        shape, padded = self._shape, self.padded_shape
        if self._transposed:
            shape, padded = shape[::-1], padded[::-1]
        (rows, cols), (padded_rows, padded_cols) = shape, padded
        dtype = self._base[0].dtype.name
        if padded_rows > rows:  # whole padding rows, padding columns included
            ids = np.arange(rows, padded_rows, dtype=np.int64)
            extra = _core.rows(self._base, False, ids, padded_cols, dtype)
            energy -= float(np.sum((extra.astype(np.float64) / unit) ** 2))
        if padded_cols > cols:  # padding columns of M's own rows
            ids = np.arange(cols, padded_cols, dtype=np.int64)
            extra = _core.rows(self._base, True, ids, rows, dtype)
            energy -= float(np.sum((extra.astype(np.float64) / unit) ** 2))
        return math.sqrt(max(energy, 0.0)) * unit

    def relative_error(self, *, M: object = None) -> float:
        """||M - MPO||_F / ||M||_F (the interface every result shares, ``mpo._result``).

        With ``M`` (the I x J matrix decomposed) it is measured on the rebuilt matrix. Without it, it
        is what the sweep knows (:meth:`exact_error` / ``norm``); an MPO that does not know its error
        (cut later, loaded, made from cores, or row-weighted) raises ValueError: pass ``M``, or read
        :meth:`relative_error_bound`.
        """
        if M is not None:
            return measured_relative_error(M, self.to_dense())
        known = self.exact_error()
        if known is None:
            raise ValueError(
                "this MPO does not know its true error (it was cut, loaded, made from cores or row-weighted): "
                "pass the matrix, relative_error(M=M), or use relative_error_bound()"
            )
        return known / self.norm if self.norm > 0 else 0.0

    def relative_error_bound(self, weighted: bool = False) -> float:
        """error_bound(weighted) / ||M||_F, or / ||D M||_F when weighted (0 for the zero matrix)."""
        norm = self._norm if weighted else self.norm
        return self.error_bound(weighted) / norm if norm > 0 else 0.0

    def entropy(self, weighted: bool = False) -> np.ndarray:
        """Entanglement entropy of every bond (MPOP Eq. 6), natural log, from the stored spectra.

        S_k = -sum_j v_j ln v_j with v_j = lambda_j^2 / sum lambda^2, the convention of the authors'
        code; 0 <= S_k <= ln d_k. For a row-weighted MPO the plain entropy (the default) is that of
        M's own unfoldings, kept from the decomposition; ``weighted=True`` gives that of D M's.
        """
        spectra = self._plain[1] if (self._plain is not None and not weighted) else self._spectra
        return np.array([_core.entropy(s) for s in spectra], dtype=np.float64)

    # ----------------------------------------------------------------- sizes
    @property
    def num_params(self) -> int:
        """Total number of parameters, sum_k d_{k-1} i_k j_k d_k (+ I for a row-weighted MPO's scale)."""
        scale = 0 if self._row_scale is None else self._row_scale.size
        return sum(c.size for c in self._cores) + scale

    @property
    def central_params(self) -> int:
        """Parameters of the central tensor."""
        return self.central.size

    @property
    def auxiliary_params(self) -> int:
        """Parameters of the auxiliary tensors (and of a row-weighted MPO's row scale)."""
        return self.num_params - self.central_params

    @property
    def compression_ratio(self) -> float:
        """rho = num_params / (I*J) (MPOP Eq. 5) for the original, unpadded I x J; > 1 is possible."""
        return self.num_params / (self._shape[0] * self._shape[1])

    # ----------------------------------------------------------------- operations
    def to_dense(self) -> np.ndarray:
        """Contract the cores into the I x J matrix (padding removed), in the MPO's dtype."""
        # The cheapest tree of pairwise products (the apply kernel's merge): up to 4x faster than the
        # left-to-right chain of `_core.rebuild` on capped MPOs, which stays as the tests' oracle.
        _runtime_gemm.install(load=False)  # the process's BLAS, where something has loaded it
        dense = _core.multiply_out(self._base, self.dtype.name)
        if self._transposed:
            dense = dense.T
        rows, cols = self._shape
        dense = np.ascontiguousarray(dense[:rows, :cols])  # a fresh array: scaling it in place is safe
        if self._row_scale is not None:
            scale = self._row_scale.astype(dense.dtype)
            dense *= scale[None, :] if self._transposed else scale[:, None]
        return dense

    # ----------------------------------------------------------------- applying without rebuilding
    # NumPy must hand ``X @ m`` to __rmatmul__ instead of treating the MPO as an object array.
    __array_ufunc__ = None

    @property
    def T(self) -> MPO:
        """The transposed MPO (of M.T), sharing this MPO's core data: no copy is made.

        Its cores are the views ``c.transpose(0, 2, 1, 3)`` (shape (d_{k-1}, j_k, i_k, d_k)); the
        spectra, errors and bonds are those of M, which M.T shares. ``m.T.T`` reads the cores as ``m``.
        """
        stored = self._shape[::-1] if self._transposed else self._shape
        return MPO(
            self._base,
            shape=(stored[0], stored[1]),
            spectra=self._spectra,
            truncation_errors=self._errors,
            norm=self._norm,
            cut_max_bonds=self._cut_max_bonds,
            spectra_of_matrix=self._spectra_of_matrix,
            row_scale=self._row_scale,
            plain=self._plain,
            sweep_exact=self._sweep_exact,
            transposed=not self._transposed,
        )

    def __matmul__(self, x: object) -> np.ndarray:
        """``m @ X`` = M @ X for X of shape (J,) or (J, B), contracted through the cores."""
        return _apply.matmul(self, x)

    def __rmatmul__(self, x: object) -> np.ndarray:
        """``X @ m`` = X @ M for X of shape (I,), (B, I) or (..., I), contracted through the cores."""
        return _apply.rmatmul(self, x)

    def matmul(self, x: object, *, plan: str = "auto") -> np.ndarray:
        """M @ X as ``m @ X``, with the route forced by ``plan``: "left", "right", "central" (the kernel's
        sweep order), "kernel" (its FLOP-cheapest plan), "blas" (cores multiplied out, then NumPy's
        BLAS), or "auto" (the faster of the kernel, in its fastest sweep order near the fewest FLOPs, and
        "blas", timed once per kind of product); the result is the same for every plan up to rounding,
        only the time differs."""
        return _apply.matmul(self, x, plan)

    def rmatmul(self, x: object, *, plan: str = "auto") -> np.ndarray:
        """X @ M as ``X @ m``, with the contraction order forced by ``plan`` (see :meth:`matmul`)."""
        return _apply.rmatmul(self, x, plan)

    def rows(self, ids: object) -> np.ndarray:
        """M[ids] without rebuilding M: an embedding lookup.

        ``ids`` is an integer array of any shape; the result has shape ``ids.shape + (J,)``. Negative
        ids count from the end as in NumPy indexing; an id outside [-I, I) raises IndexError naming it,
        and a non-integer array raises TypeError. Ids that share leading in factors (i_1, ..., i_k)
        share the contraction of cores 1..k.
        """
        return _apply.rows(self, ids)

    def matmul_flops(self, batch: int, *, plan: str = "auto") -> dict:
        """FLOPs of ``X @ m`` for X with ``batch`` rows, next to the dense 2 * batch * I * J.

        Returns a dict: "plan" (the order the kernel uses: "left", "right" or "central"; "blas" when the
        product runs through NumPy's BLAS), "route" ("kernel", "blas", or None while "auto" has not yet
        timed the two for this batch), "blas" (FLOPs of the BLAS route), "groups" (sizes
        of the runs of neighbouring cores multiplied together first; all 1 when none are, one run of n
        is rebuild-then-multiply), "order" (the merged cores in contraction order), "merge_flops",
        "mpo" (all FLOPs of the plan, summed from the GEMMs it runs), "dense", "ratio" (mpo / dense:
        below 1 the MPO does less arithmetic), "plans" (FLOPs of the best plan of each order) and
        "unmerged" (FLOPs of the best plan that merges no cores).
        ``m @ X`` with B columns costs ``m.T.matmul_flops(B)``.
        """
        return _apply.matmul_flops(self, batch, plan)

    def aslinearoperator(self):
        """M as a ``scipy.sparse.linalg.LinearOperator`` (matvec, rmatvec, matmat, rmatmat via the cores).

        scipy is imported here, not with mpo; without it this raises ImportError with an install hint.
        """
        return _apply.aslinearoperator(self)

    def truncate(
        self,
        max_bond: int | Sequence[int] | None = None,
        tol: float | None = None,
        *,
        ratio: float | None = None,
    ) -> MPO:
        """A new MPO cut from this one's canonical form; no new decomposition.

        ``max_bond`` caps every bond (an int) or each bond (n-1 ints); ``tol`` keeps the smallest bonds
        whose bound stays <= tol * ||M||_F, dropping the globally smallest singular values first.
        ``ratio`` (budget mode, in (0, 1]) chooses per-bond sizes with ``compression_ratio <= ratio``
        that minimise the error bound (see ``mpo._truncation.bonds_for_ratio``); without the matrix, only cuts of
        the stored form are possible (``decompose(M, ratio=)`` searches by true error instead). They
        combine as "the tightest wins": the caps are applied first, then ``ratio`` cuts further if the
        budget needs it, then ``tol`` cuts further while the bound allows; a constraint never grows a bond
        another one cut. A cap above a bond that was already cut below it is an error: the discarded
        singular values are gone.

        The bound composes in quadrature (eps_k^2 adds the dropped lambda^2) when the spectra are M's
        own. After a ``max_bond`` decomposition the stored form is the canonical form of the MPO's own
        matrix, and the new cut's error adds to the old bound by the triangle inequality; eps_k is then
        scaled so that error_bound() = old bound + new cut's bound, still sqrt(sum eps_k^2).
        """
        if self._transposed and self._row_scale is not None:
            # The scale belongs to the stored rows: cut the stored MPO and read the result transposed.
            return self.T.truncate(max_bond, tol, ratio=ratio).T
        caps = parse_max_bond(max_bond, self.n - 1)
        target = parse_tol(tol)
        budget = parse_ratio(ratio)
        keep = list(self.bond_dims)
        if caps is not None:
            keep = _truncation.bonds_for_max_bond(keep, caps, self._cut_max_bonds)
        result = self._sliced(keep, caps)
        if budget is not None:
            # A row-weighted MPO's I row scales are parameters too: the cores get what is left.
            extra = 0 if result._row_scale is None else result._row_scale.size
            result = result._sliced(
                _truncation.bonds_for_ratio(result._spectra, result.in_shape, result.out_shape, result.shape,
                                            budget, extra)
            )
        if target is not None:
            result = result._sliced(
                _truncation.bonds_for_tol(result._spectra, result._errors, result._norm, result._spectra_of_matrix,
                                          target)
            )
        return result

    def _sliced(self, keep: Sequence[int], caps: Sequence[int] | None = None) -> MPO:
        """This MPO cut to the bonds ``keep`` (``caps``: the max_bond asked for, recorded per bond)."""
        bonds = self.bond_dims
        if tuple(keep) == bonds:
            return self
        cores = []
        for k, c in enumerate(self._cores):
            left = 1 if k == 0 else keep[k - 1]
            right = 1 if k == self.n - 1 else keep[k]
            cores.append(np.ascontiguousarray(c[:left, :, :, :right]))
        dropped = _truncation.dropped_norms(self._spectra, keep)
        cut_max_bonds = _truncation.cut_max_bonds_after(self._cut_max_bonds, keep, dropped, caps)
        spectra = [s[:r] for s, r in zip(self._spectra, keep)]
        spectra_of_matrix = self._spectra_of_matrix
        if not _truncation.consistent(keep, self.in_shape, self.out_shape):
            # A bond wider than its neighbours can feed (d_k > d_(k-1) i_k j_k, or the mirror image)
            # carries redundant directions. An exact re-canonicalisation removes them without changing
            # the matrix; its spectra are then those of the cut matrix, not M's.
            cores, spectra = _core.canonicalize(cores, self.dtype.name)
            spectra_of_matrix = False
        plain = self._plain
        if self._row_scale is not None and self._plain is not None:
            # The plain spectra are those of the MPO's own plain matrix diag(row_scale) @ cores, as for
            # a plain MPO after a cut: measured again (one exact sweep), while norm stays ||M||.
            cut = MPO(cores, shape=self._shape, spectra=spectra, truncation_errors=np.zeros(len(spectra)), norm=1.0)
            dense = cut.to_dense() * self._row_scale[:, None].astype(cut.dtype)
            plain = (self._plain[0], plain_measures(dense, cut)[1])
        return MPO(
            cores,
            shape=self._shape,
            spectra=spectra,
            truncation_errors=_truncation.combined_errors(self._errors, dropped, self._spectra_of_matrix),
            norm=self._norm,
            cut_max_bonds=cut_max_bonds,
            spectra_of_matrix=spectra_of_matrix,
            row_scale=self._row_scale,
            plain=plain,
        )

    # ----------------------------------------------------------------- array form and files
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every array this MPO is rebuilt from (:meth:`from_arrays`), numbers only, by name.

        The names are ``shape``, ``norm``, ``truncation_errors``, ``limits`` (the cut_max_bonds),
        ``spectra_of_matrix``, ``core_k``, ``spectrum_k`` and, for a row-weighted MPO, ``row_scale``,
        ``plain_norm``, ``plain_spectrum_k`` (and ``transposed`` for its transpose). They are what the
        ``mpo.MPO`` archive and the compressed checkpoint store (``mpo.io``).
        """
        if self._row_scale is not None and self._transposed:
            # The scale of m.T acts on the columns, which only the transposed view of the stored MPO
            # expresses: write that MPO and a flag that reads it back transposed.
            return {**self.T.to_arrays(), "transposed": np.array(True)}
        arrays = {
            "shape": np.array(self._shape, dtype=np.int64),
            # The norm the spectra and errors refer to: ||D M|| for a row-weighted MPO, else ||M||.
            "norm": np.array(self._norm, dtype=np.float64),
            "truncation_errors": self._errors,
            "limits": np.array(self._cut_max_bonds, dtype=np.int64),
            "spectra_of_matrix": np.array(self._spectra_of_matrix),
        }
        for k, core in enumerate(self._cores):
            arrays[f"core_{k}"] = core
        for k, s in enumerate(self._spectra):
            arrays[f"spectrum_{k}"] = s
        if self._row_scale is not None and self._plain is not None:
            arrays["row_scale"] = self._row_scale
            arrays["plain_norm"] = np.array(self._plain[0], dtype=np.float64)
            for k, s in enumerate(self._plain[1]):
                arrays[f"plain_spectrum_{k}"] = s
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> MPO:
        """The MPO written by :meth:`to_arrays`; a missing entry raises KeyError naming it, arrays that do
        not fit together raise ValueError or TypeError (the constructor's checks)."""
        n = sum(1 for key in arrays if key.startswith("core_"))
        cores = [arrays[f"core_{k}"] for k in range(n)]
        spectra = [arrays[f"spectrum_{k}"] for k in range(n - 1)]
        weighted: dict[str, Any] = {}
        if "row_scale" in arrays:
            plain = [arrays[f"plain_spectrum_{k}"] for k in range(n - 1)]
            weighted = {"row_scale": arrays["row_scale"],
                        "plain": (float(np.reshape(arrays["plain_norm"], ())), plain)}
        shape = tuple(int(x) for x in arrays["shape"])
        if len(shape) != 2:
            raise ValueError(f"the entry 'shape' must hold 2 values (I, J), got {len(shape)}")
        m = cls(
            cores,
            shape=(shape[0], shape[1]),
            spectra=spectra,
            truncation_errors=arrays["truncation_errors"],
            # Scalars as shape () or (1,): safetensors' safe_open hands 0-d tensors back with shape (1,).
            norm=float(np.reshape(arrays["norm"], ())),
            cut_max_bonds=[int(x) for x in arrays["limits"]],
            spectra_of_matrix=bool(np.reshape(arrays["spectra_of_matrix"], ())),
            **weighted,
        )
        if "transposed" in arrays and bool(np.reshape(arrays["transposed"], ())):
            return m.T
        return m

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the MPO to ``path`` (an .npz archive with a format version, see ``mpo.io``), atomically."""
        io.write_archive(path, self.to_arrays())

    def __repr__(self) -> str:
        padded = "" if self.padded_shape == self._shape else f", padded_shape={self.padded_shape}"
        weighted = "" if self._row_scale is None else ", row_weighted=True"
        return (
            f"MPO(shape={self._shape}{padded}{weighted}, in_shape={self.in_shape}, out_shape={self.out_shape}, "
            f"bond_dims={self.bond_dims}, rho={self.compression_ratio:.4g}, "
            f"relative_error_bound={self.relative_error_bound():.3g}, dtype={self.dtype.name})"
        )


def load(path: str | os.PathLike[str]) -> MPO:
    """Read an MPO written by :meth:`MPO.save`; arrays come back bit-exact.

    The file's tag and format version are checked first (``mpo.io``); a file that is not an MPO
    archive, has an unknown version or misses an entry raises ValueError naming the path.
    """
    arrays = io.read_archive(path)
    try:
        return MPO.from_arrays(arrays)
    except KeyError as exc:
        raise ValueError(f"{os.fspath(path)!r} is missing the entry {exc}") from None
    except (ValueError, TypeError, OverflowError) as exc:  # the constructor's checks, with the file named
        raise ValueError(f"{os.fspath(path)!r} does not hold a valid MPO: {exc}") from None
