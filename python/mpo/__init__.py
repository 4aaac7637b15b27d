"""mpo: Matrix Product Operator compression of pre-trained language model weights.

    >>> import numpy as np, mpo
    >>> m = mpo.decompose(np.random.default_rng(0).standard_normal((768, 3072)), max_bond=100)
    >>> m.bond_dims, round(m.compression_ratio, 3)  # doctest: +SKIP

The decomposition, its error bound and entropy follow MPOP (Liu et al., ACL 2021); see
docs/ and the shared ALGORITHMS notes for the exact conventions.
"""

from ._decompose import decompose
from ._mpo import MPO, load
from ._shape import ShapePlan, plan_shape
from .io import FORMAT_VERSION

__all__ = ["MPO", "ShapePlan", "decompose", "plan_shape", "load", "FORMAT_VERSION"]

# Fisher-weighted factorization and the stacked cross-layer bank (issue 6).
from . import stacked  # noqa: E402
from ._weighted import LowRank, weighted_svd  # noqa: E402

# Dimension squeezing (MPOP Algorithm 2), framework-free; mpo.torch.squeeze wires it to torch layers.
from ._squeeze import SqueezeResult, SqueezeStep, central_bonds, squeeze  # noqa: E402

__all__ += ["LowRank", "weighted_svd", "stacked", "SqueezeResult", "SqueezeStep", "central_bonds", "squeeze"]
__version__ = "0.1.0"
