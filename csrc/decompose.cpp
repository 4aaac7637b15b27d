// MPOP Algorithm 1 into mixed canonical form; see include/mpo/decompose.hpp.
#include "mpo/decompose.hpp"

#include "mpo/contract.hpp"
#include "mpo/parallel.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace mpo {

namespace {

// The left steps are made from M in place (left_block) while their unfoldings have at most this many
// rows: the block Gram matrix is then at most 1024 × 1024, and the passes it saves are over all of M.
constexpr Index kBlockRows = 1024;

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

// Core k as the identity between its two unfoldings' long sides: left of the central core (d_{k-1}·i_k·j_k)
// × d_k with d_k = d_{k-1}·i_k·j_k, right of it d_{k-1} × (i_k·j_k·d_k) with d_{k-1} = i_k·j_k·d_k.
template <class T>
Core<T> identity_core(Index left, Index rows, Index cols, Index right) {
  const Index side = std::max(left, right);
  return make_core<T>(left, rows, cols, right, Matrix<T>::Identity(side, side));
}

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

  // Gram matrices square the data: float32 entries of ~1e±19 (double: ~1e±150) overflow or underflow
  // there. Such a matrix is decomposed scaled by a power of two that brings its root mean square near
  // 1; the scale is exact in binary floating point, so the result is that of the scaled matrix, and it
  // is undone on the central core, the spectra and the errors (orthonormal cores do not carry it).
  const double rms = out.norm / std::sqrt(static_cast<double>(rows) * static_cast<double>(cols));
  const int limit = std::is_same<T, float>::value ? 20 : 100;
  if (rms > 0 && std::isfinite(rms) && std::abs(std::ilogb(rms)) > limit) {
    const int shift = -std::ilogb(rms);
    Matrix<T> scaled = ConstMatrixMap<T>(data, rows, cols);
    for (Index i = 0; i < scaled.size(); ++i) scaled.data()[i] = std::ldexp(scaled.data()[i], shift);
    Decomposition<T> result = decompose<T>(scaled.data(), rows, cols, factors, options);
    Core<T>& central = result.cores[central_index(n)];
    for (Index i = 0; i < central.data.size(); ++i) central.data.data()[i] = std::ldexp(central.data.data()[i], -shift);
    // The central core carries the scale: values of up to σ_max, which float32 cannot always hold.
    if (!central.data.allFinite())
      throw std::overflow_error(std::string("mpo: the central core would hold values beyond the largest ") +
                                (std::is_same<T, float>::value ? "float32" : "float64") + " (the matrix's norm is " +
                                std::to_string(out.norm) + "); decompose it in float64 or scale it down");
    for (Spectrum& spectrum : result.spectra) spectrum *= std::ldexp(1.0, -shift);
    for (double& e : result.truncation_errors) e = std::ldexp(e, -shift);
    result.norm = out.norm;
    return result;
  }

  // Outer steps a cap leaves whole. A step whose unfolding has as many rows (left of the central core) or
  // columns (right of it) as its full bond, and whose cap does not cut that bond, keeps everything: its
  // split is only a change of basis of the bond. When a cap cuts some other bond, order_bonds puts every
  // bond in order at the end anyway, from the small cores. So a run of such steps from either end takes
  // the identity as its core and leaves the remainder as it is, which saves the step's Gram matrix,
  // eigensolve and product over the largest arrays of the sweep (on 3072×768 at cap 256, a third of the
  // multiply-adds). The left steps are skipped only all together: the block route makes them cheaply
  // from one Gram matrix of M otherwise. Zero singular values in a whole step are dropped by
  // order_bonds, as the sweep would have dropped them.
  const std::size_t c = central_index(n);
  const std::vector<Index> full = factors.full_bonds();
  bool cuts = false;
  for (std::size_t k = 0; k + 1 < n; ++k) cuts = cuts || (caps[k] > 0 && caps[k] < full[k]);
  auto whole = [&](std::size_t bond, Index side) {
    return side == full[bond] && (caps[bond] == 0 || caps[bond] >= side);
  };
  bool left_whole = options.allow_whole && cuts && c > 0;
  Index prefix = 1;  // rows of the left unfolding at step k, Π_{m<=k} i_m·j_m
  for (std::size_t k = 0; k < c && left_whole; ++k) {
    prefix *= factors.in_shape[k] * factors.out_shape[k];
    left_whole = whole(k, prefix);
  }
  bool whole_steps = left_whole;

