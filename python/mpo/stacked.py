"""Stacked cross-layer decomposition of a Transformer's weight matrices (ALGORITHMS.md §5, seed 001).

Every encoder matrix is cut into D x D blocks W_1..W_N (:func:`bert_blocks`) and the blocks are
factorised together, in one of three forms of increasing sharing:

- ``"per_matrix"`` (form II): W_i ≈ U_i S_i V_i, each block's own truncated SVD (S_i diagonal).
  N (2 D d + d) parameters.
- ``"shared"`` (form III): W_i ≈ U Σ_i V with one U (D x d) and V (d x D) for all blocks and a full
  d x d core per block. 2 D d + N d² parameters.
- ``"tucker"`` (form IV, the "matrix bank"): W_i ≈ U (Σ_j P_ij C_j) V with a bank of l d x d matrices C
  and mixing weights P (N x l). 2 D d + l d² + N l parameters. With l = 72, d = 384 on BERT-base's 144
  blocks this is 11.2M (11.3M with the biases and LayerNorms that are not decomposed) of 85.05M.

Forms III and IV are Tucker fits of the N x D x D stack (ranks (N, d, d) and (l, d, d)): HOSVD
initialisation, then HOOI (alternating exact subspace updates) until the error stops falling.
Applying a block never forms it: X W_i = ((X U) Σ_i) V, and X U is shared by every block that reads the
same input (Q, K, V and the FFN input blocks of a layer).

Orientation: a block acts as ``x @ W_i`` (rows = input features, columns = output features), so for a
torch ``nn.Linear`` weight (out, in) the blocks are cut from weight.T. Framework-free: NumPy only.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, cast

import numpy as np

__all__ = [
    "FORMS",
    "Stacked",
    "BlockRef",
    "BertBlocks",
    "decompose",
    "num_params",
    "bert_blocks",
]

FORMS = ("per_matrix", "shared", "tucker")


def num_params(form: str, n_blocks: int, block_size: int, rank: int, bank: int | None = None) -> int:
    """Parameters of a stacked form for N = ``n_blocks`` blocks of D = ``block_size`` at rank d.

    per_matrix: N (2 D d + d); shared: 2 D d + N d²; tucker: 2 D d + l d² + N l (l = ``bank``).
    """
    _check_form(form)
    for name, value in (("n_blocks", n_blocks), ("block_size", block_size), ("rank", rank)):
        _check_positive_int(name, value)
    N, D, d = int(n_blocks), int(block_size), int(rank)
    if form == "per_matrix":
        return N * (2 * D * d + d)
    if form == "shared":
        return 2 * D * d + N * d * d
    banks = _check_positive_int("bank", bank)
    return 2 * D * d + banks * d * d + N * banks


def _check_form(form: object) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")


def _check_positive_int(name: str, value: object) -> int:
    """``value`` as an int when it is an integer >= 1, else TypeError or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


