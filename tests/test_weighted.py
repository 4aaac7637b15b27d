"""Row-weighted factorization (FWSVD, docs/ALGORITHMS.md §10): weighted_svd and decompose(row_weights=).

The weighted problem min ||D (W - W')||_F is checked against plain NumPy: uniform weights give the plain
truncated SVD, arbitrary weights give a weighted error no larger than the plain SVD's (the weighted
optimum), rescaling the weights changes nothing, and the weighted MPO applies D^-1 in every operation.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mpo
from mpo._weighted import WEIGHT_EPS, row_scales


def _data(shape=(24, 36), seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(shape)
    w = rng.exponential(size=shape[0]) ** 3  # importances spread over orders of magnitude
    return W, w


def _truncated_svd(W, r):
    u, s, vt = np.linalg.svd(W, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


def _weighted_err(W, R, w, axis=0):
    d = row_scales(w, W.shape[axis])
    return float(np.linalg.norm((W - R) * (d[:, None] if axis == 0 else d[None, :])))


# ------------------------------------------------------------------ weighted_svd


def test_uniform_weights_give_the_plain_svd():
    W, _ = _data()
    res = mpo.weighted_svd(W, 7, np.full(W.shape[0], 3.5))
    np.testing.assert_allclose(res.to_dense(), _truncated_svd(W, 7), atol=1e-10)
    np.testing.assert_allclose(res.spectrum / res.spectrum[0], res.plain_spectrum / res.plain_spectrum[0])


@pytest.mark.parametrize("axis", [0, 1])
def test_weighted_error_beats_plain_svd_and_is_exact(axis):
    W, _ = _data(seed=3)
    w = np.random.default_rng(4).exponential(size=W.shape[axis]) ** 3
    res = mpo.weighted_svd(W, 6, w, axis=axis)
    plain = _truncated_svd(W, 6)
    ours = _weighted_err(W, res.to_dense(), w, axis)
    assert ours == pytest.approx(res.weighted_error, rel=1e-10)
    assert ours < 0.95 * _weighted_err(W, plain, w, axis)
    # ... while the plain error can only be worse than the plain optimum (Eckart-Young).
    assert res.error == pytest.approx(np.linalg.norm(W - res.to_dense()), rel=1e-12)
    assert res.error > np.linalg.norm(W - plain)
    assert res.left.shape == (W.shape[0], 6) and res.right.shape == (6, W.shape[1])
    assert res.num_params == 6 * sum(W.shape)


def test_rescaling_the_weights_changes_nothing():
    W, w = _data(seed=5)
    a = mpo.weighted_svd(W, 5, w)
    b = mpo.weighted_svd(W, 5, w * 1234.5)
    np.testing.assert_allclose(a.to_dense(), b.to_dense(), atol=1e-10)
    assert a.weighted_error == pytest.approx(b.weighted_error, rel=1e-10)


def test_axis_one_is_axis_zero_of_the_transpose():
    W, w = _data(seed=6)
    a = mpo.weighted_svd(W.T, 4, w, axis=1)
    b = mpo.weighted_svd(W, 4, w, axis=0)
    np.testing.assert_allclose(a.to_dense(), b.to_dense().T, atol=1e-10)


def test_zero_weights_are_guarded():
    W, w = _data(seed=7)
    w[::3] = 0.0
    res = mpo.weighted_svd(W, 5, w)
    assert np.isfinite(res.left).all() and np.isfinite(res.right).all()
    d = row_scales(w, W.shape[0])
    assert d.min() == pytest.approx(np.sqrt(WEIGHT_EPS))


def test_full_rank_is_exact_and_measures_agree():
    W, w = _data(shape=(8, 10), seed=8)
    res = mpo.weighted_svd(W, 8, w)
    np.testing.assert_allclose(res.to_dense(), W, atol=1e-12)
    assert res.weighted_error == pytest.approx(0.0, abs=1e-12)
    assert res.relative_error() < 1e-12
    assert 0 < res.entropy() <= np.log(8) and 0 < res.entropy(weighted=True) <= np.log(8)
    assert res.entropy() != pytest.approx(res.entropy(weighted=True))


def test_float32_is_kept():
    W, w = _data()
    res = mpo.weighted_svd(W.astype(np.float32), 3, w)
    assert res.left.dtype == np.float32 and res.right.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"rank": 0}, ValueError, r"rank must be in \[1, min\(I, J\)\] = \[1, 24\], got 0"),
        ({"rank": 25}, ValueError, r"rank must be in \[1, min\(I, J\)\] = \[1, 24\], got 25"),
        ({"rank": 2.0}, TypeError, r"rank must be an integer, got 2.0"),
        ({"axis": 2}, ValueError, r"axis must be 0 \(weights per row\) or 1 \(weights per column\), got 2"),
        ({"row_weights": np.ones(5)}, ValueError, r"one weight per row \(24\), got shape \(5,\)"),
        ({"row_weights": -np.ones(24)}, ValueError, r"must be >= 0 \(importances\), got row_weights\[0\] = -1.0"),
        ({"row_weights": np.zeros(24)}, ValueError, r"at least one positive weight, got all zeros"),
        ({"row_weights": np.full(24, np.nan)}, ValueError, r"must be finite, got 24 NaN or inf values"),
        ({"row_weights": np.array(["a"] * 24)}, TypeError, r"row_weights must be real numbers"),
        ({"eps": 0.0}, ValueError, r"eps must be a finite number > 0 \(the guard for zero weights\), got 0.0"),
    ],
)
def test_bad_input(kwargs, exc, message):
    W, w = _data()
    args = {"rank": 3, "row_weights": w, **kwargs}
    eps = args.pop("eps", WEIGHT_EPS)
    with pytest.raises(exc, match=message):
        mpo.weighted_svd(W, args.pop("rank"), args.pop("row_weights"), eps=eps, **args)


@given(
    rows=st.integers(2, 12),
    cols=st.integers(2, 12),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_property_weighted_optimum(rows, cols, seed, data):
    rank = data.draw(st.integers(1, min(rows, cols)))
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((rows, cols))
    w = rng.exponential(size=rows) ** 2
    res = mpo.weighted_svd(W, rank, w)
    # No rank-r matrix has a smaller weighted error; the plain SVD is one such matrix.
    assert res.weighted_error <= _weighted_err(W, _truncated_svd(W, rank), w) * (1 + 1e-9) + 1e-12
    assert res.weighted_error == pytest.approx(_weighted_err(W, res.to_dense(), w), rel=1e-7, abs=1e-10)
    scaled = mpo.weighted_svd(W, rank, w * rng.uniform(0.01, 100))
    np.testing.assert_allclose(scaled.weighted_error, res.weighted_error, rtol=1e-7, atol=1e-10)


# ------------------------------------------------------------------ weighted MPO


SHAPE = ((2, 3, 4), (3, 2, 4))  # 24 x 24, n = 3


def _mpo_data(seed=0):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((24, 24))
    w = rng.exponential(size=24) ** 3
    return M, w


def test_uniform_row_weights_give_the_plain_mpo():
    M, _ = _mpo_data()
    plain = mpo.decompose(M, SHAPE, max_bond=8)
    weighted = mpo.decompose(M, SHAPE, max_bond=8, row_weights=np.ones(24))
    np.testing.assert_allclose(weighted.to_dense(), plain.to_dense(), atol=1e-10)
    # Weighted measures are those of c M (c = sqrt(1 + eps)): the capped MPO's own. The plain entropy is
    # that of the MPO's own plain matrix (docs/API.md; issue 15 W8: a capped sweep reported M's), here
    # that of the plain capped MPO.
    np.testing.assert_allclose(weighted.entropy(weighted=True), plain.entropy(), atol=1e-10)
    np.testing.assert_allclose(weighted.entropy(), plain.entropy(), atol=1e-9)


def test_weighted_mpo_is_the_scaled_cores_and_exact_at_full_bonds():
    M, w = _mpo_data(1)
    m = mpo.decompose(M, SHAPE, row_weights=w)
    np.testing.assert_allclose(m.to_dense(), M, atol=1e-11)
    assert m.row_scale.shape == (24,)
    np.testing.assert_allclose(1.0 / m.row_scale, row_scales(w, 24))
    assert m.num_params == sum(c.size for c in m.cores) + 24
    # The plain entropy is M's own (what an unweighted decomposition reports); the weighted one D M's.
    np.testing.assert_allclose(m.entropy(), mpo.decompose(M, SHAPE).entropy(), atol=1e-10)
    DM = M * row_scales(w, 24)[:, None]
    np.testing.assert_allclose(m.entropy(weighted=True), mpo.decompose(DM, SHAPE).entropy(), atol=1e-10)
    assert m.norm == pytest.approx(np.linalg.norm(M)) and m.weighted_norm == pytest.approx(np.linalg.norm(DM))
    assert "row_weighted=True" in repr(m)


def test_weighted_mpo_lowers_the_weighted_error_and_bounds_hold():
    M, w = _mpo_data(2)
    plain = mpo.decompose(M, SHAPE, max_bond=6)
    m = mpo.decompose(M, SHAPE, max_bond=6, row_weights=w)
    assert m.bond_dims == plain.bond_dims
    R = m.to_dense()
    weighted_err = _weighted_err(M, R, w)
    assert weighted_err < 0.9 * _weighted_err(M, plain.to_dense(), w)
    assert weighted_err <= m.error_bound(weighted=True) * (1 + 1e-9)
    assert np.linalg.norm(M - R) <= m.error_bound() * (1 + 1e-9)
    assert m.error_bound() == pytest.approx(m.error_bound(weighted=True) * m.row_scale.max())
    assert m.relative_error_bound(weighted=True) == pytest.approx(m.error_bound(weighted=True) / m.weighted_norm)


def test_weighted_mpo_operations_match_the_dense_matrix(tmp_path):
    M, w = _mpo_data(3)
    m = mpo.decompose(M, SHAPE, max_bond=5, row_weights=w)
    R = m.to_dense()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((7, 24))
    np.testing.assert_allclose(X @ m, X @ R, atol=1e-10)
    np.testing.assert_allclose(m @ X.T, R @ X.T, atol=1e-10)
    np.testing.assert_allclose(m.T.to_dense(), R.T, atol=1e-12)
    np.testing.assert_allclose(X @ m.T, X @ R.T, atol=1e-10)
    np.testing.assert_allclose(m.T @ X.T, R.T @ X.T, atol=1e-10)
    ids = np.array([[0, 5], [23, -1]])
    np.testing.assert_allclose(m.rows(ids), R[ids], atol=1e-12)
    np.testing.assert_allclose(m.T.rows(ids), R.T[ids], atol=1e-12)
    np.testing.assert_allclose(m.aslinearoperator().matvec(X[0]), R @ X[0], atol=1e-10)
    cut = m.truncate(max_bond=3)
    assert cut.row_scale is m.row_scale or np.array_equal(cut.row_scale, m.row_scale)
    assert np.linalg.norm(M - cut.to_dense()) <= cut.error_bound() * (1 + 1e-9)
    np.testing.assert_allclose(m.T.truncate(max_bond=3).to_dense(), cut.to_dense().T, atol=1e-12)
    path = tmp_path / "w.npz"
    m.save(path)
    back = mpo.load(path)
    np.testing.assert_array_equal(back.to_dense(), R)
    np.testing.assert_array_equal(back.row_scale, m.row_scale)
    np.testing.assert_array_equal(back.entropy(), m.entropy())
    np.testing.assert_array_equal(back.entropy(weighted=True), m.entropy(weighted=True))
    assert back.weighted_norm == m.weighted_norm and back.norm == m.norm
    assert back.error_bound(weighted=True) == m.error_bound(weighted=True)
    assert back.relative_error_bound() == m.relative_error_bound()
    with np.load(path) as z:
        assert int(z["format_version"]) == 2
    plain_path = tmp_path / "p.npz"
    mpo.decompose(M, SHAPE).save(plain_path)
    with np.load(plain_path) as z:
        assert int(z["format_version"]) == mpo.FORMAT_VERSION == 1


def test_weighted_mpo_ignores_a_rescaling_and_checks_its_weights():
    M, w = _mpo_data(4)
    a = mpo.decompose(M, SHAPE, max_bond=5, row_weights=w)
    b = mpo.decompose(M, SHAPE, max_bond=5, row_weights=w * 0.001)
    np.testing.assert_allclose(a.to_dense(), b.to_dense(), atol=1e-9)
    with pytest.raises(ValueError, match=r"row_weights must be 1-D with one weight per row \(24\), got shape \(23,\)"):
        mpo.decompose(M, SHAPE, row_weights=w[:-1])
    with pytest.raises(ValueError, match=r"row_weights must be >= 0"):
        mpo.decompose(M, SHAPE, row_weights=-w)


def test_weighted_mpo_with_padding_and_float32():
    rng = np.random.default_rng(9)
    M = rng.standard_normal((30, 20)).astype(np.float32)
    w = rng.exponential(size=30)
    m = mpo.decompose(M, n=3, row_weights=w)
    assert m.padded_shape != m.shape
    assert m.dtype == np.float32
    np.testing.assert_allclose(m.to_dense(), M, atol=1e-4)
    X = rng.standard_normal((4, 30)).astype(np.float32)
    np.testing.assert_allclose(X @ m, X @ M, atol=1e-3)


def test_weighted_tol_acts_in_the_weighted_norm():
    M, w = _mpo_data(5)
    m = mpo.decompose(M, SHAPE, tol=0.3, row_weights=w)
    assert m.relative_error_bound(weighted=True) <= 0.3
    DM = M * row_scales(w, 24)[:, None]
    assert np.linalg.norm(DM - m.to_dense() / m.row_scale[:, None]) <= 0.3 * np.linalg.norm(DM) * (1 + 1e-9)
    assert m.bond_dims != mpo.decompose(M, SHAPE).bond_dims


def test_constructor_checks_the_row_scale():
    m = mpo.decompose(_mpo_data()[0], SHAPE, max_bond=4)
    parts = dict(shape=m.shape, spectra=m.spectra, truncation_errors=m.truncation_errors, norm=m.norm)
    with pytest.raises(ValueError, match=r"row_scale must hold 24 finite values > 0, got shape \(3,\)"):
        mpo.MPO(m.cores, row_scale=np.ones(3), plain=(1.0, m.spectra), **parts)
    with pytest.raises(ValueError, match=r"row_scale must hold 24 finite values > 0"):
        mpo.MPO(m.cores, row_scale=np.zeros(24), plain=(1.0, m.spectra), **parts)
    with pytest.raises(ValueError, match=r"a row-weighted MPO needs plain = \(norm, n-1 = 2 spectra\)"):
        mpo.MPO(m.cores, row_scale=np.ones(24), **parts)
    with pytest.raises(ValueError, match=r"a row-weighted MPO needs plain = \(norm, n-1 = 2 spectra\)"):
        mpo.MPO(m.cores, row_scale=np.ones(24), plain=(1.0, m.spectra[:1]), **parts)


def test_weighted_budget_counts_the_row_scale():
    # ratio= keeps every parameter within the budget, the I row scales included, also through .T.
    M, w = _mpo_data(5)
    m = mpo.decompose(M, SHAPE, row_weights=w)
    for ratio in (0.9, 0.6, 0.4):
        cut = m.truncate(ratio=ratio)
        assert cut.row_scale is not None
        assert cut.compression_ratio <= ratio
        assert mpo.decompose(M, SHAPE, row_weights=w, ratio=ratio).compression_ratio <= ratio
        t = m.T.truncate(ratio=ratio)
        assert t.compression_ratio <= ratio
        np.testing.assert_allclose(t.to_dense(), cut.to_dense().T, atol=1e-12)


@pytest.mark.parametrize("cols", [24, 20])
def test_transposed_weighted_mpo_saves_and_loads_as_itself(tmp_path, cols):
    rng = np.random.default_rng(7)
    M, w = rng.standard_normal((24, cols)), rng.exponential(size=24) ** 3
    shape = ((2, 3, 4), (5, 2, 2)) if cols == 20 else SHAPE
    t = mpo.decompose(M, shape, max_bond=3, row_weights=w).T
    t.save(tmp_path / "t.npz")
    back = mpo.load(tmp_path / "t.npz")
    assert back.shape == t.shape == (cols, 24)
    np.testing.assert_array_equal(back.to_dense(), t.to_dense())
    np.testing.assert_array_equal(back.T.row_scale, t.T.row_scale)


def test_truncated_weighted_entropy_is_that_of_its_own_plain_matrix():
    M, w = _mpo_data(8)
    cut = mpo.decompose(M, SHAPE, row_weights=w).truncate(max_bond=2)
    # Measured again after the cut (before the fix it kept the uncut M's values). The plain matrix
    # diag(row_scale) @ cores has wider unfoldings than the stored bonds (a diagonal scale is not a
    # product over the cores), so ln d_k does not bound it; ln of its own ranks does.
    S = cut.entropy()
    plain = mpo.decompose(cut.to_dense(), SHAPE)
    np.testing.assert_allclose(S, plain.entropy(), atol=1e-9)
    assert np.all(S <= np.log(np.array(plain.bond_dims)) + 1e-12)
    assert not np.allclose(S, mpo.decompose(M, SHAPE, row_weights=w).entropy())
    assert cut.norm == mpo.decompose(M, SHAPE).norm  # norm stays ||M||, the matrix decomposed
