"""mpo.baselines checked against the definitions of each method (issue 4)."""

import math
import sys

import numpy as np
import pytest

import mpo
from mpo import baselines


def rng_matrix(rows, cols, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, cols))


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (30, 30)])
@pytest.mark.parametrize("rho", [0.1, 0.2, 0.5, 1.0])
def test_svd_error_is_the_tail_of_the_spectrum(shape, rho):
    M = rng_matrix(*shape)
    r = baselines.svd(M, rho)
    s = np.linalg.svd(M, compute_uv=False)
    rank = min(int(rho * M.size // sum(shape)), len(s))
    assert r.params == rank * sum(shape)
    assert r.detail == f"bonds ({rank},)"
    assert math.isclose(r.error, math.sqrt(float(np.sum(s[rank:] ** 2))) / np.linalg.norm(M), abs_tol=1e-12)
    assert r.ratio <= rho and r.seconds >= 0


def test_mpo_methods_are_the_decompositions_they_name():
    M = rng_matrix(48, 64)
    budget = baselines.mpo_budget(M, 0.3, n=3)
    m = mpo.decompose(M, n=3, ratio=0.3)
    assert budget.params == m.num_params and budget.detail == f"bonds {m.bond_dims}"
    assert math.isclose(budget.error, np.linalg.norm(M - m.to_dense()) / np.linalg.norm(M), rel_tol=1e-12)
    uniform = baselines.mpo_uniform(M, 0.3, n=3)
    bonds = uniform.detail.removeprefix("bonds (").removesuffix(")").split(", ")
    cap = max(int(b) for b in bonds)
    assert uniform.ratio <= 0.3
    # the next cap up would not fit the budget
    assert mpo.decompose(M, n=3, max_bond=cap + 1).compression_ratio > 0.3


def test_tensor_axes_are_the_mpo_bonds():
    """Unfolding the tensor after its first k axes is the MPO's bond-k unfolding: same spectra."""
    M = rng_matrix(24, 36)
    T, plan = baselines.as_tensor(M, 3)
    m = mpo.decompose(M, n=3)
    for k, spectrum in enumerate(m.spectra):
        unfolding = T.reshape(math.prod(T.shape[: k + 1]), -1)
        np.testing.assert_allclose(np.linalg.svd(unfolding, compute_uv=False)[: len(spectrum)], spectrum, rtol=1e-10)
    np.testing.assert_array_equal(baselines.as_matrix_from_tensor(T, plan), M)


def test_tucker_recovers_a_tensor_of_low_multilinear_rank():
    pytest.importorskip("tensorly")
    rng = np.random.default_rng(3)
    _, plan = baselines.as_tensor(np.zeros((48, 48)), 3)
    dims = [i * j for i, j in zip(plan.in_shape, plan.out_shape)]
    core = rng.standard_normal((2, 2, 2))
    factors = [rng.standard_normal((d, 2)) for d in dims]
    T = np.einsum("abc,ia,jb,kc->ijk", core, *factors)
    M = baselines.as_matrix_from_tensor(T, plan)
    r = baselines.tucker(M, 0.2, n=3)
    ranks = [int(x) for x in r.detail.removeprefix("ranks (").removesuffix(")").split(", ")]
    assert all(x >= 2 for x in ranks)
    assert r.params == math.prod(ranks) + sum(d * x for d, x in zip(dims, ranks))
    assert r.error < 1e-8 and r.ratio <= 0.2


def test_cpd_recovers_a_rank_one_tensor():
    pytest.importorskip("tensorly")
    rng = np.random.default_rng(4)
    _, plan = baselines.as_tensor(np.zeros((48, 48)), 3)
    dims = [i * j for i, j in zip(plan.in_shape, plan.out_shape)]
    vectors = [rng.standard_normal(d) for d in dims]
    M = baselines.as_matrix_from_tensor(np.einsum("i,j,k->ijk", *vectors), plan)
    rho = sum(dims) / M.size  # exactly one rank-1 term fits
    r = baselines.cpd(M, rho, n=3)
    assert r.detail == "rank 1" and r.params == sum(dims)
    assert r.error < 1e-8


def test_compare_runs_every_method_within_budget():
    pytest.importorskip("tensorly")
    M = rng_matrix(32, 48)
    results = baselines.compare(M, [0.3, 0.1], n=3)
    assert [r.method for r in results[:5]] == ["mpo-uniform n=3", "mpo-budget n=3", "svd", "cpd n=3", "tucker n=3"]
    assert [r.target for r in results] == [0.3] * 5 + [0.1] * 5
    for r in results:
        assert r.ratio <= r.target and 0 <= r.error <= 1.0 + 1e-9


def test_tensorly_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorly", None)  # import tensorly now raises ImportError
    with pytest.raises(ImportError, match=r'need TensorLy: python -m pip install "mpo\[bench\]"'):
        baselines.cpd(rng_matrix(8, 8), 0.5, n=2)
    # the MPO and SVD baselines do not need it
    assert baselines.svd(rng_matrix(8, 8), 0.5).ratio <= 0.5


def test_bad_input():
    with pytest.raises(ValueError, match=r"method must be one of .* got 'qr'"):
        baselines.run("qr", np.eye(4), 0.5)
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        baselines.svd(np.eye(4), 1.5)
    with pytest.raises(ValueError, match=r"ratio must be >= 0\.5 for factors"):
        baselines.mpo_uniform(np.eye(4), 0.1, n=2)


def test_deprecated_names_warn_and_agree():
    """The old names of the max_bond vocabulary still work, with a DeprecationWarning."""
    import numpy as np

    import mpo
    from mpo.baselines import uniform_cap, uniform_max_bond

    with pytest.warns(DeprecationWarning, match="uniform_max_bond"):
        old = uniform_cap((4, 4, 4), (4, 4, 4), 64, 64, 0.2)
    assert old == uniform_max_bond((4, 4, 4), (4, 4, 4), 64, 64, 0.2)
    m = mpo.decompose(np.random.default_rng(0).standard_normal((12, 12)), ((3, 4), (4, 3)), max_bond=3)
    with pytest.warns(DeprecationWarning, match="cut_max_bonds"):
        again = mpo.MPO(m.cores, shape=m.shape, spectra=m.spectra, truncation_errors=m.truncation_errors,
                        norm=m.norm, limits=m.cut_max_bonds)
    assert again.cut_max_bonds == m.cut_max_bonds == (3,)
