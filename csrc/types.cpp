#include "mpo/types.hpp"

#include "mpo/checked.hpp"

#include <limits>
#include <stdexcept>
#include <string>

namespace mpo {

namespace {
Index product(const std::vector<Index>& xs, std::size_t begin, std::size_t end, const char* what) {
  Index p = 1;
  for (std::size_t k = begin; k < end; ++k) p = checked_mul(p, xs[k], what);
  return p;
}
}  // namespace

Index Factors::rows() const { return product(in_shape, 0, in_shape.size(), "the product of the row factors"); }
Index Factors::cols() const { return product(out_shape, 0, out_shape.size(), "the product of the column factors"); }

std::vector<Index> Factors::full_bonds() const {
  const std::size_t count = n();
  std::vector<Index> pairs(count);
  for (std::size_t k = 0; k < count; ++k) pairs[k] = checked_mul(in_shape[k], out_shape[k], "a factor pair i_k j_k");
  std::vector<Index> bonds(count - 1);
  for (std::size_t k = 0; k + 1 < count; ++k)
    bonds[k] = std::min(product(pairs, 0, k + 1, "a full bond"), product(pairs, k + 1, count, "a full bond"));
  return bonds;
}

void Factors::validate() const {
  if (in_shape.size() != out_shape.size())
    throw std::invalid_argument("mpo: the row and column factor lists must have the same length n, got " +
                                std::to_string(in_shape.size()) + " and " +
                                std::to_string(out_shape.size()));
  if (in_shape.size() < 2)
    throw std::invalid_argument("mpo: an MPO needs n >= 2 factors per side, got n = " +
                                std::to_string(in_shape.size()));
  for (std::size_t k = 0; k < in_shape.size(); ++k) {
    if (in_shape[k] < 1 || out_shape[k] < 1)
      throw std::invalid_argument("mpo: every factor must be >= 1, got i_" + std::to_string(k + 1) +
                                  " = " + std::to_string(in_shape[k]) + ", j_" +
                                  std::to_string(k + 1) + " = " + std::to_string(out_shape[k]));
  }
  // Every later size is a product of these: refuse factors whose products do not fit.
  (void)rows();
  (void)cols();
  (void)full_bonds();
}

void check_chain(const std::vector<CoreShape>& cores) {
  Index padded_rows = 1, padded_cols = 1;
  if (cores.size() < 2)
    throw std::invalid_argument("mpo: an MPO needs n >= 2 cores, got " + std::to_string(cores.size()));
  for (std::size_t k = 0; k < cores.size(); ++k) {
    const CoreShape& c = cores[k];
    if (c.left_bond < 1 || c.rows < 1 || c.cols < 1 || c.right_bond < 1)
      throw std::invalid_argument("mpo: core " + std::to_string(k) + " has an empty dimension");
    // The kernels size buffers by these products (a core, the padded sides): each must fit.
    checked_product({c.left_bond, c.rows, c.cols, c.right_bond}, "a core's size");
    padded_rows = checked_mul(padded_rows, c.rows, "the product of the cores' row factors");
    padded_cols = checked_mul(padded_cols, c.cols, "the product of the cores' column factors");
    if (k == 0 && c.left_bond != 1)
      throw std::invalid_argument("mpo: the first core's left bond must be 1, got " +
                                  std::to_string(c.left_bond));
    if (k + 1 == cores.size() && c.right_bond != 1)
      throw std::invalid_argument("mpo: the last core's right bond must be 1, got " +
                                  std::to_string(c.right_bond));
    if (k > 0 && cores[k - 1].right_bond != c.left_bond)
      throw std::invalid_argument("mpo: bond " + std::to_string(k - 1) + " disagrees: core " +
                                  std::to_string(k - 1) + " has " +
                                  std::to_string(cores[k - 1].right_bond) + ", core " +
                                  std::to_string(k) + " has " + std::to_string(c.left_bond));
  }
}

}  // namespace mpo
