"""PyTorch adapters: MPO layers, model compression, lightweight fine-tuning, dimension squeezing,
Fisher information for weighted factorization, and the stacked cross-layer bank.

Needs PyTorch (``pip install torch==2.13.0``); ``import mpo`` itself never imports torch.
"""

try:
    import torch as _torch  # noqa: F401 - only to fail early with an install hint
except ImportError as exc:  # exercised in a subprocess by tests/test_torch_optional.py
    raise ImportError(
        "mpo.torch needs PyTorch, which is not installed; install the CPU build with: "
        "python -m pip install torch==2.13.0"
    ) from exc

from ._compress import (
    CompressionReport,
    LayerReport,
    ParameterReport,
    ParameterRow,
    compress,
    load,
    mpo_layers,
    optimizer_groups,
    parameter_report,
    save,
)
from ._fisher import fisher_information
from ._layers import MODES, MPOEmbedding, MPOLayer, MPOLinear
from ._pretrained import from_pretrained, save_pretrained
from ._squeeze import squeeze
from ._stacked import StackedBank, StackedLinear, compress_stacked

__all__ = [
    "MODES",
    "CompressionReport",
    "LayerReport",
    "MPOEmbedding",
    "MPOLayer",
    "MPOLinear",
    "ParameterReport",
    "ParameterRow",
    "StackedBank",
    "StackedLinear",
    "compress",
    "compress_stacked",
    "fisher_information",
    "from_pretrained",
    "load",
    "mpo_layers",
    "optimizer_groups",
    "parameter_report",
    "save",
    "save_pretrained",
    "squeeze",
]
