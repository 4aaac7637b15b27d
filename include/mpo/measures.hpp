// Scalar measures of an MPO read from its spectra and bonds, never from a dense matrix.
#pragma once

#include "mpo/types.hpp"

#include <vector>

namespace mpo {

// Entanglement entropy of one bond (MPOP Eq. 6): S = −Σ v ln v with v = λ²/Σλ² (the physics
// convention of the authors' code; natural log; zeros dropped). 0 ≤ S ≤ ln(len(λ)). A zero spectrum
// has entropy 0, a non-finite one NaN. Computed from λ/λmax, so any finite scale gives the same S.
double entropy(const Spectrum& spectrum);

// The error bound of MPOP Eq. 4 with ε_k in its squared-sum form: sqrt(Σ ε_k²), summed scaled by the largest
// ε_k so that it is finite whenever the result is; NaN if any ε_k is.
double error_bound(const std::vector<double>& truncation_errors);

// Number of parameters of cores with these factors and bonds: Σ d_{k-1} i_k j_k d_k (Eq. 5's numerator).
Index num_params(const Factors& factors, const std::vector<Index>& bonds);

}  // namespace mpo
