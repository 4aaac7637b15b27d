"""Hypothesis strategies and dense reference helpers shared by the Python tests.

The references here are written straight from the documented layout (docs/API.md,
docs/ALGORITHMS.md §1): M is reshaped row-major to (i1..in, j1..jn), permuted to
(i1, j1, i2, j2, ..., in, jn), and bond k (k = 0..n-2, between core k and core k+1)
is the unfolding (prod_{m<=k} i_m j_m) x (the rest).  They use plain NumPy only, so
they are an oracle independent of the library.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st

# The n values the issue asks for, and per-n caps that keep every side <= 64 so the
# whole suite stays fast: n=2 -> factors <= 8, n=3 -> <= 4, n=5 -> <= 3, n=7 -> <= 2.
NS = (2, 3, 5, 7)
MAX_SIDE = 64
MAX_FACTOR = {2: 8, 3: 4, 5: 3, 7: 2}
DTYPES = (np.float64, np.float32)


def exact_rtol(dtype) -> float:
    """Relative Frobenius tolerance for an exact rebuild (issue 2)."""
    return 1e-12 if np.dtype(dtype) == np.float64 else 1e-5


def spectrum_rtol(dtype) -> float:
    """Singular values vs a float64 LAPACK SVD, relative to the largest."""
    return 1e-10 if np.dtype(dtype) == np.float64 else 2e-5


# --------------------------------------------------------------------------- helpers


def fro(a) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64)))


def slack(M) -> float:
    """Rounding allowance on an absolute Frobenius error of M's size."""
    return exact_rtol(M.dtype) * fro(M)


def dense_error(M, R) -> float:
    """||M - R||_F computed in float64."""
    return fro(np.asarray(M, dtype=np.float64) - np.asarray(R, dtype=np.float64))


def rel_error(M, R) -> float:
    nm = fro(M)
    err = dense_error(M, R)
    return err / nm if nm > 0 else err


def pair_products(in_shape, out_shape):
    return [int(i) * int(j) for i, j in zip(in_shape, out_shape)]


