// Eigenpairs of symmetric matrices: the full solver, and the route for the k largest eigenvectors
// (see include/mpo/symmetric.hpp).
#include "mpo/symmetric.hpp"

#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <Eigen/SVD>

#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace mpo {

namespace {

constexpr double kEps = std::numeric_limits<double>::epsilon();

// The k-vector route is taken for at most half of the eigenvectors, or where it skips at least
// kPartialSkip of them, on matrices from kPartialMinSize on. Measured on one core, its time is about a
// sixth of the full solver's plus a share growing as m²·k: the two cross near k = 0.6m for m ≤ 400
// (144: k ≈ 70; 256: k ≈ 170) and later for larger m (768: k ≈ 700).
constexpr Index kPartialSkip = 160;
constexpr Index kPartialMinSize = 64;

// A vector is accepted when its residual and its Rayleigh quotient's distance from the eigenvalue it was
// computed for are below this fraction of ‖T‖. Inverse iteration reaches ~m·ε (1e-13 at m = 256); the
// bar is a thousand times looser so that only a failure of the method trips it, and still a thousand
// times below anything a truncation error could notice.
constexpr double kAcceptance = 1e-10;

// Solves of inverse iteration per vector: the first from a random start, the second refines it. Each
// multiplies the wanted component's share by |λ_other − σ| / |λ − σ| ≥ gap / (ε‖T‖), so two bring it to
// rounding for any gap above ~1e-8·‖T‖; closer eigenvalues are one eigenspace at the checks' bar.
constexpr int kSolves = 2;

bool full_solver(const Eigen::MatrixXd& a, Index count, SymmetricEigen* out) {
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(a);
  if (eigen.info() != Eigen::Success) return false;
  out->values = eigen.eigenvalues().reverse().head(count);
  out->vectors = eigen.eigenvectors().rowwise().reverse().leftCols(count);
  out->route = EigenRoute::full;
  return true;
}

// The last resort. Eigen's implicit QR iteration gives up after 30·m iterations, and it has: on the
// column Gram matrix of a rank-4 sum of Kronecker products (four eigenvalues 1, the rest at 1e-16), whose
// tiny off-diagonals its deflation test never zeroes. A + s·I with s ≥ ‖A‖_∞ ≥ |λ|max is positive
// semi-definite, so its singular value decomposition is its eigendecomposition, in descending order;
// Eigen's (two-sided) Jacobi SVD always converges, at several times the cost.
void jacobi_solver(const Eigen::MatrixXd& a, Index count, SymmetricEigen* out) {
  const Eigen::MatrixXd symmetric = a.selfadjointView<Eigen::Lower>();
  const double shift = symmetric.cwiseAbs().rowwise().sum().maxCoeff();
  const Eigen::MatrixXd shifted = symmetric + shift * Eigen::MatrixXd::Identity(a.rows(), a.rows());
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(shifted, Eigen::ComputeFullU);
  out->values = svd.singularValues().head(count).array() - shift;
  out->vectors = svd.matrixU().leftCols(count);
  out->route = EigenRoute::jacobi;
}

// T − σI, T symmetric tridiagonal, factored as P·L·U with partial pivoting (as LAPACK's xGTTRF): U has
// two superdiagonals. Pivots below `tiny` (σ is an eigenvalue, so the last one is ~0 by design) are
// replaced by `tiny`, which makes the solve amplify the eigenvector instead of dividing by zero.
struct ShiftedLU {
  Eigen::VectorXd diag, upper, upper2, lower;
  Eigen::VectorXd inverse;  // 1 / diag: the back substitution is a chain of dependent steps, and a
                            // division's latency is several multiplications'.
  std::vector<char> swapped;

  void factor(const Eigen::VectorXd& d, const Eigen::VectorXd& e, double sigma, double tiny) {
    const Index m = d.size();
    diag = d.array() - sigma;
    upper = e;
    lower = e;
    upper2 = Eigen::VectorXd::Zero(std::max<Index>(m - 2, 0));
    swapped.assign(static_cast<std::size_t>(std::max<Index>(m - 1, 0)), 0);
    for (Index i = 0; i + 1 < m; ++i) {
      if (std::abs(diag(i)) >= std::abs(lower(i))) {
        if (std::abs(diag(i)) < tiny) diag(i) = std::copysign(tiny, diag(i));
        const double factor = lower(i) / diag(i);
        lower(i) = factor;
        diag(i + 1) -= factor * upper(i);
      } else {
        // Row i+1 becomes the pivot row.
        const double factor = diag(i) / lower(i);
        diag(i) = lower(i);
        lower(i) = factor;
        const double held = upper(i);
        upper(i) = diag(i + 1);
        diag(i + 1) = held - factor * diag(i + 1);
        if (i + 2 < m) {
          upper2(i) = upper(i + 1);
          upper(i + 1) = -factor * upper(i + 1);
        }
        swapped[static_cast<std::size_t>(i)] = 1;
      }
    }
    if (m > 0 && std::abs(diag(m - 1)) < tiny) diag(m - 1) = std::copysign(tiny, diag(m - 1));
    inverse = diag.cwiseInverse();
  }

