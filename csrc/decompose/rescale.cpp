// Shortcut (Shortcuts::rescale): Gram matrices square the data, so float32 entries of ~1e±19 (double:
// ~1e±150) overflow or underflow there. Such a matrix is decomposed scaled by a power of two that brings
// its root mean square near 1; the scale is exact in binary floating point, so the result is that of the
// scaled matrix, and it is undone on the central core, the spectra and the errors (orthonormal cores do
// not carry it). The plain sweep decomposes the matrix as it is.
#include "decompose/shortcuts.hpp"

#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace mpo {

template <class T>
int rescale_exponent(double norm, Index rows, Index cols) {
  const double rms = norm / std::sqrt(static_cast<double>(rows) * static_cast<double>(cols));
  const int limit = std::is_same<T, float>::value ? 20 : 100;
  if (rms > 0 && std::isfinite(rms) && std::abs(std::ilogb(rms)) > limit) return -std::ilogb(rms);
  return 0;
}

template <class T>
Decomposition<T> decompose_rescaled(const T* data, Index rows, Index cols, const Factors& factors,
                                    const DecomposeOptions& options, double norm, int exponent) {
  Matrix<T> scaled = ConstMatrixMap<T>(data, rows, cols);
  for (Index i = 0; i < scaled.size(); ++i) scaled.data()[i] = std::ldexp(scaled.data()[i], exponent);
  Decomposition<T> result = decompose<T>(scaled.data(), rows, cols, factors, options);
  Core<T>& central = result.cores[central_index(factors.n())];
  for (Index i = 0; i < central.data.size(); ++i) central.data.data()[i] = std::ldexp(central.data.data()[i], -exponent);
  // The central core carries the scale: values of up to σ_max, which float32 cannot always hold.
  if (!central.data.allFinite())
    throw std::overflow_error(std::string("mpo: the central core would hold values beyond the largest ") +
                              (std::is_same<T, float>::value ? "float32" : "float64") + " (the matrix's norm is " +
                              std::to_string(norm) + "); decompose it in float64 or scale it down");
  for (Spectrum& spectrum : result.spectra) spectrum *= std::ldexp(1.0, -exponent);
  for (double& e : result.truncation_errors) e = std::ldexp(e, -exponent);
  result.norm = norm;
  return result;
}

#define MPO_INSTANTIATE(T)                                                                              \
  template int rescale_exponent<T>(double, Index, Index);                                              \
  template Decomposition<T> decompose_rescaled<T>(const T*, Index, Index, const Factors&,               \
                                                  const DecomposeOptions&, double, int);
MPO_INSTANTIATE(float)
MPO_INSTANTIATE(double)
#undef MPO_INSTANTIATE

}  // namespace mpo
