"""The MPO object and ``decompose`` (MPOP §3, Algorithm 1).

An ``MPO`` is a thin holder of arrays produced by the C++ core (``mpo._core``): the cores in mixed
canonical form around the central tensor, every bond's spectrum, and the local truncation errors. All
measures (bound, entropy, compression ratio) are read from those arrays; none densifies the matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import _apply, _budget, _core, _weighted
from ._validation import as_matrix, parse_max_bond, parse_ratio, parse_shape, parse_tol

__all__ = ["MPO", "decompose"]

_SVD_METHODS = ("auto", "exact")


def _full_bonds(in_shape: Sequence[int], out_shape: Sequence[int]) -> tuple[int, ...]:
    """Full bond dimensions of MPOP Eq. 2: d_k = min(prod_{m<=k} i_m j_m, prod_{m>k} i_m j_m)."""
    pairs = [i * j for i, j in zip(in_shape, out_shape)]
    return tuple(
        min(math.prod(pairs[: k + 1]), math.prod(pairs[k + 1 :])) for k in range(len(pairs) - 1)
    )


def _consistent(bonds: Sequence[int], in_shape: Sequence[int], out_shape: Sequence[int]) -> bool:
    """No bond exceeds what its neighbours can feed: d_k <= d_(k-1) i_k j_k and d_k <= i_(k+1) j_(k+1) d_(k+1)."""
    pairs = [i * j for i, j in zip(in_shape, out_shape)]
    padded = [1, *bonds, 1]
    return all(
        padded[k + 1] <= padded[k] * pairs[k] and padded[k + 1] <= pairs[k + 1] * padded[k + 2]
        for k in range(len(bonds))
    )


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


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
        truncation_errors: Sequence[float],
        norm: float,
        limits: Sequence[int] | None = None,
        spectra_of_matrix: bool = True,
        row_scale: np.ndarray | None = None,
        plain: tuple[float, Sequence[np.ndarray]] | None = None,
    ) -> None:
        """Assemble an MPO from canonical-form arrays; most users want :func:`mpo.decompose`.

        ``limits[k]`` is 0 when bond k still holds every nonzero singular value, else the largest bond
        :meth:`truncate` may be asked for there (the cap it was cut at). ``spectra_of_matrix`` says the
        spectra are those of the decomposed matrix's own unfoldings (an exact decomposition and its
        cuts), so that further cuts add to the bound in quadrature. Consistency of shapes is checked;
        canonical form is the caller's promise (use :meth:`from_cores` for arbitrary cores).

        A row-weighted MPO (``decompose(..., row_weights=w)``) passes ``row_scale`` (D^-1, one value per
        row of the unpadded matrix): the cores then hold D M and the MPO is diag(row_scale) @ cores.
        ``plain`` is (||M||_F, spectra of M's unfoldings), kept for the plain-norm measures.
        """
        cores = [np.asarray(c) for c in cores]
        if len(cores) < 2:
            raise ValueError(f"an MPO needs n >= 2 cores, got {len(cores)}")
        dtype = cores[0].dtype
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"cores must be float32 or float64, got {dtype}")
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
        if len(spectra) != n - 1 or len(truncation_errors) != n - 1:
            raise ValueError(
                f"need n-1 = {n - 1} spectra and truncation errors, got {len(spectra)} and {len(truncation_errors)}"
            )
        self._cores = [_frozen(np.ascontiguousarray(c)) for c in cores]
        # The stored cores and whether this MPO reads them transposed (see ``T``): products hand the
        # stored, contiguous cores to the kernel with a flag instead of copying transposed ones.
        self._base = self._cores
        self._transposed = False
        self._spectra = [_frozen(np.asarray(s, dtype=np.float64).copy()) for s in spectra]
        for k, s in enumerate(self._spectra):
            if s.shape != (self._cores[k].shape[3],):
                raise ValueError(f"spectrum {k} has {s.shape} values for a bond of {self._cores[k].shape[3]}")
        self._errors = _frozen(np.asarray(truncation_errors, dtype=np.float64).copy())
        self._limits = tuple(int(x) for x in (limits if limits is not None else [0] * (n - 1)))
        if len(self._limits) != n - 1:
            raise ValueError(f"need n-1 = {n - 1} bond limits, got {len(self._limits)}")
        self._spectra_of_matrix = bool(spectra_of_matrix)
        padded = (self._prod(1), self._prod(2))
        rows, cols = (int(x) for x in shape)
        if not (1 <= rows <= padded[0] and 1 <= cols <= padded[1]):
            raise ValueError(f"shape {shape} does not fit the cores' padded shape {padded}")
        self._shape = (rows, cols)
        self._norm = float(norm)
        # Set by decompose for an MPO straight from its sweep, whose true error it knows (exact_error).
        self._sweep_exact = False
        self._row_scale = None
        self._plain = None
        if row_scale is not None:
            scale = np.asarray(row_scale, dtype=np.float64)
            if scale.shape != (rows,) or not (np.isfinite(scale).all() and (scale > 0).all()):
                raise ValueError(f"row_scale must hold {rows} finite values > 0, got shape {scale.shape}")
            self._row_scale = _frozen(scale.copy())
            if plain is None or len(plain[1]) != n - 1:
                raise ValueError(
                    f"a row-weighted MPO needs plain = (norm, n-1 = {n - 1} spectra) of the unweighted matrix"
                )
            self._plain = (float(plain[0]), [_frozen(np.asarray(p, dtype=np.float64).copy()) for p in plain[1]])

    def _prod(self, axis: int) -> int:
        return math.prod(c.shape[axis] for c in self._cores)

    # ----------------------------------------------------------------- construction
    @classmethod
    def _from_core_result(
        cls, raw: dict, shape: tuple[int, int], caps: Sequence[int] | None, row_scale=None, plain=None
    ) -> MPO:
        cut = raw["cut"]
        return cls(
            raw["cores"],
            shape=shape,
            spectra=raw["spectra"],
            truncation_errors=raw["truncation_errors"],
            norm=raw["norm"],
            limits=[cap if was_cut else 0 for cap, was_cut in zip(caps or [0] * len(cut), cut)],
            # A capped sweep cuts remainders, not M: its spectra are those of the MPO's own matrix.
            spectra_of_matrix=not any(cut),
            row_scale=row_scale,
            plain=plain,
        )

    @classmethod
    def from_cores(
        cls, cores: Sequence[np.ndarray], shape: tuple[int, int] | None = None, *, row_scale: object = None
    ) -> MPO:
        """Bring arbitrary cores (for instance trained ones) to canonical form and measure their spectra.

        The matrix they represent is unchanged (up to rounding); bonds may shrink where singular values
        are zero. ``shape`` is the unpadded (I, J), by default the cores' full padded shape.
        ``row_scale`` (I values > 0) makes a row-weighted MPO, diag(row_scale) @ (the cores' matrix), as
        ``decompose(..., row_weights=)`` does: cuts stay optimal in the weighted norm, and the plain
        spectra are measured by one exact sweep of the plain matrix.
        """
        if row_scale is not None:
            base = cls.from_cores(cores, shape)
            scale = np.asarray(row_scale, dtype=np.float64)
            rows, cols = base.shape
            if scale.shape != (rows,):
                raise ValueError(f"row_scale must hold {rows} values (one per row), got shape {scale.shape}")
            return cls(
                base._cores,
                shape=base.shape,
                spectra=base._spectra,
                truncation_errors=base._errors,
                norm=base._norm,
                row_scale=scale,
                plain=_weighted.plain_measures(base.to_dense() * scale[:, None].astype(base.dtype), base),
            )
        cores = [np.asarray(c) for c in cores]
        if not cores:
            raise ValueError("an MPO needs n >= 2 cores, got 0")
        dtype = np.result_type(*cores)
        if dtype.kind not in "fiub":
            raise TypeError(f"cores must be real, got dtype {dtype}")
        dtype = np.float32 if dtype == np.float32 else np.float64
        cores = [np.ascontiguousarray(c, dtype=dtype) for c in cores]
        for k, c in enumerate(cores):
            if c.ndim != 4:
                raise ValueError(f"core {k} must be 4-way (d_(k-1), i_k, j_k, d_k), got shape {c.shape}")
            if not np.isfinite(c).all():
                raise ValueError(f"core {k} must be finite, it holds NaN or inf")
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
        """Row factors i_1..i_n (of the padded row count)."""
        return tuple(c.shape[1] for c in self._cores)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Column factors j_1..j_n (of the padded column count)."""
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
        return _full_bonds(self.in_shape, self.out_shape)

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
        """Local truncation error per bond, eps_k = sqrt(sum of discarded lambda^2) (ALGORITHMS.md §2).

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
        accuracy of the eps_k (relative 1e-3 of the error or better, see csrc/split.cpp) and misses the
        rounding of the arithmetic (an exact MPO reports 0 where the rebuild differs from M by ~1e-7
        ||M||_F in float32, ~1e-15 in float64); it costs the padding lookups instead of a rebuild.

        None for every other MPO: cut later by :meth:`truncate` or ``tol``, made by :meth:`from_cores`
        or :func:`load`, or row-weighted (its sweep's error is the weighted one). Measure
        ``np.linalg.norm(M - m.to_dense())`` for those.
        """
        if not self._sweep_exact or self._row_scale is not None:
            return None
        energy = float(np.sum(self._errors**2))
        # In the stored cores' orientation, which the row lookups below read.
        flip = slice(None, None, -1 if self._transposed else 1)
        (rows, cols), (padded_rows, padded_cols) = self._shape[flip], self.padded_shape[flip]
        dtype = self._base[0].dtype.name
        if padded_rows > rows:  # whole padding rows, padding columns included
            ids = np.arange(rows, padded_rows, dtype=np.int64)
            extra = _core.rows(self._base, False, ids, padded_cols, dtype)
            energy -= float(np.sum(extra.astype(np.float64) ** 2))
        if padded_cols > cols:  # padding columns of M's own rows
            ids = np.arange(cols, padded_cols, dtype=np.int64)
            extra = _core.rows(self._base, True, ids, rows, dtype)
            energy -= float(np.sum(extra.astype(np.float64) ** 2))
        return math.sqrt(max(energy, 0.0))

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
        t = object.__new__(MPO)
        t.__dict__.update(self.__dict__)
        t._transposed = not self._transposed
        t._cores = [c.transpose(0, 2, 1, 3) for c in self._base] if t._transposed else list(self._base)
        t._shape = (self._shape[1], self._shape[0])
        return t

    def __matmul__(self, x: object) -> np.ndarray:
        """``m @ X`` = M @ X for X of shape (J,) or (J, B), contracted through the cores."""
        return _apply.matmul(self, x)

    def __rmatmul__(self, x: object) -> np.ndarray:
        """``X @ m`` = X @ M for X of shape (I,), (B, I) or (..., I), contracted through the cores."""
        return _apply.rmatmul(self, x)

    def matmul(self, x: object, *, plan: str = "auto") -> np.ndarray:
        """M @ X as ``m @ X``, with the contraction order forced by ``plan`` ("auto", "left", "right",
        "centre"); the result is the same for every plan up to rounding, only the time differs."""
        return _apply.matmul(self, x, plan)

    def rmatmul(self, x: object, *, plan: str = "auto") -> np.ndarray:
        """X @ M as ``X @ m``, with the contraction order forced by ``plan`` (see :meth:`matmul`)."""
        return _apply.rmatmul(self, x, plan)

    def rows(self, ids: object) -> np.ndarray:
        """M[ids] without rebuilding M: an embedding lookup.

        ``ids`` is an integer array of any shape; the result has shape ``ids.shape + (J,)``. Negative
        ids count from the end as in NumPy indexing; an id outside [-I, I) raises IndexError naming it,
        and a non-integer array raises TypeError. Ids that share leading row factors (i_1, ..., i_k)
        share the contraction of cores 1..k.
        """
        return _apply.rows(self, ids)

    def matmul_flops(self, batch: int, *, plan: str = "auto") -> dict:
        """FLOPs of ``X @ m`` for X with ``batch`` rows, next to the dense 2 * batch * I * J.

        Returns a dict: "plan" (the order the kernel uses: "left", "right" or "centre"), "groups" (sizes
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
        that minimise the error bound (see :meth:`_bonds_for_ratio`); without the matrix, only cuts of
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
            for k, cap in enumerate(caps):
                if cap > keep[k] and self._limits[k] and cap > self._limits[k]:
                    raise ValueError(
                        f"truncate cannot grow bond {k} from {keep[k]} to max_bond {cap}: it was cut at "
                        f"{self._limits[k]} and the discarded singular values are gone; decompose the "
                        "matrix again for larger bonds"
                    )
            keep = [min(r, cap) for r, cap in zip(keep, caps)]
        result = self._sliced(keep, caps)
        if budget is not None:
            result = result._sliced(result._bonds_for_ratio(budget))
        if target is not None:
            result = result._sliced(result._bonds_for_tol(target))
        return result

    def _new_cut_errors(self, keep: Sequence[int]) -> np.ndarray:
        """delta_k^2: the energy a cut to ``keep`` drops at each bond."""
        return np.array([float(np.sum(s[r:] ** 2)) for s, r in zip(self._spectra, keep)])

    def _combined_errors(self, dropped: np.ndarray) -> np.ndarray:
        """Per-bond eps_k of this MPO followed by a cut dropping ``dropped`` (delta_k^2) per bond."""
        old = self._errors**2
        if self._spectra_of_matrix:
            return np.sqrt(old + dropped)
        # Triangle inequality ||M - M''|| <= E + D with E^2 = sum eps^2, D^2 = sum delta^2, spread over
        # the bonds: eps'^2 = eps^2 (1 + D/E) + delta^2 (1 + E/D) sums to exactly (E + D)^2.
        e, d = math.sqrt(float(old.sum())), math.sqrt(float(dropped.sum()))
        if e == 0 or d == 0:
            return np.sqrt(old + dropped)
        return np.sqrt(old * (1 + d / e) + dropped * (1 + e / d))

    def _bonds_for_tol(self, tol: float) -> list[int]:
        # Drop the globally smallest lambda^2 first: most bond removed per unit of error budget. Each
        # spectrum is descending, so the smallest values always sit at the tails.
        keep = list(self.bond_dims)
        allowed = tol * self._norm
        spent = float(np.sum(self._errors**2))
        if self._spectra_of_matrix:
            budget = allowed**2 - spent
        else:
            budget = max(allowed - math.sqrt(spent), 0.0) ** 2
        if budget <= 0:
            return keep
        values = np.concatenate([s[1:] ** 2 for s in self._spectra])
        owners = np.concatenate([np.full(len(s) - 1, k) for k, s in enumerate(self._spectra)])
        order = np.argsort(values, kind="stable")
        within = np.cumsum(values[order]) <= budget
        drop = np.bincount(owners[order[within]].astype(np.intp), minlength=len(keep))
        return [r - int(d) for r, d in zip(keep, drop)]

    def _bonds_for_ratio(self, ratio: float) -> list[int]:
        """Per-bond sizes with at most ratio * I * J parameters and the least dropped lambda^2.

        Greedy on the stored spectra: drop next the singular value with the smallest lambda^2 per
        parameter saved. Shrinking bond k by one saves d_(k-1) i_k j_k + i_(k+1) j_(k+1) d_(k+1)
        parameters (more when a neighbour then exceeds what it can be fed), which depends on the
        neighbours' current sizes, so the scores are recomputed after every drop. Greedy is not
        optimal in general; the best uniform cap that fits the budget is also evaluated and kept when
        it drops less, so budget mode's bound is never above a uniform cap's. Both candidates shrink
        monotonically as ``ratio`` falls, so the bound is monotone in ``ratio``.
        """
        rows, cols = self._shape
        # A row-weighted MPO's I row scales are parameters too: the cores get what is left.
        scale = 0 if self._row_scale is None else self._row_scale.size
        allowed = ratio * rows * cols - scale
        pairs = [i * j for i, j in zip(self.in_shape, self.out_shape)]

        def fed(bonds: Sequence[int]) -> list[int]:
            # A bond wider than its neighbours can feed (d_k > d_(k-1) i_k j_k or > i_(k+1) j_(k+1)
            # d_(k+1)) shrinks to what they feed when ``_sliced`` re-canonicalises the cut.
            b = [1, *bonds, 1]
            changed = True
            while changed:
                changed = False
                for k in range(1, len(b) - 1):
                    fit = min(b[k], b[k - 1] * pairs[k - 1], pairs[k] * b[k + 1])
                    changed, b[k] = changed or fit != b[k], fit
            return b[1:-1]

        def params(bonds: Sequence[int]) -> int:
            b = [1, *fed(bonds), 1]
            return sum(b[k] * p * b[k + 1] for k, p in enumerate(pairs))

        bonds = list(self.bond_dims)
        if self.num_params - scale <= allowed:
            return bonds
        smallest = params([1] * len(bonds)) + scale
        if smallest > allowed + scale:
            raise ValueError(_budget.ratio_floor_message(ratio, smallest, rows, cols))
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
                    score = float(self._spectra[k][r - 1]) ** 2 / (total - after)
                    if score < best_score:
                        best, best_score = k, score
            if best < 0:
                # No single drop saves a parameter: two neighbours each feed the other's excess. Drop
                # the smallest tail value; a later drop then frees the parameters.
                best = min(
                    (k for k, r in enumerate(greedy) if r > 1), key=lambda k: self._spectra[k][greedy[k] - 1]
                )
            greedy[best] -= 1
            total = params(greedy)
        # The largest uniform cap within budget (parameters grow with the cap, dropped energy shrinks).
        cap = max(bonds)
        while params([min(b, cap) for b in bonds]) > allowed:
            cap -= 1
        uniform = [min(b, cap) for b in bonds]
        choice = greedy
        if float(self._new_cut_errors(uniform).sum()) < float(self._new_cut_errors(greedy).sum()):
            choice = uniform
        # Bonds that only exceed what their neighbours feed (rounding-level singular values kept by
        # the sweep) would make ``_sliced`` return this MPO unchanged, over budget: cut them to fit.
        return fed(choice) if choice == bonds else choice

    def _sliced(self, keep: Sequence[int], caps: Sequence[int] | None = None) -> MPO:
        bonds = self.bond_dims
        if tuple(keep) == bonds:
            return self
        cores = []
        for k, c in enumerate(self._cores):
            left = 1 if k == 0 else keep[k - 1]
            right = 1 if k == self.n - 1 else keep[k]
            cores.append(np.ascontiguousarray(c[:left, :, :, :right]))
        dropped = self._new_cut_errors(keep)
        limits = []
        for k, (old, r) in enumerate(zip(self._limits, keep)):
            if dropped[k] > 0:
                asked = caps[k] if caps is not None and caps[k] <= r else r
                old = min(old, asked) if old else asked
            limits.append(old)
        spectra = [s[:r] for s, r in zip(self._spectra, keep)]
        spectra_of_matrix = self._spectra_of_matrix
        if not _consistent(keep, self.in_shape, self.out_shape):
            # A bond wider than its neighbours can feed (d_k > d_(k-1) i_k j_k, or the mirror image)
            # carries redundant directions. An exact re-canonicalisation removes them without changing
            # the matrix; its spectra are then those of the cut matrix, not M's.
            cores, spectra = _core.canonicalize(cores, self.dtype.name)
            spectra_of_matrix = False
        plain = self._plain
        if self._row_scale is not None:
            # The plain spectra are those of the MPO's own plain matrix diag(row_scale) @ cores, as for
            # a plain MPO after a cut: measured again (one exact sweep), while norm stays ||M||.
            cut = MPO(cores, shape=self._shape, spectra=spectra, truncation_errors=np.zeros(len(spectra)), norm=1.0)
            dense = cut.to_dense() * self._row_scale[:, None].astype(cut.dtype)
            plain = (self._plain[0], _weighted.plain_measures(dense, cut)[1])
        return MPO(
            cores,
            shape=self._shape,
            spectra=spectra,
            truncation_errors=self._combined_errors(dropped),
            norm=self._norm,
            limits=limits,
            spectra_of_matrix=spectra_of_matrix,
            row_scale=self._row_scale,
            plain=plain,
        )

    def save(self, path) -> None:
        """Write the MPO to ``path`` (an .npz archive with a format version), atomically."""
        from ._io import save

        save(self, path)

    def __repr__(self) -> str:
        padded = "" if self.padded_shape == self._shape else f", padded_shape={self.padded_shape}"
        weighted = "" if self._row_scale is None else ", row_weighted=True"
        return (
            f"MPO(shape={self._shape}{padded}{weighted}, in_shape={self.in_shape}, out_shape={self.out_shape}, "
            f"bond_dims={self.bond_dims}, rho={self.compression_ratio:.4g}, "
            f"relative_error_bound={self.relative_error_bound():.3g}, dtype={self.dtype.name})"
        )


def _padded(a: np.ndarray, plan) -> np.ndarray:
    """``a`` zero-padded to the plan's padded shape, C-contiguous."""
    if plan.padded_shape == a.shape:
        return np.ascontiguousarray(a)
    padded = np.zeros(plan.padded_shape, dtype=a.dtype)
    padded[: a.shape[0], : a.shape[1]] = a
    return padded


def _budget_decompose(padded, plan, caps, ratio, shape, row_scale, plain, dtype) -> MPO | None:
    """Budget mode on the matrix itself: the sweep's per-bond caps searched by true error (``_budget``).

    None when the full bonds (within ``caps``) already fit the budget: the ordinary decomposition then
    meets it, and ``truncate(ratio=)`` only trims bonds wider than their neighbours feed.
    """
    rows, cols = shape
    pairs = [i * j for i, j in zip(plan.in_shape, plan.out_shape)]
    limits = list(_full_bonds(plan.in_shape, plan.out_shape))
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
    # The sweep runs in the data's precision, as decompose() does: the same zero rule for the same data.
    sweep = _core.Sweep(padded, list(plan.in_shape), list(plan.out_shape))
    best, _ = _budget.search(sweep, pairs, start, limits, allowed)
    raw = sweep.build(best)
    raw["cores"] = [np.ascontiguousarray(c, dtype=dtype) for c in raw["cores"]]
    searched = MPO._from_core_result(raw, shape, best, row_scale, plain)
    searched._sweep_exact = True
    return searched


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
        Row importances (FWSVD, ALGORITHMS.md §6): D M is decomposed with D = diag(sqrt(w/max(w) +
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
    weighted = None if row_weights is None else _weighted.weigh_rows(a, row_weights, plan)
    padded = _padded(a if weighted is None else weighted.matrix, plan)
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
    result = MPO._from_core_result(raw, (rows, cols), caps, scale, plain)
    if target is not None or budget is not None:
        return result.truncate(tol=target, ratio=budget)
    result._sweep_exact = True
    return result
