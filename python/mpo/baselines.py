"""MPO and the low-rank methods MPOP weighs it against (Table 2, Fig. 2), on one interface.

Every method takes a matrix and a target compression ratio rho (MPOP Eq. 5: parameters / (I*J)) and
returns a :class:`Result` with the parameters it keeps, the ratio it achieved (<= rho), its relative
Frobenius error measured against the matrix, and the seconds the decomposition took.

- ``svd``: truncated SVD, which is an MPO with n = 2 and factors ((I, 1), (1, J)) (docs/ALGORITHMS.md §13).
- ``mpo-uniform``: an MPO with one cap on every bond, the largest that fits the budget.
- ``mpo-budget``: an MPO with per-bond sizes chosen for the budget (``decompose(ratio=)``).
- ``cpd`` and ``tucker``: CP (ALS) and Tucker (HOOI) of the matrix reshaped into the same n-way tensor
  the MPO uses, axis k of size i_k j_k (M reshaped to (i1..in, j1..jn), permuted to (i1, j1, ..., in,
  jn), neighbouring pairs merged). They need TensorLy (``pip install "mpo[bench]"``), imported here
  only when called.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from ._decompose import decompose
from ._mpo import MPO
from ._result import measured_relative_error
from ._shape import full_bonds, plan_shape
from ._validation import as_matrix, parse_ratio

__all__ = ["Result", "METHODS", "run", "compare", "svd", "mpo_uniform", "mpo_budget", "cpd", "tucker",
           "uniform_max_bond"]


@dataclass(frozen=True)
class Result:
    """One method at one target ratio.

    ``detail`` says what was kept: the bonds of an MPO, the rank of an SVD or CP, the ranks of Tucker.
    ``error`` is ||M - approximation||_F / ||M||_F, measured on the rebuilt matrix (not a bound).
    """

    method: str
    target: float
    params: int
    ratio: float
    error: float
    seconds: float
    detail: str
    approximation: np.ndarray = field(repr=False, compare=False)
    """The I x J approximation the error was measured on."""

    # The interface every decomposition result shares (``mpo._result``).
    @property
    def num_params(self) -> int:
        """``params``: the numbers the method stores."""
        return self.params

    @property
    def compression_ratio(self) -> float:
        """``ratio``: params / (I J)."""
        return self.ratio

    def to_dense(self) -> np.ndarray:
        """The I x J approximation."""
        return self.approximation

    def relative_error(self, *, M: object = None) -> float:
        """``error`` (measured when the result was made), or measured again against ``M`` when given."""
        return self.error if M is None else measured_relative_error(M, self.approximation)


def _relative_error(M: np.ndarray, approx: np.ndarray) -> float:
    a = np.asarray(M, dtype=np.float64)
    norm = float(np.linalg.norm(a))
    diff = float(np.linalg.norm(a - approx[: a.shape[0], : a.shape[1]]))
    return diff / norm if norm > 0 else diff


_T = TypeVar("_T")


def _timed(fn: Callable[[], _T]) -> tuple[_T, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _mpo_result(method: str, M: np.ndarray, rho: float, make: Callable[[], MPO]) -> Result:
    m, seconds = _timed(make)
    dense = m.to_dense()
    return Result(method, rho, m.num_params, m.compression_ratio, _relative_error(M, dense), seconds,
                  f"bonds {m.bond_dims}", dense)


def svd(M: object, ratio: float) -> Result:
    """Truncated SVD with the most singular values r(I + J) <= ratio * I * J allows (an n = 2 MPO)."""
    a, rho = as_matrix(M), parse_ratio(ratio)
    rows, cols = a.shape
    return _mpo_result("svd", a, rho, lambda: decompose(a, ((rows, 1), (1, cols)), ratio=rho))


def uniform_max_bond(in_shape, out_shape, rows: int, cols: int, ratio: float) -> int:
    """The largest max_bond c such that bonds min(full_k, c) keep <= ratio * rows * cols parameters.

    Bonds min(full_k, c) are consistent (no bond exceeds what its neighbours feed), so the count is
    exact for a generic matrix. Raises ValueError when even c = 1 does not fit.
    """
    pairs = [i * j for i, j in zip(in_shape, out_shape)]
    full = full_bonds(in_shape, out_shape)

    def params(c: int) -> int:
        b = [1, *(min(f, c) for f in full), 1]
        return sum(b[k] * p * b[k + 1] for k, p in enumerate(pairs))

    if params(1) > ratio * rows * cols:
        raise ValueError(
            f"ratio must be >= {params(1) / (rows * cols):.6g} for factors {tuple(in_shape)} x "
            f"{tuple(out_shape)} (every bond at 1), got ratio = {ratio}"
        )
    lo, hi = 1, max(full)
    while lo < hi:  # parameters grow with c: bisect for the largest c that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if params(mid) <= ratio * rows * cols else (lo, mid - 1)
    return lo


def uniform_cap(in_shape, out_shape, rows: int, cols: int, ratio: float) -> int:
    """Deprecated name of :func:`uniform_max_bond` (the project says max_bond, not cap)."""
    warnings.warn("baselines.uniform_cap is deprecated: use uniform_max_bond", DeprecationWarning, stacklevel=2)
    return uniform_max_bond(in_shape, out_shape, rows, cols, ratio)


def mpo_uniform(M: object, ratio: float, n: int = 5) -> Result:
    """MPO with one cap on every bond: the largest that fits the budget (``decompose(max_bond=)``)."""
    a, rho = as_matrix(M), parse_ratio(ratio)
    rows, cols = a.shape
    plan = plan_shape(rows, cols, n)
    cap = uniform_max_bond(plan.in_shape, plan.out_shape, rows, cols, rho)
    return _mpo_result(f"mpo-uniform n={n}", a, rho, lambda: decompose(a, n=n, max_bond=cap))


def mpo_budget(M: object, ratio: float, n: int = 5) -> Result:
    """MPO with per-bond sizes chosen for the budget (``decompose(ratio=)``)."""
    a, rho = as_matrix(M), parse_ratio(ratio)
    return _mpo_result(f"mpo-budget n={n}", a, rho, lambda: decompose(a, n=n, ratio=rho))


# ----------------------------------------------------------------------------- TensorLy baselines


def _tensorly():
    try:
        import tensorly
    except ImportError:
        raise ImportError(
            "the CP and Tucker baselines need TensorLy: python -m pip install \"mpo[bench]\" "
            "(or python -m pip install tensorly)"
        ) from None
    return tensorly


def as_tensor(M: np.ndarray, n: int):
    """M as the n-way tensor the MPO uses (axis k has size i_k j_k), with the plan to undo it."""
    rows, cols = M.shape
    plan = plan_shape(rows, cols, n)
    padded = np.zeros(plan.padded_shape)
    padded[: M.shape[0], : M.shape[1]] = M
    ins, outs = plan.in_shape, plan.out_shape
    perm = [ax for k in range(n) for ax in (k, n + k)]
    T = padded.reshape(ins + outs).transpose(perm).reshape([i * j for i, j in zip(ins, outs)])
    return np.ascontiguousarray(T), plan


def as_matrix_from_tensor(T: np.ndarray, plan) -> np.ndarray:
    """Undo :func:`as_tensor`: the padded matrix (crop it to the original shape)."""
    ins, outs = plan.in_shape, plan.out_shape
    n = len(ins)
    back = np.argsort([ax for k in range(n) for ax in (k, n + k)])
    return T.reshape([x for pair in zip(ins, outs) for x in pair]).transpose(back).reshape(plan.padded_shape)


def cpd(M: object, ratio: float, n: int = 5, *, n_iter_max: int = 100, random_state: int = 0) -> Result:
    """CP decomposition (TensorLy ALS, random start) of the n-way tensor with rank R, R * sum_k i_k j_k
    <= ratio * I * J. Cost grows with R^2 per sweep: large ratios on large matrices take long."""
    tl = _tensorly()
    from tensorly.decomposition import parafac

    a, rho = as_matrix(M), parse_ratio(ratio)
    T, plan = as_tensor(a.astype(np.float64), n)
    rows, cols = a.shape
    rank = int(rho * rows * cols // sum(T.shape))
    if rank < 1:
        raise ValueError(f"ratio must be >= {sum(T.shape) / (rows * cols):.6g} for a rank-1 CP of {T.shape}, got {ratio}")
    cp, seconds = _timed(
        lambda: parafac(tl.tensor(T), rank=rank, init="random", n_iter_max=n_iter_max, tol=1e-7,
                        random_state=random_state)
    )
    approx = as_matrix_from_tensor(np.asarray(tl.cp_to_tensor(cp)), plan)
    params = rank * sum(T.shape)  # the weights fold into any one factor
    return Result(f"cpd n={n}", rho, params, params / (rows * cols), _relative_error(a, approx), seconds,
                  f"rank {rank}", np.ascontiguousarray(approx[:rows, :cols]))


def tucker_ranks(dims, rows: int, cols: int, ratio: float) -> list[int]:
    """Ranks min(dim_k, c) with the largest c whose core plus factors keep <= ratio * I * J parameters."""
    def params(c: int) -> int:
        ranks = [min(d, c) for d in dims]
        return math.prod(ranks) + sum(d * r for d, r in zip(dims, ranks))

    if params(1) > ratio * rows * cols:
        raise ValueError(f"ratio must be >= {params(1) / (rows * cols):.6g} for a Tucker of {tuple(dims)}, got {ratio}")
    c = 1
    while c < max(dims) and params(c + 1) <= ratio * rows * cols:
        c += 1
    return [min(d, c) for d in dims]


def tucker(M: object, ratio: float, n: int = 5) -> Result:
    """Tucker decomposition (TensorLy HOOI, SVD start) of the n-way tensor with uniform ranks."""
    tl = _tensorly()
    from tensorly.decomposition import tucker as hooi

    a, rho = as_matrix(M), parse_ratio(ratio)
    T, plan = as_tensor(a.astype(np.float64), n)
    rows, cols = a.shape
    ranks = tucker_ranks(T.shape, rows, cols, rho)
    tk, seconds = _timed(lambda: hooi(tl.tensor(T), rank=ranks, init="svd", n_iter_max=100, tol=1e-7))
    approx = as_matrix_from_tensor(np.asarray(tl.tucker_to_tensor(tk)), plan)
    params = math.prod(ranks) + sum(d * r for d, r in zip(T.shape, ranks))
    return Result(f"tucker n={n}", rho, params, params / (rows * cols), _relative_error(a, approx), seconds,
                  f"ranks {tuple(ranks)}", np.ascontiguousarray(approx[:rows, :cols]))


METHODS = {
    "mpo-uniform": mpo_uniform,
    "mpo-budget": mpo_budget,
    "svd": lambda M, ratio, n=5: svd(M, ratio),
    "cpd": cpd,
    "tucker": tucker,
}


def run(method: str, M: object, ratio: float, n: int = 5) -> Result:
    """One method (a key of :data:`METHODS`) at one target ratio."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method](M, ratio, n=n)


def compare(M: object, ratios, methods=("mpo-uniform", "mpo-budget", "svd", "cpd", "tucker"), n: int = 5):
    """Every method at every target ratio, as a list of :class:`Result` (methods inner, ratios outer)."""
    return [run(method, M, rho, n) for rho in ratios for method in methods]
