"""mpo.stacked: the stacked cross-layer forms II, III, IV (docs/ALGORITHMS.md §11), their parameter
arithmetic against the paper's BERT-base figures, the reconstruction-free apply and the BERT cutter."""

import numpy as np
import pytest

from mpo import stacked

FORMS = [("per_matrix", {}), ("shared", {}), ("tucker", {"bank": 6})]


def _blocks(n=6, D=10, seed=0):
    return np.random.default_rng(seed).standard_normal((n, D, D))


@pytest.mark.parametrize("form, kwargs", FORMS)
def test_exact_at_full_ranks(form, kwargs):
    B = _blocks()
    s = stacked.decompose(list(B), form, rank=10, **kwargs)
    assert s.relative_error() < 1e-12
    for i in range(6):
        np.testing.assert_allclose(s.block(i), B[i], atol=1e-11)
    assert s.errors.shape == (6,) and s.error < 1e-11


@pytest.mark.parametrize("form, kwargs", [("per_matrix", {}), ("shared", {}), ("tucker", {"bank": 4})])
def test_errors_and_parameters_are_measured(form, kwargs):
    B = _blocks(seed=1)
    s = stacked.decompose(B, form, rank=4, **kwargs)
    for i in range(6):
        assert s.errors[i] == pytest.approx(np.linalg.norm(B[i] - s.block(i)), rel=1e-10)
    assert s.error == pytest.approx(np.sqrt(sum(np.linalg.norm(B[i] - s.block(i)) ** 2 for i in range(6))))
    assert s.relative_errors == pytest.approx(s.errors / np.linalg.norm(B, axis=(1, 2)))
    assert s.num_params == stacked.num_params(form, 6, 10, 4, kwargs.get("bank"))
    assert s.dense_params == 600
    assert s.compression_ratio == pytest.approx(s.num_params / 600)
    assert form in repr(s)


def test_per_matrix_is_each_blocks_truncated_svd():
    B = _blocks(seed=2)
    s = stacked.decompose(B, "per_matrix", rank=3)
    for i in range(6):
        u, sv, vt = np.linalg.svd(B[i])
        np.testing.assert_allclose(s.block(i), (u[:, :3] * sv[:3]) @ vt[:3], atol=1e-10)


def test_hooi_improves_on_hosvd_and_shared_structure_is_recovered():
    rng = np.random.default_rng(3)
    U = np.linalg.qr(rng.standard_normal((12, 4)))[0]
    V = np.linalg.qr(rng.standard_normal((12, 4)))[0].T
    C = rng.standard_normal((3, 4, 4))
    P = rng.standard_normal((8, 3))
    B = np.einsum("ab,nbc,cd->nad", U, np.einsum("nl,lde->nde", P, C), V)
    exact = stacked.decompose(B, "tucker", rank=4, bank=3)
    assert exact.relative_error() < 1e-10
    noisy = B + 0.3 * rng.standard_normal(B.shape)
    one = stacked.decompose(noisy, "tucker", rank=4, bank=3, max_iter=1)
    many = stacked.decompose(noisy, "tucker", rank=4, bank=3, max_iter=50)
    assert many.error <= one.error * (1 + 1e-12)
    assert many.iterations >= one.iterations


def test_paper_parameter_arithmetic_on_bert_base():
    # 12 layers x 12 blocks of 768 x 768; biases and LayerNorms (119,808) are not decomposed.
    undecomposed = 12 * (4 * 768 + 3072 + 768 + 4 * 768)
    encoder = 12 * (4 * 768 * 768 + 2 * 768 * 3072) + undecomposed
    assert round(encoder / 1e6, 2) == 85.05
    big = stacked.num_params("tucker", 144, 768, 384, bank=72) + undecomposed
    tiny = stacked.num_params("tucker", 144, 768, 128, bank=96) + undecomposed
    assert round(big / 1e6, 1) == 11.3  # the paper's "1/7"
    assert round(tiny / 1e6, 1) == 1.9  # the paper's "1/48"
    # 85.05 / 11.34 = 7.5 ("1/7"); 85.05 / 1.90 = 44.7: the paper's "1/48" is not its own arithmetic.
    assert 7.4 < encoder / big < 7.6 and 44.5 < encoder / tiny < 45
    assert stacked.num_params("shared", 144, 768, 64) == 2 * 768 * 64 + 144 * 64 * 64
    assert stacked.num_params("per_matrix", 144, 768, 64) == 144 * (2 * 768 * 64 + 64)


@pytest.mark.parametrize("form, kwargs", [("per_matrix", {}), ("shared", {}), ("tucker", {"bank": 3})])
def test_apply_without_forming_blocks(form, kwargs):
    B = _blocks(seed=4)
    s = stacked.decompose(B, form, rank=5, **kwargs)
    X = np.random.default_rng(5).standard_normal((2, 7, 10))
    outs = s.apply(X, [0, 3, 5])
    for i, y in zip([0, 3, 5], outs):
        np.testing.assert_allclose(y, X @ s.block(i), atol=1e-10)
    np.testing.assert_allclose(s.apply(X, 2), X @ s.block(2), atol=1e-10)
    if s.shared:
        np.testing.assert_allclose(s.project(X), X @ s.U)
    else:
        np.testing.assert_allclose(s.project(X, 1), X @ s.U[1])
        with pytest.raises(ValueError, match="pass the block index i"):
            s.project(X)


