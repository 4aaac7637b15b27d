#include "mpo/contract.hpp"

#include "mpo/checked.hpp"
#include "mpo/parallel.hpp"

#include <stdexcept>
#include <string>

namespace mpo {

template <class T>
void permute(const T* source, const std::vector<Index>& dims, const std::vector<std::size_t>& perm,
             T* target) {
  const std::size_t rank = dims.size();
  if (perm.size() != rank) throw std::invalid_argument("mpo: permutation and dims differ in length");
  std::vector<Index> source_stride(rank, 1);
  for (std::size_t a = rank; a-- > 1;) source_stride[a - 1] = source_stride[a] * dims[a];
  std::vector<Index> out_dims(rank), stride(rank);
  Index total = 1;
  for (std::size_t a = 0; a < rank; ++a) {
    out_dims[a] = dims[perm[a]];
    stride[a] = source_stride[perm[a]];
    total *= out_dims[a];
  }
  if (total == 0) return;
  // Walk the target in order with an odometer over all but its last two axes; those two are copied
  // as a block of strided runs (the last axis is contiguous in the source for interleave and its
  // inverse, but only a few entries long, so the odometer must not step once per run).
  if (rank == 1) {
    for (Index x = 0; x < out_dims[0]; ++x) target[x] = source[x * stride[0]];
    return;
  }
  const Index inner = out_dims[rank - 1], inner_stride = stride[rank - 1];
  const Index middle = out_dims[rank - 2], middle_stride = stride[rank - 2];
  const Index block = inner * middle;
  std::vector<Index> counter(rank, 0);
  Index offset = 0;
  for (Index done = 0; done < total; done += block) {
    T* to = target + done;
    if (inner_stride == 1) {
      detail::copy_runs_any(source + offset, middle_stride, middle, inner, to);
    } else {
      for (Index y = 0; y < middle; ++y) {
        const T* from = source + offset + y * middle_stride;
        for (Index x = 0; x < inner; ++x) to[y * inner + x] = from[x * inner_stride];
      }
    }
    for (std::size_t a = rank - 2; a-- > 0;) {
      if (++counter[a] < out_dims[a]) {
        offset += stride[a];
        break;
      }
      offset -= stride[a] * (out_dims[a] - 1);
      counter[a] = 0;
    }
  }
}

namespace {
// Dimensions (i_1..i_n, j_1..j_n) and the permutation that interleaves them.
void interleaving(const Factors& factors, std::vector<Index>* dims, std::vector<std::size_t>* perm) {
  const std::size_t n = factors.n();
  dims->assign(factors.in_shape.begin(), factors.in_shape.end());
  dims->insert(dims->end(), factors.out_shape.begin(), factors.out_shape.end());
  perm->resize(2 * n);
  for (std::size_t k = 0; k < n; ++k) {
    (*perm)[2 * k] = k;
    (*perm)[2 * k + 1] = n + k;
  }
}
}  // namespace

template <class T>
void interleave(const T* matrix, const Factors& factors, T* tensor) {
  std::vector<Index> dims;
  std::vector<std::size_t> perm;
  interleaving(factors, &dims, &perm);
  permute(matrix, dims, perm, tensor);
}

template <class T>
void deinterleave(const T* tensor, const Factors& factors, T* matrix) {
  const std::size_t n = factors.n();
  std::vector<Index> dims(2 * n);
  std::vector<std::size_t> perm(2 * n);
  for (std::size_t k = 0; k < n; ++k) {
    dims[2 * k] = factors.in_shape[k];
    dims[2 * k + 1] = factors.out_shape[k];
    perm[k] = 2 * k;
    perm[n + k] = 2 * k + 1;
  }
  permute(tensor, dims, perm, matrix);
}

template <class T>
void validate_cores(const std::vector<Core<T>>& cores) {
  std::vector<CoreShape> shapes;
  shapes.reserve(cores.size());
  for (std::size_t k = 0; k < cores.size(); ++k) {
    const Core<T>& c = cores[k];
    if (c.data.rows() != c.left_bond * c.rows * c.cols || c.data.cols() != c.right_bond)
      throw std::invalid_argument("mpo: core " + std::to_string(k) + " data does not match its shape");
    shapes.push_back(c.shape());
  }
  check_chain(shapes);
}

template <class T>
Matrix<T> rebuild(const std::vector<Core<T>>& cores) {
  validate_cores(cores);
  Factors factors;
  for (const Core<T>& c : cores) {
    factors.in_shape.push_back(c.rows);
    factors.out_shape.push_back(c.cols);
  }
  // The dense size first: the partial products below would otherwise fail on their way to it.
  (void)checked_mul(factors.rows(), factors.cols(), "the dense matrix");
  // Left to right: (i_1 j_1 … i_k j_k) × d_k times the right unfolding of core k+1.
  Matrix<T> partial = cores[0].data;
  for (std::size_t k = 1; k < cores.size(); ++k) {
    const Core<T>& c = cores[k];
    Matrix<T> next = multiply<T>(partial, c.right_unfolding());
    // Same coefficients, read as (… i_k j_k) × d_k: resize keeps the buffer when the size is unchanged.
    next.resize(checked_product({next.rows(), c.rows, c.cols}, "a partial product of the cores"), c.right_bond);
    partial.swap(next);
  }
  Matrix<T> dense(factors.rows(), factors.cols());
  deinterleave(partial.data(), factors, dense.data());
  return dense;
}

#define MPO_INSTANTIATE(T)                                                                      \
  template void permute<T>(const T*, const std::vector<Index>&, const std::vector<std::size_t>&, \
                           T*);                                                                 \
  template void interleave<T>(const T*, const Factors&, T*);                                    \
  template void deinterleave<T>(const T*, const Factors&, T*);                                  \
  template Matrix<T> rebuild<T>(const std::vector<Core<T>>&);                                   \
  template void validate_cores<T>(const std::vector<Core<T>>&);
MPO_INSTANTIATE(float)
MPO_INSTANTIATE(double)
#undef MPO_INSTANTIATE

}  // namespace mpo
