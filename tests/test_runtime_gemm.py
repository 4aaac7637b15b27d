"""The runtime GEMM (include/mpo/runtime_gemm.hpp, mpo._runtime_gemm): the process's BLAS for the
core's merge products, behind its switch, compared with the plain route (Eigen's GEMM)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import mpo
from mpo import _core, _runtime_gemm
from strategies import contract_cores

pytest.importorskip("scipy.linalg.cython_blas")


@pytest.fixture(autouse=True)
def restore(monkeypatch):
    # The runtime GEMM serves only a core on one thread (two BLAS thread pools compete otherwise); the
    # test process may have more, so these tests read the kernel's thread count as 1.
    monkeypatch.setattr(_runtime_gemm, "_kernel_threads", lambda: 1)
    had = _core.has_runtime_gemm()
    yield
    if had:
        _runtime_gemm.install(load=True)
    else:
        _runtime_gemm.clear()


def issue_mpo(dtype) -> mpo.MPO:
    # Issue 20's matrix: 3072 x 768 at max_bond 48, bonds (12, 48, 48, 16).
    M = np.random.default_rng(20).standard_normal((3072, 768)).astype(dtype)
    return mpo.decompose(M, ((4, 4, 8, 6, 4), (3, 4, 4, 4, 4)), max_bond=48)


def products(m: mpo.MPO, X: np.ndarray, Y: np.ndarray) -> dict[str, np.ndarray]:
    # Each way a product multiplies cores out: the dense matrix, the kernel's plan that merges every
    # core (X @ m, m @ Y and the transposed MPO), and the BLAS route.
    return {
        "to_dense": m.to_dense(),
        "kernel": m.rmatmul(X, plan="kernel"),
        "kernel_left": m.matmul(Y, plan="kernel"),
        "kernel_transposed": m.T.matmul(X.T, plan="kernel"),
        "blas": m.rmatmul(X, plan="blas"),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_runtime_gemm_products_equal_the_plain_route_and_the_oracle(dtype, monkeypatch):
    m = issue_mpo(dtype)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((64, 3072)).astype(dtype)
    Y = rng.standard_normal((768, 64)).astype(dtype)
    assert m.matmul_flops(64, plan="kernel")["groups"] == (5,)  # the plan multiplies every core out
    with monkeypatch.context() as patch:
        patch.setenv(_runtime_gemm.ENV, "0")  # the plain route: a large product would set it again
        _runtime_gemm.clear()
        before = _core.runtime_gemm_calls()
        plain = products(m, X, Y)
        assert _core.runtime_gemm_calls() == before  # Eigen's GEMM only
    assert _runtime_gemm.install(load=True) and _core.has_runtime_gemm()
    fast = products(m, X, Y)
    assert _core.runtime_gemm_calls() > before
    D = contract_cores([c.astype(np.float64) for c in m.cores], m.in_shape, m.out_shape)
    want = {"to_dense": D, "kernel": X @ D, "kernel_left": D @ Y, "kernel_transposed": D.T @ X.T, "blas": X @ D}
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for name, value in fast.items():
        assert value.dtype == dtype and value.shape == want[name].shape, name
        scale = np.linalg.norm(want[name])
        assert np.linalg.norm(value - want[name]) <= rtol * scale, name
        assert np.linalg.norm(value - plain[name]) <= rtol * scale, name


def test_the_switch_and_determinism_keep_eigens_gemm(monkeypatch):
    assert _runtime_gemm.install(load=True)
    monkeypatch.setenv(_runtime_gemm.ENV, "0")
    assert not _runtime_gemm.enabled() and not _runtime_gemm.install(load=True)
    assert not _core.has_runtime_gemm()  # switching off clears a GEMM set earlier
    m = issue_mpo(np.float32)
    before = _core.runtime_gemm_calls()
    np.ones((64, 3072), np.float32) @ m  # a large product sets nothing while switched off
    m.to_dense()
    assert _core.runtime_gemm_calls() == before and not _core.has_runtime_gemm()
    monkeypatch.delenv(_runtime_gemm.ENV)
    monkeypatch.setenv("MPO_DETERMINISTIC", "1")
    assert not _runtime_gemm.install(load=True) and not _core.has_runtime_gemm()
    monkeypatch.delenv("MPO_DETERMINISTIC")
    assert _runtime_gemm.install(load=True)


def test_to_dense_alone_never_imports_scipy(monkeypatch):
    _runtime_gemm.clear()
    monkeypatch.delitem(sys.modules, "scipy.linalg.cython_blas")
    assert not _runtime_gemm.install(load=False)
    issue_mpo(np.float64).to_dense()
    assert "scipy.linalg.cython_blas" not in sys.modules and not _core.has_runtime_gemm()


def test_without_scipy_eigen_serves(monkeypatch):
    _runtime_gemm.clear()
    monkeypatch.setitem(sys.modules, "scipy.linalg.cython_blas", None)  # import raises ImportError
    monkeypatch.setattr(_runtime_gemm, "_import_failed", False)
    assert not _runtime_gemm.install(load=True) and not _core.has_runtime_gemm()
    m = mpo.decompose(np.random.default_rng(1).standard_normal((64, 48)), ((4, 4, 4), (4, 3, 4)))
    X = np.ones((40, 64))
    assert np.allclose(X @ m, X @ m.to_dense())


def test_capsules_are_checked_before_they_are_called():
    from scipy.linalg import cython_blas

    capi = cython_blas.__pyx_capi__
    with pytest.raises(TypeError, match="sgemm must be a capsule, got"):
        _core.set_runtime_gemm(1, capi["dgemm"])
    with pytest.raises(ValueError, match="sgemm must be scipy.linalg.cython_blas's capsule of that name, got a capsule named __pyx_t_5scipy_6linalg_11cython_blas_s \\(int"):
        _core.set_runtime_gemm(capi["sdot"], capi["dgemm"])
    with pytest.raises(ValueError, match="dgemm must be scipy.linalg.cython_blas's capsule"):
        _core.set_runtime_gemm(capi["sgemm"], capi["sgemm"])  # float where double is called
    with pytest.raises(ValueError, match="give both sgemm and dgemm, or None for both"):
        _core.set_runtime_gemm(capi["sgemm"], None)
    _core.set_runtime_gemm(None, None)
    assert not _core.has_runtime_gemm()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_runtime_gemm_in_the_kernels_sweep(dtype, monkeypatch):
    # At max_bond 16 and 1024 rows the kernel keeps two merged runs and sweeps X through them: its
    # large steps go to the runtime GEMM where one is set.
    M = np.random.default_rng(21).standard_normal((3072, 768)).astype(dtype)
    m = mpo.decompose(M, ((4, 4, 8, 6, 4), (3, 4, 4, 4, 4)), max_bond=16)
    assert m.matmul_flops(1024, plan="right")["groups"] == (3, 2)
    X = np.random.default_rng(4).standard_normal((1024, 3072)).astype(dtype)
    with monkeypatch.context() as patch:
        patch.setenv(_runtime_gemm.ENV, "0")
        plain = m.rmatmul(X, plan="right")
    assert _runtime_gemm.install(load=True)
    before = _core.runtime_gemm_calls()
    fast = m.rmatmul(X, plan="right")
    assert _core.runtime_gemm_calls() > before
    D = contract_cores([c.astype(np.float64) for c in m.cores], m.in_shape, m.out_shape)
    want = X.astype(np.float64) @ D
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.linalg.norm(fast - want) <= rtol * np.linalg.norm(want)
    assert np.linalg.norm(fast - plain) <= rtol * np.linalg.norm(want)


def test_several_kernel_threads_keep_eigens_gemm(monkeypatch):
    assert _runtime_gemm.install(load=True)
    monkeypatch.setattr(_runtime_gemm, "_kernel_threads", lambda: 2)
    assert not _runtime_gemm.enabled() and not _runtime_gemm.install(load=True)
    assert not _core.has_runtime_gemm()
    assert _core.kernel_threads() >= 1
