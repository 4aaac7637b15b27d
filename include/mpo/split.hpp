// One step of Algorithm 1: split a matrix A (m × N) into Q·R, Q with orthonormal columns and R with
// orthogonal rows ordered by their norms, the singular values of A. Truncating the split to its first r
// columns/rows is the optimal rank-r approximation (Eckart–Young).
//
// Three routes, chosen by shape and cap (the unfoldings of Algorithm 1 are extremely wide or tall):
//  * tall (m > N): Householder QR first, then split the N × N triangle;
//  * wide, full or mildly capped: the leading eigenvectors of the small Gram matrix A·Aᵀ (m × m; only
//    the k a cap keeps, include/mpo/symmetric.hpp), then R = Uᵀ·A. Q = U is orthonormal to working
//    precision whatever the spectrum, so nothing is ever divided by a singular value and a full-bond
//    split rebuilds A to rounding. Singular values are read as the norms of R's rows, which are
//    accurate even where the eigenvalues of A·Aᵀ are not;
//  * wide and capped far below m: a randomized range finder with power iterations whose convergence is
//    checked; if the check fails it falls back to the Gram route.
#pragma once

#include "mpo/types.hpp"
#include <cstdint>
#include <limits>

namespace mpo {

template <class T>
struct Split {
  Matrix<T> q;          // m × r, orthonormal columns
  Matrix<T> r;          // r × N, orthogonal rows, norms = spectrum
  Spectrum spectrum;    // r singular values, descending
  double discarded = 0; // Σ of dropped λ² (the square of the local truncation error ε_k)
  bool truncated = false;   // the cap dropped a nonzero singular value
  bool randomized = false;  // the randomized route produced this split
};

struct SplitOptions {
  Index max_rank = 0;               // 0: no cap
  std::uint64_t seed = 0x6d706f31;  // randomized route: a fixed seed keeps results reproducible
  int max_power_iterations = 8;
  bool allow_randomized = true;
  bool float32_gram = true;  // shortcut: a capped float32 split may form its Gram matrix in float32
  bool k_vector = true;      // shortcut: a capped split may compute only the k kept eigenvectors
};

// The randomized range finder's sample width for a cap (the cap plus oversampling), saturated at the
// largest Index: a cap near it means "no practical cap" and must not overflow (the sanitizer stage's
// fuzz pass found max_bond = 2**63 - 1 overflowing here).
inline Index range_finder_width(Index cap) {
  const Index extra = 10 + cap / 10;
  return cap > std::numeric_limits<Index>::max() - extra ? std::numeric_limits<Index>::max() : cap + extra;
}

// Whether a split along a side of m rows (or columns) takes the randomized route: a pass costs m·N·width
// and the Gram route m²·N plus an m × m eigensolve, so only when the kept width is a small fraction of m.
// (6·width < m, written so that it cannot overflow: for m >= 1 it is width <= (m - 1) / 6.)
inline bool takes_range_finder(Index m, const SplitOptions& options) {
  return options.allow_randomized && options.max_rank > 0 && m >= 1 &&
         range_finder_width(options.max_rank) <= (m - 1) / 6;
}

// Singular values at or below this fraction of the largest one are zeros: they are dropped.
template <class T>
double zero_threshold();

template <class T>
Split<T> left_split(const Eigen::Ref<const Matrix<T>>& a, const SplitOptions& options = {});

// The mirror image: A = L·Qᵀ with Qᵀ (r × N) orthonormal rows and L (m × r) orthogonal columns.
// Returned as a Split whose q is L and whose r is Qᵀ.
template <class T>
Split<T> right_split(const Eigen::Ref<const Matrix<T>>& a, const SplitOptions& options = {});

}  // namespace mpo
