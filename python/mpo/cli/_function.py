"""The second half of ``mpo demo``: compress MiniLM-L6 for function (issue 17, docs/ALGORITHMS.md §14).

Every encoder Linear of MiniLM-L6 (36 matrices) is compressed, without training, to one share of its
parameters by four methods: plain SVD, whitened SVD (SVD-LLM), plain MPO (n = 5) and mpo's best
training-free configuration, the model-wide allocation of whitened-SVD ranks weighted by each layer's
measured sensitivity (``mpo.torch.sensitivity`` then ``mpo.torch.allocation``; benchmarks/bench_function.py
measures it as ``alloc_sens``). The best one is written as a loadable Hugging Face folder
(``mpo.torch.save_pretrained``), loaded back (``mpo.torch.from_pretrained``), and every method's
mean-pooled sentence embeddings are compared with the original model's on held-out sentences (cosine).

The sentences ship with the package (``cli/data``): ``calibration.txt`` (the 96 sentences of
benchmarks/data/sentences.txt) for the statistics and (8 of them, evenly spaced: ``SENSITIVITY_SENTENCES``)
the sensitivity, ``held_out.txt`` (tests/data's
sentences less any in the calibration file) for the score, never used for calibration.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

__all__ = ["FUNCTION_SHARE", "SENSITIVITY_SENTENCES", "SENSITIVITY_SHARE", "function_table", "plot_function", "run_function", "sentences"]

DATA = Path(__file__).resolve().parent / "data"
#: The share of the encoder Linears' parameters every method keeps.
FUNCTION_SHARE = 0.5
#: The share each layer is compressed to, alone, when its sensitivity is measured, whatever the share of the
#: compression: the weights only rank the layers (bench_function measures them the same way).
SENSITIVITY_SHARE = 0.5
_BATCH = 8
#: Calibration sentences (evenly spaced) the sensitivity is scored on: the allocation it chooses scored
#: within 0.001 of the all-96-sentence one in bench_function, at 8/96 of the forward passes.
SENSITIVITY_SENTENCES = 8
_METHODS = ("plain SVD", "whitened SVD", "plain MPO n=5", "mpo best: alloc_sens")


def sentences(name: str) -> list[str]:
    """The non-empty lines of the shipped text ``name`` ("calibration" or "held_out")."""
    path = DATA / f"{name}.txt"
    return [s for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def _mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def run_function(folder: Path, out: Path, share: float = FUNCTION_SHARE, layers: int | None = None) -> list[dict]:
    """Compress the BERT model in ``folder`` (config, weights, tokenizer) by the four methods at ``share``,
    save the best as ``out / "minilm-function"`` and load it back; one row per method: name, parameters,
    dense parameters, held-out mean and minimum cosine, seconds. ``layers`` limits the compression to the
    first encoder layers (default: all). Needs torch and transformers."""
    import torch
    from transformers import AutoTokenizer, BertModel

    import mpo.torch as mt

    torch.manual_seed(0)
    model = BertModel.from_pretrained(str(folder)).eval()
    count = model.config.num_hidden_layers if layers is None else min(int(layers), model.config.num_hidden_layers)
    encoder = [f"encoder.layer.{k}.*" for k in range(count)]
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    calibration_text, held_out = sentences("calibration"), sentences("held_out")

    def batches(texts):
        return [tokenizer(texts[k : k + _BATCH], padding=True, truncation=True, max_length=128, return_tensors="pt")
                for k in range(0, len(texts), _BATCH)]

    def embed(m, bs):
        with torch.no_grad():
            return torch.cat([_mean_pool(m(**b).last_hidden_state, b["attention_mask"]) for b in bs])

    cal_batches, held_batches = batches(calibration_text), batches(held_out)
    reference = embed(model, held_batches)
    start = time.perf_counter()
    calibration = mt.calibrate(model, cal_batches, include=encoder, progress=False)
    calibration_seconds = time.perf_counter() - start
    print(f"mpo demo: calibrated {len(calibration)} layers on {len(calibration_text)} sentences "
          f"({calibration_seconds:.1f} s)", file=sys.stderr, flush=True)
    dense = sum(model.get_submodule(name).weight.numel() for name in calibration)

    picks = [round(k * (len(calibration_text) - 1) / max(SENSITIVITY_SENTENCES - 1, 1))
             for k in range(min(SENSITIVITY_SENTENCES, len(calibration_text)))]
    scored = batches([calibration_text[k] for k in picks])
    scored_reference = embed(model, scored)

    def calibration_cosine(m) -> float:
        return float(torch.nn.functional.cosine_similarity(embed(m, scored), scored_reference, dim=-1).mean())

    def build(method: str):
        m = copy.deepcopy(model)
        if method == "plain SVD":
            mt.compress(m, include=encoder, progress=False, lightweight=False, ratio=share, n=2,
                        weights="activations", calibration=calibration, scaling="none")
        elif method == "whitened SVD":
            mt.compress(m, include=encoder, progress=False, lightweight=False, ratio=share, n=2,
                        weights="activations", calibration=calibration, scaling="whiten")
        elif method == "plain MPO n=5":
            mt.compress(m, include=encoder, progress=False, lightweight=False, ratio=share, n=5)
        else:
            report = mt.sensitivity(model, calibration, calibration_cosine, include=encoder, n=2,
                                    ratio=SENSITIVITY_SHARE, progress=False)
            plan = mt.allocation(model, calibration, share, include=encoder, layer_weights=report.layer_weights())
            mt.compress(m, include=encoder, progress=False, lightweight=False, ratio=share, allocate=plan,
                        calibration=calibration)
            target = out / "minilm-function"
            mt.save_pretrained(m, target)
            m = mt.from_pretrained(target)  # what is scored is the folder as a user loads it
        return m

    blocks = [["encoder", "layer", str(k)] for k in range(count)]
    rows = []
    for method in _METHODS:
        start = time.perf_counter()
        m = build(method)
        seconds = time.perf_counter() - start + (calibration_seconds if method != "plain MPO n=5" else 0.0)
        cos = torch.nn.functional.cosine_similarity(embed(m, held_batches), reference, dim=-1)
        params = sum(p.numel() for name, p in m.named_parameters() if name.split(".")[:3] in blocks
                     and not name.endswith(("bias", "LayerNorm.weight")))
        params += sum(b.numel() for name, b in m.named_buffers() if name.endswith("row_scale"))
        rows.append({"method": method, "params": int(params), "dense_params": int(dense),
                     "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "seconds": seconds})
        print(f"mpo demo: {method}: held-out cosine {rows[-1]['mean_cosine']:.4f} ({seconds:.1f} s)",
              file=sys.stderr, flush=True)
    return rows


def function_table(rows: list[dict]) -> str:
    """The rows of :func:`run_function` as a text table."""
    from ._report import table

    return table(
        [[r["method"], f"{r['params']:,}", f"{r['params'] / r['dense_params']:.3f}", f"{r['mean_cosine']:.4f}",
          f"{r['min_cosine']:.4f}", f"{r['seconds']:.1f}"] for r in rows],
        ["method", "params", "share", "held-out cosine", "min cosine", "seconds"],
    )


def plot_function(rows: list[dict], path: str) -> None:
    """A bar chart of the held-out cosines to ``path`` (PNG; needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [r["method"] for r in rows]
    values = [r["mean_cosine"] for r in rows]
    bars = ax.barh(names[::-1], values[::-1], color=["#dd8452"] + ["#4c72b0"] * (len(rows) - 1))
    for bar, value in zip(bars, values[::-1]):
        ax.text(value + 0.01, bar.get_y() + bar.get_height() / 2, f"{value:.3f}", va="center")
    share = rows[0]["params"] / rows[0]["dense_params"]
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("held-out sentence cosine to the original model (1 = unchanged)")
    ax.set_title(f"MiniLM-L6, every encoder Linear at share {share:.2f}, no training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
