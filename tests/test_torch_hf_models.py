"""mt.compress on transformers' architectures built from small configs with random weights.

BERT, GPT-2 (Conv1D, tied wte/lm_head), Llama with grouped-query attention, OPT (an Embedding
subclass with its own forward, tied embed_tokens/lm_head) and T5 (a four-way tie, ``wo.weight``
read by the model's code, a 32x4 relative_attention_bias): at full bonds the logits match the
original to float32 rounding; at max_bond=8 forward, generate and backward run and the parameter
count falls by exactly what the report says; tied matrices are decomposed and counted once.
"""

import copy
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from torch import nn  # noqa: E402

import mpo.torch as mt  # noqa: E402

VOCAB, HIDDEN = 128, 64


def _build(arch: str):
    torch.manual_seed(0)
    common = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if arch == "bert":
        config = transformers.BertConfig(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64, **common,
        )
        return transformers.BertForMaskedLM(config)
    if arch == "gpt2":
        config = transformers.GPT2Config(n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=64, **common)
        return transformers.GPT2LMHeadModel(config)
    if arch == "llama":
        config = transformers.LlamaConfig(
            hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, **common,
        )
        return transformers.LlamaForCausalLM(config)
    if arch == "opt":
        config = transformers.OPTConfig(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
            max_position_embeddings=64, word_embed_proj_dim=HIDDEN, **common,
        )
        return transformers.OPTForCausalLM(config)
    config = transformers.T5Config(
        d_model=HIDDEN, d_kv=16, d_ff=128, num_layers=2, num_heads=4, decoder_start_token_id=0, **common
    )
    return transformers.T5ForConditionalGeneration(config)


ARCHS = ["bert", "gpt2", "llama", "opt", "t5"]
IDS = torch.tensor([[5, 17, 99, 3, 44, 8], [9, 120, 6, 6, 31, 77]])


def _inputs(arch: str) -> dict:
    if arch == "t5":
        return {"input_ids": IDS, "decoder_input_ids": IDS[:, :4].contiguous()}
    return {"input_ids": IDS}


def _logits(model, arch: str) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**_inputs(arch)).logits


def _unique_params(model: nn.Module) -> int:
    """Every parameter of the model once, found by identity over all its names (an oracle apart
    from both the report and model.parameters()' own de-duplication)."""
    seen = {id(p): p.numel() for _, p in model.named_parameters(remove_duplicate=False)}
    return sum(seen.values())


@pytest.mark.parametrize("arch", ARCHS)
def test_full_bonds_keep_the_logits(arch):
    model = _build(arch)
    want = _logits(model, arch)
    report = mt.compress(model, force=True, progress=False)
    got = _logits(model, arch)
    assert report.layers and not any("bias" in d.name for d in report.kept_dense)
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 2e-5 * scale, arch


@pytest.mark.parametrize("arch", ARCHS)
def test_a_cap_shrinks_and_forward_generate_backward_run(arch):
    model = _build(arch)
    before = _unique_params(model)
    report = mt.compress(model, max_bond=8, progress=False)
    after = _unique_params(model)
    # What the report says it removed is what the model lost, a tied matrix counted once.
    assert after == before - report.dense_params + report.mpo_params
    assert after < before
    assert sum(p.numel() for p in model.parameters()) == after
    model.train()
    out = model(**_inputs(arch), labels=IDS if arch != "t5" else IDS[:, :4].contiguous())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    layer = next(iter(mt.mpo_layers(model).values()))
    assert any(c.grad is not None and c.grad.abs().sum() > 0 for c in layer.cores)
    if arch != "bert":
        model.eval()
        generated = model.generate(IDS[:, :3], max_new_tokens=4, do_sample=False)
        assert generated.shape[0] == 2 and generated.shape[1] >= 4


def test_gpt2_conv1d_orientation_and_tie():
    model = _build("gpt2")
    conv = model.transformer.h[0].attn.c_attn
    wte = model.transformer.wte.weight.detach().clone()
    report = mt.compress(model, force=True, progress=False)
    layer = model.transformer.h[0].attn.c_attn
    assert isinstance(layer, mt.MPOConv1D)
    # Conv1D stores W as in x out and computes x @ W + b: the MPO's M is W itself.
    assert torch.allclose(layer.weight_matrix(), conv.weight, atol=1e-6)
    assert (layer.nx, layer.nf) == (HIDDEN, 3 * HIDDEN) and tuple(layer.weight.shape) == (HIDDEN, 3 * HIDDEN)
    head = model.lm_head
    assert isinstance(head, mt.MPOTiedLinear) and head.source is model.transformer.wte and head.transposed
    names = [r.name for r in report.layers]
    assert "lm_head" not in names and names.count("transformer.wte") == 1
    assert report.layers[names.index("transformer.wte")].tied == ("lm_head",)
    x = torch.randn(3, HIDDEN)
    assert torch.allclose(head(x, mode="contract"), x @ wte.T, atol=1e-5)
    assert torch.allclose(head(x, mode="rebuild"), x @ wte.T, atol=1e-5)
    assert mt.tied_modules(model) == {"lm_head": {"source": "transformer.wte", "transposed": True, "bias": False}}


