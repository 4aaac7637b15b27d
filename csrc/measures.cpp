#include "mpo/measures.hpp"

#include "mpo/checked.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace mpo {

double entropy(const Spectrum& spectrum) {
  // v = (λ/λmax)² / Σ(λ/λmax)²: squaring λ itself overflows above ~1e154 and underflows below ~1e-162
  // (a spectrum of 1e-170s gave 0, not ln 2), while the ratios are in [0, 1] at any scale.
  if (!spectrum.allFinite()) return std::numeric_limits<double>::quiet_NaN();  // no entropy to give
  const double largest = spectrum.size() > 0 ? spectrum.cwiseAbs().maxCoeff() : 0.0;
  if (!(largest > 0)) return 0.0;
  const Spectrum scaled = spectrum / largest;
  const double total = scaled.squaredNorm();
  double s = 0;
  for (Index i = 0; i < scaled.size(); ++i) {
    const double v = scaled[i] * scaled[i] / total;
    if (v > 0) s -= v * std::log(v);
  }
  return s;
}

double error_bound(const std::vector<double>& truncation_errors) {
  // sqrt(Σ ε²) as emax·sqrt(Σ (ε/emax)²): every ε may be finite while Σ ε² is not.
  double largest = 0;
  for (double e : truncation_errors) {
    if (std::isnan(e)) return e;
    largest = std::max(largest, std::abs(e));
  }
  if (!(largest > 0) || !std::isfinite(largest)) return largest;
  double total = 0;
  for (double e : truncation_errors) total += (e / largest) * (e / largest);
  return largest * std::sqrt(total);
}

Index num_params(const Factors& factors, const std::vector<Index>& bonds) {
  Index total = 0;
  const std::size_t n = factors.n();
  for (std::size_t k = 0; k < n; ++k) {
    const Index left = k == 0 ? 1 : bonds[k - 1];
    const Index right = k + 1 == n ? 1 : bonds[k];
    total = checked_add(total, checked_product({left, factors.in_shape[k], factors.out_shape[k], right}, "a core's size"),
                        "the number of parameters");
  }
  return total;
}

}  // namespace mpo
