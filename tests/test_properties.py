"""Hypothesis properties of decompose()/truncate() on random matrices.

Random factor shapes with n in {2, 3, 5, 7}, float32 and float64, C and F order, and
four kinds of matrices (see strategies.cases).  Sizes stay <= 64 per side.
"""

import math

import numpy as np
import pytest
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

import mpo
from mpo import _core
from strategies import (
    NS,
    assert_same_decomposition,
    cases,
    consistent_bonds,
    contract_cores,
    dense_error,
    entropy_from_spectrum,
    exact_rtol,
    factors,
    fro,
    full_bonds,
    pad,
    reference_spectra,
    rel_error,
    route_rtol,
    slack,
    spectrum_rtol,
)


def check_invariants(m, case):
    """What holds for every MPO, exact or truncated."""
    M, in_shape, out_shape, _ = case
    n = case.n
    full = full_bonds(in_shape, out_shape)
    bonds = tuple(m.bond_dims)
    assert m.n == n
    assert tuple(m.in_shape) == in_shape and tuple(m.out_shape) == out_shape
    assert tuple(m.shape) == M.shape and m.dtype == M.dtype
    assert len(bonds) == n - 1
    assert all(1 <= b <= f for b, f in zip(bonds, full))

    d = (1,) + bonds + (1,)
    for k, c in enumerate(m.cores):
        assert c.dtype == M.dtype
        assert c.shape == (d[k], in_shape[k], out_shape[k], d[k + 1])
        assert np.all(np.isfinite(c))

    assert m.central_index == (n - 1) // 2
    assert np.array_equal(m.central, m.cores[m.central_index])
    # Counted from the factors and the bonds by the paper's formula, independently of the arrays.
    d = (1, *bonds, 1)
    per_core = [d[k] * in_shape[k] * out_shape[k] * d[k + 1] for k in range(n)]
    c = (n - 1) // 2
    assert m.num_params == sum(per_core)
    assert m.central_params == per_core[c]
    assert m.auxiliary_params == sum(per_core) - per_core[c]
    assert math.isclose(m.compression_ratio, sum(per_core) / (M.shape[0] * M.shape[1]), rel_tol=1e-12)

    assert len(m.spectra) == n - 1
    for k, s in enumerate(m.spectra):
        s = np.asarray(s)
        assert s.dtype == np.float64 and s.ndim == 1
        assert len(s) == bonds[k]
        assert np.all(np.isfinite(s)) and np.all(s >= 0)
        assert np.all(np.diff(s) <= 0), "spectrum not descending"

    eps = np.asarray(m.truncation_errors)
    assert eps.dtype == np.float64 and eps.shape == (n - 1,)
    assert np.all(np.isfinite(eps)) and np.all(eps >= 0)
    assert math.isclose(m.error_bound(), math.sqrt(float(np.sum(eps**2))), rel_tol=1e-12, abs_tol=1e-300)

    S = np.asarray(m.entropy())
    assert S.dtype == np.float64 and S.shape == (n - 1,)
    assert np.all(np.isfinite(S))
    for k in range(n - 1):
        assert -1e-12 <= S[k] <= math.log(bonds[k]) + 1e-12
        assert math.isclose(S[k], entropy_from_spectrum(m.spectra[k]), rel_tol=1e-10, abs_tol=1e-12)

    R = m.to_dense()
    assert R.shape == M.shape and R.dtype == M.dtype
    assert np.all(np.isfinite(R))
    return R


# ------------------------------------------------------------------ exact mode


@given(cases())
def test_exact_rebuild_and_invariants(case):
    M = case.M
    m = mpo.decompose(M, case.shape)
    R = check_invariants(m, case)
    note(f"rel error {rel_error(M, R):.3e}")
    assert rel_error(M, R) <= exact_rtol(M.dtype)
    assert m.relative_error_bound() <= exact_rtol(M.dtype)
    assert math.isclose(m.norm, fro(M), rel_tol=1e-6 if M.dtype == np.float32 else 1e-12)


@given(cases(kinds=("gaussian", "scaled")))
def test_generic_matrices_have_full_bonds(case):
    m = mpo.decompose(case.M, case.shape)
    assert tuple(m.bond_dims) == full_bonds(case.in_shape, case.out_shape)
    assert np.all(np.asarray(m.truncation_errors) == 0)


@given(cases())
def test_spectra_match_unfolding_svd(case):
    M = case.M
    m = mpo.decompose(M, case.shape)
    ref = reference_spectra(M, case.in_shape, case.out_shape)
    tol = spectrum_rtol(M.dtype)
    for k, r in enumerate(ref):
        s = np.asarray(m.spectra[k])
        np.testing.assert_allclose(s, r[: len(s)], rtol=0, atol=tol * r[0], err_msg=f"bond {k}")
        # whatever was not kept must have been (numerically) zero
        assert np.all(r[len(s):] <= tol * r[0]), f"bond {k} dropped a nonzero value"


