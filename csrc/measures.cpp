#include "mpo/measures.hpp"

#include <cmath>

namespace mpo {

double entropy(const Spectrum& spectrum) {
  const double total = spectrum.squaredNorm();
  if (!(total > 0)) return 0.0;
  double s = 0;
  for (Index i = 0; i < spectrum.size(); ++i) {
    const double v = spectrum[i] * spectrum[i] / total;
    if (v > 0) s -= v * std::log(v);
  }
  return s;
}

double error_bound(const std::vector<double>& truncation_errors) {
  double total = 0;
  for (double e : truncation_errors) total += e * e;
  return std::sqrt(total);
}

Index num_params(const Factors& factors, const std::vector<Index>& bonds) {
  Index total = 0;
  const std::size_t n = factors.n();
  for (std::size_t k = 0; k < n; ++k) {
    const Index left = k == 0 ? 1 : bonds[k - 1];
    const Index right = k + 1 == n ? 1 : bonds[k];
    total += left * factors.in_shape[k] * factors.out_shape[k] * right;
  }
  return total;
}

}  // namespace mpo
