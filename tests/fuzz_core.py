"""Time-boxed fuzz pass over the _core entry points: random shapes, factors, bonds, ids and values.

Run by tests/sanitize.sh against an ASan+UBSan build (a sanitizer report aborts the process, which
fails the run), and usable against any build: ``python -m pytest tests/fuzz_core.py``. Every call must
either return or raise one of the errors the bindings document; anything else is a failure.
MPO_FUZZ_SECONDS sets the budget (default 20 s), MPO_FUZZ_SEED the seed (default 0, so a failure
reproduces; the seed and case number are in the message).
"""

from __future__ import annotations

import os
import time

import numpy as np

from mpo import _core

SECONDS = float(os.environ.get("MPO_FUZZ_SECONDS", "20"))
SEED = int(os.environ.get("MPO_FUZZ_SEED", "0"))
# What a bad argument may raise: pybind maps std::invalid_argument/length_error -> ValueError,
# out_of_range -> IndexError, overflow_error -> OverflowError, bad_alloc -> MemoryError.
CLEAN = (ValueError, TypeError, IndexError, OverflowError, MemoryError)
# Sizes are either small (they run) or wrap 64-bit products (they must be refused): in between they
# would try to allocate terabytes, which ASan reports as an error instead of throwing bad_alloc.
SMALL = 1 << 16


def _cores(rng: np.random.Generator, dtype) -> list[np.ndarray]:
    """Random cores, usually small; one case in four has six cores whose row (or column) factors are
    2**11 each, so that the padded side is 2**66 and every entry point must refuse them."""
    wrap = rng.random() < 0.25
    n = 6 if wrap else (int(rng.integers(0, 8)) if rng.random() < 0.1 else int(rng.integers(2, 7)))
    bonds = [1] + [int(rng.integers(1, 5)) for _ in range(max(n - 1, 0))] + [1]
    if rng.random() < 0.15 and n > 1:  # a bond the neighbours disagree on, or an open outer bond
        bonds[int(rng.integers(0, n + 1))] = int(rng.integers(1, 5))
    side = int(rng.integers(1, 3))
    cores = []
    for k in range(n):
        shape = [bonds[k], int(rng.integers(1, 4)), int(rng.integers(1, 4)), bonds[k + 1]]
        if wrap:
            shape[side] = 2**11
        if rng.random() < 0.05:
            shape = shape[: int(rng.integers(0, 4))]  # not 4-way
        elif rng.random() < 0.05:
            shape[int(rng.integers(0, 4))] = 0
        cores.append(_values(rng, shape, dtype))
    return cores


