// Merging runs of neighbouring cores into one (a product of cores that does not involve X): the merge
// tree of the cheapest pairwise products, and the products themselves written grouped, so that a run
// multiplied out needs no permutation afterwards. Merging all cores is multiply_out_into.
#include "apply/internal.hpp"

#include "mpo/contract.hpp"
#include "mpo/parallel.hpp"
#include "mpo/runtime_gemm.hpp"

#include <algorithm>

namespace mpo {

namespace apply_internal {

// The cheapest way to multiply out each run of cores [a, b]: split it at s, multiply out both halves,
// then one GEMM (d_{a-1}·Π_{a..s} i j) × d_s times d_s × (Π_{s+1..b} i j · d_b) (interval DP, O(n³)).
MergeTree merge_tree(const std::vector<CoreShape>& cores) {
  const std::size_t n = cores.size();
  MergeTree tree;
  tree.cost.assign(n, std::vector<double>(n, 0.0));
  tree.split.assign(n, std::vector<std::size_t>(n, 0));
  std::vector<double> pairs(n + 1, 1.0);  // pairs[k] = Π_{m<k} i_m j_m
  for (std::size_t k = 0; k < n; ++k) pairs[k + 1] = pairs[k] * static_cast<double>(cores[k].rows * cores[k].cols);
  for (std::size_t length = 2; length <= n; ++length) {
    for (std::size_t a = 0; a + length <= n; ++a) {
      const std::size_t b = a + length - 1;
      double best = -1;
      for (std::size_t s = a; s < b; ++s) {
        const double gemm = 2.0 * static_cast<double>(cores[a].left_bond) * (pairs[s + 1] / pairs[a]) *
                            static_cast<double>(cores[s].right_bond) * (pairs[b + 1] / pairs[s + 1]) *
                            static_cast<double>(cores[b].right_bond);
        const double c = tree.cost[a][s] + tree.cost[s + 1][b] + gemm;
        if (best < 0 || c < best) {
          best = c;
          tree.split[a][b] = s;
        }
      }
      tree.cost[a][b] = best;
    }
  }
  return tree;
}

// The block's GEMM, (m·j_L × bond) · (bond × w·run) into `to` (leading dimension ld): with `runtime`,
// the runtime GEMM where one is set and the block is large enough to pay its call
// (include/mpo/runtime_gemm.hpp), else Eigen's.
template <class T>
void block_product(const T* lhs, const T* rhs, Index rows, Index bond, Index cols, Index rhs_ld, T* to, Index ld,
                   bool runtime) {
  if (runtime && static_cast<double>(rows) * bond * cols >= kRuntimeGemmMin &&
      runtime_gemm<T>(rows, cols, bond, lhs, bond, rhs, rhs_ld, to, ld))
    return;
  using Strided = Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>;
  Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>(to, rows, cols, Eigen::OuterStride<>(ld)).noalias() =
      ConstMatrixMap<T>(lhs, rows, bond) * Strided(rhs, bond, cols, Eigen::OuterStride<>(rhs_ld));
}

template <class T>
void merge_block(const T* left, const CoreShape& l, const T* right, const CoreShape& r, Index p0, Index m,
                 Index q0, Index w, T* scratch, T* out, bool runtime) {
  const Index jl = l.cols, bond = l.right_bond, ir = r.rows, run = r.cols * r.right_bond;
  const T* lhs = left + p0 * jl * bond;
  const T* rhs = right + q0 * run;
  if (jl == 1 || ir == 1) {  // the GEMM's layout is already the grouped one
    block_product(lhs, rhs, m * jl, bond, w * run, ir * run, out + q0 * jl * run, ir * run, runtime);
    return;
  }
  block_product(lhs, rhs, m * jl, bond, w * run, ir * run, scratch, w * run, runtime);  // (p, j_L, q, ·)
  for (Index p = 0; p < m; ++p) {
    for (Index q = 0; q < w; ++q) {
      const T* from = scratch + (p * jl * w + q) * run;  // (p, 0, q, ·)
      T* to = out + (p * ir + q0 + q) * jl * run;         // (p, q, 0, ·)
      detail::copy_runs_any(from, w * run, jl, run, to);
    }
  }
}

// Left (d, I_L, J_L, s) times right (s, I_R, J_R, d'), both grouped, into out (d, I_L, I_R, J_L, J_R, d'):
// grouped again, so a run of cores multiplied out needs no permutation afterwards. The GEMM's natural
// result is (d, I_L, J_L, I_R, J_R, d'); J_L and I_R swap places as it is written, one cache-sized
// block at a time, in runs of J_R·d' values: permuting the whole interleaved result afterwards (runs of
// j_n = 4 values, strided through memory) was a third of rebuild-then-multiply at small bonds.
template <class T>
void merge_pair(const T* left, const CoreShape& l, const T* right, const CoreShape& r, T* out) {
  const Index rows = l.left_bond * l.rows, jl = l.cols, bond = l.right_bond;
  const Index ir = r.rows, run = r.cols * r.right_bond;
  if (jl == 1 || ir == 1) {  // nothing to swap
    MatrixMap<T> result(out, rows * jl, ir * run);
    multiply_into<T>(result, ConstMatrixMap<T>(left, rows * jl, bond), ConstMatrixMap<T>(right, bond, ir * run));
    return;
  }
  // The GEMM runs in blocks whose result is ~256 KB, either of rows of the left factor (each block packs
  // the right factor again) or of values of i_R (each packs the left factor again): whichever repacks
  // less. A row block has at least 64 GEMM rows, so that packing stays small next to its product.
  constexpr Index target = Index{1} << 16;
  const Index row_chunk = std::min(rows, std::max<Index>(target / (jl * ir * run), (64 + jl - 1) / jl));
  const Index q_chunk = std::min(ir, std::max<Index>(target / (rows * jl * run), 1));
  const Index row_chunks = (rows + row_chunk - 1) / row_chunk, q_chunks = (ir + q_chunk - 1) / q_chunk;
  const bool by_rows = static_cast<double>(row_chunks) * bond * ir * run <=
                       static_cast<double>(q_chunks) * rows * jl * bond;
  const Index chunks = by_rows ? row_chunks : q_chunks;
  const double work = static_cast<double>(rows) * jl * bond * ir * run;
  // With a runtime GEMM the blocks run on the calling thread and the BLAS threads each block's product
  // as it is configured: its threads and the core's would otherwise compete for the same cores.
  const bool runtime = has_runtime_gemm();
  const int blocks = runtime ? 1 : detail::block_count(work, static_cast<double>(chunks));
  detail::run_blocks(blocks, [&](int b) {
    const auto [first, count] = detail::block_range(chunks, blocks, b);
    const auto scratch = uninitialised<T>(by_rows ? row_chunk * jl * ir * run : rows * jl * q_chunk * run);
    for (Index c = first; c < first + count; ++c) {
      const Index p0 = by_rows ? c * row_chunk : 0, m = by_rows ? std::min(row_chunk, rows - p0) : rows;
      const Index q0 = by_rows ? 0 : c * q_chunk, w = by_rows ? ir : std::min(q_chunk, ir - q0);
      merge_block(left, l, right, r, p0, m, q0, w, scratch.get(), out + p0 * ir * jl * run, runtime);
    }
  });
}

template <class T>
const T* multiply_run(const std::vector<CoreView<T>>& cores, const MergeTree& tree, std::size_t a, std::size_t b,
                      std::unique_ptr<T[]>* storage) {
  if (a == b) return cores[a].data;
  const std::size_t s = tree.split[a][b];
  std::unique_ptr<T[]> left_storage, right_storage;
  const T* left = multiply_run(cores, tree, a, s, &left_storage);
  const T* right = multiply_run(cores, tree, s + 1, b, &right_storage);
  const CoreShape l = run_shape(cores, a, s), r = run_shape(cores, s + 1, b);
  *storage = uninitialised<T>(
      checked_product({l.left_bond, l.rows, l.cols, r.rows, r.cols, r.right_bond}, "a merged run of cores"));
  merge_pair(left, l, right, r, storage->get());
  return storage->get();
}

// Grouped as (d, i_a…i_b, j_a…j_b, d'): row-major (i_a…i_b) is the merged row factor, as in M's index.
template <class T>
std::vector<CoreView<T>> merge_cores(const std::vector<CoreView<T>>& cores, const std::vector<std::size_t>& groups,
                                     std::vector<std::unique_ptr<T[]>>* storage) {
  std::vector<CoreView<T>> views;
  storage->reserve(groups.size());
  const MergeTree tree = merge_tree(shapes_of(cores));
  std::size_t k = 0;
  for (std::size_t g : groups) {
    if (g == 1) {
      views.push_back(cores[k++]);
      continue;
    }
    std::unique_ptr<T[]> product;
    multiply_run(cores, tree, k, k + g - 1, &product);
    views.push_back({run_shape(cores, k, k + g - 1), product.get()});
    storage->push_back(std::move(product));
    k += g;
  }
  return views;
}

#define MPO_INSTANTIATE(T)                                                                                  \
  template void merge_pair<T>(const T*, const CoreShape&, const T*, const CoreShape&, T*);                 \
  template void merge_block<T>(const T*, const CoreShape&, const T*, const CoreShape&, Index, Index, Index, \
                               Index, T*, T*, bool);                                                       \
  template const T* multiply_run<T>(const std::vector<CoreView<T>>&, const MergeTree&, std::size_t,        \
                                    std::size_t, std::unique_ptr<T[]>*);                                   \
  template std::vector<CoreView<T>> merge_cores<T>(const std::vector<CoreView<T>>&,                         \
                                                   const std::vector<std::size_t>&,                         \
                                                   std::vector<std::unique_ptr<T[]>>*);
MPO_INSTANTIATE(float)
MPO_INSTANTIATE(double)
#undef MPO_INSTANTIATE

}  // namespace apply_internal

template <class T>
void multiply_out_into(const std::vector<CoreView<T>>& cores, T* out) {
  const std::vector<CoreShape> shapes = apply_internal::shapes_of(cores);
  check_chain(shapes);
  const std::size_t n = cores.size();  // >= 2 (check_chain)
  // The tree's root product writes into `out`; the runs below it keep their own buffers.
  const apply_internal::MergeTree tree = apply_internal::merge_tree(shapes);
  const std::size_t s = tree.split[0][n - 1];
  std::unique_ptr<T[]> left_storage, right_storage;
  const T* left = apply_internal::multiply_run(cores, tree, 0, s, &left_storage);
  const T* right = apply_internal::multiply_run(cores, tree, s + 1, n - 1, &right_storage);
  apply_internal::merge_pair(left, apply_internal::run_shape(cores, 0, s), right,
                             apply_internal::run_shape(cores, s + 1, n - 1), out);
}

template void multiply_out_into<float>(const std::vector<CoreView<float>>&, float*);
template void multiply_out_into<double>(const std::vector<CoreView<double>>&, double*);

}  // namespace mpo
