// MPOP Algorithm 1 into mixed canonical form (include/mpo/decompose.hpp, docs/ALGORITHMS.md §2-3): the plain
// sweep and the canonical-form step. Each shortcut of the sweep is in its own file of csrc/decompose/,
// taken only while its switch in DecomposeOptions::shortcuts is on.
#include "mpo/decompose.hpp"

#include "decompose/shortcuts.hpp"
#include "mpo/contract.hpp"
#include "mpo/parallel.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace mpo {

namespace {

// A = Q·R on core k's left unfolding: core k becomes Q, R moves into core k+1.
template <class T>
Spectrum shift_right(std::vector<Core<T>>& cores, std::size_t k) {
  Core<T>& c = cores[k];
  Split<T> s = left_split<T>(c.left_unfolding());
  const Index rank = s.q.cols();
  Core<T>& next = cores[k + 1];
  Matrix<T> merged = multiply<T>(s.r, next.right_unfolding());
  c = make_core<T>(c.left_bond, c.rows, c.cols, rank, std::move(s.q));
  next = make_core<T>(rank, next.rows, next.cols, next.right_bond, std::move(merged));
  return s.spectrum;
}

// A = L·Qᵀ on core k's right unfolding: core k becomes Qᵀ, L moves into core k-1.
template <class T>
Spectrum shift_left(std::vector<Core<T>>& cores, std::size_t k) {
  Core<T>& c = cores[k];
  Split<T> s = right_split<T>(c.right_unfolding());
  const Index rank = s.r.rows();
  Core<T>& previous = cores[k - 1];
  Matrix<T> merged = multiply<T>(previous.left_unfolding(), s.q);
  c = make_core<T>(rank, c.rows, c.cols, c.right_bond, std::move(s.r));
  previous = make_core<T>(previous.left_bond, previous.rows, previous.cols, rank, std::move(merged));
  return s.spectrum;
}

}  // namespace

// The canonical form of a chain the sweep left in mixed canonical form: cores left of the central core
// left-orthonormal, cores right of it right-orthonormal, the central core holding the rest. Each bond then
// needs only a rotation, not a new orthogonalisation: for a bond left of the central core, everything to its
// right is (core k)·diag(σ_k)·(orthonormal rows) once bond k is ordered, so the split of the small
// weighted core k alone gives the bond's singular vectors and values. Working outwards from the central core
// this is one split per bond on the cores themselves, where `canonicalize` makes three sweeps.
template <class T>
std::vector<Spectrum> order_bonds(std::vector<Core<T>>& cores, bool central_right_ordered) {
  validate_cores(cores);
  const std::size_t n = cores.size();
  const std::size_t c = central_index(n);
  std::vector<Spectrum> spectra(n - 1);
  // Left bonds, from the central core outwards. The central core's own rows need no weights: the cores right of it are
  // right-orthonormal.
  for (std::size_t k = c; k >= 1; --k) {
    Core<T>& core = cores[k];
    Core<T>& previous = cores[k - 1];
    Matrix<T> weighted;
    if (k < c) weighted = core.data * spectra[k].template cast<T>().asDiagonal();
    Split<T> s = left_split<T>(
        k < c ? ConstMatrixMap<T>(weighted.data(), core.left_bond, weighted.size() / core.left_bond)
              : core.right_unfolding());
    const Index rank = s.q.cols();
    // Rotating (and, for zeros, shrinking) the bond keeps both neighbours' orthonormality.
    Matrix<T> rotated = k < c ? multiply<T>(s.q.transpose(), core.right_unfolding()) : std::move(s.r);
    Matrix<T> merged = multiply<T>(previous.left_unfolding(), s.q);
    core = make_core<T>(rank, core.rows, core.cols, core.right_bond, std::move(rotated));
    previous = make_core<T>(previous.left_bond, previous.rows, previous.cols, rank, std::move(merged));
    spectra[k - 1] = std::move(s.spectrum);
  }
  // Right bonds, from the central core outwards, the mirror image.
  for (std::size_t k = c; k + 1 < n; ++k) {
    Core<T>& core = cores[k];
    Core<T>& next = cores[k + 1];
    if (k == c && central_right_ordered) {
      // The rotations of the left bonds act on the central core's left index only, which keeps its columns
      // orthogonal with the same norms: bond c's spectrum is read off them.
      const auto unfolding = core.left_unfolding();
      spectra[k].resize(unfolding.cols());
      for (Index b = 0; b < unfolding.cols(); ++b)
        spectra[k][b] = unfolding.col(b).template cast<double>().norm();
      continue;
    }
    Matrix<T> weighted;
    if (k > c) {
      weighted = core.data;
      const Index block = core.rows * core.cols;
      for (Index a = 0; a < core.left_bond; ++a)
        weighted.middleRows(a * block, block) *= static_cast<T>(spectra[k - 1][a]);
    }
    Split<T> s = right_split<T>(
        k > c ? ConstMatrixMap<T>(weighted.data(), weighted.rows(), weighted.cols()) : core.left_unfolding());
    const Index rank = s.r.rows();
    Matrix<T> rotated = k > c ? multiply<T>(core.left_unfolding(), s.r.transpose()) : std::move(s.q);
    Matrix<T> merged = multiply<T>(s.r, next.right_unfolding());
    core = make_core<T>(core.left_bond, core.rows, core.cols, rank, std::move(rotated));
    next = make_core<T>(rank, next.rows, next.cols, next.right_bond, std::move(merged));
    spectra[k] = std::move(s.spectrum);
  }
  return spectra;
}

