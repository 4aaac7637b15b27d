"""decompose(): exactness, layout, spectra, bonds, parameter counts, the check values
of docs/ALGORITHMS.md §3 and §6, truncation, and the accepted input forms.

Fixed examples here; the randomized versions of the same properties are in
test_properties.py.
"""

import math

import numpy as np
import pytest

import mpo
from strategies import (
    assert_same_decomposition,
    contract_cores,
    dense_error,
    entropy_from_spectrum,
    exact_rtol,
    fro,
    full_bonds,
    kron_sum,
    orthonormal_kron_sum,
    pad,
    reference_spectra,
    rel_error,
    spectrum_rtol,
    unfold,
    with_unfolding_spectrum,
)

SHAPES = [
    ((2, 3), (4, 5)),
    ((2, 3, 4), (3, 2, 2)),
    ((2, 2, 3, 2, 2), (3, 2, 2, 2, 1)),
    ((2, 1, 2, 2, 1, 2, 2), (1, 2, 2, 1, 2, 2, 2)),
]


def gaussian(shape, dtype=np.float64, seed=0, order="C"):
    in_shape, out_shape = shape
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((math.prod(in_shape), math.prod(out_shape)))
    return np.array(M, dtype=dtype, order=order)


# ------------------------------------------------------------------ exact MPO


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"n{len(s[0])}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("order", ["C", "F"])
def test_exact_rebuild(shape, dtype, order):
    M = gaussian(shape, dtype, order=order)
    m = mpo.decompose(M, shape)
    R = m.to_dense()
    assert R.shape == M.shape
    assert R.dtype == np.dtype(dtype)
    assert m.dtype == np.dtype(dtype)
    assert rel_error(M, R) <= exact_rtol(dtype)
    assert m.error_bound() == 0.0
    assert m.relative_error_bound() == 0.0
    assert np.all(np.asarray(m.truncation_errors) == 0.0)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"n{len(s[0])}")
def test_structure(shape):
    in_shape, out_shape = shape
    n = len(in_shape)
    M = gaussian(shape, seed=1)
    m = mpo.decompose(M, shape)

    assert m.n == n
    assert tuple(m.in_shape) == in_shape
    assert tuple(m.out_shape) == out_shape
    assert tuple(m.shape) == M.shape
    assert tuple(m.padded_shape) == M.shape
    assert len(m.cores) == n
    bonds = tuple(m.bond_dims)
    assert len(bonds) == n - 1
    # generic (full-rank) input: every bond at its Eq. 2 size
    assert bonds == full_bonds(in_shape, out_shape)

    d = (1,) + bonds + (1,)
    for k, c in enumerate(m.cores):
        assert isinstance(c, np.ndarray)
        assert c.dtype == M.dtype
        assert c.shape == (d[k], in_shape[k], out_shape[k], d[k + 1])

    assert m.central_index == (n - 1) // 2
    assert np.array_equal(m.central, m.cores[m.central_index])
    assert m.central.shape == m.cores[m.central_index].shape
    aux = list(m.auxiliary)
    others = [c for k, c in enumerate(m.cores) if k != m.central_index]
    assert len(aux) == n - 1
    for a, c in zip(aux, others):
        assert a.shape == c.shape and np.array_equal(a, c)

    sizes = [c.size for c in m.cores]
    assert m.num_params == sum(sizes)
    assert m.central_params == m.central.size
    assert m.auxiliary_params == sum(a.size for a in aux)
    # The paper's count from the factors and the Eq. 2 bonds alone, not from the arrays: the central
    # tensor is d_(c-1) i_c j_c d_c, every other core likewise.
    full = (1, *full_bonds(in_shape, out_shape), 1)
    per_core = [full[k] * in_shape[k] * out_shape[k] * full[k + 1] for k in range(n)]
    c = (n - 1) // 2
    assert m.central_params == per_core[c]
    assert m.auxiliary_params == sum(per_core) - per_core[c]
    assert m.compression_ratio == pytest.approx(sum(per_core) / (M.shape[0] * M.shape[1]), rel=1e-12)
    assert m.norm == pytest.approx(fro(M), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"n{len(s[0])}")
def test_cores_follow_documented_layout(shape):
    """Contracting the cores by hand, in the documented layout, gives M back."""
    M = gaussian(shape, seed=2)
    m = mpo.decompose(M, shape)
    R = contract_cores(m.cores, *shape)
    assert rel_error(M, R) <= 1e-12


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"n{len(s[0])}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_spectra_are_the_unfolding_svds(shape, dtype):
    M = gaussian(shape, dtype, seed=3)
    m = mpo.decompose(M, shape)
    ref = reference_spectra(M, *shape)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    assert len(m.spectra) == m.n - 1
    for k, (s, r) in enumerate(zip(m.spectra, ref)):
        s = np.asarray(s)
        assert s.dtype == np.float64
        assert s.ndim == 1 and len(s) == m.bond_dims[k]
        assert np.all(s >= 0) and np.all(np.diff(s) <= 0)
        np.testing.assert_allclose(s, r[: len(s)], rtol=0, atol=tol * r[0])


