// The split of one unfolding (Algorithm 1, one step). See include/mpo/split.hpp for the routes.
#include "mpo/split.hpp"

#include "decompose/shortcuts.hpp"
#include "mpo/parallel.hpp"
#include "mpo/symmetric.hpp"

#include <Eigen/Householder>
#include <Eigen/QR>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace mpo {

template <class T>
double zero_threshold() {
  // Rows of R = Uᵀ·A that belong to A's null space come out at the rounding level of the products
  // that form them (a few ulps of ‖A‖). The smallest singular values whose joint energy is below this
  // fraction of ‖A‖_F are zeros. A decomposition and its re-canonicalisation make up to ~4n splits, so
  // the sum of all drops stays far inside the rebuild targets (1e-12 in double, 1e-5 in float).
  return (std::is_same<T, float>::value ? 4.0 : 256.0) * static_cast<double>(std::numeric_limits<T>::epsilon());
}

namespace {

template <class T>
double squared_norm(const Eigen::Ref<const Matrix<T>>& a) {
  // Accumulated in double: float32 sums over millions of entries would lose digits the bound needs.
  double total = 0;
  for (Index i = 0; i < a.rows(); ++i) total += a.row(i).template cast<double>().squaredNorm();
  return total;
}

// Which candidate singular directions a split keeps: ordered by energy (λ²), zeros dropped (see
// zero_threshold), then cut to the cap. Bonds never vanish: at least one direction stays.
struct Selection {
  std::vector<double> energy;  // λ² per candidate
  std::vector<Index> order;    // candidates by decreasing energy
  Index keep = 0;
  Index nonzero = 0;
  double zero_energy = 0;
  bool sorted = true;  // order is the identity
};

template <class T>
Selection select(std::vector<double> energy, Index cap, double total) {
  Selection sel;
  const Index k = static_cast<Index>(energy.size());
  sel.order.resize(energy.size());
  std::iota(sel.order.begin(), sel.order.end(), Index{0});
  std::stable_sort(sel.order.begin(), sel.order.end(),
                   [&](Index x, Index y) { return energy[x] > energy[y]; });
  for (Index i = 0; i < k; ++i) sel.sorted = sel.sorted && sel.order[i] == i;
  sel.energy = std::move(energy);
  sel.zero_energy = std::pow(zero_threshold<T>(), 2) * total;
  Index keep = k;
  double tail = 0;
  while (keep > 0 && tail + sel.energy[sel.order[keep - 1]] <= sel.zero_energy)
    tail += sel.energy[sel.order[--keep]];
  sel.nonzero = keep;
  if (cap > 0) keep = std::min(keep, cap);
  sel.keep = std::max<Index>(keep, 1);
  return sel;
}

// Fills spectrum and discarded energy. With every candidate present (A = Q·W, Q square orthogonal)
// the error of dropping candidates is exactly their own energy; otherwise ‖A‖² minus what is kept.
template <class T>
void account(const Selection& sel, double total, bool all_present, Split<T>* out) {
  out->spectrum.resize(sel.keep);
  double kept = 0, dropped = 0;
  for (Index i = 0; i < sel.keep; ++i) {
    out->spectrum[i] = std::sqrt(sel.energy[sel.order[i]]);
    kept += sel.energy[sel.order[i]];
  }
  for (std::size_t i = static_cast<std::size_t>(sel.keep); i < sel.order.size(); ++i)
    dropped += sel.energy[sel.order[i]];
  out->discarded = all_present ? dropped : std::max(0.0, total - kept);
  out->truncated = sel.keep < sel.nonzero || (!all_present && out->discarded > sel.zero_energy);
}

}  // namespace