# --------------------------------------------------------------- caps and tol


@st.composite
def cases_and_caps(draw, **kw):
    case = draw(cases(**kw))
    full = full_bonds(case.in_shape, case.out_shape)
    if draw(st.booleans()):
        cap = draw(st.integers(1, max(full) + 2))
    else:
        cap = tuple(draw(st.integers(1, f + 2)) for f in full)
    return case, cap


def caps_tuple(cap, n_bonds):
    return (cap,) * n_bonds if isinstance(cap, int) else tuple(cap)


def check_capped_bonds(m, case, cap, exact):
    """Generic matrices get exactly the consistent capped bonds; any matrix gets no more
    than the cap or its exact (zeros-dropped) bonds."""
    caps = caps_tuple(cap, case.n - 1)
    bonds = tuple(m.bond_dims)
    if case.kind in ("gaussian", "scaled"):
        assert bonds == consistent_bonds(caps, case.in_shape, case.out_shape)
    for b, c, e in zip(bonds, caps, exact.bond_dims):
        assert b <= min(c, e)


@given(cases_and_caps())
def test_capped_error_within_bound(args):
    case, cap = args
    M = case.M
    exact = mpo.decompose(M, case.shape)
    for m in (mpo.decompose(M, case.shape, max_bond=cap), exact.truncate(max_bond=cap)):
        check_invariants(m, case)
        check_capped_bonds(m, case, cap, exact)
        err = dense_error(M, m.to_dense())
        note(f"bonds {m.bond_dims} err {err:.6e} bound {m.error_bound():.6e}")
        assert err <= m.error_bound() + slack(M)


@given(cases_and_caps())
def test_exact_error_of_a_capped_sweep(args):
    """A capped decomposition's exact_error() is its true error (the sweep's errors are orthogonal)."""
    case, cap = args
    M = case.M
    m = mpo.decompose(M, case.shape, max_bond=cap)
    err = dense_error(M, m.to_dense())
    assert abs(m.exact_error() - err) <= 1e-6 * err + 2 * slack(M)


# The core's shortcuts (include/mpo/decompose.hpp, Shortcuts; one file each in csrc/decompose/), each
# switched off by one option of _core.decompose:
# allow_block: the first left steps made from M in place (one Gram matrix of M's unfolding,
#   block_steps.cpp), also for rank-deficient bonds (Kronecker sums, small integers) and caps at their rank;
# allow_whole: outer steps a cap leaves whole take the identity as their core while a cap cuts elsewhere
#   (the final ordering finds their bonds);
# allow_float32_gram, allow_k_vector, allow_rescale: taken here only where these small cases allow (sides
#   <= 64); test_large_shortcuts_equal_the_plain_route below makes sure each is taken.
SHORTCUTS = ["allow_block", "allow_whole", "allow_float32_gram", "allow_k_vector", "allow_rescale"]


@pytest.mark.parametrize("shortcut", SHORTCUTS)
@given(cases_and_caps())
def test_shortcuts_equal_the_plain_sweep(shortcut, args):
    """Bonds, spectra, errors, cuts and matrix with the shortcut are those without it."""
    case, cap = args
    M = np.ascontiguousarray(case.M)
    caps = list(caps_tuple(cap, case.n - 1))
    shape = (list(case.in_shape), list(case.out_shape))
    taken = _core.decompose(M, *shape, caps, allow_randomized=False)
    plain = _core.decompose(M, *shape, caps, allow_randomized=False, **{shortcut: False})
    assert_same_decomposition(taken, plain, M, case.in_shape, case.out_shape)


# Where the float32 Gram matrix, the k-vector eigensolver and the rescaling are surely taken: one bond of a
# 256 × 256 matrix (a 256-row Gram matrix) cut to at most 128, where the k-vector route pays (k <= 0.8 m at
# m = 256) and a float32 cut discards enough for its Gram matrix to stay float32; data scaled past 2^±100
# (float64) or 2^±20 (float32) for the rescaling. The randomized range finder is off: it would take the
# small caps away from the Gram route. Tolerances: assert_same_decomposition's route_rtol (1e-10 of
# sigma_max / ||M|| in float64; 1e-4 in float32, where a float32 Gram matrix's rounding moves a kept
# subspace by ~1e-6 ||A||^2 / gap), and the rebuilt matrices agree to the same tolerance.
LARGE_SHORTCUTS = [
    ("allow_k_vector", np.float64, 1.0),
    ("allow_k_vector", np.float32, 1.0),
    ("allow_float32_gram", np.float32, 1.0),
    ("allow_rescale", np.float64, 2.0**-400),
    ("allow_rescale", np.float64, 2.0**300),
    ("allow_rescale", np.float32, 2.0**-30),
    ("allow_rescale", np.float32, 2.0**30),
]


