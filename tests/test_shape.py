"""plan_shape(): the factors cover I and J, padding is reported, and the factor lists
the MPOP authors used come out (docs/ALGORITHMS.md §7)."""

import math
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mpo


def check_plan(plan, I, J, n):
    assert isinstance(plan, tuple)  # a NamedTuple
    assert {"in_shape", "out_shape", "padded_shape", "padding"} <= set(plan._fields)
    ins, outs = tuple(plan.in_shape), tuple(plan.out_shape)
    assert len(ins) == n and len(outs) == n
    for f in ins + outs:
        operator.index(f)  # an integer
        assert f >= 1
    Ip, Jp = (operator.index(x) for x in plan.padded_shape)
    assert math.prod(ins) == Ip
    assert math.prod(outs) == Jp
    assert Ip >= I and Jp >= J
    assert tuple(plan.padding) == (Ip - I, Jp - J)


@given(st.integers(1, 100_000), st.integers(1, 100_000), st.sampled_from([2, 3, 4, 5, 6, 7]))
def test_plan_covers_I_and_J(I, J, n):
    check_plan(mpo.plan_shape(I, J, n), I, J, n)


@given(st.integers(1, 5000), st.integers(1, 5000), st.sampled_from([2, 3, 5, 7]))
def test_plan_is_deterministic(I, J, n):
    assert mpo.plan_shape(I, J, n) == mpo.plan_shape(I, J, n)


def test_default_n_is_5():
    plan = mpo.plan_shape(768, 768)
    assert len(plan.in_shape) == 5 and len(plan.out_shape) == 5


def test_768_balanced_no_padding():
    plan = mpo.plan_shape(768, 768, 5)
    check_plan(plan, 768, 768, 5)
    assert tuple(plan.padded_shape) == (768, 768)
    assert tuple(plan.padding) == (0, 0)
    for side in (plan.in_shape, plan.out_shape):
        assert math.prod(side) == 768
        assert max(side) / min(side) <= 2
    assert sorted(plan.in_shape) == [3, 4, 4, 4, 4]


def test_30522_pads_to_30720():
    plan = mpo.plan_shape(30522, 384, 5)
    check_plan(plan, 30522, 384, 5)
    assert plan.padded_shape[0] == 30720
    assert plan.padding[0] == 198
    assert math.prod(plan.in_shape) == 30720
    assert math.prod(plan.out_shape) == plan.padded_shape[1]


def test_3072_no_padding():
    plan = mpo.plan_shape(3072, 768, 5)
    check_plan(plan, 3072, 768, 5)
    assert tuple(plan.padding) == (0, 0)


@pytest.mark.parametrize("n", [3, 7])
def test_768_other_n(n):
    plan = mpo.plan_shape(768, 768, n)
    check_plan(plan, 768, 768, n)
    assert tuple(plan.padding) == (0, 0)
