// Contractions of cores and the one permute kernel; see include/mpo/contract.hpp.
#include "mpo/contract.hpp"

#include "mpo/checked.hpp"
#include "mpo/parallel.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>

namespace mpo {

namespace {

// target (cols × rows) = sourceᵀ (source rows × cols, both row-major), in square tiles of one SIMD
// packet per row, transposed in registers: a plain loop reads one cache line per value from whichever
// side is strided, and was 3-4x slower (in the apply kernel, the state moved past a bond of a few hundred
// in a right-to-left sweep, and a merged core packed for it, spent more time here than in their GEMM).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
template <class T>
void transpose_tiled(const T* source, Index rows, Index cols, T* target) {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  constexpr Index N = Eigen::internal::unpacket_traits<Packet>::size;
  Index r0 = 0;
  if constexpr (N > 1) {
    const Index full_cols = cols / N * N;
    for (; r0 + N <= rows; r0 += N) {
      for (Index c0 = 0; c0 < full_cols; c0 += N) {
        Eigen::internal::PacketBlock<Packet, N> tile;
        for (Index k = 0; k < N; ++k) tile.packet[k] = Eigen::internal::ploadu<Packet>(source + (r0 + k) * cols + c0);
        Eigen::internal::ptranspose(tile);
        for (Index k = 0; k < N; ++k) Eigen::internal::pstoreu(target + (c0 + k) * rows + r0, tile.packet[k]);
      }
      for (Index c = full_cols; c < cols; ++c)
        for (Index r = r0; r < r0 + N; ++r) target[c * rows + r] = source[r * cols + c];
    }
  }
  for (Index r = r0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) target[c * rows + r] = source[r * cols + c];
}
#pragma GCC diagnostic pop

// The general case: walk the target in order with an odometer over the source's strides.
template <class T>
void permute_strided(const T* source, const std::vector<Index>& dims, const std::vector<std::size_t>& perm,
                     T* target) {
  const std::size_t rank = dims.size();
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

}  // namespace

// Target axes that are already neighbours in the source are merged first: a move of one block of axes
// past another becomes a plain 2-D transpose (done in SIMD tiles), a batch of such moves a batch of
// transposes, and an identity a copy. Everything else walks the target with an odometer.
template <class T>
void permute(const T* source, const std::vector<Index>& dims, const std::vector<std::size_t>& perm,
             T* target) {
  if (perm.size() != dims.size()) throw std::invalid_argument("mpo: permutation and dims differ in length");
  std::vector<std::pair<std::size_t, std::size_t>> groups;  // (first source axis, count), target order
  for (std::size_t a = 0; a < perm.size(); ++a) {
    if (a > 0 && perm[a] == perm[a - 1] + 1)
      ++groups.back().second;
    else
      groups.push_back({perm[a], 1});
  }
  Index total = 1;
  for (Index d : dims) total *= d;
  if (groups.size() <= 1) {
    std::copy(source, source + total, target);
    return;
  }
  std::vector<std::size_t> by_source(groups.size());
  std::iota(by_source.begin(), by_source.end(), 0);
  std::sort(by_source.begin(), by_source.end(),
            [&](std::size_t a, std::size_t b) { return groups[a].first < groups[b].first; });
  std::vector<Index> group_dims(groups.size());
  std::vector<std::size_t> group_perm(groups.size());
  for (std::size_t s = 0; s < by_source.size(); ++s) {
    const auto [first, count] = groups[by_source[s]];
    Index d = 1;
    for (std::size_t c = 0; c < count; ++c) d *= dims[first + c];
    group_dims[s] = d;
    group_perm[by_source[s]] = s;
  }
  const std::size_t rank = group_dims.size();
  if (rank == 2 && group_perm[0] == 1) {
    transpose_tiled(source, group_dims[0], group_dims[1], target);
    return;
  }
  if (rank == 3 && group_perm[0] == 0 && group_perm[1] == 2) {  // a batch of transposes
    const Index size = group_dims[1] * group_dims[2];
    for (Index b = 0; b < group_dims[0]; ++b)
      transpose_tiled(source + b * size, group_dims[1], group_dims[2], target + b * size);
    return;
  }
  permute_strided(source, group_dims, group_perm, target);
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
