"""Issue 15: no crash from any file, no silent wrong answer at any scale. One test per reproducer.

Each test states the rule it pins; the reproducers are those of the issue (against fc56ebb).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mpo
from mpo import _core


def _gaussian(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols))


def _true_error(M: np.ndarray, m) -> float:
    """||M - MPO||_F computed scaled (both sides divided by max |M| first), in float64."""
    top = float(np.max(np.abs(M)))
    return top * float(np.linalg.norm(M / top - m.to_dense().astype(np.float64) / top))


# ---------------------------------------------------------------- C1, C2: crashes


def test_c1_cores_whose_padded_side_wraps_are_refused(tmp_path):
    # Row factors multiplying to 2**62: batch * padded_in wrapped and the kernel wrote past its buffer.
    p = (10, 10, 10, 10, 11, 11)
    cores = [np.ones((1, 2**q, 1, 1), np.float32) for q in p]
    m = mpo.MPO(cores, shape=(5, 1), spectra=[np.ones(1)] * 5, truncation_errors=np.zeros(5), norm=1.0)
    with pytest.raises(ValueError, match="too large|does not fit"):
        np.ones((2, 5), np.float32) @ m


@pytest.mark.parametrize("entry", ["apply", "rows", "multiply_out", "rebuild", "canonicalize"])
def test_c1_every_kernel_entry_refuses_wrapping_sizes(entry):
    # Six row factors of 2**11: the padded side is 2**66, which no 64-bit size holds.
    big = [np.ones((1, 2**11, 1, 1), np.float32) for _ in range(6)]
    with pytest.raises(ValueError, match="row factors is too large"):
        if entry == "apply":
            _core.apply(big, False, np.ones((4, 3), np.float32), False, 1)
        elif entry == "rows":
            _core.rows(big, False, np.array([0]), 1, "float32")
        else:
            getattr(_core, entry)(big, "float32")


def test_c1_decompose_refuses_factors_whose_product_wraps():
    # 2**62 * 4 wraps to 0; a wrapped product that happened to equal the matrix's side was accepted.
    with pytest.raises(ValueError, match="too large"):
        _core.decompose(np.ones((4, 4)), [2**62, 4, 2**62], [1, 4, 1], [0, 0])


def test_c2_out_of_memory_in_worker_threads_is_a_memory_error():
    # Under a tight address-space limit an allocation fails inside a thread run_blocks started: that
    # terminated the process (exit 134). It must reach Python as MemoryError.
    script = textwrap.dedent(
        """
        import resource, numpy as np, mpo
        X = np.random.default_rng(0).standard_normal((2048, 2048))
        m = mpo.decompose(np.random.default_rng(1).standard_normal((1024, 2048)), max_bond=32)
        used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
        # 28 MB of headroom: enough for a worker thread's stack and thread-local data (with 16 MB, glibc's
        # pthread_create itself aborted: "cannot allocate memory for thread-local data", which no
        # library can catch), too little for the products' buffers (from about 40 MB both steps fit).
        resource.setrlimit(resource.RLIMIT_AS, (used + (28 << 20), resource.RLIM_INFINITY))
        outcomes = []
        # plan="kernel": the C++ kernel's threads are what this checks. "auto" may time NumPy's BLAS as the
        # faster route, and OpenBLAS ends the process itself when its buffers cannot be allocated.
        for step in (lambda: m.T.rmatmul(X, plan="kernel"), lambda: mpo.decompose(X, max_bond=256)):
            try:
                step()
                outcomes.append('ok')
            except MemoryError:
                outcomes.append('MemoryError')
        print(' '.join(outcomes))
        """
    )
    env = dict(os.environ, MPO_NUM_THREADS="2")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "MemoryError", result.stdout


# ---------------------------------------------------------------- W1-W3: scale


def test_w1_tiny_matrix_is_not_zero():
    M = _gaussian(64, 48) * 1e-170
    m = mpo.decompose(M)
    assert m.norm == pytest.approx(float(np.linalg.norm(M * 1e170)) * 1e-170, rel=1e-12)
    assert _true_error(M, m) <= 1e-12 * m.norm
    assert m.bond_dims == mpo.decompose(M * 1e170).bond_dims


def test_w2_entropy_and_bound_at_any_scale():
    G = _gaussian(64, 48)
    base = mpo.decompose(G)
    np.testing.assert_allclose(mpo.decompose(G * 1e160).entropy(), base.entropy(), rtol=1e-9)
    assert _core.entropy(np.array([1e-170, 1e-170])) == pytest.approx(math.log(2), rel=1e-15)
    cut, big = mpo.decompose(G, max_bond=4), mpo.decompose(G * 1e155, max_bond=4)
    assert math.isfinite(big.error_bound())
    assert big.error_bound() == pytest.approx(cut.error_bound() * 1e155, rel=1e-9)


def test_w3_finite_matrix_whose_norm_does_not_fit_is_refused_or_right():
    M = _gaussian(16, 16) * 1e307
    try:
        m = mpo.decompose(M)
    except OverflowError as e:
        assert "norm" in str(e)
    else:
        dense = m.to_dense()
        assert np.isfinite(dense).all() and math.isfinite(m.norm)
    top = np.finfo(np.float32).max
    F = np.full((4, 4), top, np.float32)
    with pytest.raises(OverflowError, match="float32"):
        mpo.decompose(F)
    # Within float32's range once the norm fits: computed scaled, finite and right.
    G = (_gaussian(8, 8) * 1e37).astype(np.float32)
    m = mpo.decompose(G)
    assert np.isfinite(m.to_dense()).all()
    assert _true_error(G.astype(np.float64), m) <= 1e-5 * m.norm


# ---------------------------------------------------------------- W4: weighted_svd


@pytest.mark.parametrize("scale", [1e-170, 1.0, 1e160])
def test_w4_weighted_svd_errors_are_scaled(scale):
    W = _gaussian(24, 16) * scale
    w = np.random.default_rng(3).random(24) + 0.1
    ref = mpo.weighted_svd(W / scale, 4, w)
    low = mpo.weighted_svd(W, 4, w)
    assert low.error == pytest.approx(ref.error * scale, rel=1e-9)
    assert low.weighted_error == pytest.approx(ref.weighted_error * scale, rel=1e-9)
    assert low.norm == pytest.approx(ref.norm * scale, rel=1e-12)
    assert low.relative_error() == pytest.approx(ref.relative_error(), rel=1e-9)


# ---------------------------------------------------------------- U4: max_bond=2**63


def test_u4_huge_max_bond_is_a_clean_error():
    with pytest.raises(ValueError, match="2\\*\\*63"):
        mpo.decompose(_gaussian(16, 16), max_bond=2**63)
    with pytest.raises(ValueError, match="max_bond\\[0\\]"):
        mpo.decompose(_gaussian(16, 16), shape=((4, 4), (4, 4)), max_bond=[2**64])
    # The largest cap that fits is no cap at all.
    assert mpo.decompose(_gaussian(16, 16), max_bond=2**63 - 1).bond_dims == mpo.decompose(_gaussian(16, 16)).bond_dims


# ---------------------------------------------------------------- the scale property


def _scale_cases():
    # float64 from 1e-300 to 1e300, float32 over its normal range (its largest values only while the
    # norm of a 12 x 10 matrix still fits: 3e37 * ~11).
    return [(np.float64, 10.0**e) for e in range(-300, 301, 50)] + [
        (np.float32, 10.0**e) for e in (-30, -20, -10, 0, 10, 20, 30, 37)
    ]


@pytest.mark.parametrize("dtype, scale", _scale_cases(), ids=lambda v: str(v))
def test_rebuild_error_within_bound_and_entropy_unchanged_at_any_scale(dtype, scale):
    G = _gaussian(12, 10, seed=4)
    base = mpo.decompose(G.astype(dtype), shape=((3, 4), (2, 5)), max_bond=3)
    M = (G * scale).astype(dtype)
    m = mpo.decompose(M, shape=((3, 4), (2, 5)), max_bond=3)
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(m.entropy(), base.entropy(), rtol=rtol, atol=rtol)
    assert m.bond_dims == base.bond_dims
    assert math.isfinite(m.error_bound()) and m.error_bound() > 0
    assert m.error_bound() == pytest.approx(base.error_bound() * scale, rel=rtol)
    # The true error (measured scaled) is within the bound, up to the arithmetic's rounding.
    slack = 1e-12 if dtype == np.float64 else 1e-5
    assert _true_error(M.astype(np.float64), m) <= m.error_bound() * (1 + 1e-6) + slack * m.norm
    assert m.norm == pytest.approx(base.norm * scale, rel=rtol)


# ---------------------------------------------------------------- W7, U4: rows


def test_w7_rows_range_checks_ids_in_their_own_dtype():
    M = _gaussian(12, 10)
    m = mpo.decompose(M)
    for ids in (np.array([2**64 - 1], np.uint64), np.array([2**63], np.uint64), np.array([12], np.uint8)):
        with pytest.raises(IndexError, match=str(int(ids[0]))):
            m.rows(ids)
    np.testing.assert_allclose(m.rows(np.array([11, 0], np.uint64)), M[[11, 0]], atol=1e-12)


def test_u4_rows_of_an_empty_list_is_an_empty_array_like_numpy():
    M = _gaussian(12, 10)
    m = mpo.decompose(M)
    assert m.rows([]).shape == M[[]].shape == (0, 10)
    assert m.rows(np.array([], np.int64)).shape == (0, 10)
    with pytest.raises(TypeError):
        m.rows(np.array([1.0]))


# ---------------------------------------------------------------- W8: row-weighted entropy


def test_w8_row_weighted_mpo_with_max_bond_reports_the_entropy_of_the_mpo():
    # docs/API.md: the plain entropy is that of the MPO's own plain matrix diag(row_scale) @ cores (M's
    # only when exact). A capped sweep reported M's.
    M = _gaussian(16, 16, seed=5)
    w = np.random.default_rng(6).random(16) + 0.1
    m = mpo.decompose(M, shape=((4, 4), (4, 4)), max_bond=3, row_weights=w)
    own = mpo.decompose(m.to_dense(), shape=((4, 4), (4, 4)))  # the oracle: an exact decomposition of it
    np.testing.assert_allclose(m.entropy(), own.entropy(), rtol=1e-9, atol=1e-12)
    of_M = mpo.decompose(M, shape=((4, 4), (4, 4))).entropy()
    assert abs(m.entropy()[0] - of_M[0]) > 1e-3
    # The same MPO reached by a later cut agrees (MPO.truncate measured it so already).
    later = mpo.decompose(M, shape=((4, 4), (4, 4)), row_weights=w).truncate(max_bond=3)
    np.testing.assert_allclose(later.entropy(), m.entropy(), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- U1: tol and ratio at 1e160


def _decaying(rows: int, cols: int, seed: int) -> np.ndarray:
    """A matrix whose singular values fall off (so tol and ratio really cut)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    k = min(rows, cols)
    return (u[:, :k] * 0.7 ** np.arange(k)) @ v[:, :k].T


@pytest.mark.parametrize("scale", [1e-170, 1e160])
def test_u1_tol_and_ratio_work_at_extreme_scales(scale):
    G = _decaying(32, 24, seed=7)
    for kwargs in ({"tol": 0.1}, {"ratio": 0.3}):
        base, big = mpo.decompose(G, **kwargs), mpo.decompose(G * scale, **kwargs)
        assert big.bond_dims == base.bond_dims, kwargs
        assert big.error_bound() == pytest.approx(base.error_bound() * scale, rel=1e-6), kwargs
    m, ref = mpo.decompose(G * scale), mpo.decompose(G)
    for kwargs in ({"tol": 0.1}, {"ratio": 0.3}, {"max_bond": 3}):
        cut, want = m.truncate(**kwargs), ref.truncate(**kwargs)
        assert cut.bond_dims == want.bond_dims, kwargs
        assert cut.relative_error_bound() == pytest.approx(want.relative_error_bound(), rel=1e-6), kwargs
        assert math.isfinite(cut.error_bound()) and cut.error_bound() > 0
