// Rows of M (an embedding lookup) straight from the cores (include/mpo/apply.hpp, rows): sorted ids share
// the contraction of their common leading row factors, and the right end of the chain is tabulated once
// where many ids would each pay for it.
#include "apply/internal.hpp"

#include "mpo/contract.hpp"
#include "mpo/parallel.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

namespace mpo {

namespace {

using apply_internal::product_of;
using apply_internal::shapes_of;

// Row id's digits in the row factors (r_1 … r_n, r_n fastest) into `digits`, and how many leading
// digits, at most `limit`, it shares with the previous id's (`previous`, updated): the prefixes of the
// chain up to that level are the previous id's and need no recomputing.
std::size_t next_digits(Index id, const std::vector<Index>& radix, std::size_t limit, std::vector<Index>* digits,
                        std::vector<Index>* previous) {
  for (std::size_t k = radix.size(); k-- > 0;) {
    (*digits)[k] = id % radix[k];
    id /= radix[k];
  }
  std::size_t level = 0;
  while (level < limit && (*digits)[level] == (*previous)[level]) ++level;
  *previous = *digits;
  return level;
}

}  // namespace

template <class T>
void rows(const std::vector<CoreView<T>>& cores, bool transposed, const std::vector<Index>& ids, T* out,
          Index out_width) {
  const std::vector<CoreShape> shapes = shapes_of(cores);
  check_chain(shapes);
  const std::size_t n = shapes.size();
  const Index padded_rows = product_of(shapes, !transposed), padded_out = product_of(shapes, transposed);
  if (out_width < 1 || out_width > padded_out)
    throw std::invalid_argument("mpo: the output width must be in [1, " + std::to_string(padded_out) +
                                "], got " + std::to_string(out_width));
  for (Index id : ids)
    if (id < 0 || id >= padded_rows)
      throw std::out_of_range("mpo: row id " + std::to_string(id) + " is outside [0, " +
                              std::to_string(padded_rows) + ")");
  if (ids.empty()) return;

  // Each core as (d_{k-1}, r_k, c_k, d_k) with r the row side: the stored buffer, or for a transposed
  // MPO a copy with i and j swapped (cores are small next to the rows asked for).
  std::vector<std::vector<T>> swapped(n);
  std::vector<const T*> data(n);
  std::vector<Index> r(n), c(n), left(n), right(n);
  for (std::size_t k = 0; k < n; ++k) {
    const CoreShape& s = shapes[k];
    left[k] = s.left_bond;
    right[k] = s.right_bond;
    r[k] = transposed ? s.cols : s.rows;
    c[k] = transposed ? s.rows : s.cols;
    data[k] = cores[k].data;
    if (transposed) {
      swapped[k].resize(static_cast<std::size_t>(s.left_bond * s.rows * s.cols * s.right_bond));
      permute(cores[k].data, {s.left_bond, s.rows, s.cols, s.right_bond}, {0, 2, 1, 3}, swapped[k].data());
      data[k] = swapped[k].data();
    }
  }
  // Prefix k (cores 0..k-1 at fixed row factors) is a (c_0···c_{k-1}) × d_k matrix.
  std::vector<Index> prefix_rows(n + 1, 1);
  for (std::size_t k = 0; k < n; ++k) prefix_rows[k + 1] = checked_mul(prefix_rows[k], c[k], "a row prefix");

  // Sorting the ids orders them by (r_1, r_2, …): neighbours share the longest common prefixes.
  std::vector<std::size_t> order(ids.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return ids[a] < ids[b]; });