def full_bonds(in_shape, out_shape):
    """Eq. 2: d_k = min(prod_{m<=k} i_m j_m, prod_{m>k} i_m j_m)."""
    p = pair_products(in_shape, out_shape)
    total = math.prod(p)
    out = []
    left = 1
    for k in range(len(p) - 1):
        left *= p[k]
        out.append(min(left, total // left))
    return tuple(out)


def consistent_bonds(caps, in_shape, out_shape):
    """The bonds a generic matrix gets under per-bond caps.

    A bond can never exceed what its neighbour bond times the core's pair size i_k j_k
    can carry (d_k <= d_{k-1} i_k j_k and d_k <= i_{k+1} j_{k+1} d_{k+1}), so a cap on
    one bond can lower its neighbours when some i_k j_k is small.  Starting from
    min(cap_k, full_k), apply those two limits until nothing changes.
    """
    p = pair_products(in_shape, out_shape)
    b = [min(c, f) for c, f in zip(caps, full_bonds(in_shape, out_shape))]
    changed = True
    while changed:
        changed = False
        for k in range(len(b)):
            left = b[k - 1] if k > 0 else 1
            right = b[k + 1] if k + 1 < len(b) else 1
            new = min(b[k], left * p[k], right * p[k + 1])
            if new != b[k]:
                b[k], changed = new, True
    return tuple(b)


def unfold(M, in_shape, out_shape, k):
    """Bond-k unfolding M[i1 j1 .. ik jk ; i_{k+1} j_{k+1} .. in jn] in float64."""
    n = len(in_shape)
    T = np.asarray(M, dtype=np.float64).reshape(tuple(in_shape) + tuple(out_shape))
    perm = [ax for m in range(n) for ax in (m, n + m)]
    T = T.transpose(perm)
    left = math.prod(pair_products(in_shape[: k + 1], out_shape[: k + 1]))
    return T.reshape(left, -1)


def pad(M, padded_shape):
    P = np.zeros(padded_shape, dtype=np.float64)
    M = np.asarray(M, dtype=np.float64)
    P[: M.shape[0], : M.shape[1]] = M
    return P


def reference_spectra(M, in_shape, out_shape):
    return [
        np.linalg.svd(unfold(M, in_shape, out_shape, k), compute_uv=False)
        for k in range(len(in_shape) - 1)
    ]


def contract_cores(cores, in_shape, out_shape):
    """Rebuild the padded dense matrix from cores laid out (d_{k-1}, i_k, j_k, d_k)."""
    n = len(cores)
    T = np.ones((1,), dtype=np.float64)  # running tensor, last axis is the open bond
    for c in cores:
        T = np.tensordot(T, np.asarray(c, dtype=np.float64), axes=([T.ndim - 1], [0]))
    # T has axes (1?, i1, j1, ..., in, jn, 1) -- the leading 1 was consumed by tensordot.
    T = T.reshape([x for pair in zip(in_shape, out_shape) for x in pair])
    perm = [2 * m for m in range(n)] + [2 * m + 1 for m in range(n)]
    T = T.transpose(perm)
    return T.reshape(math.prod(in_shape), math.prod(out_shape))


def route_rtol(dtype) -> float:
    """Agreement of two routes' spectra and errors, relative to the largest singular value / ||M||.
    float32 routes may form their Gram matrices in float32, in different orders: their cuts then keep
    subspaces that differ by ~1e-6 ||A||^2 / gap, which a later cut at close singular values carries
    into the spectra (measured up to 4.4e-5 over the thorough Hypothesis profile, caps of 1-3)."""
    return 1e-10 if np.dtype(dtype) == np.float64 else 1e-4


def assert_same_decomposition(first, second, M, in_shape, out_shape):
    """Two raw `_core.decompose` results of M made by different routes agree: spectra, truncation errors,
    cuts and their matrices' errors, to route_rtol of M's dtype. A singular value at the zero threshold
    (rounding level: Kronecker sums, caps at an exact rank) may be kept by one route and dropped by the
    other, and a cut may be flagged by one alone when what it drops is at that level: both are then
    below the tolerance."""
    tol = route_rtol(M.dtype)
    top = max(float(s[0]) for s in second["spectra"])
    for a, b in zip(first["spectra"], second["spectra"]):
        common = min(len(a), len(b))
        np.testing.assert_allclose(a[:common], b[:common], rtol=0, atol=tol * top)
        assert np.all(np.concatenate([a[common:], b[common:]]) <= tol * top), (a, b)
    np.testing.assert_allclose(first["truncation_errors"], second["truncation_errors"], rtol=0, atol=tol * fro(M))
    for cut_a, cut_b, eps_a, eps_b in zip(first["cut"], second["cut"], first["truncation_errors"],
                                          second["truncation_errors"]):
        assert cut_a == cut_b or max(eps_a, eps_b) <= tol * fro(M)
    err_first = dense_error(M, contract_cores(first["cores"], in_shape, out_shape))
    err_second = dense_error(M, contract_cores(second["cores"], in_shape, out_shape))
    assert abs(err_first - err_second) <= tol * fro(M)


def entropy_from_spectrum(s) -> float:
    s = np.asarray(s, dtype=np.float64)
    w = s * s
    tot = w.sum()
    if tot == 0:
        return 0.0
    v = w[w > 0] / tot
    return float(-(v * np.log(v)).sum())


def kron_sum(rng, in_shape, out_shape, rank, integer=False):
    """A matrix of MPO rank <= `rank`: a sum of `rank` Kronecker products.

    integer=True draws small nonzero integer factors, so M is exact in float32 too.
    """
    I, J = math.prod(in_shape), math.prod(out_shape)
    M = np.zeros((I, J))
    for _ in range(rank):
        term = np.ones((1, 1))
        for i, j in zip(in_shape, out_shape):
            if integer:
                f = rng.integers(1, 4, size=(i, j)) * rng.choice([-1, 1], size=(i, j))
            else:
                f = rng.standard_normal((i, j))
            term = np.kron(term, f.astype(np.float64))
        M += term
    return M


def with_unfolding_spectrum(rng, in_shape, out_shape, s):
    """An n = 2 matrix M whose one unfolding, (i1 j1) × (i2 j2), has singular values s and random
    singular vectors. Returns (M, that unfolding)."""
    (i1, i2), (j1, j2) = in_shape, out_shape
    u, _ = np.linalg.qr(rng.standard_normal((i1 * j1, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((i2 * j2, len(s))))
    unfolding = (u * s) @ v.T
    M = unfolding.reshape(i1, j1, i2, j2).transpose(0, 2, 1, 3).reshape(i1 * i2, j1 * j2)
    return M, unfolding


def orthonormal_kron_sum(seed, rank=4):
    """A 256 × 256 sum of `rank` Kronecker products of 16 × 16 factors whose flattened columns are
    orthonormal (factors (16, 16) × (16, 16)): its unfolding has `rank` singular values 1 and the rest
    zeros. Seed 5 made Eigen's QR iteration give up on that unfolding's column Gram matrix."""
    rng = np.random.default_rng(seed)
    a, _ = np.linalg.qr(rng.standard_normal((256, rank)))
    b, _ = np.linalg.qr(rng.standard_normal((256, rank)))
    return sum(np.kron(a[:, t].reshape(16, 16), b[:, t].reshape(16, 16)) for t in range(rank))


# ------------------------------------------------------------------------ strategies


@st.composite
def factors(draw, n, max_prod=MAX_SIDE, max_factor=None):
    """n factors >= 1 whose product is <= max_prod."""
    cap = MAX_FACTOR.get(n, 2) if max_factor is None else max_factor
    out, p = [], 1
    for _ in range(n):
        f = draw(st.integers(1, max(1, min(cap, max_prod // p))))
        out.append(f)
        p *= f
    return tuple(out)


@st.composite
def factor_shapes(draw, ns=NS, max_prod=MAX_SIDE):
    n = draw(st.sampled_from(ns))
    return draw(factors(n, max_prod)), draw(factors(n, max_prod))


class Case(NamedTuple):
    M: np.ndarray
    in_shape: tuple
    out_shape: tuple
    kind: str

    @property
    def shape(self):
        return (self.in_shape, self.out_shape)

    @property
    def n(self):
        return len(self.in_shape)


KINDS = ("gaussian", "scaled", "kron", "integers")


@st.composite
def cases(draw, ns=NS, dtypes=DTYPES, kinds=KINDS, max_prod=MAX_SIDE):
    """A random matrix with a random factor shape, dtype and memory order.

    kinds: 'gaussian' (generic, full rank at every bond), 'scaled' (gaussian times
    10^e), 'kron' (sum of a few Kronecker products: rank-deficient bonds), 'integers'
    (small integers: ties and exact zeros in the spectra).
    """
    in_shape, out_shape = draw(factor_shapes(ns, max_prod))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    order = draw(st.sampled_from("CF"))
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    I, J = math.prod(in_shape), math.prod(out_shape)
    if kind == "gaussian":
        M = rng.standard_normal((I, J))
    elif kind == "scaled":
        M = rng.standard_normal((I, J)) * 10.0 ** draw(st.integers(-4, 4))
    elif kind == "kron":
        M = kron_sum(rng, in_shape, out_shape, draw(st.integers(1, 3)))
    else:
        M = rng.integers(-2, 3, size=(I, J)).astype(np.float64)
        if not M.any():
            M[0, 0] = 1.0
    M = np.array(M, dtype=dtype, order=order)
    return Case(M, in_shape, out_shape, kind)


#: The factors of the 256 x 144 MPOs (max_bond 6) of the tests that run a timed sweep order: at 64 rows
#: the cheapest plan sweeps left to right over groups (2, 2); "central" runs the same steps, "right" the
#: same groups the other way (equal FLOPs); see assert_right_is_timed.
TIMED_SHAPE = ((4, 4, 4, 4), (3, 4, 4, 3))


def favour_sweep(monkeypatch, fast: str) -> list:
    """Make ``fast`` the fastest plan of ``mpo._core.apply`` (every other plan sleeps 10 ms a call) and
    return the list of plan names the kernel is called with from then on, for tests of the timed choice
    of a sweep order (``mpo._apply_route.choose_sweep``)."""
    import time

    from mpo import _core

    real_apply = _core.apply
    ran: list = []

    def apply(cores, transposed, x, batch_last, out_width, plan="auto", merge=True):
        ran.append(plan)
        if plan != fast:
            time.sleep(0.01)
        return real_apply(cores, transposed, x, batch_last, out_width, plan, merge)

    monkeypatch.setattr(_core, "apply", apply)
    return ran


def assert_right_is_timed(shapes, batch):
    """The precondition of the tests that make "right" the fastest: the cheapest plan sweeps left to
    right and "right" is an alternative with steps of its own within SWEEP_SLACK."""
    from mpo import _apply_route, _core

    auto, right = (_core.apply_plan(shapes, batch, False, p) for p in ("auto", "right"))
    assert auto[0] == "left" and (auto[1], auto[3]) != (right[1], right[3]), (auto, right)
    assert right[2] <= _apply_route.SWEEP_SLACK * auto[2], (auto, right)
