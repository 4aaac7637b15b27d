"""Activation-aware compression (docs/ALGORITHMS.md §14) on random data: each definition against an oracle
built another way."""

import itertools
import math

import numpy as np
import pytest

import mpo
from mpo._activation import DAMPING


def _data(rows=24, cols=18, tokens=200, seed=0, correlated=True):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((rows, cols))
    X = rng.standard_normal((tokens, rows))
    if correlated:  # outlier features and correlations, as real activations have
        X = X @ rng.standard_normal((rows, rows)) * np.exp(rng.standard_normal(rows))
    return M, X


def _sqrt_psd(C):
    w, v = np.linalg.eigh(C)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_whitened_svd_is_the_optimal_rank_r_solution():
    M, X = _data()
    stats = mpo.ActivationStats.from_inputs(X)
    r = 5
    got = mpo.whitened_svd(M, r, stats)
    # Independent construction: the symmetric square root S of C + lam I (eigendecomposition, not
    # Cholesky) gives the same norm ||S E|| = ||L^T E||; Eckart-Young in that space, mapped back.
    C = stats.gram + DAMPING * np.mean(np.diag(stats.gram)) * np.eye(M.shape[0])
    S = _sqrt_psd(C)
    u, s, vt = np.linalg.svd(S @ M)
    oracle = np.linalg.solve(S, (u[:, :r] * s[:r]) @ vt[:r])
    np.testing.assert_allclose(got.to_dense(), oracle, atol=1e-8 * np.abs(oracle).max())
    assert got.weighted_error == pytest.approx(np.linalg.norm(S @ (M - oracle)), rel=1e-9)
    assert got.num_params == r * sum(M.shape)
    # No other rank-r matrix does better in the whitened norm.
    rng = np.random.default_rng(1)
    for _ in range(20):
        other = got.to_dense() + 1e-2 * rng.standard_normal((M.shape[0], r)) @ rng.standard_normal((r, M.shape[1]))
        other = np.linalg.svd(other)[0][:, :r] @ np.diag(np.linalg.svd(other)[1][:r]) @ np.linalg.svd(other)[2][:r]
        assert np.linalg.norm(S @ (M - other)) >= got.weighted_error * (1 - 1e-12)


def test_activation_error_equals_the_direct_product():
    M, X = _data()
    stats = mpo.ActivationStats.from_inputs(X)
    approx = mpo.whitened_svd(M, 4, stats).to_dense()
    direct = np.linalg.norm(X @ (M - approx)) / np.linalg.norm(X @ M)
    assert mpo.activation_error(M, approx, stats) == pytest.approx(direct, rel=1e-9)


def test_whitened_svd_beats_plain_svd_on_the_activations():
    M, X = _data()
    stats = mpo.ActivationStats.from_inputs(X)
    plain = mpo.weighted_svd(M, 4, np.ones(M.shape[0]))
    white = mpo.whitened_svd(M, 4, stats)
    assert mpo.activation_error(M, white.to_dense(), stats) < mpo.activation_error(M, plain.to_dense(), stats)
    assert white.error > plain.error  # and pays for it in the plain Frobenius norm


@pytest.mark.parametrize("scaling", ["whiten", "diagonal", "diagonal+whiten"])
@pytest.mark.parametrize("n", [2, 3])
def test_uniform_statistics_reduce_to_the_plain_method(scaling, n):
    M, _ = _data(rows=24, cols=18)
    stats = mpo.ActivationStats(7.5 * np.eye(24), 100)
    fit = mpo.decompose_activations(M, stats, n=n, max_bond=4, scaling=scaling)
    if n == 2:
        u, s, vt = np.linalg.svd(M)
        plain = (u[:, :4] * s[:4]) @ vt[:4]
    else:
        plain = mpo.decompose(M, n=n, max_bond=4).to_dense()
    np.testing.assert_allclose(fit.mpo.to_dense(), plain, atol=1e-9 * np.abs(M).max())
    np.testing.assert_allclose(mpo.whitened_svd(M, 4, stats).to_dense(), (np.linalg.svd(M)[0][:, :4] * np.linalg.svd(M)[1][:4]) @ np.linalg.svd(M)[2][:4], atol=1e-9 * np.abs(M).max())


