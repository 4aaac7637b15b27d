"""Bad input: every rule of docs/API.md raises ValueError or TypeError with a message
that names the rule and the offending value.

Each test pins the exception type and a loose message fragment (a keyword for the
rule, and the value).  The fragments are deliberately loose: they pin meaning, not
wording.
"""

import re

import numpy as np
import pytest

import mpo

GOOD = np.arange(1.0, 1.0 + 6 * 8).reshape(6, 8)
GOOD_SHAPE = ((2, 3), (2, 4))


def raises(exc, *patterns):
    """Context manager: exc is raised and every regex in patterns is in the message."""

    class _Ctx:
        def __enter__(self):
            self._cm = pytest.raises(exc)
            self.info = self._cm.__enter__()
            return self.info

        def __exit__(self, *a):
            handled = self._cm.__exit__(*a)
            msg = str(self.info.value)
            for p in patterns:
                assert re.search(p, msg, flags=re.IGNORECASE), (
                    f"message {msg!r} does not match {p!r}"
                )
            return handled

    return _Ctx()


# ------------------------------------------------------------------ the matrix


@pytest.mark.parametrize(
    "bad, value",
    [(np.nan, r"nan"), (np.inf, r"inf"), (-np.inf, r"inf")],
    ids=["nan", "inf", "-inf"],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_non_finite_entries(bad, value, dtype):
    M = GOOD.astype(dtype)
    M[4, 5] = bad
    with raises(ValueError, value):
        mpo.decompose(M, GOOD_SHAPE)


def test_non_finite_in_nested_list():
    L = GOOD.tolist()
    L[0][1] = float("nan")
    with raises(ValueError, r"nan"):
        mpo.decompose(L, GOOD_SHAPE)


def test_non_finite_with_planned_shape():
    M = GOOD.copy()
    M[0, 0] = np.inf
    with raises(ValueError, r"inf"):
        mpo.decompose(M, n=2)


@pytest.mark.parametrize(
    "M, value",
    [
        (np.arange(6.0), r"\b1\b|\(6,\)"),
        (np.arange(24.0).reshape(2, 3, 4), r"\b3\b|\(2, 3, 4\)"),
        (np.float64(3.0), r"\b0\b|\(\)"),
        ([1.0, 2.0, 3.0], r"\b1\b|\(3,\)"),
    ],
    ids=["1d", "3d", "0d", "list-1d"],
)
def test_not_2d(M, value):
    with raises(ValueError, r"2-?d|two.dim|ndim|dimension", value):
        mpo.decompose(M, n=2)


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (0, 0)])
def test_empty(shape):
    with raises(ValueError, r"empty|size|zero|\b0\b"):
        mpo.decompose(np.zeros(shape), n=2)


def test_empty_list():
    with raises(ValueError, r"empty|2-?d|dim|size"):
        mpo.decompose([[]], n=2)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_dtype(dtype):
    with raises(TypeError, r"complex"):
        mpo.decompose(GOOD.astype(dtype), GOOD_SHAPE)


def test_complex_list():
    L = GOOD.tolist()
    L[0][0] = 1 + 2j
    with raises(TypeError, r"complex"):
        mpo.decompose(L, GOOD_SHAPE)


def test_complex_with_zero_imaginary_still_rejected():
    with raises(TypeError, r"complex"):
        mpo.decompose(GOOD.astype(np.complex128), GOOD_SHAPE)


@pytest.mark.parametrize(
    "M, value",
    [
        (GOOD.astype(object), r"object|\bO\b"),
        (np.array([["a", "b"], ["c", "d"]]), r"str|<U1|\bU\b|unicode"),
        (np.array([[b"a", b"b"], [b"c", b"d"]]), r"bytes|\|S1|\bS\b|str"),
        ([["a", "b"], ["c", "d"]], r"str|<U1|\bU\b|unicode"),
    ],
    ids=["object", "str", "bytes", "list-of-str"],
)
def test_non_numeric_dtype(M, value):
    shape = GOOD_SHAPE if np.shape(M) == GOOD.shape else ((2, 1), (2, 1))
    with raises(TypeError, r"dtype|numeric|real|float|type", value):
        mpo.decompose(M, shape)