@pytest.mark.parametrize("shortcut, dtype, scale", LARGE_SHORTCUTS)
@settings(max_examples=8)
@given(seed=st.integers(0, 2**32 - 1), cap=st.integers(1, 128))
def test_large_shortcuts_equal_the_plain_route(shortcut, dtype, scale, seed, cap):
    """Same bonds, spectra, truncation errors (so the same bound), cuts and matrix with the shortcut as
    without it."""
    shape = ([16, 16], [16, 16])
    M = (np.random.default_rng(seed).standard_normal((256, 256)) * scale).astype(dtype)
    taken = _core.decompose(M, *shape, [cap], allow_randomized=False)
    plain = _core.decompose(M, *shape, [cap], allow_randomized=False, **{shortcut: False})
    assert [len(s) for s in taken["spectra"]] == [len(s) for s in plain["spectra"]] == [cap]
    assert_same_decomposition(taken, plain, M, *shape)
    dense_taken = contract_cores(taken["cores"], *shape).astype(np.float64)
    dense_plain = contract_cores(plain["cores"], *shape).astype(np.float64)
    assert dense_error(dense_taken, dense_plain) <= route_rtol(dtype) * fro(M.astype(np.float64))
    # A different route is different arithmetic, which shows the shortcut was taken. Not for the rescaling
    # (a power of two is exact) nor for the k-vector route in float32: its vectors differ from the full
    # solver's by ~1e-15, which float32 cores mostly round away.
    if shortcut == "allow_float32_gram" or (shortcut == "allow_k_vector" and dtype == np.float64):
        assert not all(np.array_equal(a, b) for a, b in zip(taken["cores"], plain["cores"]))


@given(cases_and_caps())
def test_truncated_spectra_and_eps_are_from_the_unfoldings(args):
    case, cap = args
    M = case.M
    ref = reference_spectra(M, case.in_shape, case.out_shape)
    top = max(r[0] for r in ref)
    tol = spectrum_rtol(M.dtype)
    # Caps that a neighbour bond already forces lower (tiny factors) leave it open which bond
    # a discarded value belongs to; keep to caps that are consistent on their own.
    caps = caps_tuple(cap, case.n - 1)
    assume(
        consistent_bonds(caps, case.in_shape, case.out_shape)
        == tuple(min(c, f) for c, f in zip(caps, full_bonds(case.in_shape, case.out_shape)))
    )
    m = mpo.decompose(M, case.shape).truncate(max_bond=cap)
    for k, r in enumerate(ref):
        s = np.asarray(m.spectra[k])
        np.testing.assert_allclose(s, r[: len(s)], rtol=0, atol=tol * top)
        eps = math.sqrt(float(np.sum(r[len(s):] ** 2)))
        assert abs(m.truncation_errors[k] - eps) <= tol * top * math.sqrt(len(r)) + 1e-6 * eps


@given(cases_and_caps())
def test_capped_sweep_spectra_are_its_own_and_error_is_its_bound(args):
    case, cap = args
    M = case.M
    m = mpo.decompose(M, case.shape, max_bond=cap)
    own = reference_spectra(m.to_dense().astype(np.float64), case.in_shape, case.out_shape)
    top = max(max(r[0] for r in own), 1e-300)
    tol = spectrum_rtol(M.dtype)
    for k, r in enumerate(own):
        s = np.asarray(m.spectra[k])
        np.testing.assert_allclose(s, r[: len(s)], rtol=0, atol=tol * top)
    # Pythagoras at every step of the sequential sweep: the error is the bound, not just below it.
    err = dense_error(M, m.to_dense())
    assert abs(err - m.error_bound()) <= slack(M) + 1e-6 * m.error_bound()


@given(cases(), st.data())
def test_error_never_falls_as_caps_shrink(case, data):
    M = case.M
    full = full_bonds(case.in_shape, case.out_shape)
    caps = sorted(set(data.draw(st.lists(st.integers(1, max(full)), min_size=2, max_size=5))), reverse=True)
    assume(len(caps) >= 2)
    exact = mpo.decompose(M, case.shape)
    for make in (
        lambda b: mpo.decompose(M, case.shape, max_bond=b),
        lambda b: exact.truncate(max_bond=b),
    ):
        errs, bounds = [], []
        for b in caps:  # shrinking caps
            m = make(b)
            errs.append(dense_error(M, m.to_dense()))
            bounds.append(m.error_bound())
        note(f"caps {caps} errors {errs} bounds {bounds}")
        for a, b in zip(errs, errs[1:]):
            assert b >= a - slack(M)
        for a, b in zip(bounds, bounds[1:]):
            assert b >= a - slack(M)