@pytest.mark.parametrize("scaling", ["whiten", "diagonal", "diagonal+whiten"])
@pytest.mark.parametrize("n", [2, 3])
def test_rescaling_the_statistics_changes_nothing(scaling, n):
    M, X = _data()
    a = mpo.ActivationStats.from_inputs(X)
    b = mpo.ActivationStats(a.gram * 1234.5, a.tokens * 7)
    fa = mpo.decompose_activations(M, a, n=n, max_bond=4, scaling=scaling)
    fb = mpo.decompose_activations(M, b, n=n, max_bond=4, scaling=scaling)
    np.testing.assert_allclose(fa.mpo.to_dense(), fb.mpo.to_dense(), atol=1e-8 * np.abs(M).max())
    assert fa.activation_error == pytest.approx(fb.activation_error, rel=1e-7)


def test_svd_layout_whitening_is_the_whitened_svd_and_beats_diagonal():
    M, X = _data()
    stats = mpo.ActivationStats.from_inputs(X)
    fit = mpo.decompose_activations(M, stats, n=2, max_bond=5)
    np.testing.assert_allclose(fit.mpo.to_dense(), mpo.whitened_svd(M, 5, stats).to_dense(), atol=1e-8)
    assert fit.num_params == 5 * sum(M.shape)  # the whitening is folded: no extra parameters
    diag = mpo.decompose_activations(M, stats, n=2, max_bond=5, scaling="diagonal")
    plain = mpo.decompose_activations(M, stats, n=2, max_bond=5, scaling="none")
    assert fit.activation_error <= diag.activation_error and fit.activation_error <= plain.activation_error
    assert diag.num_params == 5 * sum(M.shape)
    assert fit.bound == pytest.approx(mpo.whitened_svd(M, 5, stats).relative_error(weighted=True), rel=1e-9)


def test_damping_rule_on_rank_deficient_statistics():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5, 20))  # 5 tokens, 20 features: C has rank 5
    C = X.T @ X
    w = mpo.whitening(C)
    lam = DAMPING * np.mean(np.diag(C))
    assert w.alpha == DAMPING and w.lam == pytest.approx(lam)
    np.testing.assert_allclose(w.factor @ w.factor.T, C + lam * np.eye(20), atol=1e-10 * np.abs(C).max())
    # Indefinite by rounding: an eigenvalue of -5e-8 mean(diag C). alpha climbs by 10s from 1e-9 to the
    # first value that lifts it: 1e-7.
    vals, vecs = np.linalg.eigh(C)
    vals[0] = -5e-8 * np.mean(np.diag(C))
    bad = (vecs * vals) @ vecs.T
    got = mpo.whitening(bad, damping=1e-9)
    assert got.alpha == pytest.approx(1e-7)
    # Undamped: the ladder starts at 0 and then 1e-12 for a singular C.
    assert mpo.whitening(C, damping=0).alpha > 0
    with pytest.raises(ValueError, match="all zero"):
        mpo.whitening(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="damping must be"):
        mpo.whitening(C, damping=2.0)


def test_kronecker_factors_recover_an_exact_product_and_fold_exactly():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((4, 4))
    B = rng.standard_normal((6, 6))
    A, B = A @ A.T + np.eye(4), B @ B.T + np.eye(6)
    C = np.kron(A, B)
    fa, fb = mpo.kronecker_factors(C, [4, 6])
    np.testing.assert_allclose(np.kron(fa, fb) * np.linalg.norm(C), C, rtol=1e-9, atol=1e-9 * np.abs(C).max())
    M = rng.standard_normal((24, 10))
    stats = mpo.ActivationStats(C, 50)
    full = mpo.decompose_activations(M, stats, shape=((4, 6), (2, 5)))
    np.testing.assert_allclose(full.mpo.to_dense(), M, atol=1e-9 * np.abs(M).max())
    # Capped: on an exact Kronecker C the whitened cut beats the plain cut in activation error.
    cut = mpo.decompose_activations(M, stats, shape=((4, 6), (2, 5)), max_bond=3)
    plain = mpo.decompose_activations(M, stats, shape=((4, 6), (2, 5)), max_bond=3, scaling="none")
    assert cut.activation_error < plain.activation_error
    assert cut.num_params == plain.num_params


