"""The core's symmetric eigensolver: the k-vector route (bisection, inverse iteration, QR, back
transform) against LAPACK's eigh, on spectra that are hard for it (repeated, clustered, zero, negative,
far-scaled) as well as on Gram matrices; and its fallback to the full solver."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpo import _core
from strategies import orthonormal_kron_sum, unfold


def _check_eigenpairs(a, count, result, *, rtol=1e-11):
    """values are the `count` largest eigenvalues; vectors are orthonormal eigenvectors for them."""
    values, vectors, _ = result
    expected = np.linalg.eigvalsh(a)[::-1][:count]
    scale = max(np.abs(np.linalg.eigvalsh(a)).max(), np.finfo(float).tiny)
    assert values.shape == (count,) and vectors.shape == (a.shape[0], count)
    if count == 0:
        return
    np.testing.assert_allclose(values, expected, rtol=0, atol=rtol * scale)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(count), rtol=0, atol=1e-13 * a.shape[0])
    # Eigenvectors up to rotations within (near-)repeated eigenvalues: A·V = V·diag(values).
    residual = a @ vectors - vectors * values
    assert np.abs(residual).max() <= rtol * scale * np.sqrt(a.shape[0])


def _gram(rng, m, width):
    x = rng.standard_normal((m, width))
    return x @ x.T


def _from_spectrum(rng, spectrum):
    q, _ = np.linalg.qr(rng.standard_normal((len(spectrum), len(spectrum))))
    a = (q * spectrum) @ q.T
    return (a + a.T) / 2


# The recurrences run 32 shifts side by side: the lane groups' edges (one matrix row, fewer vectors than
# lanes, exactly a group, one past it, two groups and one) besides the sizes the decompositions meet.
LANE_EDGES = [(m, count) for m in (1, 2, 5, 31, 32, 33, 65) for count in sorted({1, max(1, m // 2), m})]


@pytest.mark.parametrize("m,count", [(64, 16), (144, 32), (144, 72), (256, 32), (256, 100), (300, 140)] + LANE_EDGES)
def test_partial_route_on_gram_matrices_matches_lapack(m, count):
    a = _gram(np.random.default_rng(m + count), m, 3 * m)
    result = _core.symmetric_eigen(a, count, "partial")
    assert result is not None and result[2] == "partial"
    _check_eigenpairs(a, count, result)


def _hard_spectra(m):
    rng = np.random.default_rng(11)
    wilkinson = np.diag(np.abs(np.arange(m) - (m - 1) / 2)) + np.diag(np.ones(m - 1), 1) + np.diag(np.ones(m - 1), -1)
    kron = np.kron(np.eye(m // 8), _gram(rng, 8, 8))
    return {
        "identity": np.eye(m),
        "zero": np.zeros((m, m)),
        "diagonal": np.diag(rng.permutation(np.arange(m, dtype=float))),
        "repeated": _from_spectrum(rng, np.repeat([5.0, 3.0, 1.0, 0.0], m // 4)),
        "clustered": _from_spectrum(rng, 1 + 1e-13 * np.arange(m)),
        "rank_deficient": _gram(rng, m, m // 5),
        "negative": _from_spectrum(rng, rng.standard_normal(m) * 10),
        "kron": kron,
        "wilkinson": wilkinson,  # pairs of eigenvalues equal to many digits
        "tiny": _gram(rng, m, m) * 1e-200,
        "huge": _gram(rng, m, m) * 1e200,
    }


@pytest.mark.parametrize("kind", list(_hard_spectra(96)))
@pytest.mark.parametrize("count", [1, 8, 48])
def test_hard_spectra_give_valid_eigenpairs_by_either_route(kind, count):
    a = _hard_spectra(96)[kind]
    partial = _core.symmetric_eigen(a, count, "partial")
    if kind == "zero":
        assert partial is None  # nothing to scale by: refused, and auto answers by the full solver
    else:
        _check_eigenpairs(a, count, partial)  # repeated and clustered eigenvalues included
    _check_eigenpairs(a, count, _core.symmetric_eigen(a, count, "auto"))


def test_auto_takes_the_partial_route_only_for_a_part_of_a_large_matrix():
    a = _gram(np.random.default_rng(0), 200, 400)
    assert _core.symmetric_eigen(a, 50, "auto")[2] == "partial"
    assert _core.symmetric_eigen(a, 190, "auto")[2] == "full"  # most vectors: the full solver is cheaper
    assert _core.symmetric_eigen(a[:40, :40], 10, "auto")[2] == "full"  # small: the full solver
    values, vectors, route = _core.symmetric_eigen(a, 200, "auto")
    assert route == "full" and vectors.shape == (200, 200)
    _check_eigenpairs(a, 200, (values, vectors, route))
    # From ~384 rows on the full solver's m³ terms dominate: all vectors but one go the k-vector route.
    big = _gram(np.random.default_rng(1), 400, 800)
    result = _core.symmetric_eigen(big, 399, "auto")
    assert result[2] == "partial"
    _check_eigenpairs(big, 399, result)


@given(
    m=st.integers(64, 160),
    share=st.floats(0.01, 0.6),
    width=st.integers(1, 400),
    repeats=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_partial_route_property(m, share, width, repeats, seed):
    # Gram matrices of any rank, with each eigenvalue repeated `repeats` times (Kronecker-like).
    rng = np.random.default_rng(seed)
    base = _gram(rng, -(-m // repeats), width)
    a = np.kron(base, np.eye(repeats))[:m, :m]
    count = max(1, int(share * m))
    result = _core.symmetric_eigen(a, count, "partial")
    if result is not None:
        _check_eigenpairs(a, count, result)
    _check_eigenpairs(a, count, _core.symmetric_eigen(a, count, "auto"))


def test_bad_input_names_the_rule():
    with pytest.raises(ValueError, match="square"):
        _core.symmetric_eigen(np.zeros((3, 4)), 1)
    with pytest.raises(ValueError, match=r"count must be in \[0, 3\], got 4"):
        _core.symmetric_eigen(np.eye(3), 4)
    with pytest.raises(ValueError, match="route must be 'auto', 'full', 'partial' or 'jacobi', got 'fast'"):
        _core.symmetric_eigen(np.eye(3), 1, "fast")


@pytest.mark.parametrize("cluster", [10, 60])
def test_partial_route_keeps_a_cluster_of_small_eigenvalues(cluster):
    # One large eigenvalue, `cluster` equal ones at 1e-13, one at 5e-14, zeros. Shifts that agree to
    # rounding are pulled apart; pulled apart by a fixed share of ‖T‖ each, the shifts of the cluster
    # walked down past 5e-14 and 0, and some of its vectors came out in those eigenspaces (Rayleigh
    # quotients 1e-13 off, inside the checks' bar): the kept vectors' energy fell 4.1e-12 short, 80 times
    # the 5e-14 a rank-(cluster + 1) cut should drop.
    rng = np.random.default_rng(3)
    spectrum = np.zeros(200)
    spectrum[0], spectrum[1 : cluster + 1], spectrum[cluster + 1] = 1.0, 1e-13, 5e-14
    a = _from_spectrum(rng, spectrum)
    count = cluster + 1
    for route in ("partial", "auto"):
        result = _core.symmetric_eigen(a, count, route)
        if result is None:
            continue
        _, vectors, _ = result
        lost = spectrum[:count].sum() - np.trace(vectors.T @ a @ vectors)
        assert lost <= 1e-14, f"{route}: the kept vectors miss {lost:.3g} of the top {count} eigenvalues' sum"


@pytest.mark.parametrize("count", [0, 1, 20, 96])
@pytest.mark.parametrize("kind", ["repeated", "negative", "rank_deficient", "zero"])
def test_jacobi_route_gives_the_eigenpairs(kind, count):
    a = _hard_spectra(96)[kind]
    _check_eigenpairs(a, count, _core.symmetric_eigen(a, count, "jacobi"))


def test_a_gram_matrix_eigen_cannot_diagonalise_is_solved_by_the_fallbacks():
    # The column Gram matrix of a rank-4 sum of Kronecker products: four eigenvalues 1, the rest at
    # 1e-16. Eigen's implicit QR iteration gave up on it ("did not converge"), and so did mpo.decompose.
    unfolding = unfold(orthonormal_kron_sum(5), (16, 16), (16, 16), 0)
    gram = unfolding.T @ unfolding
    for count in (100, 256):
        values, vectors, route = _core.symmetric_eigen(gram, count)
        assert route in ("full", "partial", "jacobi")
        _check_eigenpairs(gram, count, (values, vectors, route))
