"""Every decomposition result offers one interface (``mpo._result.Approximation``): ``to_dense()``,
``num_params``, ``compression_ratio`` and ``relative_error``, each checked against an oracle computed
another way (the factors multiplied by hand, the parameters counted from the shapes, the error measured
with NumPy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import mpo
from mpo import _core, baselines, stacked
from mpo._result import Approximation


def _matrix(rows=48, cols=36, seed=0):
    rng = np.random.default_rng(seed)
    # Decaying spectrum, so that every method at every size keeps a visible but not total error.
    u, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    s = 0.8 ** np.arange(min(rows, cols))
    return (u[:, : s.size] * s) @ v[: s.size]


def _error(M, dense):
    return float(np.linalg.norm(M - dense) / np.linalg.norm(M))


def _check(result, M, dense_oracle, params_oracle, size):
    assert isinstance(result, Approximation)
    dense = result.to_dense()
    assert dense.shape == np.shape(M)
    np.testing.assert_allclose(dense, dense_oracle, rtol=1e-9, atol=1e-9 * np.abs(dense_oracle).max())
    assert result.num_params == params_oracle
    assert result.compression_ratio == pytest.approx(params_oracle / size, rel=1e-12)
    measured = _error(np.asarray(M, dtype=np.float64), dense_oracle)
    assert result.relative_error(M=M) == pytest.approx(measured, rel=1e-9)
    assert 0 < measured < 1  # a real cut, so the comparisons above could fail
    return measured


def test_mpo():
    M = _matrix()
    m = mpo.decompose(M, ((4, 3, 4), (3, 4, 3)), max_bond=5)
    d = (1, *m.bond_dims, 1)
    params = sum(d[k] * i * j * d[k + 1] for k, (i, j) in enumerate(zip(m.in_shape, m.out_shape)))
    measured = _check(m, M, _core.rebuild(m.cores, "float64")[:48, :36], params, M.size)
    # The sweep knows its error without the matrix.
    assert m.relative_error() == pytest.approx(measured, rel=1e-6)
    cut = m.truncate(max_bond=3)
    with pytest.raises(ValueError, match=r"does not know its true error .* relative_error\(M=M\)"):
        cut.relative_error()


def test_low_rank():
    M = _matrix()
    w = np.linspace(0.5, 2.0, M.shape[0])
    lr = mpo.weighted_svd(M, 6, w)
    measured = _check(lr, M, lr.left.astype(np.float64) @ lr.right, 6 * (48 + 36), M.size)
    assert lr.relative_error() == pytest.approx(measured, rel=1e-9)
    with pytest.raises(ValueError, match="weighted=True"):
        lr.relative_error(True, M=M)


@pytest.mark.parametrize("form, bank", [("per_matrix", None), ("shared", None), ("tucker", 2)])
def test_stacked(form, bank):
    rng = np.random.default_rng(1)
    blocks = [_matrix(16, 16, seed=k) + 0.01 * rng.standard_normal((16, 16)) for k in range(3)]
    s = stacked.decompose(blocks, form, rank=5, bank=bank)
    # Each block by the documented formula U Σ_i V and by applying it to the identity (X @ W_i).
    by_formula = np.stack([s.block(i) for i in range(3)])
    by_apply = np.stack(s.apply(np.eye(16), [0, 1, 2]))
    np.testing.assert_allclose(by_formula, by_apply, atol=1e-12)
    measured = _check(s, np.stack(blocks), by_apply, stacked.num_params(form, 3, 16, 5, bank), 3 * 16 * 16)
    assert s.relative_error() == pytest.approx(measured, rel=1e-6)


@pytest.mark.parametrize("method", ["svd", "mpo-uniform", "mpo-budget", "cpd", "tucker"])
def test_baselines(method):
    if method in ("cpd", "tucker"):
        pytest.importorskip("tensorly")
    M = _matrix()
    r = baselines.run(method, M, 0.3, n=3)
    # The stored approximation checked by an independent route where one exists: the SVD by NumPy.
    oracle = r.to_dense()
    if method == "svd":
        u, s, vt = np.linalg.svd(M)
        rank = r.params // (48 + 36)
        oracle = (u[:, :rank] * s[:rank]) @ vt[:rank]
    measured = _check(r, M, oracle, r.params, M.size)
    assert r.relative_error() == pytest.approx(measured, rel=1e-9)
    assert math.isclose(r.ratio, r.params / M.size)


def test_shape_mismatch_names_both_shapes():
    m = mpo.decompose(_matrix(), ((4, 3, 4), (3, 4, 3)), max_bond=5)
    with pytest.raises(ValueError, match=r"approximation's shape \(48, 36\), got \(36, 48\)"):
        m.relative_error(M=_matrix().T)