def test_entropy_is_the_spectrum_entropy():
    shape = SHAPES[2]
    m = mpo.decompose(gaussian(shape, seed=4), shape)
    S = np.asarray(m.entropy())
    assert S.dtype == np.float64 and S.shape == (m.n - 1,)
    for k in range(m.n - 1):
        assert S[k] == pytest.approx(entropy_from_spectrum(m.spectra[k]), rel=1e-12, abs=1e-14)
        assert -1e-12 <= S[k] <= math.log(m.bond_dims[k]) + 1e-12


# ------------------------------------------------------------ check values


@pytest.fixture(scope="module")
def bert768():
    rng = np.random.default_rng(2021)
    M = rng.standard_normal((768, 768))
    shape = ((3, 4, 4, 4, 4), (4, 4, 4, 4, 3))
    return M, shape, mpo.decompose(M, shape)


def test_check_values_768_rebuild(bert768):
    M, _, m = bert768
    assert rel_error(M, m.to_dense()) <= 1e-12  # docs/ALGORITHMS.md §6: ~1e-14


def test_check_values_768_bonds_and_central(bert768):
    _, _, m = bert768
    assert tuple(m.bond_dims) == (12, 192, 192, 12)
    assert m.central_index == 2
    assert m.central.shape == (192, 4, 4, 192)
    assert m.central_params / m.num_params == pytest.approx(0.889, abs=1e-3)
    assert m.num_params == 144 + 36864 + 589824 + 36864 + 144
    assert m.compression_ratio == pytest.approx(m.num_params / 768**2, rel=1e-12)


def test_check_values_768_entropy(bert768):
    _, _, m = bert768
    S = np.asarray(m.entropy())
    assert S[0] == pytest.approx(math.log(12), abs=1e-2)  # 2.485
    assert S[3] == pytest.approx(math.log(12), abs=1e-2)
    assert S[1] == pytest.approx(5.226, abs=2e-2)
    assert S[2] == pytest.approx(5.226, abs=2e-2)
    assert np.all(S <= np.log(np.asarray(m.bond_dims, dtype=float)) + 1e-12)


def test_check_values_768_spectra(bert768):
    M, shape, m = bert768
    for k in (0, 1):  # the other two are the same sizes mirrored
        ref = np.linalg.svd(unfold(M, *shape, k), compute_uv=False)
        np.testing.assert_allclose(m.spectra[k], ref, rtol=0, atol=1e-10 * ref[0])


def test_check_values_3072x768_bonds():
    """docs/ALGORITHMS.md §3: 3072x768 [4,4,8,6,4]x[3,4,4,4,4]: bonds 12,192,384,16, central 92.7 %."""
    rng = np.random.default_rng(7)
    M = rng.standard_normal((3072, 768))
    m = mpo.decompose(M, ((4, 4, 8, 6, 4), (3, 4, 4, 4, 4)))
    assert tuple(m.bond_dims) == (12, 192, 384, 16)
    assert m.central_params / m.num_params == pytest.approx(0.927, abs=1e-3)
    assert rel_error(M, m.to_dense()) <= 1e-12


# -------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rank_deficient_drops_zeros(rank, dtype):
    shape = ((2, 3, 2, 2), (2, 2, 3, 2))
    rng = np.random.default_rng(rank)
    # integer factors: M is exactly of MPO rank <= `rank` in float32 too
    M = kron_sum(rng, *shape, rank, integer=True).astype(dtype)
    m = mpo.decompose(M, shape)
    assert max(m.bond_dims) <= rank
    assert min(m.bond_dims) >= 1
    for c in m.cores:
        assert np.all(np.isfinite(c))
    for s in m.spectra:
        assert np.all(np.isfinite(s)) and np.all(np.asarray(s) > 0)
    assert np.all(np.isfinite(m.entropy()))
    assert np.all(np.isfinite(m.truncation_errors))
    assert math.isfinite(m.error_bound())
    assert rel_error(M, m.to_dense()) <= exact_rtol(dtype)


def test_ordinary_rank_two_matrix_no_nan():
    """A rank-2 matrix in the ordinary sense: rank-deficient unfoldings, no NaN/inf."""
    rng = np.random.default_rng(5)
    M = rng.standard_normal((48, 2)) @ rng.standard_normal((2, 36))
    shape = ((2, 4, 6), (3, 3, 4))
    m = mpo.decompose(M, shape)
    ref = reference_spectra(M, *shape)
    for k, r in enumerate(ref):
        numerical_rank = int(np.sum(r > 1e-10 * r[0]))
        assert m.bond_dims[k] <= full_bonds(*shape)[k]
        assert m.bond_dims[k] >= numerical_rank
    for c in m.cores:
        assert np.all(np.isfinite(c))
    assert np.all(np.isfinite(m.entropy()))
    assert rel_error(M, m.to_dense()) <= 1e-12