  // Many ids share few prefixes near the right end of the chain, where each id still pays a GEMM per
  // core with a wide bond. Cores split..n-1 are therefore contracted once for every combination of
  // their row factors (a table of Π r_k matrices d_{split-1} × Π c_k), and each id ends with one GEMM
  // against its entry. split is chosen by counting FLOPs: the prefixes the sorted ids actually
  // recompute, the final GEMMs and the table (split = n: no table, for few ids).
  std::vector<double> recomputed(n, 0.0);  // ids whose first new digit is at level <= k
  {
    std::vector<Index> digits(n), previous(n, -1);
    for (std::size_t slot : order)
      for (std::size_t k = next_digits(ids[slot], r, n, &digits, &previous); k < n; ++k) recomputed[k] += 1;
  }
  std::vector<Index> suffix_cols(n + 1, 1), suffix_rows(n + 1, 1);  // Π_{m>=k} c_m, Π_{m>=k} r_m
  for (std::size_t k = n; k-- > 0;) {
    suffix_cols[k] = checked_mul(suffix_cols[k + 1], c[k], "a row suffix");
    suffix_rows[k] = checked_mul(suffix_rows[k + 1], r[k], "a row suffix");
  }
  std::size_t split = n;
  {
    double best = 0;
    for (std::size_t k = 0; k < n; ++k) best += recomputed[k] * 2.0 * prefix_rows[k] * left[k] * c[k] * right[k];
    double prefixes = 0, table = 0;
    std::vector<double> costs(n + 1, 0.0);
    for (std::size_t k = n; k-- > 1;) {
      table += static_cast<double>(suffix_rows[k]) * 2.0 * left[k] * c[k] * right[k] * suffix_cols[k + 1];
      costs[k] = table;
    }
    for (std::size_t k = 1; k < n; ++k) {
      prefixes += recomputed[k - 1] * 2.0 * prefix_rows[k - 1] * left[k - 1] * c[k - 1] * right[k - 1];
      const double total = prefixes + costs[k] + static_cast<double>(ids.size()) * 2.0 * prefix_rows[k] * left[k] * suffix_cols[k];
      const double size = static_cast<double>(suffix_rows[k]) * left[k] * suffix_cols[k];
      if (total < best && size <= static_cast<double>(Index{1} << 24)) {
        best = total;
        split = k;
      }
    }
  }
  // table[split] entry e (e = id mod Π_{m>=split} r_m) is a d_{split-1} × Π_{m>=split} c_m matrix.
  std::vector<T> table;
  if (split < n) {
    std::vector<T> next, slice;
    for (std::size_t k = n; k-- > split;) {
      const Index entry = checked_mul(left[k], suffix_cols[k], "a row table");  // values per entry at level k
      std::vector<T> current(static_cast<std::size_t>(checked_mul(suffix_rows[k], entry, "a row table")));
      slice.resize(static_cast<std::size_t>(left[k] * c[k] * right[k]));
      for (Index d = 0; d < r[k]; ++d) {
        // Slice T_k[:, d, :, :] made contiguous: (d_{k-1}·c_k) × d_k.
        for (Index l = 0; l < left[k]; ++l)
          std::copy(data[k] + (l * r[k] + d) * c[k] * right[k], data[k] + (l * r[k] + d + 1) * c[k] * right[k],
                    slice.begin() + l * c[k] * right[k]);
        const ConstMatrixMap<T> sl(slice.data(), left[k] * c[k], right[k]);
        for (Index rest = 0; rest < suffix_rows[k + 1]; ++rest) {
          MatrixMap<T> to(current.data() + (d * suffix_rows[k + 1] + rest) * entry, left[k] * c[k], suffix_cols[k + 1]);
          if (k + 1 == n)
            to = sl;  // d_n = 1
          else
            to.noalias() = sl * ConstMatrixMap<T>(next.data() + rest * right[k] * suffix_cols[k + 1], right[k],
                                                  suffix_cols[k + 1]);
        }
      }
      next.swap(current);
    }
    table.swap(next);
  }

  auto work = [&](std::size_t begin, std::size_t end) {
    std::vector<std::vector<T>> prefix(n + 1);
    prefix[0].assign(1, T(1));
    for (std::size_t k = 1; k <= split; ++k)
      prefix[k].resize(static_cast<std::size_t>(checked_mul(prefix_rows[k], right[k - 1], "a row prefix")));
    std::vector<T> row(split < n ? static_cast<std::size_t>(padded_out) : 0);
    std::vector<Index> digits(n), previous(n, -1);
    for (std::size_t t = begin; t < end; ++t) {
      const std::size_t slot = order[t];
      const std::size_t level = next_digits(ids[slot], r, split, &digits, &previous);
      for (std::size_t k = level; k < split; ++k) {
        using Strided = Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>;
        // Slice T_k[:, r, :, :]: d_{k-1} rows of c_k·d_k values, r_k·c_k·d_k apart.
        const Strided slice(data[k] + digits[k] * c[k] * right[k], left[k], c[k] * right[k],
                            Eigen::OuterStride<>(r[k] * c[k] * right[k]));
        MatrixMap<T> next(prefix[k + 1].data(), prefix_rows[k], c[k] * right[k]);
        next.noalias() = ConstMatrixMap<T>(prefix[k].data(), prefix_rows[k], left[k]) * slice;
      }
      const T* result = prefix[n].data();
      if (split < n) {
        const Index entry = ids[slot] % suffix_rows[split];
        MatrixMap<T> full(row.data(), prefix_rows[split], suffix_cols[split]);
        full.noalias() = ConstMatrixMap<T>(prefix[split].data(), prefix_rows[split], left[split]) *
                         ConstMatrixMap<T>(table.data() + entry * left[split] * suffix_cols[split], left[split],
                                           suffix_cols[split]);
        result = row.data();
      }
      std::copy(result, result + out_width, out + static_cast<Index>(slot) * out_width);
    }
  };
  // Ids split into one contiguous run of the sorted order per thread; a run's first id recomputes its
  // prefixes, which costs little next to a run.
  const double estimate = static_cast<double>(ids.size()) * padded_out * left[n - 1];
  const int blocks = detail::block_count(estimate);
  if (blocks <= 1 || ids.size() < static_cast<std::size_t>(2 * blocks)) {
    work(0, ids.size());
    return;
  }
  detail::run_blocks(blocks, [&](int b) {
    const auto [start, length] = detail::block_range(static_cast<Index>(ids.size()), blocks, b);
    work(static_cast<std::size_t>(start), static_cast<std::size_t>(start + length));
  });
}

template void rows<float>(const std::vector<CoreView<float>>&, bool, const std::vector<Index>&, float*, Index);
template void rows<double>(const std::vector<CoreView<double>>&, bool, const std::vector<Index>&, double*, Index);

}  // namespace mpo
