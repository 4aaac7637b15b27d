"""Norms and root sums of squares that neither overflow nor underflow.

Squaring a float64 above ~1e154 overflows and below ~1e-162 underflows to 0 (float32: ~1e19, ~1e-23),
so sqrt(sum x**2) (``np.linalg.norm``'s Frobenius norm among them) reports inf for a finite matrix of
1e160s and 0 for a nonzero one of 1e-170s. Here every sum is of (x / max|x|)**2, all in [0, 1], and the
result is max|x| times its root: finite and accurate whenever the true value is representable.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["norm", "root_sum_squares", "unit"]


def norm(a: object) -> float:
    """||a||_F of any array as a float (float64 arithmetic), computed scaled by max |a|.

    NaN if ``a`` has a NaN, inf if it has an inf or if the norm itself exceeds the largest float64
    (a finite array whose norm is beyond ~1.8e308 cannot be given one).
    """
    x = np.asarray(a, dtype=np.float64)
    if x.size == 0:
        return 0.0
    top = float(np.max(np.abs(x)))
    if not math.isfinite(top) or top == 0.0:  # NaN, inf, or an all-zero array
        return float("nan") if np.isnan(x).any() else top
    with np.errstate(over="ignore"):
        return float(top * np.linalg.norm(x / top))


def root_sum_squares(values: object) -> float:
    """sqrt(sum v**2) over ``values`` (any shape), scaled like :func:`norm`."""
    return norm(values)


def unit(*arrays: object) -> float:
    """A power of two near the largest |value| in ``arrays`` (1.0 when all are zero or not finite).

    Dividing by it is exact and brings every value to at most 1, so squares of the quotients neither
    overflow (values near 1e160) nor underflow (near 1e-170) while they are compared or summed.
    """
    top = max((_largest_magnitude(a) for a in arrays), default=0.0)
    if not (top > 0 and math.isfinite(top)):
        return 1.0
    return math.ldexp(1.0, math.frexp(top)[1])


def _largest_magnitude(a: object) -> float:
    """max |a| as a float (0.0 when empty, NaN when a value is NaN), without a float64 copy of ``a``.

    Budget mode calls :func:`unit` on the whole padded matrix: converting a float32 embedding of 30522 x
    384 to float64 and taking its absolute value cost a third of a second and two 94 MB temporaries. The
    largest magnitude is that of the largest or the smallest value, and a float32 maximum converts to
    float64 exactly, so the result is the same number.
    """
    x = np.asarray(a)
    if x.size == 0:
        return 0.0
    if x.dtype not in (np.float32, np.float64):  # integers, float16, bfloat16: small, converted once
        x = x.astype(np.float64)
    return max(abs(float(x.max())), abs(float(x.min())))
