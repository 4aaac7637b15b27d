"""A BERT encoder whose linears share one stacked factorization (docs/ALGORITHMS.md §11).

:func:`compress_stacked` cuts the encoder's Q, K, V, O and FFN weights into D x D blocks
(:func:`mpo.stacked.bert_blocks`), fits one stacked form (:func:`mpo.stacked.decompose`) and swaps every
one of those nn.Linear for a :class:`StackedLinear` that applies its blocks without forming them:
y = ((x U) Σ_i) V + b. One :class:`StackedBank` holds the factors as trainable parameters (for recovery
training such as distillation); the linears hold only their block ids and biases.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import stacked as _stacked

__all__ = ["StackedBank", "StackedLinear", "compress_stacked"]


class StackedBank(nn.Module):
    """The factors of a stacked form as parameters: ``U``, ``V``, ``cores`` and (tucker) ``P``.

    ``fit`` is the :class:`mpo.stacked.Stacked` the parameters were initialised from (its errors and
    parameter counts). For shared forms X U is computed once per input tensor and reused by every
    linear that reads the same tensor (Q, K and V read one hidden state).
    """

    def __init__(self, fit: _stacked.Stacked, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.fit = fit
        self.form = fit.form
        self.shared = fit.shared
        self.U = nn.Parameter(torch.as_tensor(fit.U, dtype=dtype))
        self.V = nn.Parameter(torch.as_tensor(fit.V, dtype=dtype))
        self.cores = nn.Parameter(torch.as_tensor(fit.bank, dtype=dtype))
        self.P = None if fit.P is None else nn.Parameter(torch.as_tensor(fit.P, dtype=dtype))
        self._cache: tuple | None = None

    def core(self, ids: torch.Tensor) -> torch.Tensor:
        """Σ_i for the blocks ``ids``, shaped (len(ids), d, d)."""
        if self.form == "per_matrix":
            return torch.diag_embed(self.cores[ids])
        if self.form == "shared":
            return self.cores[ids]
        P = self.P
        assert P is not None  # the tucker form, the only one left, always has P
        return torch.einsum("pl,lde->pde", P[ids], self.cores)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x @ U for the shared U, reused while the same tensor comes back and U is unchanged."""
        # The key holds x itself (so its id cannot be reused) and U's version counter (an optimizer
        # step changes U in place) and the grad mode (a no-grad result must not enter a graph).
        key = (x, self.U._version, torch.is_grad_enabled())
        if self._cache is not None and self._cache[0][0] is x and self._cache[0][1:] == key[1:]:
            return self._cache[1]
        xu = x @ self.U
        self._cache = (key, xu)
        return xu

    def clear_cache(self) -> None:
        """Drop the kept x and x @ U (they are otherwise held until the next input)."""
        self._cache = None


