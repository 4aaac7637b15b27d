"""Plain checkpoints: every tensor of a .safetensors, .npz or PyTorch file as a NumPy array, and back."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ._atomic import atomic_path

__all__ = ["read_tensors", "write_tensors", "savez"]


def savez(file: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    """``arrays`` into an open binary file as an uncompressed .npz (names as given, no pickle needed)."""
    # np.savez's keywords are the entry names; its typed signature cannot say so (allow_pickle is one).
    write: Callable[..., None] = np.savez
    write(file, **arrays)


def read_tensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors, .npz or (with torch) .bin/.pt checkpoint as NumPy arrays.

    A missing, unreadable or unknown file raises ValueError naming it; a reader package that is not
    installed raises ImportError saying what to install.
    """
    p = Path(path)
    name = os.fspath(path)
    if not p.is_file():
        raise ValueError(f"checkpoint {name!r} does not exist or is not a file")
    suffix = p.suffix.lower()
    if suffix not in (".safetensors", ".npz", ".bin", ".pt", ".pth"):
        raise ValueError(f"checkpoint {name!r} must be .safetensors, .npz, .bin or .pt, got suffix {suffix!r}")
    if suffix in (".bin", ".pt", ".pth"):
        return _read_torch(p)
    try:
        if suffix == ".safetensors":
            # mpo's own reader (validated header, bfloat16 through ml_dtypes); bfloat16 is widened to
            # float32, which holds it exactly, as the PyTorch reader below does.
            from ._safetensors import load_file

            return {k: a.astype(np.float32) if a.dtype.name == "bfloat16" else a for k, a in load_file(p).items()}
        with np.load(p, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ImportError as exc:
        raise ImportError(f"reading {name!r} needs a package that is missing: {exc}") from None
    except Exception as exc:  # every reader has its own error types for a corrupt file
        raise ValueError(f"cannot read checkpoint {name!r}: {type(exc).__name__}: {exc}") from None


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"reading the PyTorch file {str(path)!r} needs torch (python -m pip install torch==2.13.0); "
            "or convert it to .safetensors"
        ) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict of tensors")
    out = {}
    for key, t in state.items():
        if isinstance(t, torch.Tensor):
            # NumPy has no bfloat16: widen half types to float32, which holds them exactly.
            if t.dtype in (torch.bfloat16, torch.float16):
                t = t.float()
            out[key] = t.detach().cpu().numpy()
    return out


def write_tensors(
    path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` atomically as .npz (by suffix) or safetensors (any other name, with ``metadata``).

    OSError (a missing folder, no permission, a full disk) propagates; nothing is left half-written.
    """
    with atomic_path(path) as tmp:
        if os.fspath(path).lower().endswith(".npz"):
            with open(tmp, "wb") as f:
                savez(f, tensors)
        else:
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)
