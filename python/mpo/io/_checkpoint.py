"""The ``mpo.checkpoint`` format written by ``mpo compress``: a safetensors file of MPO arrays.

A compressed matrix NAME is stored as the tensors ``NAME + SEP + <array name>`` of its MPO's array form
(``MPO.to_arrays()``); every other tensor is kept under its own name. The metadata holds the format tag
and version and, as JSON under "matrices", one entry per compressed matrix (its error, time, dtype).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._formats import CHECKPOINT
from ._tensors import write_tensors

__all__ = ["SEP", "write_checkpoint", "read_checkpoint"]

SEP = "::mpo."


def write_checkpoint(
    path: str | os.PathLike[str],
    mpos: Mapping[str, Mapping[str, np.ndarray]],
    plain: Mapping[str, np.ndarray],
    info: Mapping[str, Any],
    mpo_version: str,
) -> None:
    """Write the MPO arrays by matrix name, the plain tensors and per-matrix ``info`` atomically."""
    tensors = {name + SEP + key: a for name, arrays in mpos.items() for key, a in arrays.items()}
    tensors.update(plain)
    metadata = {"format": CHECKPOINT.kind, "format_version": str(CHECKPOINT.versions[-1]),
                "matrices": json.dumps(info), "mpo_version": mpo_version}
    write_tensors(path, tensors, metadata)


def read_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray], dict[str, Any]]:
    """(MPO arrays by matrix name, plain tensors by name, per-matrix info) of a file written by
    :func:`write_checkpoint`, after its tag and version are checked (ValueError naming the path)."""
    name = os.fspath(path)
    if not Path(path).is_file():
        raise ValueError(f"compressed file {name!r} does not exist or is not a file")
    try:
        from safetensors import safe_open
    except ImportError:
        raise ImportError("reading a compressed file needs safetensors: python -m pip install safetensors") from None
    try:
        with safe_open(name, "np") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:
        raise ValueError(f"cannot read {name!r} as safetensors: {type(exc).__name__}: {exc}") from None
    if meta.get("format") != CHECKPOINT.kind:
        raise ValueError(f"{name!r} was not written by mpo compress (no '{CHECKPOINT.kind}' format in its metadata)")
    CHECKPOINT.check_version(meta.get("format_version"), repr(name))
    try:
        info = json.loads(meta["matrices"])
    except (KeyError, ValueError):
        raise ValueError(f"{name!r}: the 'matrices' entry of its metadata is missing or not JSON") from None
    if not isinstance(info, dict):
        raise ValueError(f"{name!r}: the 'matrices' entry of its metadata is not a JSON object")
    plain = {key: value for key, value in tensors.items() if SEP not in key}
    mpos: dict[str, dict[str, np.ndarray]] = {}
    for matrix in info:
        prefix = matrix + SEP
        mpos[matrix] = {key[len(prefix):]: a for key, a in tensors.items() if key.startswith(prefix)}
    return mpos, plain, info
