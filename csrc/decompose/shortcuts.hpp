// The shortcuts of Algorithm 1's sweep (Shortcuts in include/mpo/decompose.hpp), private to the core.
//
// csrc/decompose.cpp is the plain sweep and csrc/split.cpp the plain split. Each shortcut is a cheaper
// route to the same cores up to rounding, in its own file of csrc/decompose/, taken only while its
// switch is on; this header is what the plain code calls, one section per file, and the few pieces of
// the plain split the shortcuts reuse.
#pragma once

#include "mpo/decompose.hpp"
#include "mpo/split.hpp"
#include "mpo/symmetric.hpp"
#include "mpo/types.hpp"

#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace mpo {

// ------------------------------------------------------------------- pieces of the plain split (split.cpp)

// Core k of shape (left, rows, cols, right) from its left unfolding's coefficients.
template <class T>
Core<T> make_core(Index left, Index rows, Index cols, Index right, Matrix<T> data) {
  if (data.size() != left * rows * cols * right)
    throw std::logic_error("mpo: internal error, core data of " + std::to_string(data.size()) +
                           " coefficients for a core of shape (" + std::to_string(left) + "," +
                           std::to_string(rows) + "," + std::to_string(cols) + "," +
                           std::to_string(right) + ")");
  Core<T> c;
  c.left_bond = left;
  c.rows = rows;
  c.cols = cols;
  c.right_bond = right;
  c.data = std::move(data);
  c.data.resize(left * rows * cols, right);  // a view change: the coefficient count is unchanged
  return c;
}

// A left split from candidates: columns of `basis` (Q) and rows of `w` (R = Qᵀ·A), ordered by the norms
// of w's rows, zeros dropped, cut to `cap`. `all_present`: every candidate is there (A = Q·W with Q
// square orthogonal), so the dropped energy is the dropped rows'; otherwise it is `total` less the kept.
template <class T>
Split<T> assemble_rows(Matrix<T>&& basis, Matrix<T>&& w, Index cap, double total, bool all_present);

// Eigenvectors of a symmetric matrix, largest eigenvalue first, the `count` leading ones (with `k_vector`
// by the k-vector route where it pays; see symmetric.hpp), always in double.
Eigen::MatrixXd eigenvectors_descending(const Eigen::MatrixXd& gram, Index count, bool k_vector,
                                        Eigen::VectorXd* values = nullptr);

// Below this fraction of ‖A‖² a discarded energy found as ‖A‖² − kept has lost its digits to
// cancellation (the kept energy carries the rounding of the products that formed it, ~ε·‖A‖²); it is
// then summed from the discarded part itself. Keeps the bound's relative accuracy near 1e-3 or better.
template <class T>
constexpr double cancellation() {
  return std::is_same<T, float>::value ? 1e-3 : 1e-6;
}

// ------------------------------------------------------------------------------------- rescale.cpp

// The power of two that brings the root mean square of a rows × cols matrix of norm `norm` near 1, when
// the Gram matrices of the sweep could over- or underflow at its scale; 0 when no scaling is needed.
template <class T>
int rescale_exponent(double norm, Index rows, Index cols);

// decompose() of the matrix scaled by 2^exponent, with the scale undone on the result.
template <class T>
Decomposition<T> decompose_rescaled(const T* data, Index rows, Index cols, const Factors& factors,
                                    const DecomposeOptions& options, double norm, int exponent);

// --------------------------------------------------------------------------------- whole_steps.cpp

// Outer steps a cap leaves whole: all the left steps (0..c-1) or none, and how many of the right steps
// counted from the right end (n-1, n-2, …).
struct WholeSteps {
  bool left = false;
  std::size_t right = 0;
  bool any() const { return left || right > 0; }
};

WholeSteps whole_steps(const Factors& factors, const std::vector<Index>& caps);

// Core k as the identity between its two unfoldings' long sides.
template <class T>
Core<T> identity_core(Index left, Index rows, Index cols, Index right);

// --------------------------------------------------------------------------------- block_steps.cpp

// How many of the first left steps the block route makes (0: none), given the options the plain sweep
// would split them with (its randomized range finder may be cheaper).
std::size_t block_steps(const Factors& factors, const std::vector<Index>& caps, const SplitOptions& plain);

