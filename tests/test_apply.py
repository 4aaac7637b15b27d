"""Applying an MPO without rebuilding it: m @ X, X @ m, m.T, m.rows, matmul_flops, aslinearoperator.

Every product is checked against an independent dense oracle: the cores contracted with NumPy
(strategies.contract_cores) in float64, sliced to the unpadded shape.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st

import mpo
from mpo._apply import ORDERS, PLANS
from strategies import contract_cores

# PLANS: every route X @ m can take (the kernel's orders, its FLOP-cheapest plan, rebuild then NumPy's
# BLAS, and "auto"); ORDERS: the sweep orders the kernel itself knows; KERNEL_PLANS: its plan names.
KERNEL_PLANS = ("auto", *ORDERS)
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


def random_mpo(rng, in_shape, out_shape, bonds, dtype=np.float64, shape=None):
    """An MPO of random cores (canonical form is not needed to apply it), optionally padded."""
    n = len(in_shape)
    full = [1, *bonds, 1]
    cores = [rng.standard_normal((full[k], in_shape[k], out_shape[k], full[k + 1])).astype(dtype) for k in range(n)]
    padded = (math.prod(in_shape), math.prod(out_shape))
    return mpo.MPO(
        cores,
        shape=shape or padded,
        spectra=[np.ones(b) for b in bonds],
        truncation_errors=np.zeros(n - 1),
        norm=1.0,
    )


def oracle(m):
    """The dense M (float64) from the cores by plain NumPy, padding removed."""
    dense = contract_cores([np.asarray(c, dtype=np.float64) for c in m.cores], m.in_shape, m.out_shape)
    return dense[: m.shape[0], : m.shape[1]]


def magnitude(m):
    """||contract(|cores|)||_F, padding removed: the size of the terms every entry of M sums.

    Rounding acts on those terms, not on their sum: an entry that cancels (1.0001 - 1) keeps the
    float32 error of its terms (~1e-7 each), however small it is. So a kernel's norm-wise error is
    bounded by rtol times this, which is >= ||M||_F and equal to it when nothing cancels (issue 15, F2:
    a float32 (1, 1) matrix padded to (12, 1) failed against rtol * ||M||_F although the kernel was
    right to float32's precision).
    """
    dense = contract_cores([np.abs(np.asarray(c, dtype=np.float64)) for c in m.cores], m.in_shape, m.out_shape)
    return float(np.linalg.norm(dense[: m.shape[0], : m.shape[1]]))


def _cancelling_mpo():
    """A float32 (1, 1) matrix padded to (12, 1) whose one entry is 1.0001 - 1: the F2 example."""
    cores = [np.ones((1, 3, 1, 2), np.float32), np.ones((2, 4, 1, 1), np.float32)]
    cores[1][0, 0, 0, 0], cores[1][1, 0, 0, 0] = 1.0001, -1.0
    return mpo.MPO(cores, shape=(1, 1), spectra=[np.ones(2)], truncation_errors=np.zeros(1), norm=1.0)


def assert_close(got, want, scale, dtype):
    """||got - want||_F <= rtol * scale, scale = ||M||_F ||X||_F (a norm-wise relative error)."""
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    err = float(np.linalg.norm(got - want))
    assert err <= RTOL[np.dtype(dtype)] * max(scale, 1e-300), (err, scale)


@st.composite
def mpos(draw):
    n = draw(st.integers(2, 5))
    cap = {2: 8, 3: 4, 4: 3, 5: 3}[n]
    in_shape = tuple(draw(st.integers(1, cap)) for _ in range(n))
    out_shape = tuple(draw(st.integers(1, cap)) for _ in range(n))
    bonds = tuple(draw(st.integers(1, 5)) for _ in range(n - 1))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    I, J = math.prod(in_shape), math.prod(out_shape)
    padded = draw(st.booleans())
    shape = (draw(st.integers(1, I)), draw(st.integers(1, J))) if padded else (I, J)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return random_mpo(rng, in_shape, out_shape, bonds, dtype, shape)


@given(mpos(), st.integers(0, 6), st.sampled_from("CF"), st.sampled_from(PLANS), st.integers(0, 2**32 - 1))
@example(_cancelling_mpo(), 1, "C", "auto", 0)
@example(_cancelling_mpo(), 3, "C", "left", 1)
def test_x_at_mpo_equals_dense(m, batch, order, plan, seed):
    note(repr(m))
    rng = np.random.default_rng(seed)
    D = oracle(m)
    X = np.asarray(rng.standard_normal((batch, m.shape[0])), dtype=m.dtype, order=order)
    want = X.astype(np.float64) @ D
    scale = magnitude(m) * np.linalg.norm(X)
    got = m.rmatmul(X, plan=plan)
    assert got.dtype == m.dtype
    assert_close(got, want, scale, m.dtype)
    if plan == "auto":
        assert_close(X @ m, want, scale, m.dtype)
    if batch:
        assert_close(X[0] @ m, want[0], scale, m.dtype)


@given(mpos(), st.integers(0, 6), st.sampled_from("CF"), st.sampled_from(PLANS), st.integers(0, 2**32 - 1))
def test_mpo_at_x_equals_dense(m, batch, order, plan, seed):
    note(repr(m))
    rng = np.random.default_rng(seed)
    D = oracle(m)
    X = np.asarray(rng.standard_normal((m.shape[1], batch)), dtype=m.dtype, order=order)
    want = D @ X.astype(np.float64)
    scale = magnitude(m) * np.linalg.norm(X)
    got = m.matmul(X, plan=plan)
    assert got.dtype == m.dtype
    assert_close(got, want, scale, m.dtype)
    if plan == "auto":
        assert_close(m @ X, want, scale, m.dtype)
    if batch:
        assert_close(m @ X[:, 0], want[:, 0], scale, m.dtype)


@given(mpos(), st.integers(0, 2**32 - 1))
def test_transpose_is_a_view_of_the_transposed_matrix(m, seed):
    rng = np.random.default_rng(seed)
    D = oracle(m)
    size = magnitude(m)
    t = m.T
    assert t.shape == m.shape[::-1]
    assert t.in_shape == m.out_shape and t.out_shape == m.in_shape
    assert all(np.shares_memory(a, b) for a, b in zip(t.cores, m.cores))
    assert_close(t.to_dense(), D.T, size, m.dtype)
    assert_close(oracle(t), D.T, size, m.dtype)
    X = rng.standard_normal((3, m.shape[1])).astype(m.dtype)
    assert_close(X @ t, X.astype(np.float64) @ D.T, size * np.linalg.norm(X), m.dtype)
    Z = rng.standard_normal((m.shape[0], 3)).astype(m.dtype)
    assert_close(t @ Z, D.T @ Z.astype(np.float64), size * np.linalg.norm(Z), m.dtype)
    ids = rng.integers(0, m.shape[1], size=5)
    assert_close(t.rows(ids), D.T[ids], size, m.dtype)
    tt = t.T
    assert tt.shape == m.shape and all(a is b for a, b in zip(tt.cores, m.cores))


def test_batch_axes_are_kept():
    m = random_mpo(np.random.default_rng(0), (2, 3, 2), (3, 2, 2), (3, 4), shape=(11, 10))
    X = np.random.default_rng(1).standard_normal((2, 3, 4, 11))
    got = X @ m
    assert got.shape == (2, 3, 4, 10)
    D = oracle(m)
    assert_close(got, X @ D, np.linalg.norm(D) * np.linalg.norm(X), np.float64)


def test_large_products_use_the_threaded_path_and_stay_exact():
    # Big enough that mpo::multiply splits GEMMs across threads (> 4e6 multiply-adds per product).
    rng = np.random.default_rng(5)
    M = rng.standard_normal((256, 192))
    m = mpo.decompose(M, ((4, 4, 4, 4), (4, 4, 4, 3)))
    X = rng.standard_normal((512, 256))
    for plan in PLANS:
        got = m.rmatmul(X, plan=plan)
        assert np.linalg.norm(got - X @ M) <= 1e-10 * np.linalg.norm(X @ M)
    Y = rng.standard_normal((192, 300))
    assert np.linalg.norm(m @ Y - M @ Y) <= 1e-10 * np.linalg.norm(M @ Y)


@given(mpos(), st.integers(0, 2**32 - 1))
def test_rows_equal_dense_rows(m, seed):
    rng = np.random.default_rng(seed)
    D = oracle(m)
    I = m.shape[0]
    ids = rng.integers(-I, I, size=(rng.integers(0, 4), 3))
    got = m.rows(ids)
    assert got.shape == ids.shape + (m.shape[1],)
    assert got.dtype == m.dtype
    assert_close(got, D[ids], magnitude(m), m.dtype)


def test_rows_share_prefixes_and_handle_repeats():
    rng = np.random.default_rng(2)
    m = random_mpo(rng, (6, 8, 10, 8, 8), (4, 4, 4, 3, 2), (8, 16, 16, 8), shape=(30522, 384))
    D = oracle(m)
    ids = np.concatenate([rng.integers(0, 30522, 3000), [0, 0, 30521, 5, 5], np.arange(100, 200)])
    assert_close(m.rows(ids), D[ids], np.linalg.norm(D), np.float64)
    assert m.rows(np.array([], dtype=np.int64)).shape == (0, 384)
    assert_close(m.rows(7), D[7], np.linalg.norm(D), np.float64)


def test_matmul_flops_picks_the_cheapest_plan_and_counts_the_gemms():
    m = random_mpo(np.random.default_rng(0), (3, 4, 5), (2, 3, 4), (6, 7), shape=(55, 20))
    for batch in (1, 7, 300):
        info = m.matmul_flops(batch)
        assert info["mpo"] == min(info["plans"].values())
        assert info["plans"][info["plan"]] == info["mpo"]
        assert info["dense"] == 2 * batch * 55 * 20
        assert info["ratio"] == pytest.approx(info["mpo"] / info["dense"])
        assert sum(info["groups"]) == 3 and sorted(info["order"]) == list(range(len(info["groups"])))
    # n = 2 by hand. Left to right without merging contracts i1 (state (B, i1, i2) -> (B i2) x i1 times
    # i1 x (j1 d)), then (d, i2) ((B j1) x (d i2) times (d i2) x j2). Merging the two cores first costs
    # (i1 j1) x d times d x (i2 j2), then one (B x I) times (I x J) product.
    from mpo import _core

    i1, i2, j1, j2, d, B = 3, 5, 4, 2, 6, 9
    two = random_mpo(np.random.default_rng(1), (i1, i2), (j1, j2), (d,))
    shapes = [list(c.shape) for c in two.cores]
    name, order, flops, groups, merge = _core.apply_plan(shapes, B, False, "left", False)
    assert (name, order, groups, merge) == ("left", [0, 1], [1, 1], 0.0)
    assert flops == 2 * B * i2 * i1 * j1 * d + 2 * B * j1 * d * i2 * j2
    info = two.matmul_flops(B)
    assert info["groups"] == (2,)
    assert info["merge_flops"] == 2 * i1 * j1 * d * i2 * j2
    assert info["mpo"] == info["merge_flops"] + 2 * B * (i1 * i2) * (j1 * j2)
    assert info["unmerged"] == min(_core.apply_plan(shapes, B, False, p, False)[2] for p in ORDERS)


@given(mpos(), st.integers(1, 40), st.sampled_from(KERNEL_PLANS), st.integers(0, 2**32 - 1))
def test_merged_and_unmerged_plans_agree(m, batch, plan, seed):
    from mpo import _core

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, m.shape[0])).astype(m.dtype)
    merged = _core.apply(m._base, m._transposed, X, False, m.shape[1], plan, True)
    plain = _core.apply(m._base, m._transposed, X, False, m.shape[1], plan, False)
    D = oracle(m)
    scale = np.linalg.norm(D) * np.linalg.norm(X)
    assert_close(merged, X.astype(np.float64) @ D, scale, m.dtype)
    assert_close(plain, X.astype(np.float64) @ D, scale, m.dtype)
    info = m.matmul_flops(batch, plan=plan)
    assert info["mpo"] <= info["unmerged"]


def test_plan_choice_follows_the_bonds():
    # Uneven factors and bonds make the three orders cost differently; auto takes the cheapest, and the
    # kernel gives the same answer whichever plan runs.
    rng = np.random.default_rng(4)
    m = random_mpo(rng, (2, 2, 16), (16, 2, 2), (32, 4))
    flops = {p: m.matmul_flops(1, plan=p)["mpo"] for p in ORDERS}
    assert m.matmul_flops(1)["mpo"] == min(flops.values())
    X = rng.standard_normal((1, 64))
    results = [m.rmatmul(X, plan=p) for p in PLANS]
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-12, atol=1e-12 * np.abs(results[0]).max())


def test_linear_operator_solves_least_squares_like_the_dense_solver():
    sla = pytest.importorskip("scipy.sparse.linalg")
    rng = np.random.default_rng(7)
    M = rng.standard_normal((96, 48))
    m = mpo.decompose(M, ((4, 4, 6), (4, 3, 4)))
    A = m.aslinearoperator()
    assert A.shape == (96, 48) and A.dtype == np.float64
    b = rng.standard_normal(96)
    x = sla.lsqr(A, b, atol=1e-14, btol=1e-14, iter_lim=2000)[0]
    want = np.linalg.lstsq(M, b, rcond=None)[0]
    assert np.linalg.norm(x - want) <= 1e-8 * np.linalg.norm(want)
    V = rng.standard_normal((48, 3))
    np.testing.assert_allclose(A.matmat(V), M @ V, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(A.rmatvec(b), M.T @ b, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(A.rmatmat(rng.standard_normal((96, 2))).shape, (48, 2))


def test_float32_mpo_with_float64_input_computes_in_float64():
    rng = np.random.default_rng(3)
    m = random_mpo(rng, (3, 4), (4, 3), (5,), dtype=np.float32)
    X = rng.standard_normal((4, 12))
    got = X @ m
    assert got.dtype == np.float64
    D = oracle(m)
    assert_close(got, X @ D, np.linalg.norm(D) * np.linalg.norm(X), np.float64)
    assert (X.astype(np.float32) @ m).dtype == np.float32
    assert (np.arange(12) @ m).dtype == np.float64


def test_nan_propagates_to_its_own_row_only():
    rng = np.random.default_rng(8)
    m = random_mpo(rng, (3, 4, 2), (2, 3, 4), (4, 5))
    X = rng.standard_normal((3, 24))
    X[1, 5] = np.nan
    got = X @ m
    assert np.isnan(got[1]).any()
    D = oracle(m)
    assert_close(got[[0, 2]], X[[0, 2]] @ D, np.linalg.norm(D) * np.linalg.norm(X[[0, 2]]), np.float64)


def test_bad_input_raises_clear_errors():
    m = random_mpo(np.random.default_rng(0), (2, 3), (3, 2), (4,), shape=(5, 6))
    with pytest.raises(ValueError, match="inner dimensions differ: X has 6 columns"):
        np.ones((2, 6)) @ m
    with pytest.raises(ValueError, match="inner dimensions differ: the MPO has 6 columns, X has 5 rows"):
        m @ np.ones(5)
    with pytest.raises(ValueError, match=r"shape \(J,\) or \(J, B\)"):
        m @ np.ones((6, 2, 2))
    with pytest.raises(ValueError, match="scalar"):
        m.rmatmul(3.0)
    with pytest.raises(TypeError, match="real numbers"):
        np.ones((2, 5), dtype=complex) @ m
    with pytest.raises(TypeError, match="ids must be integers"):
        m.rows(np.array([1.0, 2.0]))
    with pytest.raises(IndexError, match="id 5 is out of range for an MPO with 5 rows"):
        m.rows([0, 5, 7])
    with pytest.raises(IndexError, match="id -6 is out of range"):
        m.rows([-6])
    with pytest.raises(ValueError, match="plan must be one of"):
        m.matmul(np.ones(6), plan="fastest")
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        m.matmul_flops(0)


def test_core_kernel_checks_widths():
    from mpo import _core

    cores = [np.ones((1, 2, 3, 4)), np.ones((4, 3, 2, 1))]
    with pytest.raises(ValueError, match=r"inner dimension must be in \[1, 6\], got 7"):
        _core.apply(cores, False, np.ones((1, 7)), False, 6)
    with pytest.raises(ValueError, match=r"output width must be in \[1, 6\], got 9"):
        _core.apply(cores, False, np.ones((1, 6)), False, 9)
    with pytest.raises(IndexError, match=r"row id 6 is outside \[0, 6\)"):
        _core.rows(cores, False, np.array([6]), 6, "float64")
    with pytest.raises(ValueError, match="bond 0 disagrees"):
        _core.apply([np.ones((1, 2, 3, 4)), np.ones((3, 3, 2, 1))], False, np.ones((1, 6)), False, 6)


def test_aslinearoperator_without_scipy_names_the_package(monkeypatch):
    import sys

    # A None entry in sys.modules makes the import fail as if scipy were not installed.
    monkeypatch.setitem(sys.modules, "scipy.sparse.linalg", None)
    m = random_mpo(np.random.default_rng(0), (2, 2), (2, 2), (2,))
    with pytest.raises(ImportError, match="pip install scipy"):
        m.aslinearoperator()
    # The products themselves never need scipy.
    assert (np.ones(4) @ m).shape == (4,)


@given(mpos())
def test_multiply_out_equals_rebuild(m):
    from mpo import _core

    dense = _core.multiply_out(m._base, m.dtype.name)
    want = _core.rebuild(m._base, "float64")
    assert dense.shape == want.shape and dense.dtype == m.dtype
    assert_close(dense, want, np.linalg.norm(want), m.dtype)
    # Written straight into an array NumPy allocated (NumPy asks for huge pages for large ones): no
    # second buffer owned by a capsule.
    assert dense.flags.owndata and dense.flags.c_contiguous and dense.flags.writeable


def test_rebuild_then_multiply_plans_agree_with_the_dense_product():
    from mpo import _core

    rng = np.random.default_rng(9)
    m = random_mpo(rng, (4, 4, 4), (4, 4, 4), (16, 16), shape=(60, 50))
    X = rng.standard_normal((512, 60))
    info = m.matmul_flops(512)
    assert info["groups"] == (3,)  # wide bonds, large batch: multiplying out wins
    kernel = _core.apply(m._base, False, X, False, 50)
    D = oracle(m)
    scale = np.linalg.norm(D) * np.linalg.norm(X)
    assert_close(X @ m, X @ D, scale, np.float64)
    assert_close(kernel, X @ D, scale, np.float64)
    assert_close(m.T @ X.T, (X @ D).T, scale, np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rebuild_then_multiply_in_row_blocks_matches_every_form(dtype):
    # Rebuild-then-multiply makes M (padded 1024 x 512) a block of rows at a time and never holds it
    # whole: several blocks at batch 64, one at batch 3000 (the product outgrows M). X @ m, X @ m.T,
    # m @ Y and m.T @ Y are the kernel's four forms (transposed or not, batch first or last).
    rng = np.random.default_rng(11)
    m = random_mpo(rng, (4, 4, 8, 8), (4, 4, 8, 4), (16, 64, 16), dtype=dtype, shape=(1000, 500))
    D = oracle(m)
    for batch in (64, 3000):
        assert m.matmul_flops(batch)["groups"] == (4,) and m.T.matmul_flops(batch)["groups"] == (4,)
        X = rng.standard_normal((batch, 1000)).astype(dtype)
        Z = rng.standard_normal((batch, 500)).astype(dtype)
        X64, Z64 = X.astype(np.float64), Z.astype(np.float64)
        assert_close(X @ m, X64 @ D, np.linalg.norm(D) * np.linalg.norm(X), dtype)
        assert_close(Z @ m.T, Z64 @ D.T, np.linalg.norm(D) * np.linalg.norm(Z), dtype)
        assert_close(m @ Z.T, D @ Z64.T, np.linalg.norm(D) * np.linalg.norm(Z), dtype)
        assert_close(m.T @ X.T, D.T @ X64.T, np.linalg.norm(D) * np.linalg.norm(X), dtype)


def test_rows_use_a_table_of_the_right_end_for_many_ids():
    # Thousands of ids over few prefixes: the right end of the chain is contracted once per
    # combination of its row factors; the answer must not depend on that (m and m.T, with repeats).
    rng = np.random.default_rng(12)
    m = random_mpo(rng, (6, 8, 10, 8, 8), (2, 4, 4, 4, 3), (12, 64, 64, 24), dtype=np.float32, shape=(30522, 384))
    D = oracle(m)
    ids = np.concatenate([rng.integers(0, 30522, 4096), [3, 3, 30521]])
    assert_close(m.rows(ids), D[ids], np.linalg.norm(D), np.float32)
    cols = rng.integers(-384, 384, 2000)
    assert_close(m.T.rows(cols), D.T[cols], np.linalg.norm(D), np.float32)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_large_batches_run_in_chunks_and_stay_exact(dtype):
    # Rows are swept in cache-sized chunks shared among threads; the last chunk here is partial.
    rng = np.random.default_rng(10)
    m = random_mpo(rng, (2, 3, 2), (3, 2, 2), (3, 4), dtype=dtype, shape=(11, 10))
    X = rng.standard_normal((12_345, 11)).astype(dtype)
    D = oracle(m)
    want = X.astype(np.float64) @ D
    scale = np.linalg.norm(D) * np.linalg.norm(X)
    for plan in PLANS:
        assert_close(m.rmatmul(X, plan=plan), want, scale, dtype)
    assert_close(m.T @ X.T, want.T, scale, dtype)


# ------------------------------------------------------------------ merged cores kept across products
def _issue_mpo(dtype=np.float64):
    # Issue 20's shape: at batch 1 the kernel's plan merges cores 1-3 and 4-5 before its sweep.
    M = np.random.default_rng(20).standard_normal((3072, 768)).astype(dtype)
    return mpo.decompose(M, ((4, 4, 8, 6, 4), (3, 4, 4, 4, 4)), max_bond=48)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kept_merges_give_the_kernels_product(dtype, monkeypatch):
    from mpo import _apply

    m = _issue_mpo(dtype)
    D = contract_cores(m.cores, (4, 4, 8, 6, 4), (3, 4, 4, 4, 4))
    flops = m.matmul_flops(1)
    assert flops["kept_merges"] and flops["per_call"] == flops["mpo"] - flops["merge_flops"] < 0.4 * flops["mpo"]
    rng = np.random.default_rng(1)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    for batch in (1, 2, 5):
        X = rng.standard_normal((batch, 3072)).astype(dtype)
        kept = X @ m
        again = X @ m  # the kept merges themselves
        Y = rng.standard_normal((768, batch)).astype(dtype)
        kept_left = m @ Y
        with monkeypatch.context() as patch:
            patch.setattr(_apply, "MERGE_CACHE_FACTOR", 0.0)  # nothing kept: the kernel merges per call
            _apply.clear_merge_cache()
            plain, plain_left = X @ m, m @ Y
        assert kept.dtype == dtype and np.array_equal(kept, again)
        scale = np.linalg.norm(X.astype(np.float64) @ D)
        assert np.linalg.norm(kept - X.astype(np.float64) @ D) <= tol * scale
        assert np.linalg.norm(kept - plain) <= tol * scale
        assert np.linalg.norm(kept_left - plain_left) <= tol * np.linalg.norm(D @ Y.astype(np.float64))


def test_kept_merges_live_with_the_cores_and_within_the_memory_bound(monkeypatch):
    import gc

    from mpo import _apply

    _apply.clear_merge_cache()
    m = _issue_mpo()
    x = np.ones(3072)
    x @ m
    (entry,) = _apply._merge_cache.values()
    merged = sum(c.size for c in entry)
    assert 2 * sum(c.size for c in m.cores) < merged <= _apply.MERGE_CACHE_FACTOR * sum(c.size for c in m.cores)
    x @ m.T.T  # another view of the same cores: the same entry
    assert len(_apply._merge_cache) == 1
    x.astype(np.float32) @ m  # float32 X with a float64 MPO: float64 product, the same cores
    assert len(_apply._merge_cache) == 1
    m32 = _issue_mpo(np.float32)
    np.ones(3072) @ m32  # float64 X: the cores are cast for this call, and nothing is kept
    assert len(_apply._merge_cache) == 1
    kept_core = m.stored_cores[0]  # a caller holding one core: the entry must still go with the others
    del m, entry
    gc.collect()
    assert len(_apply._merge_cache) == 0  # dropped with the cores
    del kept_core
    monkeypatch.setattr(_apply, "MERGE_CACHE_FACTOR", 1.0)  # below what these merges need
    assert not m32.matmul_flops(1)["kept_merges"]
    np.ones(3072, dtype=np.float32) @ m32
    assert len(_apply._merge_cache) == 0
    # An explicit sweep order is the kernel's own plan, merges and all, every call.
    assert not m32.matmul_flops(1, plan="right")["kept_merges"]


def test_clear_merge_cache_forgets_kept_merges_and_products_stay_equal():
    from mpo import _apply

    _apply.clear_merge_cache()
    m = _issue_mpo()
    x = np.random.default_rng(3).standard_normal((2, 3072))
    first = x @ m
    (entry,) = _apply._merge_cache.values()
    _apply.clear_merge_cache()
    assert _apply._merge_cache == {}
    again = x @ m  # merged anew, kept anew: a new entry of new arrays, the same product
    (fresh,) = _apply._merge_cache.values()
    assert all(a is not b and np.array_equal(a, b) for a, b in zip(entry, fresh))
    assert np.array_equal(first, again)
    _apply.clear_merge_cache()