template <class T>
Split<T> assemble_rows(Matrix<T>&& basis, Matrix<T>&& w, Index cap, double total, bool all_present) {
  std::vector<double> energy(static_cast<std::size_t>(w.rows()));
  for (Index i = 0; i < w.rows(); ++i) energy[i] = w.row(i).template cast<double>().squaredNorm();
  if (all_present) total = std::accumulate(energy.begin(), energy.end(), 0.0);
  const Selection sel = select<T>(std::move(energy), cap, total);
  Split<T> out;
  account<T>(sel, total, all_present, &out);
  const Index keep = sel.keep;
  if (sel.sorted) {
    // The usual case: no reordering, so the (large) R is moved or cut, never gathered.
    out.q = basis.leftCols(keep);
    if (keep == w.rows()) {
      out.r = std::move(w);
    } else {
      w.conservativeResize(keep, Eigen::NoChange);
      out.r = std::move(w);
    }
    return out;
  }
  out.q.resize(basis.rows(), keep);
  out.r.resize(keep, w.cols());
  for (Index i = 0; i < keep; ++i) {
    out.q.col(i) = basis.col(sel.order[i]);
    out.r.row(i) = w.row(sel.order[i]);
  }
  return out;
}

namespace {

// Right split from candidates: columns of `l` (L = A·V) and rows of `basis_t` (Qᵀ = Vᵀ).
template <class T>
Split<T> assemble_columns(Matrix<T>&& l, Matrix<T>&& basis_t, Index cap, double total, bool all_present) {
  Eigen::VectorXd energy_v = Eigen::VectorXd::Zero(l.cols());
  for (Index i = 0; i < l.rows(); ++i) energy_v += l.row(i).transpose().template cast<double>().cwiseAbs2();
  std::vector<double> energy(energy_v.data(), energy_v.data() + energy_v.size());
  if (all_present) total = energy_v.sum();
  const Selection sel = select<T>(std::move(energy), cap, total);
  Split<T> out;
  account<T>(sel, total, all_present, &out);
  const Index keep = sel.keep;
  if (sel.sorted && keep == l.cols()) {
    out.q = std::move(l);
    out.r = std::move(basis_t);
    return out;
  }
  out.q.resize(l.rows(), keep);
  out.r.resize(keep, basis_t.cols());
  for (Index i = 0; i < keep; ++i) {
    out.q.col(i) = l.col(sel.order[i]);
    out.r.row(i) = basis_t.row(sel.order[i]);
  }
  return out;
}

}  // namespace

// The eigensolver always runs in double: orthonormality of the basis to double rounding is what makes
// float32 rebuilds exact to 1e-6.
Eigen::MatrixXd eigenvectors_descending(const Eigen::MatrixXd& gram, Index count, bool k_vector,
                                        Eigen::VectorXd* values) {
  SymmetricEigen eigen = symmetric_eigen(gram, count, k_vector);
  if (values) *values = std::move(eigen.values);
  return std::move(eigen.vectors);
}