def test_shrink_kronecker_runs_from_the_normalised_factor_to_the_identity():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((5, 5))
    f = [a @ a.T + 0.1 * np.eye(5), np.diag([4.0, 1.0, 0.25])]
    zero, half, one = (mpo.shrink_kronecker(f, beta) for beta in (0.0, 0.5, 1.0))
    for k, c in enumerate(f):
        unit = c / np.mean(np.diag(c))
        np.testing.assert_allclose(zero[k], unit, rtol=1e-12)
        np.testing.assert_allclose(one[k], np.eye(c.shape[0]), rtol=1e-12)
        np.testing.assert_allclose(half[k], (unit + np.eye(c.shape[0])) / 2, rtol=1e-12)
        assert np.linalg.eigvalsh(half[k]).min() > 0
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="shrinkage must be 'auto' or a number in \\[0, 1\\]"):
            mpo.shrink_kronecker(f, bad)
    nan = np.eye(3)
    nan[1, 2] = np.nan
    for factors, message in [
        ([np.ones(3)], r"factor 0 must be a square matrix, got shape \(3,\)"),
        ([np.eye(2), np.ones((2, 3))], r"factor 1 must be a square matrix, got shape \(2, 3\)"),
        ([nan], "factor 0 has non-finite entries"),
        ([np.zeros((3, 3))], "factor 0 must have a positive mean diagonal"),
        ([-np.eye(2)], "factor 0 must have a positive mean diagonal"),
        (np.eye(4), r"a sequence of square matrices C_k, got one array of shape \(4, 4\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            mpo.shrink_kronecker(factors, 0.5)


def test_kronecker_shrinkage_ends_and_the_auto_choice():
    M, X = _data(rows=24, cols=18, seed=5)
    stats = mpo.ActivationStats.from_inputs(X)
    held = mpo.ActivationStats.from_inputs(_data(rows=24, cols=18, seed=6)[1])
    shape = ((4, 6), (3, 6))
    plain = mpo.decompose_activations(M, stats, shape=shape, max_bond=3, scaling="none")
    assert plain.shrinkage is None
    # beta = 1 is no whitening: the plain cut, to rounding.
    ident = mpo.decompose_activations(M, stats, shape=shape, max_bond=3, shrinkage=1.0)
    assert ident.shrinkage == 1.0
    np.testing.assert_allclose(ident.mpo.to_dense(), plain.mpo.to_dense(), atol=1e-9 * np.abs(M).max())
    fixed = {beta: mpo.decompose_activations(M, stats, shape=shape, max_bond=3, shrinkage=beta)
             for beta in mpo.SHRINKAGES}
    auto = mpo.decompose_activations(M, stats, shape=shape, max_bond=3, held_out=held)
    errors = {beta: fit.activation_error for beta, fit in fixed.items()}
    best = min(errors, key=errors.get)
    assert auto.shrinkage == best
    assert auto.activation_error == pytest.approx(errors[best], rel=1e-12)
    np.testing.assert_allclose(auto.mpo.to_dense(), fixed[best].mpo.to_dense(), atol=1e-12 * np.abs(M).max())
    assert auto.activation_error <= plain.activation_error * (1 + 1e-12)
    # The betas really differ here (a test of the choice, not of a tie).
    assert max(errors.values()) > 1.01 * min(errors.values())
    # The held-out statistics only score the result: the same MPO without them.
    np.testing.assert_array_equal(
        mpo.decompose_activations(M, stats, shape=shape, max_bond=3).mpo.to_dense(), auto.mpo.to_dense()
    )
    assert auto.held_out_error == pytest.approx(mpo.activation_error(M, auto.mpo.to_dense(), held), rel=1e-12)
    # The SVD layout whitens by C itself: nothing to shrink.
    assert mpo.decompose_activations(M, stats, n=2, max_bond=3).shrinkage is None
    with pytest.raises(ValueError, match="whitens by C itself, so it must be 'auto' or 0, got 0.5"):
        mpo.decompose_activations(M, stats, n=2, max_bond=3, shrinkage=0.5)
    with pytest.raises(ValueError, match="shrinkage must be 'auto' or a number in \\[0, 1\\], got 'best'"):
        mpo.decompose_activations(M, stats, shape=shape, max_bond=3, shrinkage="best")
    with pytest.raises(ValueError, match="shrinkage acts on a Kronecker whitening .* with scaling 'diagonal'"):
        mpo.decompose_activations(M, stats, shape=shape, max_bond=3, scaling="diagonal", shrinkage=0.5)


def test_kronecker_auto_with_tol_alone_keeps_the_smallest_fit():
    # With tol alone each beta's fit is as small as its own norm allows: auto keeps the smallest (then the
    # lower activation error), not a larger fit that wins on error by its size.
    M, X = _data(rows=24, cols=18, seed=5)
    stats = mpo.ActivationStats.from_inputs(X)
    shape = ((4, 6), (3, 6))
    fixed = {b: mpo.decompose_activations(M, stats, shape=shape, tol=0.3, shrinkage=b) for b in mpo.SHRINKAGES}
    sizes = {b: f.num_params for b, f in fixed.items()}
    assert len(set(sizes.values())) > 1  # the sizes really differ here
    want = min(fixed, key=lambda b: (sizes[b], fixed[b].activation_error))
    auto = mpo.decompose_activations(M, stats, shape=shape, tol=0.3)
    assert auto.shrinkage == want and auto.num_params == min(sizes.values())


def test_fisher_and_held_out_on_the_same_interface():
    M, X = _data()
    fisher = np.random.default_rng(5).exponential(size=24)
    fit = mpo.decompose_activations(M, None, n=3, max_bond=4, scaling="fisher", row_weights=fisher)
    ref = mpo.decompose(M, n=3, max_bond=4, row_weights=fisher)
    np.testing.assert_allclose(fit.mpo.to_dense(), ref.to_dense(), atol=1e-12)
    half = mpo.ActivationStats.from_inputs(X[100:])
    fit = mpo.decompose_activations(M, mpo.ActivationStats.from_inputs(X[:100]), n=2, max_bond=4, held_out=half)
    direct = np.linalg.norm(X[100:] @ (M - fit.mpo.to_dense())) / np.linalg.norm(X[100:] @ M)
    assert fit.held_out_error == pytest.approx(direct, rel=1e-9)
    with pytest.raises(ValueError, match="row_weights"):
        mpo.decompose_activations(M, half, scaling="whiten", row_weights=fisher)
    with pytest.raises(ValueError, match="24 rows|features"):
        mpo.decompose_activations(M.T, half)


def test_stats_merge_and_safetensors_round_trip(tmp_path):
    _, X = _data()
    a, b = mpo.ActivationStats.from_inputs(X[:50]), mpo.ActivationStats.from_inputs(X[50:])
    both = a.merge(b)
    np.testing.assert_allclose(both.gram, X.T @ X, rtol=1e-12)
    assert both.tokens == len(X) and np.allclose(both.diagonal, (X**2).sum(0))
    cal = mpo.Calibration({"layer.0": a, "layer.1": both})
    path = tmp_path / "stats.safetensors"
    cal.save(path)
    back = mpo.Calibration.load(path)
    assert list(back) == ["layer.0", "layer.1"] and back["layer.1"].tokens == len(X)
    assert np.array_equal(back["layer.0"].gram, a.gram)
    a.save(tmp_path / "one.safetensors")
    assert np.array_equal(mpo.ActivationStats.load(tmp_path / "one.safetensors").gram, a.gram)


def test_load_validates_the_file(tmp_path):
    from safetensors.numpy import save_file

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        mpo.Calibration.load(bad)
    g = np.eye(3)
    save_file({"x.gram": g}, str(tmp_path / "other.safetensors"), metadata={"format": "something"})
    with pytest.raises(ValueError, match="not an activation statistics file"):
        mpo.Calibration.load(tmp_path / "other.safetensors")
    meta = {"format": "mpo.activations", "version": "9", "tokens": '{"x": 3}'}
    save_file({"x.gram": g}, str(tmp_path / "v9.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="version"):
        mpo.Calibration.load(tmp_path / "v9.safetensors")
    meta["version"] = "1"
    asym = np.array([[1.0, 2.0], [0.0, 1.0]])
    save_file({"x.gram": asym}, str(tmp_path / "asym.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="symmetric"):
        mpo.Calibration.load(tmp_path / "asym.safetensors")
    save_file({"y.gram": g}, str(tmp_path / "names.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="do not match"):
        mpo.Calibration.load(tmp_path / "names.safetensors")
    with pytest.raises(ValueError, match="tokens must be"):
        mpo.ActivationStats(g, 0)


def test_svd_curve_reads_each_rank_from_one_spectrum():
    M, X = _data()
    stats = mpo.ActivationStats.from_inputs(X)
    curve = mpo.svd_curve("a", M, stats)
    for r in (1, 3, 6):
        lr = mpo.whitened_svd(M, r, stats)
        assert curve.errors[r - 1] == pytest.approx(lr.relative_error(weighted=True) ** 2, rel=1e-9)
        assert curve.params[r - 1] == lr.num_params
    assert all(p < curve.dense_params for p in curve.params)


def test_allocate_is_optimal_for_what_it_spends_and_beats_a_uniform_share():
    rng = np.random.default_rng(6)
    curves = []
    for k, (rows, cols) in enumerate([(12, 20), (16, 8), (10, 10)]):
        M = rng.standard_normal((rows, cols)) * np.exp(rng.standard_normal(cols))
        X = rng.standard_normal((80, rows)) * np.exp(2 * rng.standard_normal(rows))
        curves.append(mpo.svd_curve(f"l{k}", M, mpo.ActivationStats.from_inputs(X)))
    options = [[(c.dense_params, 0.0, ("dense",))] + list(zip(c.params, c.errors, c.settings)) for c in curves]
    for ratio in (0.3, 0.5, 0.7):
        plan = mpo.allocate(curves, ratio=ratio)
        assert plan.total_params <= plan.budget == int(ratio * plan.dense_params)
        # Exhaustive search with the parameters the allocation spent: nothing does better (Everett).
        best = min(
            sum(o[1] for o in combo)
            for combo in itertools.product(*options)
            if sum(o[0] for o in combo) <= plan.total_params
        )
        assert plan.summed_error <= best + 1e-12
        # The same share on every layer (largest rank within it) is never better.
        uniform = 0.0
        for c in curves:
            fits = [e for p, e in zip(c.params, c.errors) if p <= ratio * c.dense_params]
            uniform += fits[-1] if fits else 1.0
        assert plan.summed_error <= uniform + 1e-12
        assert "summed squared activation error" in str(plan)
        # The allocation reports that comparison itself, layer by layer (svd_curve's points are sorted by
        # size; an unsorted curve is checked below).
        for c in curves:
            fits = [e for p, e in zip(c.params, c.errors) if p <= plan.budget / plan.dense_params * c.dense_params]
            assert plan.uniform_errors[c.name] == (fits[-1] if fits else None)
        if all(v is not None for v in plan.uniform_errors.values()):
            assert plan.uniform_summed_error == pytest.approx(sum(plan.uniform_errors.values()), rel=1e-12)
            assert f"summed squared activation error {plan.uniform_summed_error:.4g}" in str(plan).splitlines()[-1]
        else:
            assert plan.uniform_summed_error is None and "no setting that small" in str(plan)
    # A curve's points need not be sorted: the comparison takes the largest setting within the share.
    unsorted = mpo.LayerCurve("u", 100, (40, 10, 20), (0.1, 0.5, 0.3), (("a",), ("b",), ("c",)))
    assert mpo.allocate([unsorted], ratio=0.5).uniform_errors == {"u": 0.1}
    other = mpo.LayerCurve("v", 1000, (5, 500), (0.9, 0.1), (("d",), ("e",)))
    tight = mpo.allocate([unsorted, other], ratio=0.08)  # feasible, but u has no setting within 8 %
    assert tight.uniform_errors == {"u": None, "v": 0.9} and tight.uniform_summed_error is None
    assert "no setting that small" in str(tight)
    full = mpo.allocate([unsorted], ratio=1.0)  # the whole share: the dense layer, no error
    assert full.uniform_errors == {"u": 0.0} and full.uniform_summed_error == 0.0
    with pytest.raises(ValueError, match="exactly one"):
        mpo.allocate(curves)
    with pytest.raises(ValueError, match="below the smallest"):
        mpo.allocate(curves, budget=3)


@pytest.mark.parametrize("scaling", ["none", "diagonal", "whiten", "diagonal+whiten"])
def test_budget_mode_counts_every_parameter(scaling):
    M, X = _data(rows=24, cols=18)
    fit = mpo.decompose_activations(M, mpo.ActivationStats.from_inputs(X), n=3, ratio=0.4, scaling=scaling)
    assert fit.num_params <= 0.4 * M.size


def test_svd_layout_budget_is_the_largest_rank_that_fits():
    M, X = _data(rows=24, cols=18)
    stats = mpo.ActivationStats.from_inputs(X)
    for ratio in (0.2, 0.5):
        rank = int(ratio * 24 * 18 // 42)
        fit = mpo.decompose_activations(M, stats, n=2, ratio=ratio)
        np.testing.assert_allclose(fit.mpo.to_dense(), mpo.whitened_svd(M, rank, stats).to_dense(), atol=1e-9)
        plain = mpo.decompose_activations(M, stats, n=2, ratio=ratio, scaling="none")
        assert plain.mpo.bond_dims == (rank,) and plain.num_params <= ratio * M.size
    with pytest.raises(ValueError, match="rank-1"):
        mpo.decompose_activations(M, stats, n=2, ratio=0.01)


@pytest.mark.parametrize("rows,cols", [(24, 18), (12, 30)])
def test_whitened_basis_gives_the_whitened_svd_of_every_rank(rows, cols):
    # Both sides of the smaller Gram: right vectors (I > J) and left vectors with the triangular solve (I < J).
    M, X = _data(rows=rows, cols=cols)
    stats = mpo.ActivationStats.from_inputs(X)
    basis = mpo.whitened_basis(M, stats)
    assert basis.side == ("left" if rows <= cols else "right")
    want = mpo.whitened_svd(M, 1, stats)
    np.testing.assert_allclose(basis.spectrum, want.spectrum, rtol=1e-9, atol=1e-9 * want.spectrum[0])
    for r in (1, 5, min(rows, cols) - 1):
        approx = basis.truncation(r)
        oracle = mpo.whitened_svd(M, r, stats).to_dense()
        np.testing.assert_allclose(approx, oracle, atol=1e-9 * np.abs(M).max())
        assert basis.activation_error(approx) == pytest.approx(mpo.activation_error(M, approx, stats), rel=1e-9)
    for ratio in (0.3, 0.5):
        rank, approx, error = basis.fit(ratio=ratio)
        fit = mpo.decompose_activations(M, stats, n=2, ratio=ratio)
        assert rank * (rows + cols) == fit.num_params
        np.testing.assert_allclose(approx, fit.mpo.to_dense(), atol=1e-9 * np.abs(M).max())
        assert error == pytest.approx(fit.activation_error, rel=1e-9)
    assert basis.fit(max_bond=3)[0] == 3
    with pytest.raises(ValueError, match="needs ratio"):
        basis.fit()
    with pytest.raises(ValueError, match="shape"):
        basis.activation_error(M[:, :2])


@pytest.mark.parametrize("features", [1, 5, 127, 128, 129, 300])
def test_from_upper_reads_the_upper_triangle_only(features):
    rng = np.random.default_rng(features)
    X = rng.standard_normal((max(2 * features, 3), features))
    want = mpo.ActivationStats.from_inputs(X)
    # What syrk leaves: the upper triangle summed, the lower untouched (here: garbage it must not read).
    upper = np.triu(want.gram) + np.tril(rng.standard_normal((features, features)) * 1e9, -1)
    for order, copy in itertools.product("CF", (True, False)):
        given = np.array(upper, order=order)
        got = mpo.ActivationStats.from_upper(given, X.shape[0], copy=copy)
        np.testing.assert_array_equal(got.gram, want.gram)
        assert got.tokens == X.shape[0] and not got.gram.flags.writeable
        np.testing.assert_array_equal(got.diagonal, want.diagonal)
        # copy=False takes the array over (no second C); copy=True leaves the caller's array as it was.
        assert np.shares_memory(got.gram, given) == (not copy)
        if copy:
            np.testing.assert_array_equal(given, upper)
    # An array it cannot take over (float32) is copied even with copy=False.
    small = np.triu(want.gram).astype(np.float32)
    assert not np.shares_memory(mpo.ActivationStats.from_upper(small, X.shape[0], copy=False).gram, small)


def test_from_upper_rejects_what_the_constructor_rejects():
    good = np.eye(3)
    with pytest.raises(ValueError, match="square"):
        mpo.ActivationStats.from_upper(np.ones((2, 3)), 4)
    with pytest.raises(TypeError, match="real numbers"):
        mpo.ActivationStats.from_upper(good.astype(complex), 4)
    with pytest.raises(ValueError, match="finite"):
        mpo.ActivationStats.from_upper(np.triu(np.full((3, 3), np.nan)), 4)
    with pytest.raises(ValueError, match=r"gram\[1, 1\] = -1"):
        mpo.ActivationStats.from_upper(np.diag([1.0, -1.0, 1.0]), 4)
    with pytest.raises(ValueError, match="tokens must be an integer >= 1"):
        mpo.ActivationStats.from_upper(good, 0)


@pytest.mark.parametrize("blas", [True, False])
@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (7, 3), (3, 7), (64, 64)])
def test_whitening_product_is_l_transpose_times_m(rows, cols, blas, monkeypatch):
    # L^T M by BLAS's triangular product (scipy) or the plain one: the same matrix either way, and only
    # L's lower triangle is read (the factor is lower-triangular; junk above it must not matter).
    import sys

    from mpo._activation import _whiten

    if not blas:
        monkeypatch.setitem(sys.modules, "scipy.linalg.blas", None)
    rng = np.random.default_rng(rows * 100 + cols)
    L = np.tril(rng.standard_normal((rows, rows))) + 3 * np.eye(rows)
    M = rng.standard_normal((rows, cols))
    want = L.T @ M
    junk = L + (np.triu(rng.standard_normal((rows, rows)), 1) if blas else 0)
    got = _whiten(junk, M)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    assert got.shape == (rows, cols)


@pytest.mark.parametrize("rows,cols,rank", [(24, 18, 5), (12, 30, 4), (20, 20, 7), (24, 18, 17), (12, 30, 11)])
@pytest.mark.parametrize("deficient", [False, True])
def test_svd_layout_eigen_route_equals_the_decomposition_route(rows, cols, rank, deficient):
    """decompose_activations' SVD layout at a given rank reads the whitened SVD from one eigendecomposition
    of the smaller Gram (in > out: of M^T (C + lam I) M, no Cholesky); ``tol=0`` takes the plain route
    (decompose L^T M, fold L^-T back). Same matrix, errors, bound and damping, on both sides, for an
    M of lower rank than asked (zero singular values inside the kept ones) and for a fit so close that
    its error must come from the residual, not from the Gram."""
    M, X = _data(rows=rows, cols=cols)
    if deficient:
        u, s, vt = np.linalg.svd(M, full_matrices=False)
        M = (u[:, :3] * s[:3]) @ vt[:3]
    elif rank >= min(rows, cols) - 1:
        u, s, vt = np.linalg.svd(M, full_matrices=False)
        s[rank:] *= 1e-7  # relative activation error ~1e-7: below the Gram's resolution
        M = (u * s) @ vt
    stats = mpo.ActivationStats.from_inputs(X[:150])
    held = mpo.ActivationStats.from_inputs(X[150:])
    fast = mpo.decompose_activations(M, stats, n=2, max_bond=rank, held_out=held)
    plain = mpo.decompose_activations(M, stats, n=2, max_bond=rank, tol=0.0, held_out=held)
    scale = np.abs(M).max()
    np.testing.assert_allclose(fast.mpo.to_dense(), plain.mpo.to_dense(), atol=1e-9 * scale)
    assert fast.mpo.bond_dims == plain.mpo.bond_dims
    direct = np.linalg.norm(X[:150] @ (M - fast.mpo.to_dense())) / np.linalg.norm(X[:150] @ M)
    assert fast.activation_error == pytest.approx(direct, rel=1e-6, abs=1e-12)
    assert fast.activation_error == pytest.approx(plain.activation_error, rel=1e-6, abs=1e-12)
    assert fast.held_out_error == pytest.approx(plain.held_out_error, rel=1e-6, abs=1e-12)
    assert fast.weight_error == pytest.approx(plain.weight_error, rel=1e-6, abs=1e-12)
    assert fast.bound == pytest.approx(plain.bound, rel=1e-6, abs=1e-12)
    assert fast.alpha == plain.alpha == DAMPING
    # The MPO is canonical: its spectra are those of its own matrix.
    np.testing.assert_allclose(fast.mpo.spectra[0], np.linalg.svd(fast.mpo.to_dense(), compute_uv=False)[: fast.mpo.bond_dims[0]],
                               rtol=1e-8, atol=1e-10 * scale)