def _values(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    a = rng.standard_normal(shape).astype(dtype)
    kind = rng.random()
    if kind < 0.1 and a.size:
        a.flat[int(rng.integers(0, a.size))] = rng.choice([np.nan, np.inf, -np.inf])
    elif kind < 0.3:
        a *= dtype(10.0) ** int(rng.integers(-40, 38) if dtype == np.float32 else rng.integers(-300, 300))
    return a


def _padded(cores: list[np.ndarray], axis: int) -> int:
    p = 1
    for c in cores:
        p *= int(c.shape[axis]) if c.ndim == 4 else 1
    return p


def _case(rng: np.random.Generator) -> None:
    dtype = np.float64 if rng.random() < 0.5 else np.float32
    name = str(dtype().dtype)
    which = int(rng.integers(0, 9))
    if which == 0:
        n = int(rng.integers(1, 6))
        rows, cols = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        ins = [int(rng.integers(1, 6)) for _ in range(n)]
        outs = [int(rng.integers(1, 6)) for _ in range(n)]
        if rng.random() < 0.5:  # factors that do multiply to the shape
            rows, cols = int(np.prod(ins)), int(np.prod(outs))
            if rows * cols > SMALL:
                return
        if rng.random() < 0.1:
            ins[0] = int(2**62)  # wraps when multiplied by the others
        caps = [int(rng.integers(0, 6)) for _ in range(max(n - 1, 0))]
        if rng.random() < 0.1:
            caps = [2**63 - 1] * len(caps)
        _core.decompose(_values(rng, (rows, cols), dtype), ins, outs, caps,
                        bool(rng.random() < 0.5), bool(rng.random() < 0.5), bool(rng.random() < 0.5))
    elif which in (1, 2):
        cores = _cores(rng, dtype)
        (_core.canonicalize if which == 1 else _core.order_bonds)(cores, name)
    elif which == 3:
        _core.rebuild(_cores(rng, dtype), name)
    elif which == 4:
        _core.multiply_out(_cores(rng, dtype), name)
    elif which == 5:
        cores = _cores(rng, dtype)
        transposed = bool(rng.random() < 0.5)
        width_in, width_out = _padded(cores, 2 if transposed else 1), _padded(cores, 1 if transposed else 2)
        batch = int(rng.integers(0, 5))
        width = int(rng.integers(1, 4)) if width_in > SMALL or rng.random() < 0.1 else int(rng.integers(1, width_in + 1))
        out_width = int(rng.integers(0, 4)) if width_out > SMALL or rng.random() < 0.1 else int(rng.integers(1, width_out + 1))
        batch_last = bool(rng.random() < 0.5)
        x = _values(rng, (width, batch) if batch_last else (batch, width), dtype)
        plan = str(rng.choice(["auto", "left", "right", "central", "nonsense"]))
        _core.apply(cores, transposed, x, batch_last, out_width, plan, bool(rng.random() < 0.5))
    elif which == 6:
        cores = _cores(rng, dtype)
        transposed = bool(rng.random() < 0.5)
        padded = _padded(cores, 2 if transposed else 1)
        count = int(rng.integers(0, 6))
        ids = rng.integers(-3, max(padded, 1) + 3, size=count, dtype=np.int64) if padded < 2**62 else \
            rng.integers(-3, 2**62, size=count, dtype=np.int64)
        width_out = _padded(cores, 1 if transposed else 2)
        out_width = int(rng.integers(0, min(width_out, SMALL) + 2))
        if width_out > SMALL:
            out_width = min(out_width, 4)
        _core.rows(cores, transposed, ids, out_width, name)
    elif which == 7:
        shapes = [[int(v) for v in c.shape] for c in _cores(rng, dtype)]
        batch = int(rng.integers(-1, 5)) if rng.random() < 0.8 else int(2 ** rng.integers(40, 63))
        _core.apply_plan(shapes, batch, bool(rng.random() < 0.5),
                         str(rng.choice(["auto", "left", "right", "central"])), bool(rng.random() < 0.5))
    else:
        size = int(rng.integers(0, 8))
        values = np.abs(_values(rng, size, np.float64))
        _core.entropy(values)
        _core.error_bound(values.tolist())
        if size:
            a = _values(rng, (size, size), np.float64)
            _core.symmetric_eigen(a + a.T, int(rng.integers(0, size + 1)),
                                  str(rng.choice(["auto", "full", "partial", "jacobi"])))


def test_core_entry_points_refuse_or_answer():
    if not os.environ.get("MPO_SANITIZED"):
        # Outside ASan (which reserves terabytes of shadow memory), an address-space limit turns a
        # runaway allocation into MemoryError instead of a visit from the OOM killer.
        import resource

        limits = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, limits[1]))
        try:
            _fuzz()
        finally:
            resource.setrlimit(resource.RLIMIT_AS, limits)
    else:
        _fuzz()


def _fuzz() -> None:
    rng = np.random.default_rng(SEED)
    stop = time.monotonic() + SECONDS
    case = 0
    while time.monotonic() < stop:
        state = rng.bit_generator.state
        try:
            _case(rng)
        except CLEAN:
            pass
        except Exception as e:  # pragma: no cover - the failure path
            raise AssertionError(f"case {case} (seed {SEED}, state {state}) raised {type(e).__name__}: {e}") from e
        case += 1
    assert case > 0