def test_rank_one_kron_has_unit_bonds():
    rng = np.random.default_rng(6)
    shape = ((2, 3, 2, 2, 2), (3, 2, 2, 2, 1))
    M = kron_sum(rng, *shape, 1)
    m = mpo.decompose(M, shape)
    assert tuple(m.bond_dims) == (1, 1, 1, 1)
    np.testing.assert_allclose(m.entropy(), 0.0, atol=1e-12)
    assert m.num_params == sum(i * j for i, j in zip(*shape))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_all_zero_matrix(dtype):
    M = np.zeros((12, 8), dtype=dtype)
    m = mpo.decompose(M, ((3, 4), (2, 4)))
    R = m.to_dense()
    assert R.shape == M.shape and R.dtype == M.dtype
    assert np.all(R == 0)
    for c in m.cores:
        assert np.all(np.isfinite(c))
    for s in m.spectra:
        assert np.all(np.isfinite(s))
    assert np.all(np.isfinite(m.entropy()))
    assert np.all(np.asarray(m.entropy()) == 0)
    assert m.error_bound() == 0.0
    assert math.isfinite(m.relative_error_bound())
    assert math.isfinite(m.compression_ratio)
    assert m.norm == 0.0
    t = m.truncate(tol=0.5)
    assert np.all(t.to_dense() == 0)


def test_single_nonzero_entry():
    M = np.zeros((16, 16))
    M[5, 11] = 3.0
    m = mpo.decompose(M, ((2, 2, 2, 2), (2, 2, 2, 2)))
    assert tuple(m.bond_dims) == (1, 1, 1)
    assert np.array_equal(m.to_dense(), M) or rel_error(M, m.to_dense()) <= 1e-15


def test_one_by_one_and_trivial_factors():
    M = np.array([[2.5]])
    m = mpo.decompose(M, ((1, 1), (1, 1)))
    assert tuple(m.bond_dims) == (1,)
    assert m.to_dense()[0, 0] == pytest.approx(2.5, rel=1e-15)


# ------------------------------------------------------------ input forms


def test_nested_list_input():
    L = [[float(3 * r + c) - 4.0 for c in range(4)] for r in range(6)]
    L[0][0] = 10.0
    m = mpo.decompose(L, ((2, 3), (2, 2)))
    assert m.dtype == np.float64
    assert rel_error(np.array(L), m.to_dense()) <= 1e-12
    ref = mpo.decompose(np.array(L), ((2, 3), (2, 2)))
    for a, b in zip(m.cores, ref.cores):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16, np.bool_])