  // x ← (T − σI)⁻¹·x
  void solve(Eigen::VectorXd& x) const {
    const Index m = diag.size();
    for (Index i = 0; i + 1 < m; ++i) {
      if (swapped[static_cast<std::size_t>(i)]) {
        const double held = x(i);
        x(i) = x(i + 1);
        x(i + 1) = held - lower(i) * x(i);
      } else {
        x(i + 1) -= lower(i) * x(i);
      }
    }
    for (Index i = m; i-- > 0;) {
      double v = x(i);
      if (i + 1 < m) v -= upper(i) * x(i + 1);
      if (i + 2 < m) v -= upper2(i) * x(i + 2);
      x(i) = v * inverse(i);
    }
  }
};

// The sum of row i's off-diagonal magnitudes in the tridiagonal T with subdiagonal e (m = e.size() + 1):
// its Gershgorin radius, and with |d_i| its contribution to ‖T‖_1.
double off_diagonal(const Eigen::VectorXd& e, Index i) {
  return (i > 0 ? std::abs(e(i - 1)) : 0.0) + (i < e.size() ? std::abs(e(i)) : 0.0);
}

// Sturm counts of T − x·I for kLanes shifts at once: how many eigenvalues of T lie below each x. The
// recurrence q_i = d_i − x − e_{i−1}²/q_{i−1} is a chain of dependent divisions per shift; running
// independent shifts side by side fills the vector units that one chain would leave waiting. Pivots at
// or below `pivmin` are replaced by −pivmin, which keeps the count backward stable (as LAPACK's xSTEBZ).
constexpr int kLanes = 16;
using Lanes = Eigen::Array<double, kLanes, 1>;

// Written on Eigen's fixed-size arrays: a loop over lanes with a select in it stayed scalar under GCC.
Lanes sturm_counts(const Eigen::VectorXd& d, const Eigen::VectorXd& e2, const Lanes& x, double pivmin) {
  const Index m = d.size();
  Lanes q = d(0) - x;
  q = (q.abs() <= pivmin).select(-pivmin, q);
  Lanes negative = (q < 0).cast<double>();
  for (Index i = 1; i < m; ++i) {
    q = (d(i) - x) - e2(i - 1) / q;
    q = (q.abs() <= pivmin).select(-pivmin, q);
    negative += (q < 0).cast<double>();
  }
  return negative;
}

// The `count` largest eigenvalues of T, descending, by bisection (each to ~2ε‖T‖, well inside what
// inverse iteration needs of a shift). Costs ~55 Sturm counts per eigenvalue, cheaper than the QR
// iteration for all m eigenvalues (which does ~m²/2 dependent rotations, each with a square root).
Eigen::VectorXd largest_by_bisection(const Eigen::VectorXd& d, const Eigen::VectorXd& e, Index count, double norm) {
  const Index m = d.size();
  const Eigen::VectorXd e2 = e.cwiseAbs2();
  const double pivmin = std::numeric_limits<double>::min() * std::max(1.0, e2.size() ? e2.maxCoeff() : 0.0);
  // Gershgorin bounds, widened so that both ends are strictly outside the spectrum.
  double low = d(0), high = d(0);
  for (Index i = 0; i < m; ++i) {
    low = std::min(low, d(i) - off_diagonal(e, i));
    high = std::max(high, d(i) + off_diagonal(e, i));
  }
  const double pad = 4 * kEps * norm * static_cast<double>(m) + 4 * pivmin;
  low -= pad;
  high += pad;
  const double resolution = 2 * kEps * std::max(norm, pivmin);
  const int halvings = static_cast<int>(std::ceil(std::log2(std::max((high - low) / resolution, 2.0))));
  Eigen::VectorXd out(count);
  for (Index first = 0; first < count; first += kLanes) {
    Lanes lo = Lanes::Constant(low), hi = Lanes::Constant(high), target;
    for (int l = 0; l < kLanes; ++l) {
      // Lanes past the end repeat the last eigenvalue: every lane does the same work either way.
      const Index j = std::min<Index>(first + l, count - 1);
      target(l) = static_cast<double>(m - 1 - j);  // its index in ascending order
    }
    for (int h = 0; h < halvings; ++h) {
      const Lanes mid = 0.5 * (lo + hi);
      const auto up = sturm_counts(d, e2, mid, pivmin) <= target;  // λ_j is above mid
      lo = up.select(mid, lo);
      hi = up.select(hi, mid);
    }
    for (int l = 0; l < kLanes && first + l < count; ++l) out(first + l) = 0.5 * (lo(l) + hi(l));
  }
  return out;
}

// The k-vector route; false when its checks reject the result.
bool partial_solver(const Eigen::MatrixXd& a, Index count, SymmetricEigen* out) {
  const Index m = a.rows();
  // Scaled to a largest entry of 1 (as Eigen's solver does) so that no product below over- or underflows.
  double scale = 0;  // over the lower triangle, the part that is read
  for (Index j = 0; j < m; ++j) scale = std::max(scale, a.col(j).tail(m - j).cwiseAbs().maxCoeff());
  if (!(scale > 0) || !std::isfinite(scale)) return false;
  Eigen::Tridiagonalization<Eigen::MatrixXd> reduction(a / scale);
  const Eigen::VectorXd d = reduction.diagonal();
  const Eigen::VectorXd e = reduction.subDiagonal();
  double norm = 0;  // ‖T‖_1 = ‖T‖_∞
  for (Index i = 0; i < m; ++i) norm = std::max(norm, std::abs(d(i)) + off_diagonal(e, i));
  // The shifts, by bisection: measured faster than the QR iteration for all m eigenvalues at every
  // count this route is taken for.
  const Eigen::VectorXd lambda = largest_by_bisection(d, e, count, norm);
  const double tiny = kEps * norm;

  Eigen::MatrixXd x(m, count);
  std::mt19937_64 engine(0x73796d65);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  ShiftedLU lu;
  Eigen::VectorXd v(m);
  double previous = 0;
  for (Index j = 0; j < count; ++j) {
    // Shifts that agree to rounding are pulled apart (as xSTEIN does), so that each solve sees a
    // slightly different matrix as well as a different start. By 10 ulps of the eigenvalue, as xSTEIN,
    // not of ‖T‖: the pulls add up along a cluster, and at N·10ε·‖T‖ the shifts of a cluster of small
    // eigenvalues walked past the eigenvalues below it, whose vectors the solves then returned (within
    // the checks' bar, which is absolute).
    const double separation = 10 * kEps * std::abs(lambda(j));
    double sigma = lambda(j);
    if (j > 0 && previous - sigma < separation) sigma = previous - separation;
    previous = sigma;
    lu.factor(d, e, sigma, tiny);
    for (Index i = 0; i < m; ++i) v(i) = uniform(engine);
    for (int s = 0; s < kSolves; ++s) {
      lu.solve(v);
      const double largest = v.cwiseAbs().maxCoeff();
      if (!(largest > 0) || !std::isfinite(largest)) return false;
      v /= largest;
    }
    x.col(j) = v.normalized();
  }

  // Orthonormal columns, in the order of the eigenvalues: vectors of a repeated eigenvalue become a basis
  // of its eigenspace; separated ones were orthogonal to ~ε‖T‖/gap already and barely move.
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(x);
  Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(m, count);

  // The checks: T·q − ρ·q small and ρ the eigenvalue the column was computed for.
  const double bar = kAcceptance * std::max(norm, std::numeric_limits<double>::min());
  for (Index j = 0; j < count; ++j) {
    const auto col = q.col(j);
    Eigen::VectorXd t = d.cwiseProduct(col);
    if (m > 1) {
      t.head(m - 1) += e.cwiseProduct(col.tail(m - 1));
      t.tail(m - 1) += e.cwiseProduct(col.head(m - 1));
    }
    const double rho = col.dot(t);
    if (!(std::abs(rho - lambda(j)) <= bar) || !((t - rho * col).norm() <= bar)) return false;
  }

  out->values = lambda * scale;  // the `count` largest
  out->vectors = reduction.matrixQ() * q;
  out->route = EigenRoute::partial;
  return true;
}

}  // namespace

