"""mpo.torch.compress_stacked: a BERT encoder's linears swapped for one stacked factorization."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from mpo.torch import StackedLinear, compress_stacked  # noqa: E402


class _Attention(nn.Module):
    def __init__(self, D):
        super().__init__()
        self.self = nn.Module()
        self.self.query, self.self.key, self.self.value = (nn.Linear(D, D) for _ in range(3))
        self.output = nn.Module()
        self.output.dense = nn.Linear(D, D)


class _Layer(nn.Module):
    """The attribute layout of a BERT layer (what compress_stacked relies on), with a simple forward."""

    def __init__(self, D, F):
        super().__init__()
        self.attention = _Attention(D)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(D, F)
        self.output = nn.Module()
        self.output.dense = nn.Linear(F, D)

    def forward(self, x):
        a = self.attention.self
        h = torch.tanh(a.query(x) * a.key(x)) + a.value(x)
        h = self.attention.output.dense(h)
        return self.output.dense(torch.relu(self.intermediate.dense(h)))


class _Bert(nn.Module):
    def __init__(self, layers=2, D=8, F=16):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_Layer(D, F) for _ in range(layers))

    def forward(self, x):
        for layer in self.encoder.layer:
            x = layer(x)
        return x


@pytest.mark.parametrize("form, kwargs", [("per_matrix", {}), ("shared", {}), ("tucker", {"bank": 16})])
def test_full_rank_swap_keeps_the_outputs(form, kwargs):
    model = _Bert().double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    before = model(x).detach()
    bank = compress_stacked(model, form, rank=8, **kwargs)
    assert isinstance(model.encoder.layer[1].intermediate.dense, StackedLinear)
    assert bank.fit.relative_error() < 1e-10
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-9)
    # The bank's parameters are registered once, under the encoder, and receive gradients.
    names = [n for n, _ in model.named_parameters()]
    assert sum(n.startswith("encoder.stacked_bank.") for n in names) == (4 if form == "tucker" else 3)
    model(x).sum().backward()
    assert bank.U.grad is not None and bank.cores.grad is not None


def test_truncated_swap_matches_the_numpy_fit_and_shares_xu():
    model = _Bert()
    bank = compress_stacked(model, "tucker", rank=4, bank=6, layers=[1])
    assert isinstance(model.encoder.layer[0].attention.self.query, nn.Linear)
    q = model.encoder.layer[1].attention.self.query
    x = torch.randn(4, 8)
    with torch.no_grad():
        got = q(x)
    ref = x.double().numpy() @ bank.fit.block(0) + q.bias.detach().double().numpy()
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-4)
    # The FFN output sums its row blocks; the FFN input concatenates its column blocks.
    ffn_out, ffn_in = model.encoder.layer[1].output.dense, model.encoder.layer[1].intermediate.dense
    assert (ffn_out.in_features, ffn_out.out_features, ffn_in.out_features) == (16, 8, 16)
    h = torch.randn(2, 16)
    with torch.no_grad():
        got_out, got_in = ffn_out(h).numpy(), ffn_in(x).numpy()
    hn = h.double().numpy()
    ref_out = hn[:, :8] @ bank.fit.block(6) + hn[:, 8:] @ bank.fit.block(7) + ffn_out.bias.detach().numpy()
    np.testing.assert_allclose(got_out, ref_out, rtol=1e-4, atol=1e-4)
    ref_in = np.concatenate([x.double().numpy() @ bank.fit.block(i) for i in (4, 5)], axis=1)
    np.testing.assert_allclose(got_in, ref_in + ffn_in.bias.detach().numpy(), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        xu = bank.project(x)
        assert bank.project(x) is xu  # the same input tensor reuses x @ U (Q, K, V)
        bank.U.add_(1.0)  # an in-place update invalidates it
        assert bank.project(x) is not xu


def test_bad_input():
    with pytest.raises(ValueError, match=r"Linear has no BERT encoder"):
        compress_stacked(nn.Linear(2, 2), rank=2, bank=2)
    with pytest.raises(ValueError, match=r"layers must be encoder layer indices in \[0, 2\), got 3"):
        compress_stacked(_Bert(), rank=2, bank=2, layers=[3])
    with pytest.raises(ValueError, match=r"the tucker form needs bank = l"):
        compress_stacked(_Bert(), rank=2)


def test_transformers_bert_model():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).double().eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        before = model(input_ids=ids).last_hidden_state
        compress_stacked(model, "shared", rank=16)
        after = model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(after, before, rtol=1e-8, atol=1e-8)
