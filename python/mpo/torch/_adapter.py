"""Task adapters: save only what fine-tuning trained, put it back onto a fresh copy of the same base.

After lightweight fine-tuning (MPOP §4.1) a task differs from its compressed base only in the tensors
that trained: the auxiliary tensors, and whatever else was left trainable (biases, a task head). An
adapter file holds exactly those, so one compressed base serves many tasks, each a small file, which is
what LoRA adapters are used for.

The file is safetensors with a JSON manifest in its metadata: the format and version, the names and
shapes of the tensors, and a fingerprint of the base, a SHA-256 over every parameter and buffer of the
model that the adapter does *not* hold (names, dtypes, shapes and bytes). ``load_adapter`` refuses a
model whose base differs, so an adapter never lands on the wrong base or on a base compressed at other
bonds, and it validates every tensor before it writes any: a bad file leaves the model untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..io import ADAPTER, atomic_path

__all__ = ["ADAPTER_FORMAT", "ADAPTER_VERSION", "AdapterInfo", "base_fingerprint", "load_adapter", "save_adapter"]

ADAPTER_FORMAT = ADAPTER.kind
ADAPTER_VERSION = ADAPTER.versions[-1]
# An adapter is a handful of small tensors; a header claiming more than this is not one we wrote.
_MAX_HEADER = 64 * 1024 * 1024


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # Parameters and buffers once each: a tied parameter appears under its first name only.
    out: dict[str, torch.Tensor] = dict(model.named_parameters())
    for name, buf in model.named_buffers():
        out.setdefault(name, buf)
    return out


def base_fingerprint(model: nn.Module, exclude: Iterable[str] = ()) -> str:
    """SHA-256 (hex) over every parameter and buffer of ``model`` not named in ``exclude``.

    Names, dtypes, shapes and bytes enter the hash in name order, so two models agree exactly when they
    hold the same tensors bit for bit (device does not matter).
    """
    skip = set(exclude)
    digest = hashlib.sha256()
    for name, t in sorted(_named_tensors(model).items()):
        if name in skip:
            continue
        data = t.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}\n".encode())
        # Reinterpreted as bytes, so bfloat16 and other types NumPy lacks hash the same way.
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


class AdapterInfo(dict):
    """The manifest of an adapter file: format, version, base fingerprint, tensor names and shapes."""

    @property
    def names(self) -> list[str]:
        """The tensors the adapter holds."""
        return list(self["tensors"])

    @property
    def num_params(self) -> int:
        """Values stored in the adapter."""
        return sum(int(torch.Size(s).numel()) for s in self["tensors"].values())


def save_adapter(
    model: nn.Module, path: str | os.PathLike, *, names: Iterable[str] | None = None, base: str = ""
) -> AdapterInfo:
    """Write what ``model`` trains to ``path`` (safetensors), with a manifest naming its base.

    Parameters
    ----------
    model : nn.Module
        A (compressed, fine-tuned) model.
    names : iterable of str, optional
        The parameters or buffers to store. By default every parameter with ``requires_grad``: after
        :func:`mpo.torch.compress` with ``lightweight=True`` these are the auxiliary tensors and whatever
        else was left trainable (biases, a head).
    base : str
        A free-form label of the base model (a path or a hub name), stored for people to read; the
        fingerprint, not this label, is what :func:`load_adapter` checks.

    Returns
    -------
    AdapterInfo
        The manifest written into the file's metadata.
    """
    from safetensors.torch import save as st_save

    if not isinstance(model, nn.Module):
        raise TypeError(f"save_adapter expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(base, str):
        raise TypeError(f"base must be a string label, got {type(base).__name__}")
    tensors = _named_tensors(model)
    chosen = [n for n, p in model.named_parameters() if p.requires_grad] if names is None else list(names)
    if not chosen:
        raise ValueError("save_adapter: nothing to save; the model has no trainable parameter and no names were given")
    unknown = [n for n in chosen if n not in tensors]
    if unknown:
        raise ValueError(f"save_adapter: {unknown[:5]} are not parameters or buffers of the model")
    if len(set(chosen)) != len(chosen):
        raise ValueError("save_adapter: names must not repeat")
    info = AdapterInfo(
        format=ADAPTER_FORMAT,
        format_version=ADAPTER_VERSION,
        base=base,
        base_fingerprint=base_fingerprint(model, exclude=chosen),
        tensors={n: list(tensors[n].shape) for n in chosen},
        dtypes={n: str(tensors[n].dtype).removeprefix("torch.") for n in chosen},
    )
    payload = st_save(
        {n: tensors[n].detach().to("cpu").contiguous() for n in chosen},
        metadata={"mpo": json.dumps(info)},
    )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(payload)
    return info


def _read(path: str) -> tuple[AdapterInfo, Mapping[str, torch.Tensor]]:
    from safetensors.torch import load as st_load

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            header_len = int.from_bytes(head, "little")
            if header_len > min(size - 8, _MAX_HEADER):
                raise ValueError(f"its header claims {header_len} bytes in a file of {size}")
            f.seek(0)
            raw = f.read()
        tensors = st_load(raw)
        header = json.loads(raw[8 : 8 + header_len])
    except OSError as exc:
        raise ValueError(f"cannot read the adapter {path!r}: {exc.strerror or exc}") from None
    except Exception as exc:  # safetensors and json raise their own types for a damaged file
        raise ValueError(f"{path!r} is not a readable adapter file: {type(exc).__name__}: {exc}") from None
    meta = header.get("__metadata__") or {}
    try:
        info = AdapterInfo(json.loads(meta["mpo"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path!r} is not an mpo adapter (no 'mpo' manifest in its metadata)") from None
    if info.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path!r} is not an mpo adapter (format {info.get('format')!r}, want {ADAPTER_FORMAT!r})")
    ADAPTER.check_version(info.get("format_version"), repr(path))
    listed = info.get("tensors")
    if not isinstance(listed, dict) or set(listed) != set(tensors):
        raise ValueError(f"{path!r}: the manifest's tensor list does not match the tensors stored")
    for name, t in tensors.items():
        if list(t.shape) != list(listed[name]):
            raise ValueError(f"{path!r}: tensor {name!r} is {tuple(t.shape)}, the manifest says {listed[name]}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path!r}: tensor {name!r} holds NaN or inf")
    return info, tensors


def load_adapter(model: nn.Module, path: str | os.PathLike) -> AdapterInfo:
    """Put the adapter at ``path`` onto ``model``, in place; returns its manifest.

    ``model`` must be the adapter's base: the same architecture, compressed at the same bonds, with the
    same values in everything the adapter does not hold (checked by fingerprint). Every stored tensor is
    checked (name, shape, dtype, finite values) before any is copied, so a refused adapter leaves the
    model as it was. Loading another adapter of the same base swaps the task: its tensors overwrite the
    previous adapter's.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_adapter expects a torch.nn.Module, got {type(model).__name__}")
    path = os.fspath(path)
    info, stored = _read(path)
    targets = _named_tensors(model)
    missing = [n for n in stored if n not in targets]
    if missing:
        raise ValueError(f"{path!r}: the model has no tensors {missing[:5]}; is it the adapter's base architecture?")
    for name, t in stored.items():
        have = targets[name]
        if tuple(have.shape) != tuple(t.shape) or have.dtype != t.dtype:
            raise ValueError(
                f"{path!r}: {name!r} is {tuple(t.shape)} {t.dtype} in the adapter and {tuple(have.shape)} "
                f"{have.dtype} in the model (compressed at other bonds, or another base)"
            )
    found = base_fingerprint(model, exclude=stored)
    if found != info["base_fingerprint"]:
        raise ValueError(
            f"{path!r} was trained on another base (fingerprint {info['base_fingerprint'][:12]}…, this model "
            f"{found[:12]}…); load it onto a fresh copy of the compressed model it was saved from"
        )
    with torch.no_grad():
        for name, t in stored.items():
            targets[name].copy_(t.to(targets[name].device))
    return info