// The first `steps` left splits of Algorithm 1 read from M itself, not from its interleaved copy.
//
// The Gram matrix of an unfolding does not depend on the order of its columns, so the Gram matrix G of
// M's unfolding at bond steps-1 (rows (i_1 j_1 … i_K j_K), K = steps) is a sum over sub-blocks of M read
// in place. Step j of the sequential algorithm splits R_{j-1} = (C_jᵀ ⊗ I)·M_j, C_j the chain of the
// cores found before it (orthonormal columns), whose Gram matrix is (C_jᵀ ⊗ I)·Tr_{>j}(G)·(C_j ⊗ I): the
// earlier steps are eigenproblems of small matrices. Only the last step reads M again, to form
// R = C_Kᵀ·M_K straight into the interleaved layout the rest of the sweep works on. That saves the
// interleaved copy of M and one remainder per fused step, full passes over the largest array of the
// decomposition, at the same results up to rounding.
//
// Singular values of the earlier steps come from eigenvalues here, which cannot resolve zeros. When a
// kept one is too small to be trusted, or a check of the plain routes would have refined the result
// (the cut keeps nearly everything), it returns false and the caller runs the plain sweep.
template <class T>
struct LeftBlock {
  std::vector<Split<T>> steps;  // q: core j's left unfolding; r: empty except for the last step's R
  bool float_gram = false;      // G was formed in float32: spectra must be recomputed from the cores
};

// `energy` is ‖M‖_F², which the caller has measured (it decides whether float32 can hold the Gram
// matrix); `options` carries the float32_gram and k_vector switches.
template <class T>
bool left_block(const T* matrix, const Factors& factors, std::size_t steps, const std::vector<Index>& caps,
                double energy, const SplitOptions& options, LeftBlock<T>* out);

// -------------------------------------------------------------------------------- float32_gram.cpp

// A capped float32 split may form its Gram matrix in float32: half the time of the double one, and the
// cast copy disappears. Rounding then perturbs the Gram matrix by ~1e-7·‖A‖² (measured; ≤ 1e-6 assumed),
// and a perturbation E can lose at most 2k·‖E‖ of the energy a rank-k cut keeps. That is negligible
// against the energy the cut discards as long as the discarded energy is large, which is what a cap is
// for; below this fraction (times k) of ‖A‖² the split is redone with the double Gram matrix, so the cut
// stays within 1 % of the optimal error.
constexpr double kFloatGramDiscard = 1e-4;

// Whether a split of T data capped at `cap` along a side of m may use the float32 Gram matrix.
template <class T>
bool float_gram_allowed(const SplitOptions& options, Index cap, Index m) {
  return options.float32_gram && std::is_same<T, float>::value && cap > 0 && cap < m;
}

// ...and only for data whose float32 products neither overflow nor underflow: every entry of a Gram
// matrix and of its partial sums is at most ‖A‖², and products below FLT_MIN (~1.2e-38) lose up to
// that much each, which over `count` entries stays below 1e-7·‖A‖² when the mean square is above 1e-30.
// Outside (float32 data scaled to ~1e±19) the float32 Gram matrix is inf/NaN or all zeros.
inline bool float_gram_in_range(double total, Index count) {
  return total <= 1e36 && total >= 1e-30 * static_cast<double>(count);
}

// A rank-k cut of a float32 Gram matrix that discards too little for its rounding to be harmless.
inline bool float_gram_too_fine(double discarded, Index k, double total) {
  return discarded < kFloatGramDiscard * static_cast<double>(k) * total;
}

// The Gram matrix of A's rows (A·Aᵀ), or of its columns (Aᵀ·A), accumulated in float32.
Eigen::MatrixXd float32_gram_of_rows(const Eigen::Ref<const Matrix<float>>& a);
Eigen::MatrixXd float32_gram_of_columns(const Eigen::Ref<const Matrix<float>>& a);

// ------------------------------------------------------------------------------ k_vector_eigen.cpp

// Whether the k-vector route is cheaper than the full solver for `count` of m eigenvectors.
bool k_vector_pays(Index m, Index count);

// The `count` largest eigenpairs of the symmetric `a` (lower triangle read) by the k-vector route;
// false when its checks reject the result.
bool k_vector_eigen(const Eigen::MatrixXd& a, Index count, SymmetricEigen* out);

}  // namespace mpo