namespace {

// The split through the Gram matrix of A's short side, m of them: its rows (Side::rows, A wide: A = Q·R
// with Q = U, the eigenvectors, and R = Uᵀ·A) or its columns (Side::columns, A tall: A = L·Qᵀ with
// Qᵀ = Vᵀ and L = A·V, no transposed copy of A ever made: the right sweep's unfoldings are tall and
// large). Only the eigenvectors that can survive the cap are computed and turned into R or L.
// `float_gram`: the float32 Gram matrix is allowed (float32_gram.cpp); `k_vector`: so is the k-vector
// eigensolver route (k_vector_eigen.cpp).
enum class Side { rows, columns };

template <class T, Side side>
Split<T> gram_split(const Eigen::Ref<const Matrix<T>>& a, Index cap, bool float_gram, bool k_vector) {
  constexpr bool by_rows = side == Side::rows;
  const Index m = by_rows ? a.rows() : a.cols();
  const bool capped = cap > 0 && cap < m;
  const Index k = capped ? cap : m;
  // ‖A‖²: from the Gram matrix's trace, except where it decides whether float32 can hold that matrix.
  double total = 0;
  if (float_gram) {
    total = squared_norm<T>(a);
    float_gram = float_gram_in_range(total, a.size());
  }
  // The Gram matrix is formed in double: for float32 data a float32 Gram matrix would put noise of
  // ~1e-5·σ_max into the small singular values and the bases that separate them (unless float_gram).
  auto gram_of = [&]() -> Eigen::MatrixXd {
    if constexpr (std::is_same<T, float>::value) {
      if (float_gram) return by_rows ? float32_gram_of_rows(a) : float32_gram_of_columns(a);
    }
    return by_rows ? gram<double>(a) : gram<double>(a.transpose());
  };
  const Eigen::MatrixXd g = gram_of();
  if (capped && !float_gram) total = g.trace();
  Eigen::MatrixXd vectors = eigenvectors_descending(g, k, k_vector);
  Matrix<T> basis = vectors.template cast<T>();
  auto assemble = [&](Matrix<T>&& b, double energy, bool all_present) {
    if constexpr (by_rows) {
      Matrix<T> w = multiply<T>(b.transpose(), a);
      return assemble_rows<T>(std::move(b), std::move(w), cap, energy, all_present);
    } else {
      Matrix<T> l = multiply<T>(a, b);
      Matrix<T> basis_t = b.transpose();
      return assemble_columns<T>(std::move(l), std::move(basis_t), cap, energy, all_present);
    }
  };
  if (!capped) return assemble(std::move(basis), 0.0, true);
  Split<T> out = assemble(std::move(basis), total, false);
  if (float_gram && float_gram_too_fine(out.discarded, k, total)) return gram_split<T, side>(a, cap, false, k_vector);
  if (out.discarded < cancellation<T>() * total) {
    // A cut that drops almost nothing: the dropped part is measured from the other eigenvectors. They
    // must be the complement of the kept ones, so both come from one full solve: the k-vector route's
    // basis is orthogonal to the full solver's others only to ~ε·‖G‖/gap, and with gaps below ε·‖G‖
    // that missed part was all of what is dropped here (error 0.14 % above the bound).
    vectors = eigenvectors_descending(g, m, k_vector);
    out = assemble(vectors.leftCols(k).template cast<T>(), total, false);
    const Matrix<T> others = vectors.rightCols(m - k).template cast<T>();
    out.discarded = by_rows ? squared_norm<T>(multiply<T>(others.transpose(), a)) : squared_norm<T>(multiply<T>(a, others));
    out.truncated = out.discarded > std::pow(zero_threshold<T>(), 2) * total;
  }
  return out;
}

template <class T>
Matrix<T> orthonormal_basis(const Matrix<T>& y) {
  Eigen::HouseholderQR<Matrix<T>> qr(y);
  Matrix<T> q = qr.householderQ() * Matrix<T>::Identity(y.rows(), y.cols());
  return q;
}

// Sum of the `rank` largest eigenvalues of B·Bᵀ, i.e. the energy a rank-`rank` cut of B keeps, and the
// eigenvectors (descending).
template <class T>
double top_energy(const Matrix<T>& b, Index rank, bool k_vector, Eigen::MatrixXd* vectors) {
  Eigen::VectorXd values;
  *vectors = eigenvectors_descending(gram<T>(b).template cast<double>(), rank, k_vector, &values);
  return values.head(rank).sum();
}

// Wide A, cap far below m: randomized range finder with power iterations (Halko, Martinsson, Tropp
// 2011). Each iteration costs two passes over A. It stops when one more iteration changes the kept
// energy by less than 1 % of the discarded energy, so the rank-`cap` error is within a fraction of a
// percent of the optimal one; without convergence it returns false and the caller takes the exact route.
template <class T>
bool randomized_split(const Eigen::Ref<const Matrix<T>>& a, Index cap, const SplitOptions& options,
                      Split<T>* out) {
  const Index m = a.rows();
  const Index width = std::min(m, range_finder_width(cap));
  std::mt19937_64 engine(options.seed);
  std::normal_distribution<double> normal;
  // Start from a random basis of R^m: Y = A·(Aᵀ·Ω) is already one power iteration and needs only m·l
  // random numbers instead of N·l.
  Matrix<T> q(m, width);
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < width; ++j) q(i, j) = static_cast<T>(normal(engine));
  q = orthonormal_basis<T>(q);

