"""A compressed model folder to and from a transformers model with its MPO layers in place.

``from_pretrained(folder)`` builds the model from the folder's config.json (the class named in
``config.architectures``, or the one passed), swaps in an MPO layer for every module of the manifest,
and loads every stored tensor with ``load_state_dict(strict=True)``: a missing or unexpected tensor is
an error, never a random initialisation. ``save_pretrained(model, folder)`` writes the same format
(mpo.io._hf describes it) for a model compressed in Python; the two round-trip exactly.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from .._mpo import MPO
from ..io import _hf
from ..io._safetensors import numpy_dtype
from ._compress import mpo_layers
from ._layers import LAYER_KINDS, MPOTiedLinear, layer_for

__all__ = ["from_pretrained", "save_pretrained", "skeleton"]

# torch dtype <-> the NumPy dtype the safetensors module reads and writes; the half and float8 types go
# through an integer view of the same width, so values are copied bit-exactly.
_VIEWS = {torch.bfloat16: ("BF16", torch.int16), torch.float8_e4m3fn: ("F8_E4M3", torch.int8),
          torch.float8_e5m2: ("F8_E5M2", torch.int8)}


def _to_torch(a: np.ndarray) -> torch.Tensor:
    for dtype, (code, view) in _VIEWS.items():
        if a.dtype.name == numpy_dtype(code).name:
            raw = a.view(np.int16 if view is torch.int16 else np.int8)
            return torch.from_numpy(np.ascontiguousarray(raw)).view(dtype)
    return torch.from_numpy(np.ascontiguousarray(a))


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().to("cpu").contiguous()
    if t.dtype in _VIEWS:
        code, view = _VIEWS[t.dtype]
        return t.view(view).numpy().view(numpy_dtype(code))
    return t.numpy()


# The matrix M each kind's layer holds, relative to the module's stored weight: a Linear stores W as
# out x in and its layer computes x @ M with M = W.T; an Embedding and a transformers Conv1D (stored
# in x out) hold M = W.
_ORIENTATION = {"linear": "transposed", "embedding": "weight", "conv1d": "weight"}


def _layer_kind(layer: nn.Module) -> str:
    # The exact class: a subclass of a layer may compute something else.
    for kind, cls in LAYER_KINDS.items():
        if type(layer) is cls:
            return kind
    raise ValueError(f"{type(layer).__name__} is not an MPO layer of a known kind ({sorted(LAYER_KINDS)})")


def _placeholder(core_shapes, shape) -> MPO:
    """An MPO of zero cores of the given shapes: a layer's skeleton, whose values the state_dict fills."""
    return MPO([np.zeros(s) for s in core_shapes], shape=tuple(shape),
               spectra=[np.ones(s[3]) for s in core_shapes[:-1]], truncation_errors=[0.0] * (len(core_shapes) - 1),
               norm=0.0)


def _module_kind(module: nn.Module) -> str | None:
    """The manifest kind of a dense module (subclasses included), or None."""
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.Linear):
        return "linear"
    # transformers' Conv1D (GPT-2) is found by name: importing transformers here would make it a
    # dependency of every mpo.torch user.
    if any(c.__name__ == "Conv1D" and c.__module__.startswith("transformers") for c in type(module).__mro__):
        return "conv1d"
    return None


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _model_class(config, model_class):
    if model_class is not None:
        return model_class
    import transformers

    names = getattr(config, "architectures", None) or []
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise ValueError(
        f"config.json names the architectures {names!r}, none of which transformers has; pass model_class="
    )


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Names of parameters and buffers that are one tensor (tied weights), groups of two or more."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def skeleton(folder: str | os.PathLike, model_class=None) -> nn.Module:
    """The model of a folder's config.json built on the meta device: its module names, kinds, weight
    shapes and ties, without allocating or reading a weight (the ``mpo`` command's ``--calibration`` checks
    statistics against it). ``model_class`` defaults to the class named by ``config.architectures``."""
    import transformers

    folder = os.fspath(folder)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(f"{folder!r} has no config.json: the model's layers cannot be known without it")
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = _model_class(config, model_class)
    with torch.device("meta"):
        return cls(config)


