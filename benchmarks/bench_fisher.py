"""Fisher-weighted SVD and MPO on MiniLM-L6 with real sentences (issue 6, docs/ALGORITHMS.md §10).

For every encoder linear (6 layers x Q, K, V, O, FFN in, FFN out) in ``x @ W`` orientation
(W = weight.T, rows = input features):

1. Fisher importance per input feature from squared mini-batch gradients of a real sentence loss on
   the first sentences of benchmarks/data/sentences.txt (``mpo.torch.fisher_information``). MiniLM has
   no task head, so the loss is the unsupervised SimCSE objective it can be trained with: two dropout
   views of each sentence, mean-pooled, in-batch cross-entropy over cosine similarities (T = 0.05).
2. Activations X of every linear recorded with forward hooks on the held-out sentences (padding tokens
   dropped).
3. At equal parameter counts for rho in RHOS: SVD, FWSVD, MPO (n = 5, uniform bond cap) and
   Fisher-weighted MPO (its I row scales counted, so its cap is chosen for budget - I). Reported: the
   output error ||XW - XŴ||_F / ||XW||_F and the plain ||W - Ŵ||_F / ||W||_F, averaged over the 36
   matrices, and how many matrices the weighted variant wins.

    OMP_NUM_THREADS=1 python benchmarks/bench_fisher.py [--rhos 0.5 0.25 0.1] [--out PATH]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from _common import RESULTS_DIR, command_line, format_table, library_versions, print_machine, write_json  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "sentences.txt"
RHOS = (0.5, 0.25, 0.1)
FISHER_SENTENCES = 64  # the rest are held out for the activations
BATCH = 8
SUFFIXES = (
    ("query", "attention.self.query"),
    ("key", "attention.self.key"),
    ("value", "attention.self.value"),
    ("attn_out", "attention.output.dense"),
    ("ffn_in", "intermediate.dense"),
    ("ffn_out", "output.dense"),
)


def load_model():
    """MiniLM-L6 as a transformers BertModel and its tokenizer, from the checkpoint package folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import BertModel, BertTokenizerFast

    from mpo._data import minilm_checkpoint

    folder = minilm_checkpoint().parent
    torch.manual_seed(0)
    return BertModel.from_pretrained(str(folder)), BertTokenizerFast.from_pretrained(str(folder))


def mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def simcse_loss(model, batch):
    """Unsupervised SimCSE: two dropout views of each sentence should match each other in the batch."""
    import torch

    views = [mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]) for _ in range(2)]
    a, b = (torch.nn.functional.normalize(v, dim=-1) for v in views)
    logits = a @ b.T / 0.05
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(logits)))


def record_inputs(model, names, batches):
    """Input activations of the named linears on ``batches``, non-padding tokens only, float64."""
    import torch

    modules = dict(model.named_modules())
    store = {name: [] for name in names}
    keep = {}

    def hook(name):
        def fn(_module, inputs, _output):
            x = inputs[0].detach()
            store[name].append(x.reshape(-1, x.shape[-1])[keep["mask"]].double().numpy())

        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in batches:
                keep["mask"] = batch["attention_mask"].reshape(-1).bool()
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    return {n: np.concatenate(v) for n, v in store.items()}


def mpo_params(plan, cap):
    """Parameters of an MPO with every bond capped at ``cap`` (Eq. 5 numerator)."""
    pairs = [i * j for i, j in zip(plan.in_shape, plan.out_shape)]
    full = [min(math.prod(pairs[: k + 1]), math.prod(pairs[k + 1 :])) for k in range(len(pairs) - 1)]
    bonds = [1] + [min(cap, f) for f in full] + [1]
    return sum(bonds[k] * p * bonds[k + 1] for k, p in enumerate(pairs))


