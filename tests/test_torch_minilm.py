"""The real MiniLM-L6 checkpoint in transformers.BertModel, every Linear and the word embedding
compressed: full bonds keep the sentence embeddings; lightweight fine-tuning trains little."""

import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mpo.torch as mt  # noqa: E402
from mpo._data import minilm_checkpoint  # noqa: E402

try:
    minilm_checkpoint()
except FileNotFoundError as exc:  # pragma: no cover - the test extra installs it
    pytest.skip(str(exc), allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from minilm_lightweight import SENTENCES, cosine, embed, load_model  # noqa: E402

EXCLUDE = ["embeddings.position_embeddings", "embeddings.token_type_embeddings"]


@pytest.fixture(scope="module")
def reference():
    model, tokenizer = load_model()
    sentences = [s for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        return batch, embed(model, batch)


@pytest.fixture(scope="module")
def compressed():
    model, _ = load_model()
    report = mt.compress(model, exclude=EXCLUDE, force=True, progress=False)  # full bonds: rho > 1
    return model, report


def test_full_bonds_keep_sentence_embeddings(reference, compressed):
    batch, want = reference
    model, report = compressed
    assert len(report.layers) == 6 * 6 + 2  # Q, K, V, O, FFN in/out per layer, pooler, word embedding
    assert isinstance(model.embeddings.word_embeddings, mt.MPOEmbedding)
    with torch.no_grad():
        cos = cosine(embed(model, batch), want)
    assert len(cos) >= 30 and float(cos.min()) >= 0.9999


def test_lightweight_trains_at_most_12_percent_of_mpo_layers(compressed):
    model, _ = compressed
    report = mt.parameter_report(model)
    assert report.trainable_fraction <= 0.12
    assert report.trainable < report.lora * 4  # same order as LoRA r=8 on these layers


def test_recovery_by_fine_tuning_auxiliary_tensors(reference):
    batch, want = reference
    model, _ = load_model()
    mt.compress(model, include="encoder.layer.*", max_bond=128, progress=False)
    aux = {id(c) for layer in mt.mpo_layers(model).values() for c in layer.auxiliary}
    for p in model.parameters():
        p.requires_grad_(id(p) in aux)
    with torch.no_grad():
        before = float(cosine(embed(model, batch), want).mean())
    optimizer = torch.optim.Adam(mt.optimizer_groups(model, lr=1e-3, mpo_lr=1e-3))
    for _ in range(3):  # a few steps suffice to show the direction; the example runs the full recovery
        optimizer.zero_grad()
        (1 - cosine(embed(model, batch), want)).mean().backward()
        optimizer.step()
    with torch.no_grad():
        after = float(cosine(embed(model, batch), want).mean())
    assert before < 0.999 and after > before