bool symmetric_eigen_route(const Eigen::MatrixXd& a, Index count, EigenRoute route, SymmetricEigen* out) {
  const Index m = a.rows();
  if (a.cols() != m)
    throw std::invalid_argument("mpo: symmetric_eigen needs a square matrix, got " + std::to_string(a.rows()) +
                                "x" + std::to_string(a.cols()));
  if (count < 0 || count > m)
    throw std::invalid_argument("mpo: symmetric_eigen count must be in [0, " + std::to_string(m) + "], got " +
                                std::to_string(count));
  if (count == 0) {  // nothing to solve for
    out->values.resize(0);
    out->vectors.resize(m, 0);
    out->route = route;
    return true;
  }
  switch (route) {
    case EigenRoute::full: return full_solver(a, count, out);
    case EigenRoute::partial: return partial_solver(a, count, out);
    case EigenRoute::jacobi: jacobi_solver(a, count, out); return true;
  }
  return false;
}

SymmetricEigen symmetric_eigen(const Eigen::MatrixXd& a, Index count) {
  SymmetricEigen out;
  const Index m = a.rows();
  const bool partial = m >= kPartialMinSize && count >= 1 && (2 * count <= m || m - count >= kPartialSkip);
  if (partial && symmetric_eigen_route(a, count, EigenRoute::partial, &out)) return out;
  if (symmetric_eigen_route(a, count, EigenRoute::full, &out)) return out;
  if (!partial && symmetric_eigen_route(a, count, EigenRoute::partial, &out)) return out;
  symmetric_eigen_route(a, count, EigenRoute::jacobi, &out);
  return out;
}

}  // namespace mpo