class Stacked:
    """N D x D blocks in one of the stacked forms (made by :func:`decompose`).

    ``U`` is (D, d) when shared, else (N, D, d); ``V`` is (d, D) or (N, d, D). ``bank`` holds the
    cores: the diagonals S_i (N, d) for per_matrix, Σ_i (N, d, d) for shared, C (l, d, d) for tucker,
    whose mixing weights are ``P`` (N, l). Errors are Frobenius norms measured at the fit.
    """

    def __init__(self, form, U, V, bank, P, errors, norms, iterations):
        self.form = form
        self.U, self.V, self.bank, self.P = U, V, bank, P
        self.errors = errors
        self.norms = norms
        self.iterations = iterations
        # Σ_i of the tucker form are mixed once, lazily: d x d each, never D x D.
        self._mixed = None

    @property
    def n_blocks(self) -> int:
        """N, the number of blocks."""
        return self.errors.shape[0]

    @property
    def block_size(self) -> int:
        """D, the side of a block."""
        return self.U.shape[-2]

    @property
    def rank(self) -> int:
        """d, the inner dimension of every block's factors."""
        return self.U.shape[-1]

    @property
    def bank_size(self) -> int | None:
        """l, the number of bank matrices (tucker only)."""
        return None if self.P is None else self.P.shape[1]

    @property
    def shared(self) -> bool:
        """True when U and V are shared by all blocks (forms III and IV)."""
        return self.U.ndim == 2

    @property
    def num_params(self) -> int:
        """Parameters stored: U, V, the cores (or bank) and P."""
        return sum(a.size for a in (self.U, self.V, self.bank) + (() if self.P is None else (self.P,)))

    @property
    def dense_params(self) -> int:
        """N D², the parameters of the blocks themselves."""
        return self.n_blocks * self.block_size**2

    @property
    def compression_ratio(self) -> float:
        """num_params / (N D²)."""
        return self.num_params / self.dense_params

    @property
    def error(self) -> float:
        """Total Frobenius error sqrt(sum_i ||W_i - Ŵ_i||²)."""
        return float(np.sqrt(np.sum(self.errors**2)))

    @property
    def relative_error(self) -> float:
        """error / sqrt(sum_i ||W_i||²)."""
        total = float(np.sqrt(np.sum(self.norms**2)))
        return self.error / total if total > 0 else 0.0

    @property
    def relative_errors(self) -> np.ndarray:
        """Per-block ||W_i - Ŵ_i|| / ||W_i|| (0 for a zero block)."""
        safe = np.where(self.norms > 0, self.norms, 1.0)
        return np.where(self.norms > 0, self.errors / safe, 0.0)

    def core(self, i: int) -> np.ndarray:
        """Σ_i, the d x d core of block i (diagonal for per_matrix)."""
        i = self._index(i)
        if self.form == "per_matrix":
            return np.diag(self.bank[i])
        if self.form == "shared":
            return self.bank[i]
        return self.cores()[i]

    def cores(self) -> np.ndarray:
        """All Σ_i as an (N, d, d) array (for tucker, Σ_i = sum_j P_ij C_j, mixed once and kept)."""
        if self.form == "per_matrix":
            return np.einsum("nd,de->nde", self.bank, np.eye(self.rank))
        if self.form == "shared":
            return self.bank
        if self._mixed is None:
            self._mixed = np.einsum("nl,lde->nde", self.P, self.bank)
        return self._mixed

    def block(self, i: int) -> np.ndarray:
        """Ŵ_i = U Σ_i V as a dense D x D matrix (for checks; :meth:`apply` never forms it)."""
        i = self._index(i)
        u, v = (self.U, self.V) if self.shared else (self.U[i], self.V[i])
        return u @ self.core(i) @ v

    def project(self, X: object, i: int | None = None) -> np.ndarray:
        """X @ U (shared U), or X @ U_i for per_matrix (``i`` required there)."""
        x = self._input(X)
        if self.shared:
            return x @ self.U
        if i is None:
            raise ValueError("project: the per_matrix form has one U per block, pass the block index i")
        return x @ self.U[self._index(i)]

    def apply(self, X: object, ids: int | Sequence[int]) -> np.ndarray | list[np.ndarray]:
        """X @ W_i without forming W_i: ((X U) Σ_i) V, for X of shape (..., D).

        ``ids`` an int gives one array; a sequence gives a list in that order, sharing X U across the
        blocks (the reconstruction protocol: Q, K and V of a layer read the same input).
        """
        x = self._input(X)
        if isinstance(ids, (numbers.Integral, np.integer)) and not isinstance(ids, bool):
            return self.apply(x, [int(ids)])[0]
        idx = [self._index(i) for i in cast(Sequence[int], ids)]
        if not self.shared:
            return [((x @ self.U[i]) * self.bank[i]) @ self.V[i] for i in idx]
        xu = x @ self.U
        cores = self.cores()
        return [(xu @ cores[i]) @ self.V for i in idx]

    def _input(self, X: object) -> np.ndarray:
        x = np.asarray(X)
        if x.dtype.kind not in "fiu":
            raise TypeError(f"X must be real numbers, got dtype {x.dtype}")
        if x.ndim == 0 or x.shape[-1] != self.block_size:
            raise ValueError(f"X must have D = {self.block_size} features on its last axis, got shape {x.shape}")
        return x

    def _index(self, i: object) -> int:
        if isinstance(i, bool) or not isinstance(i, (numbers.Integral, np.integer)):
            raise TypeError(f"a block index must be an integer, got {i!r}")
        index = int(i)
        if not -self.n_blocks <= index < self.n_blocks:
            raise IndexError(f"block index {i} is out of range for {self.n_blocks} blocks")
        return index % self.n_blocks

    def __repr__(self) -> str:
        bank = "" if self.P is None else f", bank={self.bank_size}"
        return (
            f"Stacked(form={self.form!r}, n_blocks={self.n_blocks}, block_size={self.block_size}, "
            f"rank={self.rank}{bank}, num_params={self.num_params}, relative_error={self.relative_error:.4g})"
        )


