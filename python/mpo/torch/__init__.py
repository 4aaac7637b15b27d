"""PyTorch adapters of mpo: Fisher information for weighted factorization, and the stacked bank.

torch is imported here, never by ``import mpo``: the core library needs only NumPy.
"""

try:
    import torch  # noqa: F401
except ImportError:  # tested by hiding torch from sys.modules
    raise ImportError("mpo.torch needs PyTorch: pip install torch==2.13.0") from None

from ._fisher import fisher_information
from ._stacked import StackedBank, StackedLinear, compress_stacked

__all__ = ["fisher_information", "compress_stacked", "StackedBank", "StackedLinear"]