# -------------------------------------------------------------------- the shape


def test_rows_product_mismatch():
    M = np.ones((10, 12))
    with raises(ValueError, r"rows?", r"\b9\b", r"\b10\b"):
        mpo.decompose(M, ((3, 3), (3, 4)))


def test_columns_product_mismatch():
    M = np.ones((9, 14))
    with raises(ValueError, r"col(umn)?s?", r"\b12\b", r"\b14\b"):
        mpo.decompose(M, ((3, 3), (3, 4)))


def test_shape_messages_say_in_and_out_factors():
    """The glossary's words (docs/API.md): i_1..i_n are the in factors, j_1..j_n the out factors."""
    with raises(ValueError, r"\bin factors \(3, 3\) multiply to 9 but M has 10 rows"):
        mpo.decompose(np.ones((10, 12)), ((3, 3), (3, 4)))
    with raises(ValueError, r"\bout factors \(3, 4\) multiply to 12 but M has 14 columns"):
        mpo.decompose(np.ones((9, 14)), ((3, 3), (3, 4)))
    with raises(ValueError, r"^in and out factor lists must have the same length"):
        mpo.decompose(GOOD, ((2, 3), (2, 2, 2)))
    with raises(ValueError, r"^out factors must be >= 1, got 0"):
        mpo.decompose(GOOD, ((2, 3), (0, 4)))


@pytest.mark.parametrize("n", [1, 0, -3])
def test_n_below_two(n):
    with raises(ValueError, r"\bn\b|factors|at least|>= ?2", rf"{n}\b"):
        mpo.decompose(GOOD, n=n)


@pytest.mark.parametrize("n", [1, 0])
def test_int_shape_below_two(n):
    with raises(ValueError, r"\bn\b|factors|at least|>= ?2", rf"{n}\b"):
        mpo.decompose(GOOD, n)


def test_explicit_shape_with_one_factor():
    with raises(ValueError, r"\bn\b|factor|at least|>= ?2|len"):
        mpo.decompose(GOOD, ((6,), (8,)))


def test_factor_below_one():
    M = np.ones((6, 8))
    with raises(ValueError, r"factor|>= ?1|positive|at least", r"\b0\b"):
        mpo.decompose(M, ((6, 1, 0), (2, 4, 1)))
    with raises(ValueError, r"factor|>= ?1|positive|at least", r"-2\b"):
        mpo.decompose(M, ((-2, -3), (2, 4)))


def test_in_and_out_lengths_differ():
    M = np.ones((6, 8))
    with raises(ValueError, r"len|length|same|number|\bn\b", r"\b2\b", r"\b3\b"):
        mpo.decompose(M, ((2, 3), (2, 2, 2)))


# ------------------------------------------------------------------ max_bond, tol


@pytest.mark.parametrize("b", [0, -1])
def test_max_bond_below_one(b):
    with raises(ValueError, r"max_bond", rf"{b}\b"):
        mpo.decompose(GOOD, GOOD_SHAPE, max_bond=b)


def test_max_bond_sequence_with_bad_entry():
    M = np.random.default_rng(0).standard_normal((8, 8))
    with raises(ValueError, r"max_bond", r"\b0\b"):
        mpo.decompose(M, ((2, 2, 2), (2, 2, 2)), max_bond=[3, 0])


@pytest.mark.parametrize("caps", [[2], [2, 2, 2]])
def test_max_bond_sequence_wrong_length(caps):
    M = np.random.default_rng(0).standard_normal((8, 8))
    with raises(ValueError, r"max_bond", rf"{len(caps)}|\b2\b"):
        mpo.decompose(M, ((2, 2, 2), (2, 2, 2)), max_bond=caps)