  SplitOptions split_options;
  split_options.seed = options.seed;
  split_options.allow_randomized = options.allow_randomized;
  bool truncated = false;
  auto record = [&](std::size_t bond, Split<T>& s) {
    out.spectra[bond] = std::move(s.spectrum);
    out.truncation_errors[bond] = std::sqrt(s.discarded);
    out.cut[bond] = s.truncated;
    truncated = truncated || s.truncated;
    out.randomized = out.randomized || s.randomized;
  };

  // The remainder of Algorithm 1, a flat buffer read as whatever unfolding the next step needs.
  Matrix<T> remainder;
  Index left = 1;
  Index rest = rows * cols;
  std::size_t first = 0;  // the first left step the plain sweep below still has to make
  // The left steps whose unfoldings have at most kBlockRows rows, and are wide (a tall unfolding is
  // split through QR, which the block does not do), are made at once from M in place. At least four
  // columns per row: the gathered Gram matrix only pays for itself by the passes over M it saves.
  std::size_t steps = 0;
  for (Index p = 1; steps < c; ++steps) {
    p *= factors.in_shape[steps] * factors.out_shape[steps];
    if (p > kBlockRows || 4 * p * p > rows * cols) break;
  }
  // Not up to a step the plain sweep would make more cheaply by its randomized range finder: the block
  // pays the whole Gram matrix and an eigensolve of the step's rows (~P²N/2 + 9m³ multiply-adds, P
  // the block's rows, N its columns, m the step's rows), the range finder ~8 passes of m·N·width.
  auto range_finder_cheaper = [&](std::size_t count) {
    Index p = 1, bond = 1;
    for (std::size_t k = 0; k + 1 < count; ++k) {
      p *= factors.in_shape[k] * factors.out_shape[k];
      bond = std::min(bond * factors.in_shape[k] * factors.out_shape[k], caps[k] > 0 ? caps[k] : p);
    }
    const std::size_t last = count - 1;
    const Index pair = factors.in_shape[last] * factors.out_shape[last];
    p *= pair;
    SplitOptions plain = split_options;  // the options the plain sweep would split this step with
    plain.max_rank = caps[last];
    if (!takes_range_finder(bond * pair, plain)) return false;
    const double m = static_cast<double>(bond * pair);
    const double width = static_cast<double>(range_finder_width(plain.max_rank));
    const double columns = static_cast<double>(rows) * static_cast<double>(cols) / static_cast<double>(p);
    const double block = 0.5 * static_cast<double>(p) * static_cast<double>(p) * columns + 9 * m * m * m;
    return block > 8 * m * columns * width;
  };
  while (steps >= 1 && range_finder_cheaper(steps)) --steps;
  bool recanonicalize = false;
  if (left_whole) {
    for (std::size_t k = 0; k < c; ++k) {
      const Index pair = factors.in_shape[k] * factors.out_shape[k];
      out.cores[k] = identity_core<T>(left, factors.in_shape[k], factors.out_shape[k], left * pair);
      rest /= pair;
      left *= pair;
    }
    first = c;
  } else if (options.allow_block && steps >= 1) {
    LeftBlock<T> block;
    if (left_block<T>(data, factors, steps, caps, out.norm * out.norm, &block)) {
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
      recanonicalize = block.float_gram;
    }
  }
  if (remainder.size() == 0) {  // no block step made it: the sweep starts from the interleaved M
    remainder.resize(1, rows * cols);
    interleave(data, factors, remainder.data());
  }
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
  Index right = 1;
  bool right_whole = options.allow_whole && cuts;
  bool central_right_ordered = true;  // bond c is split in order by the last right step (order_bonds)
  for (std::size_t k = n - 1; k > c; --k) {
    const Index pair = factors.in_shape[k] * factors.out_shape[k];
    const Index width = pair * right;
    right_whole = right_whole && whole(k - 1, width);
    if (right_whole) {
      out.cores[k] = identity_core<T>(width, factors.in_shape[k], factors.out_shape[k], right);
      right = width;
      whole_steps = true;
      central_right_ordered = k > c + 1;
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
  out.cores[c] = make_core<T>(left, factors.in_shape[c], factors.out_shape[c], right,
                              std::move(remainder));
  if (truncated || recanonicalize || whole_steps) {
    // (A block Gram matrix formed in float32 leaves spectra good to ~1e-4 only: recomputed here too.)
    // A cut at one step changes the remainder that later steps split, so the earlier bonds are no
    // longer exactly ordered by the singular values of the MPO's own unfoldings. One sweep over the
    // (now small) cores restores that, which keeps later truncation optimal and the bound valid. The
    // sweep left the cores in mixed canonical form, so rotating each bond suffices.
    // The last step split bond c (right of the central core) on the final remainder: that bond is already
    // in order, and only the bonds split before it are rotated (unless that step was a whole one).
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