def largest_cap(plan, budget):
    """The largest uniform bond cap whose MPO fits in ``budget`` parameters (0 if none does)."""
    cap = 0
    while mpo_params(plan, cap + 1) <= budget and cap < 10**6:
        cap += 1
    return cap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rhos", type=float, nargs="+", default=list(RHOS))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "fisher.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    import mpo
    from mpo.torch import fisher_information

    print(f"command: {command_line()}")
    machine = print_machine()
    sentences = [s for s in DATA.read_text(encoding="utf-8").splitlines() if s.strip()]
    model, tokenizer = load_model()

    def batches(texts):
        return [tokenizer(texts[k : k + BATCH], padding=True, return_tensors="pt") for k in range(0, len(texts), BATCH)]

    layers = model.config.num_hidden_layers
    names = [f"encoder.layer.{i}.{suffix}" for i in range(layers) for _, suffix in SUFFIXES]
    t0 = time.perf_counter()
    model.train()  # dropout on: SimCSE's two views differ only by dropout
    fisher = fisher_information(model, batches(sentences[:FISHER_SENTENCES]), simcse_loss, names, axis="in")
    fisher_seconds = time.perf_counter() - t0
    model.eval()
    inputs = record_inputs(model, names, batches(sentences[FISHER_SENTENCES:]))
    tokens = next(iter(inputs.values())).shape[0]
    print(f"Fisher from {FISHER_SENTENCES} sentences in {fisher_seconds:.1f} s; activations: {tokens} held-out tokens")

    methods = ("svd", "fwsvd", "mpo", "fwmpo")
    records = []
    for name in names:
        module = dict(model.named_modules())[name]
        W = module.weight.detach().double().numpy().T.copy()  # x @ W: rows = input features
        X = inputs[name]
        f = fisher[name]
        I, J = W.shape
        Y = X @ W
        plan = mpo.plan_shape(I, J, 5)
        for rho in args.rhos:
            budget = int(rho * I * J)
            rank = budget // (I + J)
            svd = mpo.weighted_svd(W, rank, np.ones(I))
            fw = mpo.weighted_svd(W, rank, f)
            # The weighted optimum: FWSVD's weighted error can never exceed the plain SVD's.
            d = np.sqrt(f / f.max() + 1e-6)
            assert fw.weighted_error <= np.linalg.norm(d[:, None] * (W - svd.to_dense())) * (1 + 1e-9)
            cap = largest_cap(plan, budget)
            wcap = largest_cap(plan, budget - I)
            m = mpo.decompose(W, max_bond=cap)
            wm = mpo.decompose(W, max_bond=wcap, row_weights=f)
            approx = {"svd": svd.to_dense(), "fwsvd": fw.to_dense(), "mpo": m.to_dense(), "fwmpo": wm.to_dense()}
            # The weighted MPO applied through its cores equals its dense matrix.
            assert np.allclose(X[:16] @ wm, X[:16] @ approx["fwmpo"], atol=1e-8)
            params = {"svd": svd.num_params, "fwsvd": fw.num_params, "mpo": m.num_params, "fwmpo": wm.num_params}
            assert all(p <= budget for p in params.values()), params
            row = {"matrix": name, "shape": [I, J], "rho": rho, "budget": budget, "rank": rank, "cap": cap, "wcap": wcap}
            for key in methods:
                row[key] = {
                    "params": params[key],
                    "output_error": float(np.linalg.norm(Y - X @ approx[key]) / np.linalg.norm(Y)),
                    "plain_error": float(np.linalg.norm(W - approx[key]) / np.linalg.norm(W)),
                }
            records.append(row)

    summary = []
    for rho in args.rhos:
        rows = [r for r in records if r["rho"] == rho]
        entry = {"rho": rho, "matrices": len(rows)}
        for key in methods:
            entry[key] = {
                "params": int(sum(r[key]["params"] for r in rows)),
                "output_error": float(np.mean([r[key]["output_error"] for r in rows])),
                "plain_error": float(np.mean([r[key]["plain_error"] for r in rows])),
            }
        for weighted, plain in (("fwsvd", "svd"), ("fwmpo", "mpo")):
            entry[f"{weighted}_wins_output"] = sum(r[weighted]["output_error"] < r[plain]["output_error"] for r in rows)
            entry[f"{weighted}_plain_error_rises"] = sum(r[weighted]["plain_error"] > r[plain]["plain_error"] for r in rows)
        summary.append(entry)

    headers = ["rho", "method", "params (36 mats)", "mean output err", "mean plain err", "weighted wins (output)", "plain err rises"]
    table = []
    for e in summary:
        for key in methods:
            wins = e.get(f"{key}_wins_output")
            rises = e.get(f"{key}_plain_error_rises")
            table.append([
                f"{e['rho']:g}", key, str(e[key]["params"]), f"{e[key]['output_error']:.4f}", f"{e[key]['plain_error']:.4f}",
                "" if wins is None else f"{wins}/{e['matrices']}", "" if rises is None else f"{rises}/{e['matrices']}",
            ])
    print(format_table(headers, table))
    write_json(
        args.out,
        {
            "benchmark": "fisher",
            "command": command_line(),
            "versions": library_versions(mpo),
            "machine": machine,
            "fisher_sentences": FISHER_SENTENCES,
            "held_out_tokens": int(tokens),
            "fisher_seconds": fisher_seconds,
            "summary": summary,
            "records": records,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