  const double total = squared_norm<T>(a);
  Matrix<T> b;
  Eigen::MatrixXd vectors;
  double previous = -1;
  for (int iteration = 0; iteration <= options.max_power_iterations; ++iteration) {
    b = multiply<T>(q.transpose(), a);
    const double kept = top_energy<T>(b, cap, options.k_vector, &vectors);
    const double tail = std::max(0.0, total - kept);
    if (previous >= 0 && kept - previous <= 0.01 * tail + std::pow(zero_threshold<T>(), 2) * total) {
      // B = Qᵀ·A; its eigenbasis V (descending) turns Q·V into the left singular vectors.
      const Matrix<T> rotation = vectors.template cast<T>();
      *out = assemble_rows<T>(q * rotation, multiply<T>(rotation.transpose(), b), cap, total, false);
      out->randomized = true;
      if (out->discarded < cancellation<T>() * total) {
        // Cap at or above the numerical rank: measure the residual A − Q·R itself.
        Matrix<T> residual = a;
        residual.noalias() -= multiply<T>(out->q, out->r);
        out->discarded = squared_norm<T>(residual);
        out->truncated = out->discarded > std::pow(zero_threshold<T>(), 2) * total;
      }
      return true;
    }
    previous = kept;
    q = orthonormal_basis<T>(multiply<T>(a, b.transpose()));
  }
  return false;
}

}  // namespace

template <class T>
Split<T> left_split(const Eigen::Ref<const Matrix<T>>& a, const SplitOptions& options) {
  const Index m = a.rows();
  const Index n = a.cols();
  if (m == 0 || n == 0) throw std::invalid_argument("mpo: cannot split an empty unfolding");
  if (options.max_rank < 0) throw std::invalid_argument("mpo: max_rank must be >= 0");
  if (m > n) {
    // Tall: A = Q0·R0 with R0 square, then split R0; Q0 stays orthonormal, so does Q0·Q1.
    Eigen::HouseholderQR<Matrix<T>> qr(a);
    Matrix<T> q0 = qr.householderQ() * Matrix<T>::Identity(m, n);
    Matrix<T> r0 = qr.matrixQR().topRows(n).template triangularView<Eigen::Upper>();
    Split<T> inner = left_split<T>(r0, options);
    inner.q = multiply<T>(q0, inner.q);
    return inner;
  }
  const Index cap = options.max_rank;
  if (takes_range_finder(m, options)) {
    Split<T> result;
    if (randomized_split<T>(a, cap, options, &result)) return result;
  }
  return gram_split<T, Side::rows>(a, cap, float_gram_allowed<T>(options, cap, m), options.k_vector);
}

template <class T>
Split<T> right_split(const Eigen::Ref<const Matrix<T>>& a, const SplitOptions& options) {
  if (a.rows() == 0 || a.cols() == 0) throw std::invalid_argument("mpo: cannot split an empty unfolding");
  const Index cap = options.max_rank;
  if (a.rows() >= a.cols() && !takes_range_finder(a.cols(), options))
    return gram_split<T, Side::columns>(a, cap, float_gram_allowed<T>(options, cap, a.cols()), options.k_vector);
  // Otherwise split the transpose from the left: Aᵀ = Q·R  =>  A = Rᵀ·Qᵀ.
  const Matrix<T> transposed = a.transpose();
  Split<T> s = left_split<T>(transposed, options);
  Split<T> out;
  out.q = s.r.transpose();
  out.r = s.q.transpose();
  out.spectrum = std::move(s.spectrum);
  out.discarded = s.discarded;
  out.truncated = s.truncated;
  out.randomized = s.randomized;
  return out;
}



template double zero_threshold<float>();
template double zero_threshold<double>();
template Split<float> left_split<float>(const Eigen::Ref<const Matrix<float>>&, const SplitOptions&);
template Split<double> left_split<double>(const Eigen::Ref<const Matrix<double>>&, const SplitOptions&);
template Split<float> right_split<float>(const Eigen::Ref<const Matrix<float>>&, const SplitOptions&);
template Split<double> right_split<double>(const Eigen::Ref<const Matrix<double>>&,
                                           const SplitOptions&);
template Split<float> assemble_rows<float>(Matrix<float>&&, Matrix<float>&&, Index, double, bool);
template Split<double> assemble_rows<double>(Matrix<double>&&, Matrix<double>&&, Index, double, bool);

}  // namespace mpo
