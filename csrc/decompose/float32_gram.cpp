// Shortcut (Shortcuts::float32_gram): a capped float32 split forms its Gram matrix in float32 where the
// cut discards enough for that rounding to be harmless (the conditions are in shortcuts.hpp). The plain
// split forms it in double for float32 data too (gram_double in split.cpp).
#include "decompose/shortcuts.hpp"

#include "mpo/parallel.hpp"

namespace mpo {

Eigen::MatrixXd float32_gram_of_rows(const Eigen::Ref<const Matrix<float>>& a) {
  return gram<float>(a).cast<double>();
}

Eigen::MatrixXd float32_gram_of_columns(const Eigen::Ref<const Matrix<float>>& a) {
  return gram<float>(a.transpose()).cast<double>();
}

}  // namespace mpo
