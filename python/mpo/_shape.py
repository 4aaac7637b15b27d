"""Shape planning: which factors i_1..i_n, j_1..j_n to give a matrix's two sides (MPOP §3.1).

A side of size S is split into n balanced factors (near S^(1/n)), the larger ones toward the middle, as
the authors chose (768 -> (3, 4, 4, 4, 4), 3072 -> (4, 4, 8, 6, 4)). When S has no balanced
factorisation (BERT's vocabulary, 30522 = 2·3·5087) the side is zero-padded to the nearest size that
factors into primes 2, 3 and 5 with a balanced factorisation (30522 -> 30720 = (6, 8, 10, 8, 8)), the
padding the authors used. Padding is invisible to users of the MPO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["ShapePlan", "plan_shape", "plan_side", "full_bonds", "pad"]

# A factorisation is balanced when its largest factor is at most twice its smallest.
_MAX_RATIO = 2.0
# How far the padding search looks before settling for the best unbalanced factorisation.
_MAX_PADDING = 0.25


class ShapePlan(NamedTuple):
    """The factors of both sides of an I x J matrix, and the zero-padded sizes they multiply to."""

    in_shape: tuple[int, ...]
    """In factors i_1..i_n; their product is ``padded_shape[0]``."""
    out_shape: tuple[int, ...]
    """Out factors j_1..j_n; their product is ``padded_shape[1]``."""
    padded_shape: tuple[int, int]
    """(I', J') with I' >= I and J' >= J."""
    padding: tuple[int, int]
    """(I' - I, J' - J): the zero rows and columns the plan adds."""


def _balanced_factorisations(size: int, n: int) -> list[tuple[int, ...]]:
    """All nondecreasing n-tuples with product ``size`` whose largest entry is at most twice the first."""
    found: list[tuple[int, ...]] = []

    def extend(prefix: list[int], remaining: int, high: int) -> None:
        slots = n - len(prefix)
        if slots == 0:
            if remaining == 1:
                found.append(tuple(prefix))
            return
        f = prefix[-1]
        while f <= high and f**slots <= remaining:
            if remaining % f == 0:
                extend([*prefix, f], remaining // f, high)
            f += 1

    smallest = 1
    while smallest**n <= size:
        if size % smallest == 0:
            extend([smallest], size // smallest, int(_MAX_RATIO * smallest))
        smallest += 1
    return found


def _spread(factors: tuple[int, ...], size: int) -> float:
    middle = math.log(size) / len(factors)
    return sum((math.log(f) - middle) ** 2 for f in factors)


def _best(size: int, n: int) -> tuple[int, ...] | None:
    options = _balanced_factorisations(size, n)
    if not options:
        return None
    return min(options, key=lambda t: (max(t) / min(t), _spread(t, size), t))


def _is_5_smooth(size: int) -> bool:
    for p in (2, 3, 5):
        while size % p == 0:
            size //= p
    return size == 1


def _arrange(factors: tuple[int, ...]) -> tuple[int, ...]:
    """Place the largest factors in the middle: the central tensor takes the biggest share."""
    n = len(factors)
    central = (n - 1) // 2
    positions = sorted(range(n), key=lambda p: (abs(p - central), p < central))
    out = [0] * n
    for position, factor in zip(positions, sorted(factors, reverse=True)):
        out[position] = factor
    return tuple(out)


def _any_factorisation(size: int, n: int) -> tuple[int, ...]:
    """Fallback: greedy split into n factors, each as close to the remaining n-th root as divides."""
    factors = []
    remaining = size
    for slots in range(n, 1, -1):
        target = remaining ** (1.0 / slots)
        divisors = [d for d in range(1, remaining + 1) if remaining % d == 0 and d <= remaining]
        d = min(divisors, key=lambda x: (abs(math.log(x) - math.log(target)), x))
        factors.append(d)
        remaining //= d
    factors.append(remaining)
    return tuple(sorted(factors))


def plan_side(size: int, n: int = 5) -> tuple[tuple[int, ...], int]:
    """Factors for one side of ``size`` and the padded size they multiply to.

    >>> plan_side(768)
    ((3, 4, 4, 4, 4), 768)
    >>> plan_side(30522)
    ((6, 8, 10, 8, 8), 30720)
    """
    _check_count("size", size, minimum=1)
    _check_count("n", n, minimum=2)
    exact = _best(size, n)
    if exact is not None:
        return _arrange(exact), size
    limit = max(size + 8, int(size * (1 + _MAX_PADDING)))
    for candidate in range(size + 1, limit + 1):
        if _is_5_smooth(candidate):
            best = _best(candidate, n)
            if best is not None:
                return _arrange(best), candidate
    return _arrange(_any_factorisation(size, n)), size


def plan_shape(I: int, J: int, n: int = 5) -> ShapePlan:  # noqa: N803 - the paper's symbols
    """Plan the factors of an I x J matrix for an n-core MPO.

    Each side gets n balanced factors (largest factor at most twice the smallest, larger ones toward
    the central tensor); a side with no such factorisation is zero-padded to the nearest size of the
    form 2^a 3^b 5^c that has one.

    >>> plan_shape(30522, 384)
    ShapePlan(in_shape=(6, 8, 10, 8, 8), out_shape=(2, 4, 4, 4, 3), padded_shape=(30720, 384), padding=(198, 0))
    """
    in_shape, rows = plan_side(I, n)
    out_shape, cols = plan_side(J, n)
    return ShapePlan(in_shape, out_shape, (rows, cols), (rows - I, cols - J))


def full_bonds(in_shape: Sequence[int], out_shape: Sequence[int]) -> tuple[int, ...]:
    """Full bond dimensions of MPOP Eq. 2: d_k = min(prod_{m<=k} i_m j_m, prod_{m>k} i_m j_m)."""
    pairs = [i * j for i, j in zip(in_shape, out_shape)]
    return tuple(
        min(math.prod(pairs[: k + 1]), math.prod(pairs[k + 1 :])) for k in range(len(pairs) - 1)
    )


def pad(a: np.ndarray, padded_shape: tuple[int, int]) -> np.ndarray:
    """``a`` zero-padded to ``padded_shape`` (a plan's), C-contiguous."""
    if tuple(padded_shape) == a.shape:
        return np.ascontiguousarray(a)
    padded = np.zeros(padded_shape, dtype=a.dtype)
    padded[: a.shape[0], : a.shape[1]] = a
    return padded


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        if not isinstance(value, np.integer):
            raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