def test_one_shared_mpo_trains_from_both_uses():
    model = _build("gpt2")
    mt.compress(model, include=["transformer.wte", "lm_head"], max_bond=8, lightweight=False, progress=False)
    wte = model.transformer.wte
    loss = model.lm_head(torch.randn(2, HIDDEN, requires_grad=True)).square().sum()
    loss.backward()
    assert all(c.grad is not None for c in wte.cores)  # the head's gradient reaches the embedding's cores
    groups = mt.optimizer_groups(model, lr=1e-3, mpo_lr=1e-2)
    assert sum(p.numel() for g in groups for p in g["params"]) == _unique_params(model)


def test_t5_ties_four_ways_and_keeps_small_tables_dense():
    model = _build("t5")
    report = mt.compress(model, max_bond=8, progress=False)
    shared = model.shared
    assert isinstance(shared, mt.MPOEmbedding)
    assert model.encoder.embed_tokens is shared and model.decoder.embed_tokens is shared
    assert isinstance(model.lm_head, mt.MPOTiedLinear) and model.lm_head.source is shared
    row = next(r for r in report.layers if r.name == "shared")
    assert set(row.tied) == {"encoder.embed_tokens", "decoder.embed_tokens", "lm_head"}
    assert [r.name for r in report.layers].count("shared") == 1
    bias = [d for d in report.kept_dense if d.name.endswith("relative_attention_bias")]
    assert len(bias) == 2 and bias[0].matrix_shape == (32, 4) and "tiny" in bias[0].reason
    assert isinstance(model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias, nn.Embedding)
    # The model's own code reads wo.weight.dtype: the layer answers without materialising.
    wo = model.encoder.block[0].layer[1].DenseReluDense.wo
    assert isinstance(wo, mt.MPOLinear)
    assert wo.weight.dtype == torch.float32 and tuple(wo.weight.shape) == (HIDDEN, 128)
    assert wo.weight.device == wo.cores[0].device
    assert "relative_attention_bias" in str(report) and "shared with" in str(report)


def test_weight_view_refuses_values():
    model = _build("t5")
    mt.compress(model, max_bond=8, progress=False)
    view = model.encoder.block[0].layer[1].DenseReluDense.wo.weight
    assert isinstance(view, torch.Tensor) and "WeightView" in repr(view)
    with pytest.raises(TypeError, match=r"MPOLinear\.weight has no values: .* use weight_matrix\(\)"):
        view.sum()
    with pytest.raises(TypeError, match="has no values"):
        torch.ones(2, 128) @ view.T
    with pytest.raises(AttributeError):
        model.encoder.block[0].layer[1].DenseReluDense.wo.weight = torch.zeros(HIDDEN, 128)


def test_opt_positional_embedding_stays_dense_with_its_reason():
    model = _build("opt")
    report = mt.compress(model, max_bond=8, progress=False)
    dense = {d.name: d for d in report.kept_dense}
    assert "overrides forward()" in dense["model.decoder.embed_positions"].reason
    assert type(model.model.decoder.embed_positions).__name__ == "OPTLearnedPositionalEmbedding"
    assert isinstance(model.lm_head, mt.MPOTiedLinear)
    assert model.lm_head.source is model.model.decoder.embed_tokens


def test_llama_grouped_query_projections_are_compressed():
    model = _build("llama")
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    report = mt.compress(model, max_bond=8, progress=False)
    k = next(r for r in report.layers if r.name == "model.layers.0.self_attn.k_proj")
    assert k.matrix_shape == (HIDDEN, 32)  # M = W.T: in x out, out = kv heads x head dim
    assert isinstance(model.lm_head, mt.MPOTiedLinear)


def test_a_layer_never_grows_unless_forced():
    model = _build("bert")
    want = _logits(model, "bert")
    before = _unique_params(model)
    report = mt.compress(model, progress=False)  # full bonds: every MPO would be larger
    assert report.layers == []
    assert _unique_params(model) == before
    assert torch.equal(_logits(model, "bert"), want)
    reasons = {d.name: d.reason for d in report.kept_dense}
    assert "not fewer than the matrix's 4096" in reasons["bert.encoder.layer.0.attention.self.query"]
    assert "tiny" in reasons["bert.embeddings.token_type_embeddings"]
    forced = mt.compress(copy.deepcopy(model), include="bert.encoder.*", force=True, progress=False)
    assert forced.layers and all(r.compression_ratio >= 1 for r in forced.layers)


def test_a_partly_chosen_tie_stays_dense_and_says_why():
    model = _build("gpt2")
    report = mt.compress(model, exclude="lm_head", max_bond=8, progress=False)
    reason = {d.name: d.reason for d in report.kept_dense}["transformer.wte"]
    assert "tied with lm_head, which include/exclude leave out" in reason
    assert isinstance(model.transformer.wte, nn.Embedding) and model.lm_head.weight is model.transformer.wte.weight


def test_save_load_keeps_ties(tmp_path):
    model = _build("gpt2")
    mt.compress(model, max_bond=8, progress=False)
    want = _logits(model, "gpt2")
    mt.save(model, tmp_path / "gpt2.pt")
    restored = mt.load(_build("gpt2"), tmp_path / "gpt2.pt")
    assert isinstance(restored.lm_head, mt.MPOTiedLinear) and restored.lm_head.source is restored.transformer.wte
    assert isinstance(restored.transformer.h[1].mlp.c_proj, mt.MPOConv1D)
    assert torch.equal(_logits(restored, "gpt2"), want)
