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

from ._calibrate import SensitivityReport, SensitivityRow, allocation, calibrate, check_calibration, sensitivity
from ._compress import (
    MIN_SIDE,
    CompressionReport,
    KeptDense,
    LayerReport,
    ParameterReport,
    ParameterRow,
    activation_candidates,
    compress,
    load,
    mpo_layers,
    optimizer_groups,
    parameter_report,
    save,
    tied_modules,
)
from ._fisher import fisher_information
from ._kernel import set_kernel_autograd
from ._layers import MODES, MPOConv1D, MPOEmbedding, MPOLayer, MPOLinear, MPOTiedLinear, WeightView, layer_for
from ._adapter import AdapterInfo, base_fingerprint, load_adapter, save_adapter
from ._pretrained import from_pretrained, save_pretrained, skeleton
from ._squeeze import squeeze, squeeze_to
from ._stacked import StackedBank, StackedLinear, compress_stacked

__all__ = [
    "MIN_SIDE",
    "MODES",
    "CompressionReport",
    "KeptDense",
    "LayerReport",
    "MPOConv1D",
    "MPOEmbedding",
    "MPOLayer",
    "MPOLinear",
    "MPOTiedLinear",
    "ParameterReport",
    "ParameterRow",
    "StackedBank",
    "SensitivityReport",
    "SensitivityRow",
    "StackedLinear",
    "WeightView",
    "activation_candidates",
    "allocation",
    "calibrate",
    "check_calibration",
    "compress",
    "compress_stacked",
    "fisher_information",
    "layer_for",
    "from_pretrained",
    "load",
    "mpo_layers",
    "optimizer_groups",
    "parameter_report",
    "save",
    "sensitivity",
    "set_kernel_autograd",
    "save_pretrained",
    "skeleton",
    "squeeze",
    "squeeze_to",
    "tied_modules",
    "AdapterInfo",
    "base_fingerprint",
    "load_adapter",
    "save_adapter",
]