# --------------------------------------------------------------------------------------- fitting
def _as_stack(blocks: object) -> np.ndarray:
    """The blocks as one (N, D, D) float64 array; unequal or non-square blocks are an error."""
    if isinstance(blocks, np.ndarray):
        items = list(blocks) if blocks.ndim == 3 else None
        if items is None:
            raise ValueError(f"blocks must be a sequence of D x D matrices or an (N, D, D) array, got shape {blocks.shape}")
    else:
        items = list(cast(Iterable[object], blocks))  # a non-iterable raises TypeError here
    if not items:
        raise ValueError("blocks must hold at least one D x D matrix, got none")
    arrays: list[np.ndarray] = []
    for k, b in enumerate(items):
        a = np.asarray(b)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"block {k} must hold real numbers, got dtype {a.dtype}")
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"every block must be a square D x D matrix, block {k} has shape {a.shape}")
        if arrays and a.shape != arrays[0].shape:
            raise ValueError(
                f"all blocks must have the same size D x D: block 0 is {arrays[0].shape}, block {k} is {a.shape}"
            )
        if not np.isfinite(a).all():
            raise ValueError(f"block {k} must be finite, it holds NaN or inf")
        arrays.append(a)
    return np.stack(arrays).astype(np.float64)


def _top_eigvecs(gram: np.ndarray, r: int) -> np.ndarray:
    """The r leading eigenvectors of a symmetric PSD matrix, as columns (largest first)."""
    _, vecs = np.linalg.eigh(gram)
    return np.ascontiguousarray(vecs[:, ::-1][:, :r])


def _project(T: np.ndarray, U: np.ndarray, Vf: np.ndarray) -> np.ndarray:
    """Uᵀ W_i Vf for every block, (N, d, d)."""
    N, D, _ = T.shape
    return (np.matmul(U.T, T).reshape(-1, D) @ Vf).reshape(N, U.shape[1], Vf.shape[1])