def test_int_and_bool_become_float64(dtype):
    rng = np.random.default_rng(8)
    M = rng.integers(0, 5, size=(6, 8)).astype(dtype)
    m = mpo.decompose(M, ((2, 3), (4, 2)))
    assert m.dtype == np.float64
    assert all(c.dtype == np.float64 for c in m.cores)
    R = m.to_dense()
    assert R.dtype == np.float64
    assert rel_error(M.astype(np.float64), R) <= 1e-12


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_non_contiguous_view(dtype):
    rng = np.random.default_rng(9)
    big = rng.standard_normal((24, 36)).astype(dtype)
    V = big[::2, ::3]  # 12 x 12, neither C nor F contiguous
    assert not V.flags.c_contiguous and not V.flags.f_contiguous
    shape = ((3, 4), (2, 6))
    m = mpo.decompose(V, shape)
    ref = mpo.decompose(np.ascontiguousarray(V), shape)
    assert rel_error(V, m.to_dense()) <= exact_rtol(dtype)
    np.testing.assert_allclose(m.to_dense(), ref.to_dense(), rtol=0, atol=exact_rtol(dtype) * fro(V))
    for k in range(len(m.spectra)):
        np.testing.assert_allclose(m.spectra[k], ref.spectra[k], rtol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fortran_order_equals_c_order(dtype):
    shape = ((2, 3, 2), (2, 2, 3))
    C = gaussian(shape, dtype, seed=10)
    F = np.asfortranarray(C)
    mc, mf = mpo.decompose(C, shape), mpo.decompose(F, shape)
    assert mf.dtype == np.dtype(dtype)
    assert rel_error(C, mf.to_dense()) <= exact_rtol(dtype)
    assert tuple(mc.bond_dims) == tuple(mf.bond_dims)
    np.testing.assert_allclose(
        mf.to_dense(), mc.to_dense(), rtol=0, atol=exact_rtol(dtype) * fro(C)
    )
    # the input is never modified
    assert np.array_equal(F, C)


def test_input_not_modified():
    shape = ((2, 3), (4, 2))
    M = gaussian(shape, seed=11)
    keep = M.copy()
    m = mpo.decompose(M, shape, max_bond=2)
    m.to_dense()
    m.truncate(max_bond=1)
    assert np.array_equal(M, keep)


# ------------------------------------------------- shape argument and padding


def test_shape_none_uses_plan_shape():
    M = gaussian(((4, 4), (3, 4)), seed=12)  # 16 x 12
    plan = mpo.plan_shape(16, 12, 3)
    m = mpo.decompose(M, n=3)
    assert tuple(m.in_shape) == tuple(plan.in_shape)
    assert tuple(m.out_shape) == tuple(plan.out_shape)
    assert tuple(m.padded_shape) == tuple(plan.padded_shape)
    assert m.n == 3


def test_shape_int_is_n():
    M = gaussian(((4, 4), (3, 4)), seed=13)
    a = mpo.decompose(M, 3)
    b = mpo.decompose(M, n=3)
    assert a.n == 3
    assert tuple(a.in_shape) == tuple(b.in_shape)
    assert tuple(a.out_shape) == tuple(b.out_shape)
    assert rel_error(M, a.to_dense()) <= 1e-12


def test_default_n_is_5():
    rng = np.random.default_rng(14)
    M = rng.standard_normal((96, 64))
    m = mpo.decompose(M)
    assert m.n == 5
    assert rel_error(M, m.to_dense()) <= 1e-12


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_padding_is_invisible(n, dtype):
    rng = np.random.default_rng(15)
    M = rng.standard_normal((30, 7)).astype(dtype)
    plan = mpo.plan_shape(30, 7, n)
    m = mpo.decompose(M, n=n)
    assert tuple(m.shape) == (30, 7)
    assert tuple(m.padded_shape) == tuple(plan.padded_shape)
    R = m.to_dense()
    assert R.shape == (30, 7) and R.dtype == np.dtype(dtype)
    assert rel_error(M, R) <= exact_rtol(dtype)
    assert m.compression_ratio == pytest.approx(m.num_params / (30 * 7), rel=1e-12)
    assert m.norm == pytest.approx(fro(M), rel=1e-6)


def test_padded_spectra_are_those_of_the_zero_padded_matrix():
    rng = np.random.default_rng(16)
    M = rng.standard_normal((30522 // 200, 50))  # 152 x 50, neither factors nicely
    m = mpo.decompose(M, n=3)
    P = pad(M, tuple(m.padded_shape))
    ref = reference_spectra(P, tuple(m.in_shape), tuple(m.out_shape))
    for k, r in enumerate(ref):
        s = np.asarray(m.spectra[k])
        np.testing.assert_allclose(s, r[: len(s)], rtol=0, atol=1e-10 * r[0])
        assert np.all(r[len(s):] <= 1e-10 * r[0])  # only zeros were dropped


def test_padded_30522_rows():
    """BERT's vocabulary size pads to 30720 rows; decompose a thin slice of columns."""
    rng = np.random.default_rng(17)
    M = rng.standard_normal((30522, 2)).astype(np.float32)
    m = mpo.decompose(M, n=2)
    assert tuple(m.shape) == (30522, 2)
    assert m.to_dense().shape == (30522, 2)
    assert rel_error(M, m.to_dense()) <= 1e-5


# ---------------------------------------------------------------- truncation


def _truncation_case(seed=20, dtype=np.float64):
    shape = ((2, 3, 2, 2), (2, 2, 3, 2))
    return gaussian(shape, dtype, seed=seed), shape


@pytest.mark.parametrize("b", [1, 2, 3, 5, 8, 20, 200])
def test_truncate_bonds_are_min_of_cap_and_full(b):
    M, shape = _truncation_case()
    full = full_bonds(*shape)
    exact = mpo.decompose(M, shape)
    t = exact.truncate(max_bond=b)
    assert tuple(t.bond_dims) == tuple(min(b, f) for f in full)
    d = mpo.decompose(M, shape, max_bond=b)
    assert tuple(d.bond_dims) == tuple(min(b, f) for f in full)


def test_truncate_per_bond_caps():
    M, shape = _truncation_case()
    full = full_bonds(*shape)  # (4, 24, 4)
    caps = (2, 7, 100)
    t = mpo.decompose(M, shape).truncate(max_bond=caps)
    assert tuple(t.bond_dims) == tuple(min(c, f) for c, f in zip(caps, full))
    d = mpo.decompose(M, shape, max_bond=list(caps))
    assert tuple(d.bond_dims) == tuple(t.bond_dims)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_truncated_spectra_and_errors_come_from_the_unfoldings(dtype):
    """docs/ALGORITHMS.md §5: cutting an exact MPO keeps the lambda of M's bond-k unfoldings, and
    eps_k = sqrt(sum of the discarded lambda^2)."""
    M, shape = _truncation_case(dtype=dtype)
    ref = reference_spectra(M, *shape)
    atol = (1e-10 if dtype == np.float64 else 2e-5) * max(r[0] for r in ref)
    m = mpo.decompose(M, shape).truncate(max_bond=3)
    for k, r in enumerate(ref):
        s = np.asarray(m.spectra[k])
        assert len(s) == m.bond_dims[k]
        np.testing.assert_allclose(s, r[: len(s)], rtol=0, atol=atol)
        eps = math.sqrt(float(np.sum(r[len(s):] ** 2)))
        assert m.truncation_errors[k] == pytest.approx(eps, rel=1e-6, abs=atol)
    assert m.error_bound() == pytest.approx(
        math.sqrt(float(np.sum(np.asarray(m.truncation_errors) ** 2))), rel=1e-12
    )
    assert m.relative_error_bound() == pytest.approx(m.error_bound() / m.norm, rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_capped_sweep_spectra_are_those_of_its_own_matrix(dtype):
    """A max_bond decomposition cuts each remainder of the sequential SVD as it goes (docs/API.md):
    its stored spectra are the singular values of the unfoldings of the matrix it represents, its
    first bond's cut is the optimal cut of M's first unfolding, and — Pythagoras at every step of
    the sweep — its error equals sqrt(sum eps_k^2)."""
    M, shape = _truncation_case(dtype=dtype)
    m = mpo.decompose(M, shape, max_bond=3)
    own = reference_spectra(m.to_dense().astype(np.float64), *shape)
    atol = (1e-10 if dtype == np.float64 else 2e-5) * max(r[0] for r in own)
    for k, r in enumerate(own):
        s = np.asarray(m.spectra[k])
        assert len(s) == m.bond_dims[k]
        np.testing.assert_allclose(s, r[: len(s)], rtol=0, atol=atol)
        assert np.all(r[len(s):] <= atol)  # nothing beyond the stored bond
    ref = reference_spectra(M, *shape)
    first = math.sqrt(float(np.sum(ref[0][3:] ** 2)))
    assert m.truncation_errors[0] == pytest.approx(first, rel=1e-5)
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    assert dense_error(M, m.to_dense()) == pytest.approx(m.error_bound(), rel=rtol)


def test_truncate_does_not_change_the_original():
    M, shape = _truncation_case()
    m = mpo.decompose(M, shape)
    before = [c.copy() for c in m.cores]
    bonds = tuple(m.bond_dims)
    m.truncate(max_bond=2)
    assert tuple(m.bond_dims) == bonds
    for a, b in zip(before, m.cores):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("b", [1, 2, 3, 6, 12])
def test_truncate_bound_holds(b):
    M, shape = _truncation_case(seed=21)
    t = mpo.decompose(M, shape).truncate(max_bond=b)
    assert dense_error(M, t.to_dense()) <= t.error_bound() * (1 + 1e-10) + 1e-12 * fro(M)


def test_truncate_of_truncated_bound_holds_against_original():
    M, shape = _truncation_case(seed=22)
    t1 = mpo.decompose(M, shape, max_bond=6)
    t2 = t1.truncate(max_bond=2)
    assert tuple(t2.bond_dims) == tuple(min(2, f) for f in full_bonds(*shape))
    assert t2.error_bound() >= t1.error_bound()
    assert dense_error(M, t2.to_dense()) <= t2.error_bound() * (1 + 1e-10) + 1e-12 * fro(M)
    # After a capped sweep the new cut adds to the old bound by the triangle inequality.
    dropped = math.sqrt(sum(float(np.sum(s[2:] ** 2)) for s in t1.spectra))
    assert t2.error_bound() == pytest.approx(t1.error_bound() + dropped, rel=1e-10)
    # Cuts of an exact MPO add in quadrature instead.
    e1 = mpo.decompose(M, shape).truncate(max_bond=6)
    e2 = e1.truncate(max_bond=2)
    np.testing.assert_allclose(e2.truncation_errors, mpo.decompose(M, shape).truncate(max_bond=2).truncation_errors, rtol=1e-10)


def test_truncate_to_full_or_more_is_exact():
    M, shape = _truncation_case(seed=23)
    m = mpo.decompose(M, shape)
    t = m.truncate(max_bond=10**6)
    assert tuple(t.bond_dims) == tuple(m.bond_dims)
    assert rel_error(M, t.to_dense()) <= 1e-12
    t = m.truncate()
    assert tuple(t.bond_dims) == tuple(m.bond_dims)


def test_truncate_same_cap_on_truncated_is_allowed():
    M, shape = _truncation_case(seed=24)
    t = mpo.decompose(M, shape, max_bond=3)
    again = t.truncate(max_bond=3)
    assert tuple(again.bond_dims) == tuple(t.bond_dims)
    np.testing.assert_array_equal(again.to_dense(), t.to_dense())


def test_tol_zero_is_exact():
    M, shape = _truncation_case(seed=25)
    m = mpo.decompose(M, shape, tol=0.0)
    assert tuple(m.bond_dims) == full_bonds(*shape)
    assert rel_error(M, m.to_dense()) <= 1e-12


@pytest.mark.parametrize("tol", [1e-3, 0.05, 0.2, 0.5, 0.9])
def test_tol_mode(tol):
    M, shape = _truncation_case(seed=26)
    for m in (mpo.decompose(M, shape, tol=tol), mpo.decompose(M, shape).truncate(tol=tol)):
        assert m.relative_error_bound() <= tol * (1 + 1e-12)
        assert rel_error(M, m.to_dense()) <= tol + 1e-12


def test_larger_tol_never_more_bonds():
    M, shape = _truncation_case(seed=27)
    prev = None
    for tol in [0.0, 0.01, 0.1, 0.3, 0.6, 0.99]:
        bonds = tuple(mpo.decompose(M, shape, tol=tol).bond_dims)
        if prev is not None:
            assert all(a <= b for a, b in zip(bonds, prev))
        prev = bonds


def test_max_bond_and_tol_together_meet_both():
    """Caps first, then tol cuts further while the bound allows (docs/API.md): the result never
    exceeds the caps, and meets tol whenever the caps alone leave room for it."""
    M, shape = _truncation_case(seed=28)
    for b, tol in [(2, 0.01), (20, 0.5), (3, 0.3), (20, 0.9)]:
        both = mpo.decompose(M, shape, max_bond=b, tol=tol)
        cap = mpo.decompose(M, shape, max_bond=b)
        for x, y in zip(both.bond_dims, cap.bond_dims):
            assert x <= y
        if cap.relative_error_bound() <= tol:
            assert both.relative_error_bound() <= tol * (1 + 1e-12)
        else:
            assert tuple(both.bond_dims) == tuple(cap.bond_dims)
        assert dense_error(M, both.to_dense()) <= both.error_bound() + 1e-12 * fro(M)
    # (20, 0.9) leaves room: tol must actually have cut something beyond the caps.
    assert mpo.decompose(M, shape, max_bond=20, tol=0.9).num_params < mpo.decompose(M, shape, max_bond=20).num_params


@pytest.mark.parametrize("shape", [((1, 4), (4, 1)), ((2, 2, 2), (2, 2, 2)), ((3, 4), (4, 3))])
def test_cap_above_rank_discards_nothing(shape):
    """A cap at or above a bond's rank only drops zeros: eps_k stays at rounding level and the
    bond is not 'cut', so truncate() with the same cap must work."""
    for seed in range(20):
        rng = np.random.default_rng(seed)
        M = kron_sum(rng, *shape, 2)
        exact = mpo.decompose(M, shape)
        cap = max(exact.bond_dims) + 1
        m = mpo.decompose(M, shape, max_bond=cap)
        assert tuple(m.bond_dims) == tuple(exact.bond_dims)
        assert m.error_bound() <= 1e-12 * fro(M), f"seed {seed}: eps {m.truncation_errors}"
        m.truncate(max_bond=cap)  # must not raise


# ------------------------------------------------------------------ exact_error


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(500, 130), (131, 300), (384, 384)])
@pytest.mark.parametrize("kwargs", [{"max_bond": 6}, {"max_bond": 40}, {"ratio": 0.2}, {}])
def test_exact_error_of_a_sweep_equals_the_dense_error(shape, dtype, kwargs):
    """The sweep's errors are orthogonal, so sum eps_k^2 is the true error of the padded matrix; the
    padding's share is taken off. Holds in both orientations."""
    M = np.random.default_rng(11).standard_normal(shape).astype(dtype)
    m = mpo.decompose(M, **kwargs)
    for mm, A in ((m, M), (m.T, M.T)):
        true = float(np.linalg.norm(A.astype(np.float64) - mm.to_dense().astype(np.float64)))
        known = mm.exact_error()
        assert known is not None
        rounding = (1e-5 if dtype == np.float32 else 1e-12) * float(np.linalg.norm(M.astype(np.float64)))
        assert abs(known - true) <= 1e-6 * true + rounding, (known, true)
    if m.padded_shape != m.shape and kwargs.get("max_bond") == 6:
        # With padding the bound is not attained: the MPO puts energy into the padding rows.
        assert m.error_bound() > m.exact_error()


def test_exact_error_is_none_where_the_sweep_does_not_know_it():
    M = np.random.default_rng(12).standard_normal((96, 64))
    m = mpo.decompose(M, max_bond=8)
    assert m.exact_error() is not None
    assert m.truncate(max_bond=4).exact_error() is None  # a cut of the stored form: a bound only
    assert mpo.decompose(M, tol=0.5).exact_error() is None
    assert mpo.MPO.from_cores(m.cores).exact_error() is None
    weights = np.linspace(0.1, 1.0, 96)
    assert mpo.decompose(M, max_bond=8, row_weights=weights).exact_error() is None


# ------------------------------------------------------------------ block left steps (review)


def test_block_cap_at_a_kronecker_rank_is_not_a_cut():
    """A cap at the exact rank of an early bond (here a Kronecker factor: bond 0 has rank 1) discards
    nothing. The block's earlier steps read their discarded energy off Gram eigenvalues, whose noise
    (~1e-16 ||M||^2 each) made eps_0 ~1e-8 ||M||, marked the bond cut and forbade growing it."""
    rng = np.random.default_rng(2)
    M = np.kron(rng.standard_normal((4, 4)), rng.standard_normal((256, 256)))
    shape = ((4,) * 5, (4,) * 5)
    caps = [1, 4096, 4096, 4096]
    block = mpo._core.decompose(M, *map(list, shape), caps)
    plain = mpo._core.decompose(M, *map(list, shape), caps, allow_block=False)
    assert list(block["cut"]) == list(plain["cut"]) == [False] * 4
    assert max(block["truncation_errors"]) <= 1e-12 * fro(M), block["truncation_errors"]
    m = mpo.decompose(M, shape, max_bond=caps)
    true = dense_error(M, m.to_dense())
    assert m.exact_error() <= true + 1e-12 * fro(M)
    m.truncate(max_bond=[2, 16, 16, 16])  # bond 0 was never cut: must not raise


@pytest.mark.parametrize("scale", [1e-25, 1e-21, 1e21, 1e25])
def test_float32_gram_is_not_formed_out_of_float32_range(scale):
    """float32 Gram matrices of data scaled near float32's range overflow (inf, the eigensolver fails)
    or underflow (zeros: the block's last step then took ||R||^2 = 0 and reported eps = 0 for a cut of
    94 % of ||M||). Such splits take the double Gram matrix: results are those of the unscaled matrix."""
    rng = np.random.default_rng(0)
    M0 = rng.standard_normal((256, 256))
    shape = ([16, 4, 4], [16, 4, 4])  # block step 0 and a column-Gram right step, both capped float32
    ref = mpo._core.decompose(M0.astype(np.float32), *shape, [8, 8], allow_randomized=False)
    M = (M0 * scale).astype(np.float32)
    raw = mpo._core.decompose(M, *shape, [8, 8], allow_randomized=False)
    np.testing.assert_allclose(
        np.array(raw["truncation_errors"]) / raw["norm"], np.array(ref["truncation_errors"]) / ref["norm"], rtol=1e-5
    )
    true = dense_error(M.astype(np.float64), contract_cores(raw["cores"], *shape).astype(np.float64))
    bound = math.sqrt(sum(e * e for e in raw["truncation_errors"]))
    assert true <= bound * (1 + 1e-5)


@pytest.mark.parametrize(
    "dtype, scale",
    [(np.float32, 1e-30), (np.float32, 1e-22), (np.float32, 1e20), (np.float32, 1e30),
     (np.float64, 1e-120), (np.float64, 1e120)],
)
@pytest.mark.parametrize("svd", ["exact", "auto"])
def test_far_scaled_matrices_decompose_like_the_unscaled_one(dtype, scale, svd):
    """Gram matrices square the data; far from 1 (float32 ~1e+-19) they over- or underflowed, which
    raised from the eigensolver or gave a bound below the true error. decompose scales by a power of
    two internally, so the result is the unscaled matrix's, times the scale."""
    rng = np.random.default_rng(0)
    M0 = rng.standard_normal((256, 256))
    shape = ((4, 4, 16), (4, 4, 16))
    ref = mpo.decompose(M0.astype(dtype), shape, max_bond=8, svd=svd)
    M = (M0 * scale).astype(dtype)
    m = mpo.decompose(M, shape, max_bond=8, svd=svd)
    assert m.bond_dims == ref.bond_dims
    true = dense_error(M, m.to_dense()) / fro(M)
    assert math.isclose(m.relative_error_bound(), ref.relative_error_bound(), rel_tol=1e-5)
    assert abs(true - ref.relative_error_bound()) <= 1e-4
    assert math.isclose(m.norm, fro(M), rel_tol=1e-6)
    np.testing.assert_allclose(m.spectra[0] / scale, ref.spectra[0], rtol=1e-4)


@pytest.mark.parametrize("cluster", [40, 90])
def test_cap_past_a_cluster_of_small_singular_values_meets_the_bound(cluster):
    """A 200-row unfolding whose singular values are 1, `cluster` equal ones at sqrt(1e-13), one at
    sqrt(5e-14) and zeros, capped just past the cluster: the split's leading eigenvectors must span the
    cluster. The k-vector eigensolver once put some of them into the eigenspaces below (its checks'
    bar is 1e-10 of the Gram matrix's norm): the error was up to 11 times error_bound()."""
    i1, j1, i2, j2 = 10, 20, 20, 20
    s = np.zeros(i1 * j1)
    s[0], s[1 : cluster + 1], s[cluster + 1] = 1.0, math.sqrt(1e-13), math.sqrt(5e-14)
    M, _ = with_unfolding_spectrum(np.random.default_rng(5), (i1, i2), (j1, j2), s)
    m = mpo.decompose(M, ((i1, i2), (j1, j2)), max_bond=cluster + 1)
    optimal = math.sqrt(5e-14)
    assert m.error_bound() == pytest.approx(optimal, rel=1e-6)
    assert dense_error(M, m.to_dense()) <= m.error_bound() * (1 + 1e-6) + 1e-12 * fro(M)


@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("cap", [50, 100])
def test_cap_inside_tiny_close_singular_values_meets_the_bound(wide, cap):
    """Singular values 1 and 199 values with λ² = 1e-14·(1 ± 0.5): the cut drops so little of ‖A‖²
    that the split measures the dropped part from the Gram matrix's other eigenvectors. Those came from
    the full solver while the kept ones came from the k-vector route, whose basis is orthogonal to them
    only to ~ε·‖G‖/gap (the gaps here are below ε·‖G‖): ‖M − MPO‖ exceeded error_bound() by up to 0.14 %
    (1e-9·‖M‖), on both sides of the split (rows of a wide unfolding, columns of a tall one)."""
    rng = np.random.default_rng(3)
    i1, j1, i2, j2 = (10, 20, 20, 20) if wide else (20, 20, 10, 20)
    s = np.sqrt(np.abs(1e-14 * (1 + 0.5 * rng.standard_normal(min(i1 * j1, i2 * j2)))))
    s[0] = 1.0
    M, unfolding = with_unfolding_spectrum(rng, (i1, i2), (j1, j2), s)
    m = mpo.decompose(M, ((i1, i2), (j1, j2)), max_bond=cap)
    optimal = math.sqrt(float(np.sum(np.linalg.svd(unfolding, compute_uv=False)[cap:] ** 2)))
    # λ² of 1e-14·‖A‖² carry the Gram matrix's rounding (~1e-16·‖A‖²): the cut is optimal to ~1e-5.
    assert m.error_bound() == pytest.approx(optimal, rel=1e-4)
    assert dense_error(M, m.to_dense()) <= m.error_bound() * (1 + 1e-6) + 1e-12 * fro(M)


@pytest.mark.parametrize("max_bond", [None, 100])
def test_rank_four_kronecker_sum_that_stalled_eigens_qr_decomposes(max_bond):
    """A 256 × 256 sum of four Kronecker products of orthonormal 16 × 16 factors, split at n = 2: the
    column Gram matrix of its one unfolding (eigenvalues 1, 1, 1, 1 and the rest at rounding level)
    made Eigen's QR iteration give up, and decompose raised "did not converge". The eigensolver now
    falls back (k-vector route, then Jacobi)."""
    M = orthonormal_kron_sum(5)
    m = mpo.decompose(M, ((16, 16), (16, 16)), max_bond=max_bond)
    assert m.bond_dims == (4,)
    assert dense_error(M, m.to_dense()) <= 1e-12 * fro(M)
    np.testing.assert_allclose(m.spectra[0], np.ones(4), rtol=1e-12)


# ------------------------------------------------------------------ whole outer steps

# (shape, caps): caps that cut one bond and leave outer steps whole.
WHOLE_CASES = [
    # MiniLM's 384 x 384 at cap 100: bonds 0 and 1 (4, 64) and 3 (9) whole, bond 2 cut (144 -> 100).
    (((2, 4, 4, 4, 3), (2, 4, 4, 4, 3)), [100] * 4),
    # Bond 0 cut (16 -> 8), bond 1 whole: the whole right steps reach the central core.
    (((4, 4, 2), (4, 4, 2)), [8, 8]),
    # Bonds 0 and 2 whole, bond 1 cut (36 -> 5): both ends at once (the C++ test's shape).
    (((2, 3, 4, 2), (3, 2, 4, 3)), [6, 5, 6]),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, caps", WHOLE_CASES, ids=["384", "central", "both-ends"])
@pytest.mark.parametrize("rank", [None, 3], ids=["gaussian", "rank3"])
def test_whole_outer_steps_equal_the_split_ones(shape, caps, dtype, rank):
    """An outer step whose cap keeps its whole unfolding takes the identity as its core when a cap cuts
    another bond; the final ordering then finds its bond. Bonds, spectra, cuts, errors and the matrix
    are those of splitting every step, also where the whole bonds hold zeros (rank 3: every bond ends at
    rank 3 and nothing is cut), and the spectra are those of the MPO's own unfoldings."""
    rng = np.random.default_rng(21)
    in_shape, out_shape = shape
    if rank is None:
        M = rng.standard_normal((math.prod(in_shape), math.prod(out_shape)))
    else:
        M = kron_sum(rng, in_shape, out_shape, rank)
    M = M.astype(dtype)
    whole = mpo._core.decompose(M, list(in_shape), list(out_shape), caps)
    split = mpo._core.decompose(M, list(in_shape), list(out_shape), caps, allow_whole=False)
    assert_same_decomposition(whole, split, M, in_shape, out_shape)
    if rank is not None:
        assert [len(s) for s in whole["spectra"]] == [rank] * len(caps) and not any(whole["cut"])
    tol = spectrum_rtol(dtype)
    top = max(float(s[0]) for s in whole["spectra"])
    dense_whole = contract_cores(whole["cores"], in_shape, out_shape)
    assert dense_error(dense_whole, contract_cores(split["cores"], in_shape, out_shape)) <= tol * fro(M)
    own = reference_spectra(dense_whole, in_shape, out_shape)
    for s, r in zip(whole["spectra"], own):
        np.testing.assert_allclose(s, r[: len(s)], rtol=0, atol=tol * top)
    bound = math.sqrt(sum(e * e for e in whole["truncation_errors"]))
    assert dense_error(M, dense_whole) <= bound * (1 + 1e-6) + exact_rtol(dtype) * fro(M)


# ------------------------------------------------------------------ from_cores(mixed_canonical=True)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_from_cores_mixed_canonical_equals_the_three_sweeps(n, dtype):
    rng = np.random.default_rng(n)
    M = rng.standard_normal((64, 48)).astype(dtype)
    m = mpo.decompose(M, n=n, max_bond=6)
    cores = [c.copy() for c in m.cores]
    c = m.central_index
    cores[c] = cores[c] * np.linspace(0.5, 2.0, cores[c].shape[1]).astype(dtype)[None, :, None, None]
    plain = mpo.MPO.from_cores(cores, shape=m.shape)
    fast = mpo.MPO.from_cores(cores, shape=m.shape, mixed_canonical=True)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    scale = float(np.linalg.norm(plain.to_dense()))
    np.testing.assert_allclose(fast.to_dense(), plain.to_dense(), atol=tol * scale)
    assert fast.bond_dims == plain.bond_dims
    for a, b in zip(fast.spectra, plain.spectra):
        np.testing.assert_allclose(a, b, atol=tol * scale)


def test_from_cores_mixed_canonical_refuses_cores_that_are_not():
    m = mpo.decompose(np.random.default_rng(3).standard_normal((32, 32)), n=3, max_bond=4)
    cores = [c.copy() for c in m.cores]
    cores[2] = cores[2] * 3.0  # right of the central core, no longer right-orthonormal
    with pytest.raises(ValueError, match=r"core 2 right-orthonormal \(central index 1\)"):
        mpo.MPO.from_cores(cores, mixed_canonical=True)
    # The plain route takes any cores.
    assert mpo.MPO.from_cores(cores).bond_dims == m.bond_dims