class StackedLinear(nn.Module):
    """An nn.Linear replaced by blocks of a :class:`StackedBank`.

    ``kind`` is "square" (one D x D block: Q, K, V, O), "in" (D -> pD: the FFN input, p column blocks
    whose outputs are concatenated) or "out" (pD -> D: the FFN output, p row blocks summed).
    """

    _bank: StackedBank
    ids: torch.Tensor

    def __init__(self, bank: StackedBank, ids: list[int], kind: str, bias: torch.Tensor | None) -> None:
        super().__init__()
        if kind not in ("square", "in", "out"):
            raise ValueError(f"kind must be 'square', 'in' or 'out', got {kind!r}")
        # The bank is shared by many linears: kept out of the module tree so its parameters are
        # registered (and saved) once, under the encoder.
        object.__setattr__(self, "_bank", bank)
        self.kind = kind
        self.register_buffer("ids", torch.as_tensor(ids, dtype=torch.long), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        D = bank.U.shape[-2]
        self.in_features = D * (len(ids) if kind == "out" else 1)
        self.out_features = D * (len(ids) if kind == "in" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x W + b, every block applied as ((x U) Σ_i) V."""
        bank, ids = self._bank, self.ids
        cores = bank.core(ids)
        if self.kind == "out":
            parts = x.reshape(*x.shape[:-1], len(ids), -1)
            xu = parts @ bank.U if bank.shared else torch.einsum("...pD,pDd->...pd", parts, bank.U[ids])
            z = torch.einsum("...pd,pde->...pe", xu, cores)
            y = z.sum(-2) @ bank.V if bank.shared else torch.einsum("...pe,peD->...D", z, bank.V[ids])
        else:
            if bank.shared:
                xu = bank.project(x).unsqueeze(-2)
            else:
                xu = torch.einsum("...D,pDd->...pd", x, bank.U[ids])
            z = torch.einsum("...pd,pde->...pe", xu.expand(*xu.shape[:-2], len(ids), xu.shape[-1]), cores)
            y = z @ bank.V if bank.shared else torch.einsum("...pe,peD->...pD", z, bank.V[ids])
            y = y.reshape(*y.shape[:-2], -1)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"kind={self.kind}, blocks={self.ids.tolist()}, in_features={self.in_features}, out_features={self.out_features}"


def _encoder(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """(the encoder, its layers)."""
    for candidate in (model, getattr(model, "base_model", None)):
        encoder = getattr(candidate, "encoder", None)
        layers = getattr(encoder, "layer", None)
        if isinstance(encoder, nn.Module) and isinstance(layers, nn.ModuleList):
            return encoder, layers
    raise ValueError(f"{type(model).__name__} has no BERT encoder (model.encoder.layer or model.base_model.encoder.layer)")


def _linear(layer: nn.Module, suffix: str) -> tuple[nn.Module, str]:
    """(parent module, attribute) of the linear at ``suffix`` ('attention.self.query.weight')."""
    path = suffix.split(".")[:-1]
    parent = layer
    for part in path[:-1]:
        parent = getattr(parent, part)
    return parent, path[-1]


def compress_stacked(
    model: nn.Module,
    form: str = "tucker",
    *,
    rank: int,
    bank: int | None = None,
    layers: list[int] | None = None,
    max_iter: int = 50,
    tol: float = 1e-7,
) -> StackedBank:
    """Swap a BertModel's encoder Q, K, V, O and FFN linears for one stacked form, in place.

    ``model`` is a ``transformers`` BertModel (or a model whose ``base_model`` is one); ``layers``
    restricts the swap to some encoder layers (default all). The blocks of all chosen layers are fitted
    together (``form``, ``rank``, ``bank``, ``max_iter``, ``tol`` as in :func:`mpo.stacked.decompose`).
    Returns the :class:`StackedBank`, registered as ``encoder.stacked_bank`` so its parameters train
    and save with the model; ``bank_module.fit`` holds the fit's errors and parameter counts.
    """
    encoder, blocks = _encoder(model)
    count = len(blocks)
    chosen = list(range(count)) if layers is None else list(layers)
    for layer in chosen:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < count:
            raise ValueError(f"layers must be encoder layer indices in [0, {count}), got {layer!r}")
    state = {}
    for layer in chosen:
        for _, suffix in _stacked.BERT_MATRICES:
            parent, attr = _linear(blocks[layer], suffix)
            module = getattr(parent, attr)
            if not isinstance(module, nn.Linear):
                raise ValueError(f"encoder.layer.{layer}.{suffix} belongs to a {type(module).__name__}, not an nn.Linear")
            state[f"encoder.layer.{layer}.{suffix}"] = module.weight.detach().cpu().double().numpy()
    cut = _stacked.bert_blocks(state, chosen)
    fit = _stacked.decompose(cut.blocks, form, rank=rank, bank=bank, max_iter=max_iter, tol=tol)
    query = getattr(*_linear(blocks[chosen[0]], "attention.self.query.weight"))
    dtype, device = query.weight.dtype, query.weight.device
    bank_module = StackedBank(fit, dtype=dtype).to(device)
    encoder.stacked_bank = bank_module
    ids: dict[tuple[int, str], list[int]] = {}
    for i, ref in enumerate(cut.refs):
        ids.setdefault((ref.layer, ref.matrix), []).append(i)
    for layer in chosen:
        for name, suffix in _stacked.BERT_MATRICES:
            parent, attr = _linear(blocks[layer], suffix)
            old = getattr(parent, attr)
            kind = {"intermediate": "in", "output": "out"}.get(name, "square")
            setattr(parent, attr, StackedLinear(bank_module, ids[(layer, name)], kind, old.bias))
    return bank_module