def _hooi(T: np.ndarray, d: int, bank: int | None, max_iter: int, tol: float):
    """Tucker fit of T (N, D, D) with ranks (bank or N, d, d): HOSVD start, then HOOI sweeps.

    Returns U (D, d), V (d, D), P (N, l) or None, the core (l or N, d, d) and the sweeps done. With
    orthonormal factors the squared error is ||T||² - ||core||², so each sweep's error costs nothing.
    """
    N, D, _ = T.shape
    # Every contraction below is one GEMM over a reshaped view (einsum would not reach BLAS here).
    rows = T.transpose(1, 0, 2).reshape(D, N * D)  # mode-1 unfolding: [W_1 ... W_N]
    cols = T.reshape(N * D, D)  # mode-2 unfolding, transposed: [W_1; ...; W_N]
    # HOSVD: leading subspaces of the mode-1, mode-2 and mode-0 unfoldings, through their Grams.
    U = _top_eigvecs(rows @ rows.T, d)
    Vf = _top_eigvecs(cols.T @ cols, d)
    flat = T.reshape(N, -1)
    P = None if bank is None else _top_eigvecs(flat @ flat.T, bank)
    total = float(np.sum(T * T))
    previous = math.inf
    sweeps = 0
    S = None if P is None else _project(T, U, Vf)
    for sweeps in range(1, max_iter + 1):
        # Each factor becomes the leading subspace of T contracted with the other two factors, in
        # mode order P, U, V (TensorLy's order; U, V, P first reached a worse optimum on MiniLM).
        if P is not None and S is not None and bank is not None:  # all three or none (tucker)
            Sf = S.reshape(N, -1)
            P = _top_eigvecs(Sf @ Sf.T, bank)
        TV = (cols @ Vf).reshape(N, D, d)
        A = TV if P is None else (P.T @ TV.reshape(N, D * d)).reshape(-1, D, d)
        A1 = A.transpose(1, 0, 2).reshape(D, -1)
        U = _top_eigvecs(A1 @ A1.T, d)
        UT = np.matmul(U.T, T)  # (N, d, D)
        B = UT if P is None else (P.T @ UT.reshape(N, d * D)).reshape(-1, d, D)
        B2 = B.reshape(-1, D)
        Vf = _top_eigvecs(B2.T @ B2, d)
        S = (UT.reshape(N * d, D) @ Vf).reshape(N, d, d)  # every block projected on both subspaces
        core = S if P is None else (P.T @ S.reshape(N, d * d)).reshape(-1, d, d)
        error = math.sqrt(max(total - float(np.sum(core * core)), 0.0))
        if previous - error <= tol * max(math.sqrt(total), 1e-300):
            break
        previous = error
    return U, np.ascontiguousarray(Vf.T), P, core, sweeps


def decompose(
    blocks: object,
    form: str = "tucker",
    *,
    rank: int,
    bank: int | None = None,
    max_iter: int = 50,
    tol: float = 1e-7,
) -> Stacked:
    """Factorise N equal D x D blocks together in one stacked form (see the module docstring).

    Parameters
    ----------
    blocks : sequence of D x D arrays, or an (N, D, D) array
        All blocks must have the same size (:func:`bert_blocks` cuts a model's matrices into them).
    form : "per_matrix" | "shared" | "tucker"
        Forms II, III and IV of the paper.
    rank : int, 1 <= d <= D
    bank : int, 1 <= l <= N; tucker only (and required there)
    max_iter, tol
        HOOI stops after ``max_iter`` sweeps or when a sweep lowers the error by less than
        tol * sqrt(sum ||W_i||²).

    Returns
    -------
    Stacked, in float64. At full ranks (d = D, l = N) every form is exact.
    """
    _check_form(form)
    T = _as_stack(blocks)
    N, D, _ = T.shape
    _check_positive_int("rank", rank)
    if rank > D:
        raise ValueError(f"rank must be <= D = {D} (the block size), got {rank}")
    if form == "tucker":
        if bank is None:
            raise ValueError("the tucker form needs bank = l, the number of bank matrices")
        _check_positive_int("bank", bank)
        if bank > N:
            raise ValueError(f"bank must be <= N = {N} (the number of blocks), got {bank}")
    elif bank is not None:
        raise ValueError(f"bank applies to the tucker form only, got bank={bank!r} with form={form!r}")
    _check_positive_int("max_iter", max_iter)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    d = int(rank)
    if form == "per_matrix":
        u, s, vt = np.linalg.svd(T, full_matrices=False)
        U, core, V, P, sweeps = u[:, :, :d].copy(), s[:, :d].copy(), vt[:, :d, :].copy(), None, 0
    else:
        U, V, P, core, sweeps = _hooi(T, d, int(bank) if form == "tucker" else None, int(max_iter), float(tol))
    result = Stacked(form, U, V, core, P, np.zeros(N), np.linalg.norm(T, axis=(1, 2)), sweeps)
    # Errors measured on the fitted blocks (one D x D product each, at fit time only).
    result.errors = np.array([np.linalg.norm(T[i] - result.block(i)) for i in range(N)])
    return result