def from_pretrained(folder: str | os.PathLike, model_class=None, *, dtype: torch.dtype | None = None,
                    mode: str = "auto") -> nn.Module:
    """The transformers model of a compressed folder, MPO layers in place and every weight as stored.

    ``model_class`` defaults to the class named by ``config.architectures``; ``dtype`` to the config's
    dtype (float32 when it names none). Raises ValueError when the folder's tensors and the model do not
    match exactly (a missing or an unexpected tensor), never loading random weights.
    """
    import transformers

    folder = os.fspath(folder)
    manifest, ckpt = _hf.open_compressed(folder)
    with ckpt:
        config = transformers.AutoConfig.from_pretrained(folder)
        cls = _model_class(config, model_class)
        if dtype is None:
            dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
            if isinstance(dtype, str):
                dtype = getattr(torch, dtype)
        model = cls(config).to(dtype)
        tied = _tied_groups(model)
        state = {}
        for path, entry in manifest["modules"].items():
            state.update(_install(model, path, entry, ckpt, dtype, mode, tied))
        covered = set(state)
        for name in ckpt.names:
            if name not in covered:
                state[name] = _to_torch(ckpt.read(name))
        # A tied parameter is stored once (as transformers saves it): its other names take the same tensor.
        for group in _tied_groups(model):
            present = [name for name in group if name in state]
            if present:
                for name in group:
                    state.setdefault(name, state[present[0]])
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{folder!r} does not match {cls.__name__}: missing {sorted(result.missing_keys)[:8]}, "
                f"unexpected {sorted(result.unexpected_keys)[:8]} (nothing is initialised at random: fix the folder "
                "or pass the right model_class)"
            )
    model.eval()
    return model


