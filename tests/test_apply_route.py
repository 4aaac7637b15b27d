"""The routes of a large product (kernel, or rebuild then NumPy's BLAS) and the timed choice between them.

Each route is compared with the dense oracle (the cores contracted with NumPy in float64), at batches
large enough for "auto" to consider the BLAS route, in every layout the kernel serves: X @ m, m @ X,
transposed MPOs, padded shapes, row-weighted MPOs, float32 and float64.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

import mpo
from mpo import _apply_route, _core
from strategies import TIMED_SHAPE, assert_right_is_timed, contract_cores, favour_sweep

ROUTES = ("kernel", "blas", "auto")


def oracle(m: mpo.MPO) -> np.ndarray:
    dense = contract_cores([c.astype(np.float64) for c in m.cores], m.in_shape, m.out_shape)
    rows, cols = m.shape
    return dense[:rows, :cols]


def weighted_or_plain(rng, dtype, padded: bool, weighted: bool) -> mpo.MPO:
    """A 48 x 36 (or, padded, 41 x 29) MPO of three cores in ``dtype``, row-weighted or plain."""
    M = rng.standard_normal((41, 29) if padded else (48, 36)).astype(dtype)
    weights = rng.uniform(0.5, 2.0, M.shape[0]) if weighted else None
    shape = None if padded else ((4, 4, 3), (3, 4, 3))
    m = mpo.decompose(M, shape, n=3, max_bond=5, row_weights=weights)
    assert m.dtype == dtype and (m.padded_shape != m.shape) == padded
    return m


@pytest.fixture(autouse=True)
def fresh_choices():
    _apply_route.clear()
    yield
    _apply_route.clear()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("transposed", [False, True])
def test_every_route_equals_the_dense_oracle(dtype, padded, weighted, transposed):
    rng = np.random.default_rng(hash((dtype == np.float32, padded, weighted, transposed)) % 2**32)
    m = weighted_or_plain(rng, dtype, padded, weighted)
    D = oracle(m)  # the cores contracted independently, then diag(row_scale) for a weighted MPO
    if weighted:
        D = D * np.asarray(m.row_scale, dtype=np.float64)[:, None]
    if transposed:
        m, D = m.T, D.T
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    X = rng.standard_normal((70, m.shape[0])).astype(dtype)  # >= BLAS_MIN_BATCH rows
    Y = rng.standard_normal((m.shape[1], 40)).astype(dtype)
    for route in ROUTES:
        for _ in range(2):  # "auto": the first call times the routes, the second takes the choice
            got = m.rmatmul(X, plan=route)
            assert got.dtype == dtype and got.shape == (70, m.shape[1])
            want = X.astype(np.float64) @ D
            assert np.linalg.norm(got - want) <= rtol * np.linalg.norm(D) * np.linalg.norm(X)
            got = m.matmul(Y, plan=route)
            want = D @ Y.astype(np.float64)
            assert got.shape == (m.shape[0], 40)
            assert np.linalg.norm(got - want) <= rtol * np.linalg.norm(D) * np.linalg.norm(Y)


def test_blas_route_matches_the_kernel_on_the_issue_shape():
    # The shape of issue 20 (3072 x 768 at max_bond 48), smaller bonds to keep the test short.
    rng = np.random.default_rng(20)
    shape = ((4, 4, 8, 6, 4), (3, 4, 4, 4, 4))
    cores, bonds = [], [1, 6, 8, 8, 6, 1]
    for k in range(5):
        cores.append(rng.standard_normal((bonds[k], shape[0][k], shape[1][k], bonds[k + 1])))
    m = mpo.MPO.from_cores(cores)
    X = rng.standard_normal((64, 3072))
    want = X @ oracle(m)
    scale = np.linalg.norm(want)
    for route in ("kernel", "blas", "auto", "left", "right", "central"):
        assert np.linalg.norm(m.rmatmul(X, plan=route) - want) <= 1e-10 * scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blas_route_keeps_two_halves_and_multiplies_out_only_their_product(dtype, monkeypatch):
    from mpo import _apply

    # Issue 20's MPO: 3072 x 768 at max_bond 48, bonds (12, 48, 48, 16).
    M = np.random.default_rng(20).standard_normal((3072, 768)).astype(dtype)
    m = mpo.decompose(M, ((4, 4, 8, 6, 4), (3, 4, 4, 4, 4)), max_bond=48)
    shapes = [c.shape for c in m.cores]
    # The narrowest bond whose halves stay within MERGE_CACHE_FACTOR: bond 12 (after core 1) and bond 16
    # (before core 5) leave a half the size of the matrix; after core 3 the halves hold 313 K numbers.
    assert _apply._blas_halves(shapes) == (3, 2)
    _apply.clear_merge_cache()
    X = np.random.default_rng(1).standard_normal((64, 3072)).astype(dtype)
    got = m.rmatmul(X, plan="blas")
    (entry,) = _apply._merge_cache.values()
    assert [c.shape for c in entry] == [(1, 128, 48, 48), (48, 24, 16, 1)]
    flops = m.matmul_flops(64, plan="blas")
    product = 2.0 * 64 * 3072 * 768
    assert flops["kept_merges"] and flops["per_call"] == 2.0 * 48 * 3072 * 768 + product < flops["mpo"]
    want = X.astype(np.float64) @ oracle(m)
    tol = (1e-4 if dtype == np.float32 else 1e-11) * np.linalg.norm(want)
    assert got.dtype == dtype and np.linalg.norm(got - want) <= tol
    assert np.array_equal(m.rmatmul(X, plan="blas"), got)  # the kept halves give the same product
    # The matrix is formed in this thread's scratch: a later product must not change an earlier result.
    kept = got.copy()
    other = m.rmatmul(2 * X, plan="blas")
    assert np.array_equal(got, kept) and np.linalg.norm(other - 2 * want) <= 2 * tol
    monkeypatch.setattr(_apply, "SCRATCH_LIMIT", 0)  # a fresh array at every product: the same product
    assert np.array_equal(m.rmatmul(X, plan="blas"), got)
    monkeypatch.undo()
    # Nothing kept: the whole chain multiplied out at every product, the same matrix to rounding.
    monkeypatch.setattr(_apply, "MERGE_CACHE_FACTOR", 0.0)
    _apply.clear_merge_cache()
    assert _apply._blas_halves(shapes) is None
    plain = m.rmatmul(X, plan="blas")
    assert not _apply._merge_cache and np.linalg.norm(plain - want) <= tol
    flops = m.matmul_flops(64, plan="blas")
    assert not flops["kept_merges"] and flops["per_call"] == flops["mpo"]


def test_multiply_out_flops_is_the_kernels_merge_count():
    # Where the kernel's plan multiplies out every core, its merge FLOPs are the tree's.
    rng = np.random.default_rng(3)
    i1, i2, j1, j2, d = 3, 5, 4, 2, 6
    cores = [rng.standard_normal((1, i1, j1, d)), rng.standard_normal((d, i2, j2, 1))]
    shapes = [list(c.shape) for c in cores]
    assert _apply_route.multiply_out_flops(shapes) == 2 * i1 * j1 * d * i2 * j2
    # Five cores with full bonds: at a huge batch the kernel merges all of them.
    m = mpo.decompose(rng.standard_normal((48, 48)), ((2, 2, 3, 2, 2), (2, 3, 2, 2, 2)))
    shapes = [list(c.shape) for c in m.cores]
    name, order, flops, groups, merge = _core.apply_plan(shapes, 10**7, False, "auto")
    assert groups == [5]
    assert merge == pytest.approx(_apply_route.multiply_out_flops(shapes), rel=1e-12)
    assert _apply_route.multiply_out_flops(shapes[:1]) == 0


def slow(seconds: float, value):
    def run():
        time.sleep(seconds)
        return np.full(2, value)
    return run


def test_choose_times_both_routes_once_and_keeps_the_faster():
    key = ("test", 1)
    calls = {"kernel": 0, "blas": 0}

    def counted(name, seconds):
        def run():
            calls[name] += 1
            time.sleep(seconds)
            return np.full(2, 1.0 if name == "kernel" else 2.0)
        return run

    route, result = _apply_route.choose(key, 1e6, 1e6, counted("kernel", 0.02), counted("blas", 0.001))
    assert route == "blas" and np.all(result == 2.0)
    assert calls == {"kernel": _apply_route.ROUNDS, "blas": _apply_route.ROUNDS}
    # Later products of this kind take the choice without timing: nothing runs inside choose.
    assert _apply_route.choose(key, 1e6, 1e6, counted("kernel", 0), counted("blas", 0)) == ("blas", None)
    assert calls == {"kernel": _apply_route.ROUNDS, "blas": _apply_route.ROUNDS}
    assert _apply_route.chosen(key) == "blas"
    route, _ = _apply_route.choose(("test", 2), 1e6, 1e6, slow(0.001, 1.0), slow(0.02, 2.0))
    assert route == "kernel"


def test_choose_skips_timing_where_flops_settle_it():
    def never():
        raise AssertionError("a route was timed although FLOPs settle the choice")

    ratio = _apply_route.FLOP_SLACK * 1.01
    assert _apply_route.choose(("test", 3), 1e6, ratio * 1e6, never, never) == ("kernel", None)
    assert _apply_route.choose(("test", 4), 1e6, math.inf, never, never) == ("kernel", None)


#: Five cores of the 768 x 3072 Gaussian matrix at max_bond 8 (factors (3,4,4,4,4) x (4,4,8,6,4)). At 64
#: rows the FLOP-cheapest plan sweeps left to right over groups (2,1,2); "right" (the same groups, 1.6 %
#: more FLOPs) and "central" (groups (3,2), 17 % more) run other steps, and "left" runs the cheapest's.
CLOSE_ORDERS = [(1, 3, 4, 8), (8, 4, 4, 8), (8, 4, 8, 8), (8, 4, 6, 8), (8, 4, 4, 1)]


def test_choose_sweep_times_the_close_orders_once_and_keeps_the_fastest():
    batch = 64
    timed = ["auto", "right", "central"]  # see CLOSE_ORDERS
    slowest_first = {"auto": 0.03, "right": 0.02, "central": 0.01}
    calls: dict[str, int] = {}

    def run(plan):
        calls[plan] = calls.get(plan, 0) + 1
        time.sleep(slowest_first[plan])
        return np.full(2, float(len(plan)))

    key = ("sweep", 1)
    pick, result = _apply_route.choose_sweep(key, CLOSE_ORDERS, batch, False, run)
    assert pick == "central" and np.all(result == len("central"))
    assert calls == {plan: _apply_route.ROUNDS for plan in timed}
    assert _apply_route.chosen_sweep(key) == "central"
    # Later products of this kind run the choice: nothing is timed.
    assert _apply_route.choose_sweep(key, CLOSE_ORDERS, batch, False, run) == ("central", None)
    assert sum(calls.values()) == _apply_route.ROUNDS * len(timed)


def test_choose_sweep_skips_timing_where_nothing_is_left_to_choose(monkeypatch):
    def never(plan):
        raise AssertionError(f"plan {plan} was timed although nothing is left to choose")

    small = _apply_route.BLAS_MIN_BATCH - 1
    assert _apply_route.choose_sweep(("sweep", 2), CLOSE_ORDERS, small, False, never) == ("auto", None)
    assert _apply_route.chosen_sweep(("sweep", 2)) is None  # below the batch nothing is recorded
    # A choice filed under a key whose rounded batch covers smaller batches too is not taken below 32.
    _apply_route.choose_sweep(("sweep", 5), CLOSE_ORDERS, 64, False, lambda plan: np.zeros(1))
    assert _apply_route.chosen_sweep(("sweep", 5)) is not None
    assert _apply_route.choose_sweep(("sweep", 5), CLOSE_ORDERS, small, False, never) == ("auto", None)
    # Two cores whose every plan merges them into one: the orders run the same steps.
    one_group = [(1, 2, 2, 2), (2, 2, 2, 1)]
    assert {_core.apply_plan(one_group, 256, False, p)[3][0] for p in ("auto", *_apply_route.ORDERS)} == {2}
    assert _apply_route.choose_sweep(("sweep", 3), one_group, 256, False, never) == ("auto", None)
    assert _apply_route.chosen_sweep(("sweep", 3)) == "auto"
    monkeypatch.setenv("MPO_DETERMINISTIC", "1")
    assert _apply_route.choose_sweep(("sweep", 4), CLOSE_ORDERS, 64, False, never) == ("auto", None)


def test_a_timed_sweep_order_runs_and_matmul_flops_reports_it(monkeypatch):
    # Make "right" the fastest order by slowing every other plan's kernel call; X @ m must then run the
    # right-to-left sweep, give the oracle's product, and matmul_flops must report that sweep's plan.
    rng = np.random.default_rng(12)
    m = mpo.decompose(rng.standard_normal((256, 144)), TIMED_SHAPE, max_bond=6)
    shapes = [list(c.shape) for c in m.cores]
    batch = 64
    assert_right_is_timed(shapes, batch)
    ran = favour_sweep(monkeypatch, "right")
    X = rng.standard_normal((batch, 256))
    monkeypatch.setattr(_apply_route, "FLOP_SLACK", 0.0)  # keep the BLAS route out of this test
    np.testing.assert_allclose(X @ m, X @ oracle(m), rtol=1e-10, atol=1e-10)
    key = _apply_route.sweep_key(shapes, False, False, batch, m.dtype, keep_merges=True)  # the MPO's own cores
    assert _apply_route.chosen_sweep(key) == "right"
    ran.clear()
    np.testing.assert_allclose(X @ m, X @ oracle(m), rtol=1e-10, atol=1e-10)
    assert ran == ["right"]
    info = m.matmul_flops(batch)
    assert info["route"] == "kernel" and info["plan"] == "right"
    assert info["mpo"] == _core.apply_plan(shapes, batch, False, "right")[2]
    assert info["kept_merges"] is False and info["per_call"] == info["mpo"]


def test_route_key_rounds_the_batch_and_tells_dtypes_apart():
    shapes = [(1, 2, 2, 3), (3, 2, 2, 1)]
    key = _apply_route.route_key
    assert key(shapes, False, False, 33, np.float32) == key(shapes, False, False, 64, np.float32)
    assert key(shapes, False, False, 64, np.float32) != key(shapes, False, False, 65, np.float32)
    assert key(shapes, False, False, 64, np.float32) != key(shapes, False, False, 64, np.float64)
    assert key(shapes, False, False, 64, np.float32) != key(shapes, True, False, 64, np.float32)
    # The sweep-order cache also tells products that keep the cheapest plan's merges from those that do not.
    kept, cast = (_apply_route.sweep_key(shapes, False, False, 33, np.float32, k) for k in (True, False))
    assert kept != cast and kept[:-1] == cast[:-1] == key(shapes, False, False, 64, np.float32)


def test_matmul_flops_reports_the_route_taken():
    rng = np.random.default_rng(8)
    m = mpo.decompose(rng.standard_normal((48, 36)), ((4, 4, 3), (3, 4, 3)))
    assert m.matmul_flops(8)["route"] == "kernel"  # below BLAS_MIN_BATCH
    assert m.matmul_flops(64)["route"] is None  # not yet timed
    assert m.matmul_flops(64, plan="kernel")["route"] == "kernel"
    blas = m.matmul_flops(64, plan="blas")
    assert blas["route"] == "blas" and blas["plan"] == "blas" and blas["groups"] == (3,)
    assert blas["mpo"] == blas["blas"] == blas["merge_flops"] + 2.0 * 64 * 48 * 36
    m.rmatmul(rng.standard_normal((64, 48)))
    info = m.matmul_flops(64)
    assert info["route"] in ("kernel", "blas")
    assert info["route"] == _apply_route.chosen(_apply_route.route_key(
        [c.shape for c in m.cores], False, False, 64, m.dtype))
    assert (info["plan"] == "blas") == (info["route"] == "blas")


def test_unknown_plan_names_every_plan():
    m = mpo.decompose(np.eye(12), ((3, 4), (4, 3)))
    with pytest.raises(ValueError, match=r"plan must be one of \('auto', 'left', 'right', 'central', 'kernel', 'blas'\), got 'fast'"):
        m.rmatmul(np.ones((2, 12)), plan="fast")


def test_deterministic_runs_the_kernel_without_timing(monkeypatch):
    # MPO_DETERMINISTIC=1: the BLAS route is never timed or taken, so a product repeats bit for bit.
    def never():
        raise AssertionError("a route was timed under MPO_DETERMINISTIC=1")

    monkeypatch.setenv("MPO_DETERMINISTIC", "1")
    assert _apply_route.choose(("det", 1), 1e6, 1e6, never, never) == ("kernel", None)
    shapes = [(1, 2, 2, 3), (3, 2, 2, 1)]
    on = _apply_route.route_key(shapes, False, False, 64, np.float32)
    monkeypatch.setenv("MPO_DETERMINISTIC", "0")
    assert _apply_route.route_key(shapes, False, False, 64, np.float32) != on
    # Through X @ m at a batch where the BLAS route would be considered: the kernel's own answer.
    m = mpo.decompose(np.random.default_rng(5).standard_normal((64, 48)), n=3, max_bond=8)
    X = np.random.default_rng(6).standard_normal((256, 64))
    monkeypatch.setenv("MPO_DETERMINISTIC", "1")
    _apply_route.clear()
    np.testing.assert_array_equal(X @ m, m.rmatmul(X, plan="kernel"))
    assert _apply_route.chosen(_apply_route.route_key([c.shape for c in m.cores], False, False, 256, X.dtype)) == "kernel"