template <class T>
std::vector<Spectrum> canonicalize(std::vector<Core<T>>& cores) {
  validate_cores(cores);
  const std::size_t n = cores.size();
  const std::size_t c = central_index(n);
  std::vector<Spectrum> spectra(n - 1);
  // Make every core but the first right-orthonormal. Zeros dropped on the way carry rank reductions
  // from the right end leftwards, and nothing is assumed about the cores' incoming form.
  for (std::size_t k = n - 1; k >= 1; --k) shift_left(cores, k);
  // Left to right with ordered splits: at step k everything left of core k is left-orthonormal and
  // everything right of it right-orthonormal, so the split of core k is the SVD of the whole matrix's
  // bond-k unfolding (its spectrum, its exact rank). Past the central core the sweep only orthogonalises.
  for (std::size_t k = 0; k + 1 < n; ++k) {
    Spectrum s = shift_right(cores, k);
    if (k < c) spectra[k] = std::move(s);
  }
  // Right to left back to the central core, recording the right bonds' spectra.
  for (std::size_t k = n - 1; k > c; --k) spectra[k - 1] = shift_left(cores, k);
  return spectra;
}

template <class T>
Decomposition<T> decompose(const T* data, Index rows, Index cols, const Factors& factors,
                           const DecomposeOptions& options) {
  factors.validate();
  const std::size_t n = factors.n();
  if (rows < 1 || cols < 1)
    throw std::invalid_argument("mpo: cannot decompose an empty matrix (" + std::to_string(rows) +
                                "x" + std::to_string(cols) + ")");
  if (factors.rows() != rows)
    throw std::invalid_argument("mpo: the row factors multiply to " + std::to_string(factors.rows()) +
                                " but the matrix has " + std::to_string(rows) + " rows");
  if (factors.cols() != cols)
    throw std::invalid_argument("mpo: the column factors multiply to " +
                                std::to_string(factors.cols()) + " but the matrix has " +
                                std::to_string(cols) + " columns");
  std::vector<Index> caps = options.max_bond;
  if (caps.empty()) caps.assign(n - 1, 0);
  if (caps.size() != n - 1)
    throw std::invalid_argument("mpo: max_bond needs n-1 = " + std::to_string(n - 1) +
                                " entries, got " + std::to_string(caps.size()));
  for (Index cap : caps)
    if (cap < 0) throw std::invalid_argument("mpo: max_bond entries must be >= 1, got " + std::to_string(cap));
  const Shortcuts& shortcuts = options.shortcuts;

  Decomposition<T> out;
  out.cores.resize(n);
  out.spectra.resize(n - 1);
  out.truncation_errors.assign(n - 1, 0.0);
  out.cut.assign(n - 1, false);
  const auto matrix = ConstMatrixMap<T>(data, rows, cols).template cast<double>();
  out.norm = matrix.norm();
  // The plain sum of squares over- or underflows outside ~1e±150: entries all below ~1e-162 summed to
  // 0 and the matrix was taken for zero. Then the largest entry decides, and a scaled sum gives the norm.
  if (!std::isfinite(out.norm) || out.norm < 1e-100) {
    if (!matrix.allFinite()) throw std::invalid_argument("mpo: the matrix has NaN or infinite entries");
    const double largest = matrix.cwiseAbs().maxCoeff();
    out.norm = largest > 0 ? matrix.stableNorm() : 0.0;
    if (!std::isfinite(out.norm))
      throw std::overflow_error("mpo: the matrix's Frobenius norm does not fit in a double (largest |entry| " +
                                std::to_string(largest) + ", " + std::to_string(rows) + "x" +
                                std::to_string(cols) + " entries); scale the matrix down");
  }
  if (shortcuts.rescale) {
    if (const int exponent = rescale_exponent<T>(out.norm, rows, cols))
      return decompose_rescaled<T>(data, rows, cols, factors, options, out.norm, exponent);
  }

  SplitOptions split_options;
  split_options.seed = options.seed;
  split_options.allow_randomized = options.allow_randomized;
  split_options.float32_gram = shortcuts.float32_gram;
  split_options.k_vector = shortcuts.k_vector;
  bool truncated = false;
  auto record = [&](std::size_t bond, Split<T>& s) {
    out.spectra[bond] = std::move(s.spectrum);
    out.truncation_errors[bond] = std::sqrt(s.discarded);
    out.cut[bond] = s.truncated;
    truncated = truncated || s.truncated;
    out.randomized = out.randomized || s.randomized;
  };

  // The sweep runs from both ends towards the central core c. Its remainder is a flat buffer, read as
  // whatever unfolding the next step needs.
  const std::size_t c = central_index(n);
  const WholeSteps whole = shortcuts.whole ? whole_steps(factors, caps) : WholeSteps{};
  Matrix<T> remainder;
  Index left = 1;           // d_k of the last core made from the left
  Index rest = rows * cols;  // the remainder's size once the left steps so far are made
  std::size_t first = 0;    // the first left step the plain loop below still has to make
  bool float_spectra = false;  // some spectra came from float32 Gram eigenvalues: recompute them
  if (whole.left) {  // shortcut: the left steps are whole, their cores the identity
    for (std::size_t k = 0; k < c; ++k) {
      const Index pair = factors.in_shape[k] * factors.out_shape[k];
      out.cores[k] = identity_core<T>(left, factors.in_shape[k], factors.out_shape[k], left * pair);
      rest /= pair;
      left *= pair;
    }
    first = c;
  } else if (shortcuts.block) {  // shortcut: the first left steps from M in place
    const std::size_t steps = block_steps(factors, caps, split_options);
    LeftBlock<T> block;
    if (steps >= 1 && left_block<T>(data, factors, steps, caps, out.norm * out.norm, split_options, &block)) {
      for (std::size_t k = 0; k < steps; ++k) {
        Split<T>& s = block.steps[k];
        const Index rank = s.q.cols();
        out.cores[k] = make_core<T>(left, factors.in_shape[k], factors.out_shape[k], rank, std::move(s.q));
        rest /= factors.in_shape[k] * factors.out_shape[k];
        if (k + 1 == steps) remainder = std::move(s.r);
        record(k, s);
        left = rank;
      }
      first = steps;
      float_spectra = block.float_gram;
    }
  }
  if (remainder.size() == 0) {  // no step made a remainder yet: the sweep starts from the interleaved M
    remainder.resize(1, rows * cols);
    interleave(data, factors, remainder.data());
  }

  // Left steps: split (d_{k-1}·i_k·j_k) × rest into Q (core k) and R (the next remainder).
  for (std::size_t k = first; k < c; ++k) {
    const Index pair = factors.in_shape[k] * factors.out_shape[k];
    rest /= pair;
    split_options.max_rank = caps[k];
    Split<T> s = left_split<T>(ConstMatrixMap<T>(remainder.data(), left * pair, rest), split_options);
    const Index rank = s.q.cols();
    out.cores[k] = make_core<T>(left, factors.in_shape[k], factors.out_shape[k], rank, std::move(s.q));
    remainder = std::move(s.r);
    record(k, s);
    left = rank;
  }
  // Right steps, from the right end: split rest × (i_k·j_k·d_k) into L (the next remainder) and Qᵀ (core k).
  Index right = 1;
  for (std::size_t k = n - 1; k > c; --k) {
    const Index pair = factors.in_shape[k] * factors.out_shape[k];
    const Index width = pair * right;
    if (n - 1 - k < whole.right) {  // shortcut: a whole step, its core the identity
      out.cores[k] = identity_core<T>(width, factors.in_shape[k], factors.out_shape[k], right);
      right = width;
      continue;
    }
    split_options.max_rank = caps[k - 1];
    Split<T> s = right_split<T>(
        ConstMatrixMap<T>(remainder.data(), remainder.size() / width, width), split_options);
    const Index rank = s.r.rows();
    out.cores[k] = make_core<T>(rank, factors.in_shape[k], factors.out_shape[k], right, std::move(s.r));
    remainder = std::move(s.q);
    record(k - 1, s);
    right = rank;
  }
  // The central core holds what is left.
  out.cores[c] = make_core<T>(left, factors.in_shape[c], factors.out_shape[c], right,
                              std::move(remainder));

  // The canonical form ("normalization" of Algorithm 1). A cut at one step changes the remainder that
  // later steps split, so the earlier bonds are no longer exactly ordered by the singular values of the
  // MPO's own unfoldings. One sweep over the (now small) cores restores that, which keeps later truncation
  // optimal and the bound valid. The sweep left the cores in mixed canonical form, so rotating each bond
  // suffices. The last step split bond c (right of the central core) on the final remainder: that bond is
  // already in order, and only the bonds split before it are rotated (unless that step was a whole one).
  // Whole steps leave their bonds unordered, and float32 Gram eigenvalues leave spectra good to ~1e-4
  // only: both are put right by the same pass.
  if (truncated || float_spectra || whole.any()) {
    const bool central_right_ordered = whole.right < n - 1 - c;
    out.spectra = order_bonds(out.cores, central_right_ordered);
  }
  return out;
}

#define MPO_INSTANTIATE(T)                                                                     \
  template Decomposition<T> decompose<T>(const T*, Index, Index, const Factors&,              \
                                         const DecomposeOptions&);                            \
  template std::vector<Spectrum> canonicalize<T>(std::vector<Core<T>>&);                    \
  template std::vector<Spectrum> order_bonds<T>(std::vector<Core<T>>&, bool);
MPO_INSTANTIATE(float)
MPO_INSTANTIATE(double)
#undef MPO_INSTANTIATE

}  // namespace mpo
