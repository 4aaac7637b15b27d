"""The decomposition on real pre-trained weights (MiniLM-L6), where spectra are far from random."""

import numpy as np
import pytest

import mpo
from mpo._data import load_minilm

NAMES = {
    "embedding": "embeddings.word_embeddings.weight",
    "query": "encoder.layer.0.attention.self.query.weight",
    "ffn_in": "encoder.layer.0.intermediate.dense.weight",
    "ffn_out": "encoder.layer.0.output.dense.weight",
}


@pytest.fixture(scope="module")
def weights():
    try:
        tensors = load_minilm(list(NAMES.values()))
    except (FileNotFoundError, ImportError) as exc:  # the README's test command installs both
        pytest.fail(f"the real checkpoint is part of the test set-up: {exc}")
    return {short: tensors[key] for short, key in NAMES.items()}


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(a, np.float64)))


@pytest.mark.parametrize("name", ["query", "ffn_in", "ffn_out"])
def test_exact_rebuild_float64_and_float32(weights, name):
    W = weights[name]
    exact64 = mpo.decompose(W.astype(np.float64))
    assert rel(W, exact64.to_dense()) <= 1e-12
    exact32 = mpo.decompose(W.astype(np.float32))
    assert exact32.dtype == np.float32
    assert rel(W, exact32.to_dense()) <= 1e-5


@pytest.mark.parametrize("name", ["query", "ffn_in", "ffn_out"])
@pytest.mark.parametrize("cap", [8, 48, 150])
def test_capped_error_within_bound_and_close_to_exact_route(weights, name, cap):
    W = weights[name].astype(np.float64)
    fast = mpo.decompose(W, max_bond=cap)
    exact = mpo.decompose(W, max_bond=cap, svd="exact")
    err_fast = np.linalg.norm(W - fast.to_dense())
    err_exact = np.linalg.norm(W - exact.to_dense())
    rounding = 1e-12 * np.linalg.norm(W)
    assert err_fast <= fast.error_bound() * (1 + 1e-9) + rounding
    # The randomized route must stay within 1 % of the exact truncation's error.
    assert err_fast <= 1.01 * err_exact + rounding
    # A sequential sweep's error is its bound (Pythagoras at every step).
    assert err_exact == pytest.approx(exact.error_bound(), rel=1e-8, abs=rounding)


def test_embedding_is_padded_invisibly_and_bound_holds(weights):
    E = weights["embedding"]
    m = mpo.decompose(E, max_bond=64)
    assert m.shape == E.shape and m.padded_shape == (30720, 384)
    assert m.in_shape == (6, 8, 10, 8, 8)
    dense = m.to_dense()
    assert dense.shape == E.shape and dense.dtype == E.dtype
    err = np.linalg.norm(E.astype(np.float64) - dense)
    assert err <= m.error_bound() * (1 + 1e-5)
    assert 0 < m.compression_ratio < 0.05


def test_truncating_exact_real_matrix_is_monotone_and_bounded(weights):
    W = weights["ffn_in"].astype(np.float64)
    exact = mpo.decompose(W)
    previous = 0.0
    for cap in (256, 128, 64, 32, 16, 8):
        cut = exact.truncate(max_bond=cap)
        err = np.linalg.norm(W - cut.to_dense())
        assert err <= cut.error_bound() * (1 + 1e-9) + 1e-12 * np.linalg.norm(W)
        assert err >= previous * (1 - 1e-12)
        previous = err
    entropy = exact.entropy()
    assert np.all(entropy >= 0) and np.all(entropy <= np.log(exact.bond_dims) + 1e-12)
