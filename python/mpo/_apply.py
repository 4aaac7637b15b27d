"""Applying an MPO without rebuilding its matrix: products, embedding rows, FLOPs, LinearOperator.

The contraction runs in the C++ core (``_core.apply``): the input passes through the cores one at a
time as GEMMs, in the order (left to right, right to left, or from the central core outward) with the
fewest FLOPs for the bonds and batch size at hand. Where bonds are wide and the batch large, runs of
neighbouring cores are first multiplied together (independently of X: merging all of them is
rebuild-then-multiply) when that costs fewer FLOPs in total. This module only checks and reshapes.

Where the batch is large (``_apply_route.BLAS_MIN_BATCH`` rows and more) the product may instead
multiply out the cores in the kernel and hand the one large GEMM to the BLAS NumPy links, whose speed
against the kernel's own GEMM depends on the machine: ``plan="auto"`` times both routes the first time
it meets a kind of product and keeps the faster (``_apply_route``); the kernel's route itself runs the
fastest of its sweep orders whose FLOPs are close to the cheapest, timed the same way
(``_apply_route.choose_sweep``). ``plan="kernel"`` is the plain route, the kernel's FLOP-cheapest plan
always; ``plan="blas"`` forces the other. (OpenBLAS's worker
threads spin for a while after each call and slow the kernel's threads that follow on a small machine:
the timing sees that too, which is why it times the routes interleaved.)

A transposed MPO (``m.T``) shares its cores with ``m``; the kernel reads them with i_k and j_k swapped.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any, Protocol

import numpy as np

from . import _apply_route, _core, _runtime_gemm

__all__ = [
    "MERGE_CACHE_FACTOR", "ORDERS", "PLANS", "SCRATCH_LIMIT", "Operator", "aslinearoperator", "clear_merge_cache",
    "matmul", "matmul_flops", "rmatmul", "rows",
]

#: "auto": the faster of the kernel (its fastest sweep order near the fewest FLOPs) and the BLAS route
#: (both timed, see _apply_route);
#: "left", "right", "central": the kernel with that sweep order; "kernel": the kernel's FLOP-cheapest plan
#: (the plain route); "blas": the cores multiplied out by the kernel, then NumPy's matmul.
PLANS = ("auto", "left", "right", "central", "kernel", "blas")
#: The sweep orders the kernel itself knows.
ORDERS = _apply_route.ORDERS


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


def _kernel_plan(plan: str) -> str:
    # The kernel's own name for its FLOP-cheapest plan is "auto".
    return plan if plan in ORDERS else "auto"


def _blas_product(cores: list[np.ndarray], transposed: bool, x: np.ndarray, batch_last: bool, out_width: int,
                  keep_merges: bool = False) -> np.ndarray:
    """What ``_core.apply`` computes, with the cores multiplied out and the product left to NumPy's BLAS.

    P is the padded matrix of the cores; the kernel computes X P (X Pᵀ when transposed), or with
    batch_last Pᵀ X (P X). Padding rows of P that X does not reach and padding columns of the result
    are sliced off P before the product, so the GEMM never touches them. With ``keep_merges`` (the
    cores are an MPO's own) the two halves of :func:`_blas_halves` are merged once and kept, so each
    product multiplies out only their one GEMM.
    """
    groups = _blas_halves([c.shape for c in cores]) if keep_merges else None
    halves = _merged(cores, groups) if groups is not None else None
    dense = _core.multiply_out(cores, x.dtype.name) if halves is None else _multiply_halves(*halves)
    width = x.shape[0] if batch_last else x.shape[1]
    if transposed:
        factor = dense[:out_width, :width]  # P[:out, :in], used transposed
        return factor @ x if batch_last else x @ factor.T
    factor = dense[:width, :out_width]
    return factor.T @ x if batch_last else x @ factor


#: The padded matrix the BLAS route forms for one product is written into a buffer kept per thread
#: while it takes at most this many bytes (larger ones are allocated per product): a fresh array at
#: every product cost its page faults and zeroing, a third of a batch-32 product on issue 20's MPO.
SCRATCH_LIMIT = 64 << 20
_scratch = threading.local()


def _scratch_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array of ``shape``, in this thread's kept buffer where it fits ``SCRATCH_LIMIT``."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > SCRATCH_LIMIT:
        return np.empty(shape, dtype=dtype)
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = np.empty(nbytes, dtype=np.uint8)
        _scratch.buffer = buffer
    return buffer[:nbytes].view(dtype).reshape(shape)


def _multiply_halves(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The padded matrix of a chain kept as two merged halves (1, I_L, J_L, d) and (d, I_R, J_R, 1), by
    NumPy's BLAS, in this thread's scratch (see ``SCRATCH_LIMIT``; valid until its next product): a
    block of I_L values at a time, the product (i_L, j_L, (i_R, j_R)) written to the matrix's
    (i_L, i_R, j_L, j_R) order while it is in cache.

    Every GEMM of the BLAS route then runs in NumPy's one pool of BLAS threads: at two threads the
    core's own threads and OpenBLAS's spinning ones took each other's cores.
    """
    _, il, jl, bond = left.shape
    _, ir, jr, _ = right.shape
    lhs = left.reshape(il * jl, bond)
    rhs = right.reshape(bond, ir * jr)
    dtype = np.result_type(left, right)
    dense = _scratch_array((il, ir, jl, jr), dtype)
    step = max(1, (1 << 18) // (jl * ir * jr))  # ~1 MB of float32 product per block
    block = np.empty((step * jl, ir * jr), dtype=dtype)
    for a in range(0, il, step):
        rows = min(step, il - a)
        out = block[: rows * jl]
        np.matmul(lhs[a * jl : (a + rows) * jl], rhs, out=out)
        np.copyto(dense[a : a + rows], out.reshape(rows, jl, ir, jr).transpose(0, 2, 1, 3))
    return dense.reshape(il * ir, jl * jr)


def _blas_halves(shapes: list) -> tuple[int, int] | None:
    """Where the BLAS route cuts the chain into two runs it multiplies out once and keeps: (s, n - s).

    Multiplying out kept halves costs one GEMM of d_s x (padded I J) per product, so the cut is the
    narrowest bond whose halves hold at most ``MERGE_CACHE_FACTOR`` times the numbers of their cores
    (issue 20's 3072 x 768 MPO at max_bond 48: the cut after core 3, 313 K numbers for 100 K, and 7 %
    fewer FLOPs per product than multiplying out the whole tree). None where no cut is small enough to
    keep, or n = 2 (nothing to merge in advance).
    """
    n = len(shapes)
    best: tuple[int, tuple[int, int]] | None = None
    for s in range(1, n):
        groups = (s, n - s)
        if max(groups) > 1 and _keeps(shapes, groups) and (best is None or shapes[s - 1][3] < best[0]):
            best = (shapes[s - 1][3], groups)
    return None if best is None else best[1]


#: Merged cores are kept (see :func:`_merged`) only while they hold at most this many times the numbers
#: of the cores they replace: the memory a small-batch product may spend to skip its merges.
MERGE_CACHE_FACTOR = 4.0

_merge_cache: dict[tuple, list[np.ndarray]] = {}
_merge_lock = threading.Lock()


def _merge_run(run: list[np.ndarray]) -> np.ndarray:
    """Neighbouring cores multiplied into one (d_a, i_a..i_b, j_a..j_b, d_b) core, the row-major multi-
    indices kept, so the chain with it in their place is the same matrix."""
    out = run[0]
    for c in run[1:]:
        d0, i, j, _ = out.shape
        _, i2, j2, d2 = c.shape
        out = np.tensordot(out, c, axes=([3], [0])).transpose(0, 1, 3, 2, 4, 5).reshape(d0, i * i2, j * j2, d2)
    return np.ascontiguousarray(out)


def _runs(seq: list, groups: tuple[int, ...]) -> list[list]:
    """``seq`` cut into consecutive runs of ``groups[k]`` items."""
    starts = np.cumsum((0, *groups))
    return [seq[a:b] for a, b in zip(starts[:-1], starts[1:])]


def _keeps(shapes: list, groups: tuple[int, ...]) -> bool:
    """Whether merging runs of ``groups`` cores keeps at most ``MERGE_CACHE_FACTOR`` times their numbers,
    leaving a chain (one run of all cores is the rebuilt matrix: the kernel's rebuild route, not a chain)."""
    if len(groups) < 2:
        return False
    runs = [run for run in _runs(shapes, groups) if len(run) > 1]
    merged = sum(run[0][0] * math.prod(s[1] * s[2] for s in run) * run[-1][3] for run in runs)
    replaced = sum(math.prod(s) for run in runs for s in run)
    return merged <= MERGE_CACHE_FACTOR * replaced


def _merged(cores: list[np.ndarray], groups: tuple[int, ...]) -> list[np.ndarray] | None:
    """``cores`` with each run of ``groups[k]`` neighbours merged, kept for later products, or None where
    that would hold more than ``MERGE_CACHE_FACTOR`` times the cores' numbers.

    Where the kernel's cheapest plan merges cores before its sweep (small batches through wide bonds),
    it merges them again at every call, though they depend on the cores alone: at batch 1 on a 3072 x 768
    MPO at max_bond 48 that was 29 of the call's 43 MFLOP. The merged cores are kept per core arrays
    (an MPO's cores are read-only) and dropped with them.
    """
    key = (tuple(id(c) for c in cores), groups)
    with _merge_lock:
        found = _merge_cache.get(key)
    if found is not None:
        return found
    if not _keeps([c.shape for c in cores], groups):
        return None
    merged = [run[0] if len(run) == 1 else _merge_run(run) for run in _runs(cores, groups)]
    with _merge_lock:
        if key not in _merge_cache:
            _merge_cache[key] = merged
            # Dropped when any of the cores dies: no id in the key can be reused by other cores while
            # the entry lives (one finalizer per core: a caller may keep one core alive, not the others).
            for core in cores:
                weakref.finalize(core, _merge_cache.pop, key, None)
        return _merge_cache[key]


def clear_merge_cache() -> None:
    """Forget every kept set of merged cores (they are rebuilt at the next product that needs them)."""
    with _merge_lock:
        _merge_cache.clear()


# The kernel's merge groups per (core shapes, batch, transposed): the plan depends on nothing else (it
# is chosen by FLOPs), and planning at every small product cost as much as a tenth of the product.
_groups_cache: dict[tuple, tuple[int, ...]] = {}


def _plan_groups(cores: list[np.ndarray], batch: int, transposed: bool) -> tuple[int, ...]:
    key = (tuple(c.shape for c in cores), batch, transposed)
    groups = _groups_cache.get(key)
    if groups is None:
        groups = tuple(_core.apply_plan([list(c.shape) for c in cores], batch, transposed, "auto")[3])
        if len(_groups_cache) >= 4096:  # a bound, not a policy: shapes x batches seen by one process
            _groups_cache.clear()
        _groups_cache[key] = groups
    return groups


def _kernel(cores: list[np.ndarray], transposed: bool, x: np.ndarray, batch_last: bool, out_width: int,
            plan: str, keep_merges: bool) -> np.ndarray:
    """``_core.apply``; with ``keep_merges`` and the kernel's own plan, merged cores kept across calls."""
    if keep_merges and plan in ("auto", "kernel"):
        batch = x.shape[1] if batch_last else x.shape[0]
        groups = _plan_groups(cores, batch, transposed)
        if any(g > 1 for g in groups):
            merged = _merged(cores, groups)
            if merged is not None:
                cores = merged
    return _core.apply(cores, transposed, x, batch_last, out_width, _kernel_plan(plan))


def _product(cores: list[np.ndarray], transposed: bool, x: np.ndarray, batch_last: bool, out_width: int, plan: str,
             keep_merges: bool = False) -> np.ndarray:
    """``_core.apply`` with the routing of ``plan`` (see PLANS); ``keep_merges`` when ``cores`` are an
    MPO's own (read-only) arrays, not a per-call cast."""
    batch = x.shape[1] if batch_last else x.shape[0]
    if batch >= _apply_route.BLAS_MIN_BATCH:
        # Large products may multiply cores out: their block products go to the process's BLAS.
        _runtime_gemm.install(load=True)
    if plan == "blas":
        return _blas_product(cores, transposed, x, batch_last, out_width, keep_merges)

    if plan != "auto" or batch < _apply_route.BLAS_MIN_BATCH:
        return _kernel(cores, transposed, x, batch_last, out_width, plan, keep_merges)
    shapes = [c.shape for c in cores]
    key = _apply_route.route_key(shapes, transposed, batch_last, batch, x.dtype)

    def sweep(order: str) -> np.ndarray:
        return _kernel(cores, transposed, x, batch_last, out_width, order, keep_merges)

    def kernel() -> np.ndarray:
        order_key = _apply_route.sweep_key(shapes, transposed, batch_last, batch, x.dtype, keep_merges)
        order, result = _apply_route.choose_sweep(order_key, shapes, batch, transposed, sweep)
        return sweep(order) if result is None else result

    route = _apply_route.chosen(key)
    if route is None:
        kernel_flops = float(_core.apply_plan([list(s) for s in shapes], batch, transposed, "auto")[2])
        route, result = _apply_route.choose(
            key,
            kernel_flops,
            _blas_flops(shapes, batch, keep_merges)[1],
            kernel,
            lambda: _blas_product(cores, transposed, x, batch_last, out_width, keep_merges),
        )
        if result is not None:
            return result
    return _blas_product(cores, transposed, x, batch_last, out_width, keep_merges) if route == "blas" else kernel()


def _blas_flops(shapes, batch: int, keep_merges: bool) -> tuple[float, float]:
    """FLOPs of the BLAS route's first product and of each later one: multiplying out (the kernel's
    tree; after the first product only the kept halves' GEMM, see :func:`_blas_halves`) plus the one
    GEMM over the padded matrix."""
    padded_in = math.prod(s[1] for s in shapes)
    padded_out = math.prod(s[2] for s in shapes)
    product = 2.0 * batch * padded_in * padded_out
    first = _apply_route.multiply_out_flops(shapes) + product
    groups = _blas_halves(list(shapes)) if keep_merges else None
    if groups is None:
        return first, first
    return first, 2.0 * shapes[groups[0] - 1][3] * padded_in * padded_out + product


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


def _kernel_cores(m: Operator, dtype: np.dtype) -> tuple[list[np.ndarray], bool]:
    # The stored (untransposed) cores, so the kernel gets contiguous buffers; a dtype other than the
    # MPO's costs one cast of the cores per call. The flag: they are the MPO's own (merges may be kept).
    base = m.stored_cores
    return (base, True) if base[0].dtype == dtype else ([c.astype(dtype) for c in base], False)


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
    cores, own = _kernel_cores(m, dtype)
    out = _product(cores, m.transposed, flat, False, cols, plan, keep_merges=own)
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
    cores, own = _kernel_cores(m, dtype)
    out = _product(cores, not m.transposed, col, True, rows, plan, keep_merges=own)
    if scale is not None and not m.transposed:
        out *= scale[:, None]
    return out.reshape(rows) if a.ndim == 1 else out


def rows(m: Operator, ids: object) -> np.ndarray:
    """M[ids] for an integer array ``ids`` of any shape; result shape ids.shape + (J,)."""
    a = np.asarray(ids)
    if a.size == 0 and a.dtype.kind == "f" and not isinstance(ids, np.ndarray):
        a = a.astype(np.int64)  # M[[]] is an empty selection: a Python [] reaches NumPy as float64
    if a.dtype.kind not in "iu":
        raise TypeError(f"rows: ids must be integers, got dtype {a.dtype}")
    count = m.shape[0]
    # Range-checked in the ids' own dtype, before any cast: uint64 2**64 - 1 cast to int64 is -1 (the
    # last row), and 2**63 a negative number.
    flat_ids = a.reshape(-1)
    bad = np.flatnonzero(flat_ids >= count if a.dtype.kind == "u" else (flat_ids < -count) | (flat_ids >= count))
    if bad.size:
        raise IndexError(f"rows: id {int(flat_ids[bad[0]])} is out of range for an MPO with {count} rows")
    flat = flat_ids.astype(np.int64, copy=False)
    # Negative ids count from the end, as in M[ids]; padding rows are never reachable.
    flat = np.where(flat < 0, flat + count, flat)
    out = _core.rows(m.stored_cores, m.transposed, np.ascontiguousarray(flat), m.shape[1], m.dtype.name)
    scale = _row_scale(m, out.dtype)
    if scale is not None:
        out *= scale[None, :] if m.transposed else scale[flat][:, None]
    return out.reshape(*a.shape, m.shape[1])


def matmul_flops(m: Operator, batch: int, plan: str = "auto") -> dict[str, Any]:
    """FLOPs of X @ M for X with ``batch`` rows: the plan's, every order's, the BLAS route's, the dense count.

    "route" says which way ``X @ m`` runs for this batch: "kernel" or "blas", or None while "auto" has
    not yet timed the two for this kind of product. On the kernel's route "plan" is the sweep order that
    runs: under "auto", the one timed fastest once it has been timed (``_apply_route.choose_sweep``),
    else the FLOP-cheapest. Where the route is "blas", "plan" is "blas" and
    "mpo" counts multiplying out plus the one GEMM. "kept_merges": the plan's merged cores are kept
    after the first product (``MERGE_CACHE_FACTOR``), so "per_call" (the FLOPs of each later product)
    leaves out "merge_flops"; otherwise "per_call" is "mpo". On the BLAS route the kept merges are the
    two halves of the chain, and "per_call" counts their one GEMM in place of "merge_flops". "blas" is
    the BLAS route's first product.
    """
    _check_plan(plan)
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"matmul_flops: batch must be an integer >= 1, got {batch!r}")
    shapes = [list(c.shape) for c in m.stored_cores]
    b = int(batch)
    kernel = _kernel_plan(plan)
    name, order, flops, groups, merge_flops = _core.apply_plan(shapes, b, m.transposed, kernel)
    every = {p: _core.apply_plan(shapes, b, m.transposed, p)[2] for p in ORDERS}
    unmerged = _core.apply_plan(shapes, b, m.transposed, kernel, False)[2]
    blas, blas_per_call = _blas_flops(shapes, b, True)
    dense = 2.0 * b * m.shape[0] * m.shape[1]
    if plan == "blas":
        route: str | None = "blas"
    elif plan != "auto" or b < _apply_route.BLAS_MIN_BATCH:
        route = "kernel"
    else:
        route = _apply_route.chosen(_apply_route.route_key(shapes, m.transposed, False, b, m.dtype))
    if route == "blas":
        name, order, groups = "blas", [0], [len(shapes)]
        merge_flops, flops = _apply_route.multiply_out_flops(shapes), blas
    if route == "kernel" and plan == "auto" and b >= _apply_route.BLAS_MIN_BATCH:
        # X @ m on the MPO's own cores: the kind of product that keeps merges.
        timed = _apply_route.chosen_sweep(_apply_route.sweep_key(shapes, m.transposed, False, b, m.dtype, True))
        if timed in ORDERS:  # a sweep order other than the FLOP-cheapest ran faster
            kernel = timed
            name, order, flops, groups, merge_flops = _core.apply_plan(shapes, b, m.transposed, timed)
    kept = route == "kernel" and kernel == "auto" and any(g > 1 for g in groups) and _keeps(shapes, tuple(groups))
    per_call = flops - merge_flops if kept else flops
    if route == "blas":
        kept, per_call = blas_per_call < blas, blas_per_call
    return {
        "plan": name,
        "route": route,
        "groups": tuple(groups),
        "order": tuple(order),
        "merge_flops": merge_flops,
        "mpo": flops,
        "dense": dense,
        "ratio": flops / dense,
        "plans": every,
        "blas": blas,
        "unmerged": unmerged,
        "kept_merges": kept,
        "per_call": per_call,
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