def test_bad_input():
    B = _blocks()
    with pytest.raises(ValueError, match=r"all blocks must have the same size D x D: block 0 is \(10, 10\), block 1 is \(8, 8\)"):
        stacked.decompose([B[0], np.ones((8, 8))], "shared", rank=2)
    with pytest.raises(ValueError, match=r"every block must be a square D x D matrix, block 0 has shape \(3, 4\)"):
        stacked.decompose([np.ones((3, 4))], "shared", rank=2)
    with pytest.raises(ValueError, match=r"blocks must hold at least one D x D matrix, got none"):
        stacked.decompose([], "shared", rank=2)
    with pytest.raises(ValueError, match=r"form must be one of \('per_matrix', 'shared', 'tucker'\), got 'cp'"):
        stacked.decompose(B, "cp", rank=2)
    with pytest.raises(ValueError, match=r"rank must be <= D = 10 \(the block size\), got 11"):
        stacked.decompose(B, "shared", rank=11)
    with pytest.raises(ValueError, match=r"rank must be >= 1, got 0"):
        stacked.decompose(B, "shared", rank=0)
    with pytest.raises(ValueError, match=r"the tucker form needs bank = l"):
        stacked.decompose(B, "tucker", rank=2)
    with pytest.raises(ValueError, match=r"bank must be <= N = 6 \(the number of blocks\), got 7"):
        stacked.decompose(B, "tucker", rank=2, bank=7)
    with pytest.raises(ValueError, match=r"bank applies to the tucker form only, got bank=3 with form='shared'"):
        stacked.decompose(B, "shared", rank=2, bank=3)
    with pytest.raises(ValueError, match=r"block 1 must be finite"):
        stacked.decompose([B[0], np.full((10, 10), np.nan)], "shared", rank=2)
    s = stacked.decompose(B, "shared", rank=2)
    with pytest.raises(ValueError, match=r"X must have D = 10 features on its last axis, got shape \(3, 9\)"):
        s.apply(np.ones((3, 9)), 0)
    with pytest.raises(IndexError, match=r"block index 6 is out of range for 6 blocks"):
        s.apply(np.ones((3, 10)), 6)
    with pytest.raises(TypeError, match=r"rank must be an integer, got 2.5"):
        stacked.num_params("shared", 6, 10, 2.5)


def _bert_state(layers=2, D=8, F=24, prefix="bert.", seed=0):
    rng = np.random.default_rng(seed)
    state = {}
    for layer in range(layers):
        base = f"{prefix}encoder.layer.{layer}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            state[base + name + ".weight"] = rng.standard_normal((D, D))
            state[base + name + ".bias"] = rng.standard_normal(D)
        state[base + "intermediate.dense.weight"] = rng.standard_normal((F, D))
        state[base + "output.dense.weight"] = rng.standard_normal((D, F))
    return state


def test_bert_blocks_orientation_and_order():
    state = _bert_state()
    cut = stacked.bert_blocks(state)
    assert cut.block_size == 8 and len(cut.blocks) == 2 * (4 + 3 + 3)
    assert [r.matrix for r in cut.refs[:10]] == ["query", "key", "value", "attention_output"] + ["intermediate"] * 3 + ["output"] * 3
    x = np.random.default_rng(1).standard_normal((5, 8))
    # Every block acts as x @ W: Q is x @ weight.T, the FFN input concatenates, the output sums.
    np.testing.assert_allclose(x @ cut.blocks[0], x @ state["bert.encoder.layer.0.attention.self.query.weight"].T)
    w_in = state["bert.encoder.layer.0.intermediate.dense.weight"]
    np.testing.assert_allclose(np.concatenate([x @ cut.blocks[4 + k] for k in range(3)], axis=1), x @ w_in.T)
    h = np.random.default_rng(2).standard_normal((5, 24))
    w_out = state["bert.encoder.layer.0.output.dense.weight"]
    np.testing.assert_allclose(sum(h[:, 8 * k : 8 * (k + 1)] @ cut.blocks[7 + k] for k in range(3)), h @ w_out.T)
    only = stacked.bert_blocks(state, layers=[1])
    assert {r.layer for r in only.refs} == {1}


def test_bert_blocks_bad_input():
    with pytest.raises(ValueError, match="state has no BERT encoder weights"):
        stacked.bert_blocks({"foo": np.ones((2, 2))})
    state = _bert_state(F=20)
    with pytest.raises(ValueError, match=r"must have one side D = 8 and the other a multiple of D"):
        stacked.bert_blocks(state)
    with pytest.raises(ValueError, match=r"layer 5 is not in the state; it has layers \[0, 1\]"):
        stacked.bert_blocks(_bert_state(), layers=[5])
    state = _bert_state()
    del state["bert.encoder.layer.1.output.dense.weight"]
    with pytest.raises(ValueError, match=r"state is missing 'bert.encoder.layer.1.output.dense.weight'"):
        stacked.bert_blocks(state)


def test_minilm_blocks_fit():
    pytest.importorskip("safetensors")
    from mpo._data import load_minilm

    try:
        state = load_minilm()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    cut = stacked.bert_blocks(state)
    assert cut.block_size == 384 and len(cut.blocks) == 72
    s = stacked.decompose(cut.blocks, "tucker", rank=32, bank=12, max_iter=3)
    assert 0 < s.relative_error() < 1
    shared = stacked.decompose(cut.blocks, "shared", rank=32, max_iter=3)
    assert shared.num_params > s.num_params
