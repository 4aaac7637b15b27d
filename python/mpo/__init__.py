"""mpo: Matrix Product Operator compression of pre-trained language model weights.

    >>> import numpy as np, mpo
    >>> m = mpo.decompose(np.random.default_rng(0).standard_normal((768, 3072)), max_bond=100)
    >>> m.bond_dims, round(m.compression_ratio, 3)  # doctest: +SKIP

The decomposition, its error bound and entropy follow MPOP (Liu et al., ACL 2021); see
docs/API.md and docs/ALGORITHMS.md for the exact conventions.
"""

from ._decompose import decompose
from ._result import Approximation
from ._mpo import MPO, load
from ._shape import ShapePlan, plan_shape
from .io import FORMAT_VERSION

__all__ = ["MPO", "ShapePlan", "decompose", "plan_shape", "load", "FORMAT_VERSION", "Approximation"]

# Fisher-weighted factorization and the stacked cross-layer bank (issue 6).
from . import stacked  # noqa: E402
from ._weighted import LowRank, weighted_svd  # noqa: E402

# Dimension squeezing (MPOP Algorithm 2), framework-free; mpo.torch.squeeze wires it to torch layers.
from ._squeeze import SqueezeResult, SqueezeStep, central_bonds, cut_central, squeeze  # noqa: E402

__all__ += ["LowRank", "weighted_svd", "stacked", "SqueezeResult", "SqueezeStep", "central_bonds", "cut_central", "squeeze"]
__version__ = "0.1.0"

# Activation-aware compression (issue 17, docs/ALGORITHMS.md §14): calibration statistics, whitened SVD,
# scaled and Kronecker-whitened MPOs, and the model-wide budget.
from ._activation import (  # noqa: E402
    ActivationFit,
    ActivationStats,
    Allocation,
    Calibration,
    DAMPING,
    LayerCurve,
    SCALINGS,
    SHRINKAGES,
    WhitenedBasis,
    activation_error,
    allocate,
    decompose_activations,
    kronecker_factors,
    shrink_kronecker,
    svd_curve,
    whitened_basis,
    whitened_svd,
    whitening,
)

__all__ += [
    "ActivationFit",
    "ActivationStats",
    "Allocation",
    "Calibration",
    "DAMPING",
    "LayerCurve",
    "SCALINGS",
    "SHRINKAGES",
    "WhitenedBasis",
    "activation_error",
    "allocate",
    "decompose_activations",
    "kronecker_factors",
    "shrink_kronecker",
    "svd_curve",
    "whitened_basis",
    "whitened_svd",
    "whitening",
]

# A whole Hugging Face checkpoint, streamed matrix by matrix into a compressed model folder, in this process
# or on Dask workers (client=); what `mpo compress MODEL_DIR -o OUT_DIR` runs.
from .io._hf import CompressResult, compress_checkpoint  # noqa: E402

__all__ += ["CompressResult", "compress_checkpoint"]