# --------------------------------------------------------------------------------------- BERT blocks
class BlockRef(NamedTuple):
    """Where a block comes from: encoder ``layer``, ``matrix`` name, ``part`` (0 for D x D matrices),
    and the checkpoint ``key`` of the nn.Linear weight it was cut from (as weight.T)."""

    layer: int
    matrix: str
    part: int
    key: str


class BertBlocks(NamedTuple):
    """The D x D blocks of a BERT encoder and where each comes from (same order)."""

    blocks: list
    refs: list
    block_size: int


#: Encoder matrices cut into blocks, in block order, with the suffix of their nn.Linear weight.
BERT_MATRICES = (
    ("query", "attention.self.query.weight"),
    ("key", "attention.self.key.weight"),
    ("value", "attention.self.value.weight"),
    ("attention_output", "attention.output.dense.weight"),
    ("intermediate", "intermediate.dense.weight"),
    ("output", "output.dense.weight"),
)


def bert_blocks(state: Mapping[str, object], layers: Sequence[int] | None = None) -> BertBlocks:
    """Cut a BERT-family encoder's Q, K, V, O and FFN matrices into D x D blocks (D = hidden size).

    ``state`` maps checkpoint keys (``encoder.layer.{i}.attention.self.query.weight`` and so on, with
    any prefix such as ``bert.``) to nn.Linear weights (out, in); NumPy arrays or anything np.asarray
    takes, e.g. the dict of :func:`mpo._data.load_minilm`. Every block is in ``x @ W`` orientation
    (cut from weight.T): Q, K, V and O give one block each; the FFN input matrix (D x F after the
    transpose) is cut into F/D column blocks, the FFN output matrix (F x D) into F/D row blocks, so
    that y = sum_k x[:, kD:(k+1)D] @ W_k. Order: per layer, query, key, value, attention_output,
    intermediate parts, output parts.
    """
    pattern = re.compile(r"^(.*?)encoder\.layer\.(\d+)\.attention\.self\.query\.weight$")
    found = {}
    for key in state:
        match = pattern.match(key)
        if match:
            found[int(match.group(2))] = match.group(1)
    if not found:
        raise ValueError("state has no BERT encoder weights (no key like 'encoder.layer.0.attention.self.query.weight')")
    wanted = sorted(found) if layers is None else list(layers)
    blocks, refs = [], []
    D: int | None = None
    for layer in wanted:
        if layer not in found:
            raise ValueError(f"layer {layer} is not in the state; it has layers {sorted(found)}")
        for name, suffix in BERT_MATRICES:
            key = f"{found[layer]}encoder.layer.{layer}.{suffix}"
            if key not in state:
                raise ValueError(f"state is missing {key!r}")
            W = np.asarray(state[key]).T
            if D is None:
                D = W.shape[0]
            if name == "intermediate":
                parts = _cut(W, D, axis=1, key=key)
            elif name == "output":
                parts = _cut(W, D, axis=0, key=key)
            else:
                if W.shape != (D, D):
                    raise ValueError(f"{key} must be {D} x {D} (hidden x hidden), got {W.shape[::-1]}")
                parts = [W]
            for part, block in enumerate(parts):
                blocks.append(np.ascontiguousarray(block))
                refs.append(BlockRef(layer, name, part, key))
    if D is None:
        raise ValueError("layers must name at least one layer, got none")
    return BertBlocks(blocks, refs, int(D))


def _cut(W: np.ndarray, D: int, axis: int, key: str) -> list[np.ndarray]:
    other = W.shape[1 - axis]
    size = W.shape[axis]
    if other != D or size % D:
        raise ValueError(
            f"{key} (as x @ W, {W.shape}) must have one side D = {D} and the other a multiple of D"
        )
    return [W[:, k * D : (k + 1) * D] if axis == 1 else W[k * D : (k + 1) * D] for k in range(size // D)]