@pytest.mark.parametrize(
    "tol, value",
    [(-0.1, r"-0\.1"), (1.0, r"\b1(\.0*)?\b"), (1.5, r"1\.5"), (float("nan"), r"nan"), (float("inf"), r"inf")],
)
def test_tol_outside_unit_interval(tol, value):
    with raises(ValueError, r"\btol\b", value):
        mpo.decompose(GOOD, GOOD_SHAPE, tol=tol)


# ---------------------------------------------------------------------- truncate


@pytest.fixture
def capped():
    """An MPO with both bonds cut below their full size: (4, 12) -> (3, 3)."""
    M = np.random.default_rng(1).standard_normal((24, 24))
    shape = ((2, 3, 4), (2, 4, 3))  # full bonds (4, 12)
    m = mpo.decompose(M, shape, max_bond=3)
    assert tuple(m.bond_dims) == (3, 3)
    return m


def test_truncate_larger_than_truncated_bond(capped):
    with raises(ValueError, r"max_bond|bond", r"\b5\b"):
        capped.truncate(max_bond=5)


def test_truncate_larger_than_truncated_bond_per_bond(capped):
    with raises(ValueError, r"max_bond|bond", r"\b7\b"):
        capped.truncate(max_bond=[2, 7])


def test_truncate_larger_than_full_untruncated_bond_is_fine():
    M = np.random.default_rng(2).standard_normal((24, 24))
    shape = ((2, 3, 4), (2, 4, 3))  # full bonds (4, 12)
    m = mpo.decompose(M, shape, max_bond=[100, 5])  # bond 0 stays full at 4
    assert tuple(m.bond_dims) == (4, 5)
    t = m.truncate(max_bond=[50, 5])  # 50 > 4 at a bond that was never cut: fine
    assert tuple(t.bond_dims) == (4, 5)


def test_truncate_error_survives_save_load(capped, tmp_path):
    p = tmp_path / "capped.npz"
    capped.save(p)
    loaded = mpo.load(p)
    with raises(ValueError, r"max_bond|bond", r"\b5\b"):
        loaded.truncate(max_bond=5)


@pytest.mark.parametrize("b", [0, -2])
def test_truncate_max_bond_below_one(capped, b):
    with raises(ValueError, r"max_bond", rf"{b}\b"):
        capped.truncate(max_bond=b)


@pytest.mark.parametrize("tol, value", [(-1e-3, r"-0\.001|-1e-0?3"), (1.0, r"\b1(\.0*)?\b"), (float("nan"), r"nan")])
def test_truncate_tol_outside_unit_interval(capped, tol, value):
    with raises(ValueError, r"\btol\b", value):
        capped.truncate(tol=tol)


# --------------------------------------------------------------------- plan_shape


@pytest.mark.parametrize("n", [1, 0])
def test_plan_shape_n_below_two(n):
    with raises(ValueError, r"\bn\b|factors|at least|>= ?2", rf"{n}\b"):
        mpo.plan_shape(768, 768, n)


@pytest.mark.parametrize("I, J", [(0, 5), (5, 0), (-1, 5)])
def test_plan_shape_nonpositive_sizes(I, J):
    bad = I if I < 1 else J
    with raises(ValueError, r"empty|positive|>= ?1|at least|size", rf"{bad}\b"):
        mpo.plan_shape(I, J, 3)


def test_bad_input_messages_are_not_empty():
    """A bad input must come back as a ValueError with a message, not a bare error."""
    M = np.ones((10, 12))
    for call in (
        lambda: mpo.decompose(M, ((3, 3), (3, 4))),
        lambda: mpo.decompose(M, ((2, 5), (3, 4)), max_bond=0),
        lambda: mpo.decompose(M, ((2, 5), (3, 4)), tol=2.0),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert len(str(info.value).strip()) > 10
