"""Applying an MPO without rebuilding its matrix: products, embedding rows, FLOPs, LinearOperator.

The contraction runs in the C++ core (``_core.apply``): the input passes through the cores one at a
time as GEMMs, in the order (left to right, right to left, or from the central core outward) with the
fewest FLOPs for the bonds and batch size at hand. Where bonds are wide and the batch large, runs of
neighbouring cores are first multiplied together (independently of X: merging all of them is
rebuild-then-multiply) when that costs fewer FLOPs in total. This module only checks and reshapes.

The products stay in the kernel even when the plan multiplies out every core: handing the last GEMM to
NumPy's BLAS was faster alone, but OpenBLAS's worker threads spin after each call and stalled the
kernel's own threads (and theirs) by 10-20x when the two alternated on a 2-core machine.

A transposed MPO (``m.T``) shares its cores with ``m``; the kernel reads them with i_k and j_k swapped.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from . import _core

__all__ = ["PLANS", "Operator", "matmul", "rmatmul", "rows", "matmul_flops", "aslinearoperator"]

PLANS = ("auto", "left", "right", "centre")


class Operator(Protocol):
    """What the products read from an MPO: its public views (``mpo.MPO`` has them all)."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def stored_cores(self) -> list[np.ndarray]: ...

    @property
    def transposed(self) -> bool: ...

    @property
    def row_scale(self) -> np.ndarray | None: ...

    @property
    def T(self) -> Operator: ...


def _check_plan(plan: str) -> str:
    if plan not in PLANS:
        raise ValueError(f"plan must be one of {PLANS}, got {plan!r}")
    return plan


def _as_input(x: object, what: str) -> np.ndarray:
    """X as a float32/float64 array; ints and bools become float64 (NumPy's promotion)."""
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{what}: X must be real numbers, got dtype {a.dtype}")
    if a.dtype.kind == "f" and a.dtype.itemsize > 8:
        raise TypeError(f"{what}: X must be float32 or float64 (or integer), got dtype {a.dtype}")
    return a


def _work_dtype(m: Operator, x: np.ndarray) -> np.dtype:
    # NumPy's rule for M @ X: float32 only when both are float32 (ints promote to float64).
    return np.dtype(np.float32) if (m.dtype == np.float32 and x.dtype == np.float32) else np.dtype(np.float64)


def _kernel_cores(m: Operator, dtype: np.dtype) -> list[np.ndarray]:
    # The stored (untransposed) cores, so the kernel gets contiguous buffers; a dtype other than the
    # MPO's costs one cast of the cores per call.
    base = m.stored_cores
    return base if base[0].dtype == dtype else [c.astype(dtype) for c in base]


def _row_scale(m: Operator, dtype: np.dtype) -> np.ndarray | None:
    # A row-weighted MPO is diag(s) @ (cores' matrix): s scales the stored rows, which are the
    # columns of a transposed MPO.
    s = m.row_scale
    return None if s is None else s.astype(dtype, copy=False)


def rmatmul(m: Operator, x: object, plan: str = "auto") -> np.ndarray:
    """X @ M for X of shape (I,), (B, I) or (..., I); the result has shape (..., J)."""
    _check_plan(plan)
    a = _as_input(x, "X @ mpo")
    rows, cols = m.shape
    if a.ndim == 0:
        raise ValueError("X @ mpo: X must have at least 1 dimension, got a scalar")
    if a.shape[-1] != rows:
        raise ValueError(
            f"X @ mpo: inner dimensions differ: X has {a.shape[-1]} columns (last axis), the MPO has {rows} rows"
        )
    dtype = _work_dtype(m, a)
    lead = a.shape[:-1]
    batch = math.prod(lead)
    if batch == 0:
        return np.zeros((*lead, cols), dtype=dtype)
    flat = np.ascontiguousarray(a.reshape(batch, rows), dtype=dtype)
    scale = _row_scale(m, dtype)
    if scale is not None and not m.transposed:
        flat = flat * scale
    out = _core.apply(_kernel_cores(m, dtype), m.transposed, flat, False, cols, plan)
    if scale is not None and m.transposed:
        out *= scale
    return out.reshape(*lead, cols)


