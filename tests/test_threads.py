"""Calls from several threads at once give the same results as serial calls.

The kernels release the GIL, so these calls really overlap; the results must still be
bit-identical to serial ones (no shared scratch space, no races on the inputs).
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import mpo

SHAPE = ((4, 4, 4, 4), (4, 4, 4, 4))  # 256 x 256, bonds (16, 256, 16)
WORKERS = 8


@pytest.fixture(scope="module")
def matrices():
    rng = np.random.default_rng(42)
    out = []
    for t in range(12):
        M = rng.standard_normal((256, 256))
        if t % 3 == 1:
            M = M.astype(np.float32)
        if t % 4 == 2:
            M = np.asfortranarray(M)
        out.append(M)
    return out


def same(a, b):
    assert tuple(a.bond_dims) == tuple(b.bond_dims)
    for x, y in zip(a.cores, b.cores):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()
    for x, y in zip(a.spectra, b.spectra):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    assert np.asarray(a.truncation_errors).tobytes() == np.asarray(b.truncation_errors).tobytes()


@pytest.mark.parametrize("kw", [{}, {"max_bond": 20}, {"tol": 0.2}])
def test_decompose_in_threads_equals_serial(matrices, kw):
    serial = [mpo.decompose(M, SHAPE, **kw) for M in matrices]
    with ThreadPoolExecutor(WORKERS) as ex:
        parallel = list(ex.map(lambda M: mpo.decompose(M, SHAPE, **kw), matrices))
    for a, b in zip(serial, parallel):
        same(a, b)


def test_same_input_from_many_threads(matrices):
    M = matrices[0]
    ref = mpo.decompose(M, SHAPE, max_bond=32)
    with ThreadPoolExecutor(WORKERS) as ex:
        results = list(ex.map(lambda _: mpo.decompose(M, SHAPE, max_bond=32), range(16)))
    for r in results:
        same(ref, r)


def test_shared_mpo_methods_in_threads(matrices):
    """One MPO used from many threads at once: to_dense, truncate, entropy, bounds."""
    m = mpo.decompose(matrices[3], SHAPE)
    dense = m.to_dense()
    caps = [1, 2, 4, 8, 16, 64, 128, 256] * 2
    serial = [m.truncate(max_bond=b) for b in caps]

    def work(b):
        return m.to_dense(), m.truncate(max_bond=b), m.entropy(), m.error_bound()

    with ThreadPoolExecutor(WORKERS) as ex:
        results = list(ex.map(work, caps))
    # Rebuilds read the cores where they lie, and Eigen's vectorised kernels peel loops for alignment:
    # equal cores at other addresses may round differently in the last bit. A race would not.
    tiny = 16 * np.finfo(dense.dtype).eps * float(np.abs(dense).max())
    for (d, t, S, eb), s in zip(results, serial):
        np.testing.assert_allclose(d, dense, rtol=0, atol=tiny)
        same(t, s)
        assert np.asarray(S).tobytes() == np.asarray(m.entropy()).tobytes()
        assert eb == m.error_bound()
    for t, s in zip([r[1] for r in results], serial):
        np.testing.assert_allclose(t.to_dense(), s.to_dense(), rtol=0, atol=tiny)


def test_plan_shape_and_decompose_mixed_in_threads(matrices):
    def work(i):
        M = matrices[i % len(matrices)]
        if i % 2:
            return mpo.plan_shape(30522 + i, 384, 5)
        return mpo.decompose(M, n=4, max_bond=16)

    serial = [work(i) for i in range(20)]
    with ThreadPoolExecutor(WORKERS) as ex:
        parallel = list(ex.map(work, range(20)))
    for a, b in zip(serial, parallel):
        if isinstance(a, tuple):
            assert a == b
        else:
            same(a, b)