def _install(model, path, entry, ckpt, dtype, mode, tied) -> dict:
    """Swap the MPO layer of manifest ``entry`` in at ``path`` (and its aliases); its state_dict entries."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"the compressed module {path!r} is not a module of {type(model).__name__}") from None
    kind = _module_kind(module)
    if kind is None or (entry["kind"] is not None and entry["kind"] != kind):
        raise ValueError(f"the compressed module {path!r} has kind {entry['kind']!r} in the manifest but is a "
                         f"{type(module).__name__} in {type(model).__name__}")
    if kind not in LAYER_KINDS:
        raise ValueError(f"the compressed module {path!r} is a {kind} ({type(module).__name__}), for which this "
                         f"mpo.torch has no MPO layer (it has {sorted(LAYER_KINDS)})")
    transpose = entry["orientation"] != _ORIENTATION[kind]
    ins, outs = entry["in_factors"], entry["out_factors"]
    shape = tuple(entry["shape"])
    if transpose:
        ins, outs, shape = outs, ins, shape[::-1]
    bonds = [1, *entry["bonds"], 1]
    core_shapes = [(bonds[k], ins[k], outs[k], bonds[k + 1]) for k in range(len(ins))]
    placeholder = _placeholder(core_shapes, shape)
    if kind == "embedding":
        layer = layer_for(kind, placeholder, padding_idx=entry.get("padding_idx", module.padding_idx), mode=mode,
                          dtype=dtype)
    else:
        layer = layer_for(kind, placeholder, getattr(module, "bias", None), mode=mode, dtype=dtype)
    state = {}
    for k, name in enumerate(_hf.core_names(path, len(ins))):
        core = _to_torch(ckpt.read(name))
        state[name] = core.permute(0, 2, 1, 3).contiguous() if transpose else core
    if entry.get("row_scale"):
        state[f"{path}.row_scale"] = _to_torch(ckpt.read(entry["row_scale"]))
    aliases = set(entry.get("aliases") or [])
    weight = f"{path}.weight"
    for group in tied:  # modules whose weight is this one's are the same module after compression
        if weight in group:
            aliases.update(name[: -len(".weight")] for name in group if name != weight and name.endswith(".weight"))
    readers = {}  # aliases of another kind: a Linear reading an embedding's cores (GPT-2 wte/lm_head, T5, OPT)
    for alias in sorted(aliases):
        other = model.get_submodule(alias)
        other_kind = _module_kind(other)
        if other_kind == kind:
            continue
        if other_kind not in ("linear", "conv1d") or kind not in ("embedding", "linear", "conv1d"):
            raise ValueError(
                f"{alias!r} ({type(other).__name__}) ties its weight to the compressed {path!r} "
                f"({type(module).__name__}); sharing one MPO between a {other_kind} and a {kind} is not supported"
            )
        # nn.Linear stores W as out x in and reads x @ W.T; an embedding's M is W itself, so the Linear
        # reads M transposed. Conv1D stores in x out (M = W): the same matrix read as it is.
        transposed = (other_kind == "linear") == (kind != "linear")
        readers[alias] = MPOTiedLinear(layer, getattr(other, "bias", None), transposed=transposed, mode=mode)
    _set_module(model, path, layer)
    for alias in sorted(aliases):
        if alias in readers:
            # It owns only its bias; the cores stay under the source's name, stored once.
            _set_module(model, alias, readers[alias])
            continue
        _set_module(model, alias, layer)
        for key in list(state):
            if key.startswith(path + "."):
                state[alias + key[len(path):]] = state[key]
    return state


def save_pretrained(model: nn.Module, folder: str | os.PathLike, *,
                    max_shard_size: int | str = _hf.DEFAULT_SHARD_SIZE) -> None:
    """Write ``model`` (a transformers model, MPO layers in place) as a compressed model folder.

    The config and generation config are saved with the model's own methods; the tensors as
    ``mpo.io`` shards; the manifest lists every MPO layer and the other names it is reachable by.
    The folder is replaced atomically; an existing folder must be empty or an earlier mpo output.
    """
    folder = os.fspath(folder)
    layers = mpo_layers(model)
    paths: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) in {id(layer) for layer in layers.values()}:
            paths.setdefault(id(module), []).append(name)
    manifest = _hf.manifest_template(None)
    skip_prefixes = []
    for path, layer in layers.items():
        kind = _layer_kind(layer)
        aliases = [p for p in paths[id(layer)] if p != path]
        skip_prefixes += [a + "." for a in aliases]
        cores = list(layer.cores)
        manifest["modules"][path] = _hf.module_entry(
            kind=kind, orientation=_ORIENTATION[kind], shape=layer.matrix_shape,
            in_factors=layer.in_shape, out_factors=layer.out_shape, bonds=layer.bond_dims,
            dtype=str(cores[0].dtype).replace("torch.", ""), aliases=aliases,
            bias=f"{path}.bias" if getattr(layer, "bias", None) is not None else None,
            row_scale=f"{path}.row_scale" if getattr(layer, "row_scale", None) is not None else None,
            padding_idx=getattr(layer, "padding_idx", None),
        )
    written: dict[int, str] = {}
    with _hf.new_folder(folder) as tmp:
        writer = _hf.ShardedWriter(tmp, max_shard_size)
        try:
            for name, t in model.state_dict(keep_vars=True).items():
                if any(name.startswith(p) for p in skip_prefixes):
                    continue
                if id(t) in written:  # a tied weight: stored once, its other names restored on load
                    continue
                written[id(t)] = name
                writer.add(name, _to_numpy(t))
            writer.finish()
            _hf.write_manifest(tmp, manifest)
            config = getattr(model, "config", None)
            if config is not None:
                config.save_pretrained(tmp)
            generation = getattr(model, "generation_config", None)
            if generation is not None and getattr(model, "can_generate", lambda: False)():
                generation.save_pretrained(tmp)
        except BaseException:
            writer.abort()
            raise