def matmul(m: Operator, x: object, plan: str = "auto") -> np.ndarray:
    """M @ X for X of shape (J,) or (J, B); the result has shape (I,) or (I, B)."""
    _check_plan(plan)
    a = _as_input(x, "mpo @ X")
    rows, cols = m.shape
    if a.ndim not in (1, 2):
        raise ValueError(
            f"mpo @ X: X must have shape (J,) or (J, B), got {a.ndim} dimensions {a.shape}; "
            "for more batch axes use X @ mpo.T"
        )
    if a.shape[0] != cols:
        raise ValueError(
            f"mpo @ X: inner dimensions differ: the MPO has {cols} columns, X has {a.shape[0]} rows (first axis)"
        )
    dtype = _work_dtype(m, a)
    col = a if a.ndim == 2 else a.reshape(cols, 1)
    if col.shape[1] == 0:
        return np.zeros((rows, 0), dtype=dtype)
    col = np.ascontiguousarray(col, dtype=dtype)
    scale = _row_scale(m, dtype)
    if scale is not None and m.transposed:
        col = col * scale[:, None]
    # (M X)ᵀ = Xᵀ Mᵀ: the kernel's batch-last layout reads X and writes M X in place, with the roles of
    # i_k and j_k swapped, so neither X nor the result is transposed in memory.
    out = _core.apply(_kernel_cores(m, dtype), not m.transposed, col, True, rows, plan)
    if scale is not None and not m.transposed:
        out *= scale[:, None]
    return out.reshape(rows) if a.ndim == 1 else out


def rows(m: Operator, ids: object) -> np.ndarray:
    """M[ids] for an integer array ``ids`` of any shape; result shape ids.shape + (J,)."""
    a = np.asarray(ids)
    if a.dtype.kind not in "iu":
        raise TypeError(f"rows: ids must be integers, got dtype {a.dtype}")
    count = m.shape[0]
    flat = a.reshape(-1).astype(np.int64, copy=False)
    bad = np.flatnonzero((flat < -count) | (flat >= count))
    if bad.size:
        raise IndexError(f"rows: id {int(flat[bad[0]])} is out of range for an MPO with {count} rows")
    # Negative ids count from the end, as in M[ids]; padding rows are never reachable.
    flat = np.where(flat < 0, flat + count, flat)
    out = _core.rows(m.stored_cores, m.transposed, np.ascontiguousarray(flat), m.shape[1], m.dtype.name)
    scale = _row_scale(m, out.dtype)
    if scale is not None:
        out *= scale[None, :] if m.transposed else scale[flat][:, None]
    return out.reshape(*a.shape, m.shape[1])


def matmul_flops(m: Operator, batch: int, plan: str = "auto") -> dict[str, Any]:
    """FLOPs of X @ M for X with ``batch`` rows: the kernel's plan, every order, and the dense count."""
    _check_plan(plan)
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"matmul_flops: batch must be an integer >= 1, got {batch!r}")
    shapes = [list(c.shape) for c in m.stored_cores]
    b = int(batch)
    name, order, flops, groups, merge_flops = _core.apply_plan(shapes, b, m.transposed, plan)
    every = {p: _core.apply_plan(shapes, b, m.transposed, p)[2] for p in PLANS[1:]}
    unmerged = _core.apply_plan(shapes, b, m.transposed, plan, False)[2]
    dense = 2.0 * b * m.shape[0] * m.shape[1]
    return {
        "plan": name,
        "groups": tuple(groups),
        "order": tuple(order),
        "merge_flops": merge_flops,
        "mpo": flops,
        "dense": dense,
        "ratio": flops / dense,
        "plans": every,
        "unmerged": unmerged,
    }


def aslinearoperator(m: Operator) -> Any:
    """A scipy.sparse.linalg.LinearOperator of M (matvec, rmatvec, matmat, rmatmat through the cores)."""
    try:
        from scipy.sparse.linalg import LinearOperator
    except ImportError:  # tested by hiding scipy from sys.modules
        raise ImportError("MPO.aslinearoperator needs scipy: pip install scipy (or mpo[scipy])") from None

    def rmatvec(y: np.ndarray) -> np.ndarray:
        # Mᴴ y = Mᵀ y for a real M, i.e. y @ M.
        return rmatmul(m, np.ravel(y))

    return LinearOperator(
        m.shape,
        matvec=lambda x: matmul(m, np.ravel(x)),
        rmatvec=rmatvec,
        matmat=lambda x: matmul(m, x),
        rmatmat=lambda y: matmul(m.T, y),
        dtype=m.dtype,
    )
