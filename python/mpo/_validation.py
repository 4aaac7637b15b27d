"""Checks on user input, done before the C++ core runs, so that every error names its rule and value."""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast, overload

import numpy as np

from ._shape import ShapePlan, plan_shape

if TYPE_CHECKING:  # typing.TypeGuard is new in Python 3.10; annotations are not evaluated at run time
    from typing import TypeGuard

__all__ = ["as_matrix", "check_mpo_arrays", "match_names", "parse_max_bond", "parse_tol", "parse_ratio", "parse_shape"]


def as_matrix(M: object) -> np.ndarray:
    """``M`` as a 2-D float32/float64 ndarray (any memory order); ints and bools become float64."""
    try:
        a = np.asarray(M)
    except (ValueError, TypeError) as exc:  # ragged nested lists and the like
        raise ValueError(f"M must be a rectangular 2-D array of real numbers: {exc}") from None
    kind = a.dtype.kind
    if kind == "c":
        raise TypeError(
            f"M must be real: complex matrices are not supported, got dtype {a.dtype} "
            "(decompose the real and imaginary parts separately)"
        )
    if kind in "biu":
        a = a.astype(np.float64)
    elif kind == "f":
        if a.dtype == np.float16:
            a = a.astype(np.float32)
        elif a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float64)
    else:
        raise TypeError(f"M must hold real numbers, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"M must be 2-D (a matrix), got {a.ndim} dimensions with shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"M must not be empty, got shape {a.shape}")
    finite = np.isfinite(a)
    if not finite.all():
        bad = np.argwhere(~finite)
        i, j = (int(x) for x in bad[0])
        raise ValueError(
            f"M must be finite: {len(bad)} NaN or inf entries, the first at [{i}, {j}] = {a[i, j]}"
        )
    return a


def _is_int(value: object) -> TypeGuard[numbers.Integral]:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def parse_shape(shape: object, n: object, rows: int, cols: int) -> ShapePlan:
    """Resolve ``shape`` (None, an int n, or ((i_1..i_n), (j_1..j_n))) into a ShapePlan."""
    if shape is None or _is_int(shape):
        count = n if shape is None else shape
        if not _is_int(count):
            raise TypeError(f"n must be an integer, got {count!r}")
        if count < 2:
            raise ValueError(f"n must be >= 2 (an MPO has at least two cores), got n = {count}")
        return plan_shape(rows, cols, int(count))
    try:
        # Any: a user's nested sequences, checked entry by entry below.
        in_raw, out_raw = cast(Any, shape)
        in_shape: tuple[Any, ...] = tuple(in_raw)
        out_shape: tuple[Any, ...] = tuple(out_raw)
    except (TypeError, ValueError):
        raise TypeError(
            f"shape must be None, an int n, or ((i_1, ..., i_n), (j_1, ..., j_n)), got {shape!r}"
        ) from None
    for side, factors in (("in", in_shape), ("out", out_shape)):
        for f in factors:
            if not _is_int(f):
                raise TypeError(f"{side} factors must be integers, got {f!r} in {factors}")
            if f < 1:
                raise ValueError(f"{side} factors must be >= 1, got {f} in {factors}")
    if len(in_shape) != len(out_shape):
        raise ValueError(
            f"in and out factor lists must have the same length n, got {len(in_shape)} "
            f"({in_shape}) and {len(out_shape)} ({out_shape})"
        )
    if len(in_shape) < 2:
        raise ValueError(f"n must be >= 2 (an MPO has at least two cores), got n = {len(in_shape)}")
    in_shape = tuple(int(f) for f in in_shape)
    out_shape = tuple(int(f) for f in out_shape)
    prod_in, prod_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    if prod_in != rows:
        raise ValueError(
            f"the in factors {in_shape} multiply to {prod_in} but M has {rows} rows "
            "(rows side: the product of the in factors must equal the number of rows)"
        )
    if prod_out != cols:
        raise ValueError(
            f"the out factors {out_shape} multiply to {prod_out} but M has {cols} columns "
            "(columns side: the product of the out factors must equal the number of columns)"
        )
    return ShapePlan(in_shape, out_shape, (rows, cols), (0, 0))


def parse_max_bond(max_bond: object, bonds: int) -> list[int] | None:
    """None, or one cap per bond (``bonds`` = n - 1 entries, each >= 1)."""
    if max_bond is None:
        return None
    if _is_int(max_bond):
        _check_cap(max_bond, "max_bond")
        return [int(max_bond)] * bonds
    if isinstance(max_bond, (str, bytes)) or not isinstance(max_bond, (Sequence, np.ndarray)):
        raise TypeError(f"max_bond must be an int or a sequence of n-1 = {bonds} ints, got {max_bond!r}")
    caps = list(max_bond)
    if len(caps) != bonds:
        raise ValueError(f"max_bond must have n-1 = {bonds} entries, one per bond, got {len(caps)}: {caps}")
    for k, cap in enumerate(caps):
        if not _is_int(cap):
            raise TypeError(f"max_bond[{k}] must be an integer, got {cap!r}")
        _check_cap(cap, f"max_bond[{k}]")
    return [int(c) for c in caps]


# The kernel takes caps as 64-bit sizes; no bond of a matrix that fits in memory comes near 2**62.
_LARGEST_CAP = 2**63 - 1


def _check_cap(cap: numbers.Integral, name: str) -> None:
    """ValueError unless 1 <= cap <= 2**63 - 1 (named ``name`` in the message)."""
    # int() first: numbers.Integral declares no comparison with int (every integer type has one).
    if int(cap) < 1:
        raise ValueError(f"max_bond must be >= 1, got {name} = {cap}")
    if int(cap) > _LARGEST_CAP:
        raise ValueError(
            f"max_bond must be at most 2**63 - 1 (no bond comes near it; None leaves every bond uncut), got {name} = {cap}"
        )