@given(cases(), st.floats(0.0, 0.99))
def test_tol_mode(case, tol):
    M = case.M
    for m in (mpo.decompose(M, case.shape, tol=tol), mpo.decompose(M, case.shape).truncate(tol=tol)):
        check_invariants(m, case)
        note(f"tol {tol} bonds {m.bond_dims} rel bound {m.relative_error_bound()}")
        # rounding allowance: dropping rounding-level "zeros" may add that much to the bound
        assert m.relative_error_bound() <= tol * (1 + 1e-12) + exact_rtol(M.dtype)
        assert rel_error(M, m.to_dense()) <= tol + exact_rtol(M.dtype)


@given(cases_and_caps(), st.floats(0.0, 0.99))
def test_cap_and_tol_together(args, tol):
    case, cap = args
    M = case.M
    both = mpo.decompose(M, case.shape, max_bond=cap, tol=tol)
    by_cap = mpo.decompose(M, case.shape, max_bond=cap)
    check_invariants(both, case)
    for x, y in zip(both.bond_dims, by_cap.bond_dims):
        assert x <= y
    if by_cap.relative_error_bound() <= tol:
        assert both.relative_error_bound() <= tol * (1 + 1e-12) + 1e-15
    assert dense_error(M, both.to_dense()) <= both.error_bound() + slack(M)


@given(cases(), st.data())
def test_truncate_twice_bound_holds(case, data):
    M = case.M
    full = full_bonds(case.in_shape, case.out_shape)
    b1 = data.draw(st.integers(1, max(full)))
    b2 = data.draw(st.integers(1, b1))
    t1 = mpo.decompose(M, case.shape, max_bond=b1)
    t2 = t1.truncate(max_bond=b2)
    check_invariants(t2, case)
    assert dense_error(M, t2.to_dense()) <= t2.error_bound() + slack(M)
    assert t2.error_bound() >= t1.error_bound() * (1 - 1e-12)


# ------------------------------------------------------------- planned shapes


@given(
    st.integers(1, 64),
    st.integers(1, 64),
    st.sampled_from(NS),
    st.sampled_from([np.float64, np.float32]),
    st.integers(0, 2**32 - 1),
)
def test_planned_shape_padding_is_invisible(I, J, n, dtype, seed):
    M = np.random.default_rng(seed).standard_normal((I, J)).astype(dtype)
    plan = mpo.plan_shape(I, J, n)
    m = mpo.decompose(M, n=n)
    assert tuple(m.shape) == (I, J)
    assert tuple(m.in_shape) == tuple(plan.in_shape)
    assert tuple(m.out_shape) == tuple(plan.out_shape)
    assert tuple(m.padded_shape) == tuple(plan.padded_shape)
    R = m.to_dense()
    assert R.shape == (I, J) and R.dtype == np.dtype(dtype)
    assert rel_error(M, R) <= exact_rtol(dtype)
    assert math.isclose(m.compression_ratio, m.num_params / (I * J), rel_tol=1e-12)
    # the spectra are those of the zero-padded matrix
    P = pad(M, tuple(plan.padded_shape))
    ref = reference_spectra(P, tuple(plan.in_shape), tuple(plan.out_shape))
    for k, r in enumerate(ref):
        s = np.asarray(m.spectra[k])
        np.testing.assert_allclose(s, r[: len(s)], rtol=0, atol=spectrum_rtol(dtype) * r[0])


# ----------------------------------------------------------------- input forms


@given(cases(dtypes=(np.float64,), kinds=("integers",)))
def test_int_input_equals_float64(case):
    Mi = case.M.astype(np.int64)
    a = mpo.decompose(Mi, case.shape)
    b = mpo.decompose(Mi.astype(np.float64), case.shape)
    assert a.dtype == np.float64
    for x, y in zip(a.cores, b.cores):
        assert x.dtype == np.float64 and np.array_equal(x, y)


@given(cases(dtypes=(np.float64,)))
def test_nested_list_equals_array(case):
    a = mpo.decompose(case.M.tolist(), case.shape)
    b = mpo.decompose(np.ascontiguousarray(case.M), case.shape)
    for x, y in zip(a.cores, b.cores):
        assert np.array_equal(x, y)


@given(cases(), st.integers(2, 3), st.integers(2, 3))
def test_strided_view(case, si, sj):
    M = case.M
    big = np.zeros((M.shape[0] * si, M.shape[1] * sj), dtype=M.dtype)
    big[::si, ::sj] = M
    V = big[::si, ::sj]
    m = mpo.decompose(V, case.shape)
    ref = mpo.decompose(np.ascontiguousarray(M), case.shape)
    assert tuple(m.bond_dims) == tuple(ref.bond_dims)
    assert rel_error(M, m.to_dense()) <= exact_rtol(M.dtype)
