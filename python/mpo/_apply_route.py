"""Which way a large product runs: the kernel's sweep, or the cores multiplied out then NumPy's BLAS.

The kernel (``_core.apply``) picks its plan by FLOPs, and where the plan multiplies out every core (large
batches), its last step is one large GEMM in Eigen's code, fixed when the module was built. How that
GEMM compares with the BLAS NumPy links depends on the machine: on one with AVX-512 Eigen's beat
OpenBLAS, on an AVX2 machine it ran at 64-84 % of OpenBLAS's speed. FLOPs cannot tell the two apart,
so where the BLAS route is close enough in FLOPs to win, the first product of each kind (core shapes,
direction, dtype, batch rounded up to a power of two, thread settings) times both routes a few times,
interleaved, and every later product of that kind takes the faster one. The choice lives for the
process: it is a property of this machine, this load and these libraries, none of which a file on disk
could vouch for later. With ``MPO_DETERMINISTIC=1`` nothing is timed and the kernel runs (the same
plan, so the same rounding, on every run).

Below ``BLAS_MIN_BATCH`` rows the kernel always runs: there the product is small next to multiplying out
the cores, which both routes pay, and the kernel's sweep (or its fused rebuild) wins by construction.

Within the kernel, FLOPs mislead as well: its sweep orders (left to right, right to left, from the
central core outward, each with the merges that suit it) permute the state and shape the GEMMs
differently, and plans within a few percent of each other in FLOPs ran up to 1.8x apart
(``SWEEP_SLACK``). So from ``BLAS_MIN_BATCH`` rows, the first product of each kind also times the orders
whose FLOPs are close to the cheapest plan's (:func:`choose_sweep`), and later ones run the fastest.
``mpo.torch``'s kernel products take the same choice, filed apart (their cores are a fresh cast at every
call, so the cheapest plan cannot keep its merges there).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from . import _core
from ._timed_choice import Choices, deterministic, fastest

__all__ = [
    "BLAS_MIN_BATCH", "FLOP_SLACK", "ORDERS", "ROUNDS", "SWEEP_SLACK", "choose", "choose_sweep", "chosen",
    "chosen_sweep", "clear", "multiply_out_flops", "route_key", "sweep_key",
]

#: Fewest rows of X for which the BLAS route is considered at all.
BLAS_MIN_BATCH = 32
#: The BLAS route is timed only when its FLOPs are at most this many times the kernel plan's: no GEMM
#: of one library runs three times faster than another's on the same machine.
FLOP_SLACK = 3.0
#: Timed calls of each route when a kind of product is first seen (the fastest call counts).
ROUNDS = 3
#: The sweep orders the kernel knows (``_core.apply``'s plan names besides "auto").
ORDERS = ("left", "right", "central")
#: A sweep order is timed when its FLOPs are at most this many times those of the kernel's cheapest
#: plan. On one AVX-512 core, X @ M for 4096 rows of the 768 x 3072 Gaussian matrix at max_bond 8 took
#: 172 ms left to right and 309 ms right to left (8.3 and 8.5 GFLOP, the same three merged groups): the
#: orders differ in their permutes of the state and the shapes of their GEMMs, which FLOPs do not see.
#: At max_bond 16 the right-to-left plan, which merges every core, took 237 ms against 392 ms for the
#: FLOP-cheapest left-to-right sweep (19.4 and 19.3 GFLOP).
SWEEP_SLACK = 2.0

_THREAD_VARS = ("MPO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_choices = Choices()
_sweeps = Choices()


def multiply_out_flops(shapes: Sequence[Sequence[int]]) -> float:
    """FLOPs of multiplying out cores of these shapes (d_{k-1}, i_k, j_k, d_k) along the cheapest tree.

    The kernel's ``multiply_out`` takes the same tree (an interval DP over where to split each run of
    cores): run [a, b] split after s costs both halves plus one GEMM of
    (d_{a-1} * prod_{a..s} i j) x d_s x (prod_{s+1..b} i j * d_b).
    """
    n = len(shapes)
    pairs = [1.0]
    for s in shapes:
        pairs.append(pairs[-1] * s[1] * s[2])
    cost = [[0.0] * n for _ in range(n)]
    for length in range(2, n + 1):
        for a in range(n - length + 1):
            b = a + length - 1
            cost[a][b] = min(
                cost[a][s] + cost[s + 1][b]
                + 2.0 * shapes[a][0] * (pairs[s + 1] / pairs[a]) * shapes[s][3] * (pairs[b + 1] / pairs[s + 1]) * shapes[b][3]
                for s in range(a, b)
            )
    return cost[0][n - 1]


def route_key(shapes: Sequence[Sequence[int]], transposed: bool, batch_last: bool, batch: int, dtype: np.dtype) -> tuple:
    """The kind of a product, as the route cache files it."""
    bucket = 1 << max(0, int(batch) - 1).bit_length()  # batch rounded up to a power of two
    threads = tuple(os.environ.get(v) for v in _THREAD_VARS)
    cores = tuple(tuple(int(d) for d in s) for s in shapes)
    return (cores, bool(transposed), bool(batch_last), bucket, np.dtype(dtype).name, threads, deterministic(),
            _core.has_runtime_gemm())


def sweep_key(
    shapes: Sequence[Sequence[int]], transposed: bool, batch_last: bool, batch: int, dtype: np.dtype,
    keep_merges: bool,
) -> tuple:
    """The kind of a kernel product, as the sweep-order cache files it: :func:`route_key` and whether
    the cheapest plan keeps its merged cores across calls (X @ m on an MPO's own cores; not a per-call
    cast, nor ``mpo.torch``), since that plan then skips its merges from the second call on."""
    return (*route_key(shapes, transposed, batch_last, batch, dtype), bool(keep_merges))


def chosen(key: tuple) -> str | None:
    """The route already chosen for this kind of product ("kernel" or "blas"), or None."""
    return _choices.get(key)


def chosen_sweep(key: tuple) -> str | None:
    """The kernel plan already chosen for this kind of product ("auto" or one of ``ORDERS``), or None."""
    return _sweeps.get(key)


def clear() -> None:
    """Forget every choice (the next product of each kind is timed again)."""
    _choices.clear()
    _sweeps.clear()


def choose(
    key: tuple,
    kernel_flops: float,
    blas_flops: float,
    run_kernel: Callable[[], np.ndarray],
    run_blas: Callable[[], np.ndarray],
) -> tuple[str, np.ndarray | None]:
    """(route, its result or None): the cached route, or one chosen now by timing both.

    When the routes are timed, the result of the faster one's last call is returned, so the caller
    need not compute the product again.
    """
    known = chosen(key)
    if known is not None:
        return known, None
    if not math.isfinite(blas_flops) or blas_flops > FLOP_SLACK * kernel_flops or deterministic():
        # MPO_DETERMINISTIC: the kernel, whose plan FLOPs choose, on every run.
        _choices.set(key, "kernel")
        return "kernel", None
    route, last = fastest({"kernel": run_kernel, "blas": run_blas}, ROUNDS)
    _choices.set(key, route)
    return route, last[route]  # type: ignore[return-value]


def choose_sweep(
    key: tuple,
    shapes: Sequence[Sequence[int]],
    batch: int,
    transposed: bool,
    run: Callable[[str], np.ndarray],
) -> tuple[str, np.ndarray | None]:
    """(the kernel plan for this kind of product, its result or None): "auto" (the kernel's FLOP-cheapest
    plan) or the sweep order of ``ORDERS`` that ran fastest; ``run(plan)`` computes the product.

    Below ``BLAS_MIN_BATCH`` rows (whatever was chosen for the rounded batch of ``key``), under
    ``MPO_DETERMINISTIC=1``, and where no other order comes within ``SWEEP_SLACK`` of the cheapest
    plan's FLOPs (or every one that does runs the same steps), it is "auto" without timing. Otherwise
    "auto" and those orders are timed, interleaved, ``ROUNDS`` calls each, and the fastest one's last
    result is returned (the caller need not compute the product again).
    """
    if batch < BLAS_MIN_BATCH or deterministic():
        return "auto", None
    known = _sweeps.get(key)
    if known is not None:
        return known, None
    core_shapes = [[int(d) for d in s] for s in shapes]
    _, order, least, groups, _ = _core.apply_plan(core_shapes, int(batch), bool(transposed), "auto")
    seen = {(tuple(order), tuple(groups))}
    candidates = ["auto"]
    for sweep in ORDERS:
        _, order, flops, groups, _ = _core.apply_plan(core_shapes, int(batch), bool(transposed), sweep)
        steps = (tuple(order), tuple(groups))
        if flops <= SWEEP_SLACK * least and steps not in seen:  # the same steps run the same code
            seen.add(steps)
            candidates.append(sweep)
    if len(candidates) == 1:
        _sweeps.set(key, "auto")
        return "auto", None
    pick, last = fastest({plan: functools.partial(run, plan) for plan in candidates}, ROUNDS)
    _sweeps.set(key, pick)
    return pick, last[pick]  # type: ignore[return-value]