@overload
def parse_tol(tol: None) -> None: ...
@overload
def parse_tol(tol: float) -> float: ...
@overload
def parse_tol(tol: object) -> float | None: ...
def parse_tol(tol: object) -> float | None:
    """None, or a relative Frobenius error target in [0, 1)."""
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a real number in [0, 1), got {tol!r}")
    value = float(tol)
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise ValueError(f"tol must be in [0, 1) (a relative Frobenius error), got {tol}")
    return value


@overload
def parse_ratio(ratio: None) -> None: ...
@overload
def parse_ratio(ratio: float) -> float: ...
@overload
def parse_ratio(ratio: object) -> float | None: ...
def parse_ratio(ratio: object) -> float | None:
    """None, or a target compression ratio (MPOP Eq. 5, parameters / (I*J)) in (0, 1]."""
    if ratio is None:
        return None
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise TypeError(f"ratio must be a real number in (0, 1], got {ratio!r}")
    value = float(ratio)
    if not 0.0 < value <= 1.0:  # also rejects NaN
        raise ValueError(
            f"ratio must be in (0, 1] (the compression ratio of MPOP Eq. 5, parameters / (I*J)), got {ratio}"
        )
    return value


def _patterns(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes) or not isinstance(value, (Sequence, set, frozenset)):
        raise TypeError(f"{what} must be a string or a list of strings (fnmatch patterns), got {value!r}")
    patterns = list(value)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{what} must be a string or a list of strings (fnmatch patterns), got {value!r}")
    return patterns


def match_names(names: Sequence[str], include: object, exclude: object) -> list[str]:
    """The ``names`` that match an ``include`` pattern (every name when include is None) and no
    ``exclude`` pattern, in their order.

    Patterns are fnmatch globs matched case-sensitively against the whole name (``*`` also crosses
    dots: ``"encoder.*.query"``); each of include and exclude is None, one string, or a list of
    strings. A pattern that matches none of ``names`` is a ValueError listing the names, so a typo
    never silently selects nothing.
    """
    names = list(names)
    includes, excludes = _patterns(include, "include"), _patterns(exclude, "exclude")
    for what, patterns in (("include", includes), ("exclude", excludes)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                raise ValueError(
                    f"{what} pattern {pattern!r} matches none of: " + (", ".join(names) if names else "(no names)")
                )
    return [
        name
        for name in names
        if (not includes or any(fnmatch.fnmatchcase(name, p) for p in includes))
        and not any(fnmatch.fnmatchcase(name, p) for p in excludes)
    ]


# Largest padded side or core the kernels take: their sizes are 64-bit, and products of a side with a
# batch or a bond must still fit (the kernels check each product too; this names the rule early).
_LARGEST_SIDE = 2**62


def check_mpo_arrays(
    cores: Sequence[np.ndarray],
    spectra: Sequence[object],
    truncation_errors: object,
    norm: object,
    cut_max_bonds: Sequence[object] | None,
) -> None:
    """ValueError naming the rule unless the arrays of an MPO are ones it can be made of.

    Checked (before any kernel sees them, for arrays from any file): the padded sides Π i_k and Π j_k
    are at most 2**62; every core is finite; spectrum k is 1-D with d_k finite values >= 0;
    ``truncation_errors`` is 1-D with n-1 finite values >= 0; ``norm`` is a finite number >= 0; each
    limit is an integer >= 0. The cores' ranks, dtypes and bonds are checked by the caller.
    """
    n = len(cores)
    for axis, side in ((1, "row"), (2, "column")):
        padded = 1
        for c in cores:
            padded *= int(c.shape[axis])
        if padded > _LARGEST_SIDE:
            raise ValueError(f"the cores' {side} factors multiply to {padded}, more than 2**62 (no matrix is that large)")
    for k, c in enumerate(cores):
        if not np.isfinite(c).all():
            raise ValueError(f"core {k} must be finite, it holds NaN or inf")
    for k, s in enumerate(spectra):
        a = np.asarray(s)
        if a.dtype.kind not in "fiu":
            raise ValueError(f"spectrum {k} must hold real numbers, got dtype {a.dtype}")
        bond = int(cores[k].shape[3]) if k < n else -1
        if a.shape != (bond,):
            raise ValueError(f"spectrum {k} must be 1-D with d_{k + 1} = {bond} values, got shape {a.shape}")
        if not (np.isfinite(a).all() and (a >= 0).all()):
            raise ValueError(f"spectrum {k} must hold finite singular values >= 0")
    errors = np.asarray(truncation_errors)
    if errors.dtype.kind not in "fiu" or errors.shape != (n - 1,):
        raise ValueError(
            f"truncation_errors must be 1-D with n-1 = {n - 1} real values, got shape {errors.shape} "
            f"and dtype {errors.dtype}"
        )
    if not (np.isfinite(errors).all() and (errors >= 0).all()):
        raise ValueError("truncation_errors must be finite and >= 0")
    if isinstance(norm, bool) or not isinstance(norm, numbers.Real) or not (math.isfinite(norm) and float(norm) >= 0):
        raise ValueError(f"norm must be a finite number >= 0, got {norm!r}")
    for k, limit in enumerate(cut_max_bonds or ()):
        if not _is_int(limit) or int(limit) < 0:
            raise ValueError(f"cut_max_bonds[{k}] must be an integer >= 0, got {limit!r}")
