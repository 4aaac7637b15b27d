"""The interface every decomposition result offers, under the same names.

An :class:`mpo.MPO`, a :class:`mpo.LowRank` (weighted SVD), a :class:`mpo.stacked.Stacked` and a
:class:`mpo.baselines.Result` each answer four questions the same way:

- ``to_dense()``: the approximation as a dense array (an I x J matrix; for the stacked forms the
  (N, D, D) stack whose entry i is block i, ``block(i)``);
- ``num_params``: the numbers stored;
- ``compression_ratio``: num_params over the size of what was approximated (MPOP Eq. 5);
- ``relative_error(M=...)``: ||M - approximation||_F / ||M||_F, measured against ``M`` when given, else
  the error the result knows from its making (a result that does not know it raises ValueError).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Approximation", "measured_relative_error"]


@runtime_checkable
class Approximation(Protocol):
    """What every decomposition result offers (see the module docstring)."""

    @property
    def num_params(self) -> int: ...

    @property
    def compression_ratio(self) -> float: ...

    def to_dense(self) -> np.ndarray: ...

    def relative_error(self, *, M: object = None) -> float: ...


def measured_relative_error(M: object, dense: np.ndarray) -> float:
    """||M - dense||_F / ||M||_F in float64; 0 when both are zero, inf when only M is.

    ``M`` must have ``dense``'s shape (ValueError naming both otherwise).
    """
    a = np.asarray(M)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"M must be real numbers, got dtype {a.dtype}")
    if a.shape != dense.shape:
        raise ValueError(f"M must have the approximation's shape {dense.shape}, got {a.shape}")
    a = a.astype(np.float64)
    norm = float(np.linalg.norm(a))
    diff = float(np.linalg.norm(a - dense.astype(np.float64)))
    if norm > 0:
        return diff / norm
    return 0.0 if diff == 0 else math.inf
