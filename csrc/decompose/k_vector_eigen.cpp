// Shortcut (Shortcuts::k_vector): the k largest eigenpairs of a symmetric (Gram) matrix without the full
// solver's work on all m eigenvectors: bisection for the eigenvalues and inverse iteration for their
// vectors on the tridiagonal form, every vector checked. The method and its measured gain are in
// include/mpo/symmetric.hpp; the plain route is the full solver (csrc/symmetric.cpp).
#include "decompose/shortcuts.hpp"

#include <Eigen/Eigenvalues>
#include <Eigen/QR>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

namespace mpo {

namespace {

constexpr double kEps = std::numeric_limits<double>::epsilon();

// Where the k-vector route is taken: from kPartialMinSize rows on, for up to a share of the m vectors
// that grows with m, because the full solver's m³ terms outgrow the route's m²·k ones. Measured on one
// core (benchmarks/bench_symmetric.py and a sweep of k/m), the two cross near k = 0.6m at m = 144,
// 0.7m at 192, 0.8m at 256 and past k = m − 1 from about 384 on.
constexpr Index kPartialMinSize = 64;

}  // namespace

bool k_vector_pays(Index m, Index count) {
  if (m < kPartialMinSize || count < 1 || count >= m) return false;
  const double share = std::clamp(0.6 + 0.2 * static_cast<double>(m - 144) / 112.0, 0.5, 1.0);
  return static_cast<double>(count) <= share * static_cast<double>(m);
}

namespace {

// A vector is accepted when its residual and its Rayleigh quotient's distance from the eigenvalue it was
// computed for are below this fraction of ‖T‖. Inverse iteration reaches ~m·ε (1e-13 at m = 256); the
// bar is a thousand times looser so that only a failure of the method trips it, and still a thousand
// times below anything a truncation error could notice.
constexpr double kAcceptance = 1e-10;

// Solves of inverse iteration per vector: the first from a random start, the second refines it. Each
// multiplies the wanted component's share by |λ_other − σ| / |λ − σ| ≥ gap / (ε‖T‖), so two bring it to
// rounding for any gap above ~1e-8·‖T‖; closer eigenvalues are one eigenspace at the checks' bar.
constexpr int kSolves = 2;

// Shifts handled side by side, one per lane. The tridiagonal recurrences below (Sturm counts, the
// factorisation of T − σI and its solves) are chains of dependent divisions and multiply-adds; one chain
// leaves the vector units waiting on its latency, so independent shifts run in the lanes of Eigen
// fixed-size arrays. 32 lanes: measured 3.4× the throughput of 16 in the Sturm count on this project's
// machines, and the point where it stops growing quickly.
constexpr int kLanes = 32;
using Lanes = Eigen::Array<double, 1, kLanes>;
using LaneRows = Eigen::Array<double, Eigen::Dynamic, kLanes, Eigen::RowMajor>;  // row i: index i of each lane

// T − σI for kLanes shifts σ, T symmetric tridiagonal, each factored as P·L·U with partial pivoting (as
// LAPACK's xGTTRF): U has two superdiagonals. A lane's pivots below `tiny` (σ is an eigenvalue, so the
// last one is ~0 by design) are replaced by `tiny`, which makes the solve amplify the eigenvector
// instead of dividing by zero. Each lane exchanges rows where its own pivot says so: both branches are
// computed and the lane's choice selected, which keeps the lanes in step.
struct ShiftedLU {
  LaneRows inverse;  // 1 / U's diagonal: the back substitution's chain waits on no division
  LaneRows upper, upper2, lower;
  LaneRows swapped;  // 1 where row i+1 became the pivot row, else 0

  void factor(const Eigen::VectorXd& d, const Eigen::VectorXd& e, const Lanes& sigma, double tiny) {
    const Index m = d.size();
    const Lanes zero = Lanes::Zero(), one = Lanes::Ones();
    const Lanes plus_tiny = Lanes::Constant(tiny), minus_tiny = Lanes::Constant(-tiny);
    auto guarded = [&](const Lanes& pivot) {
      return (pivot.abs() < tiny).select((pivot < 0).select(minus_tiny, plus_tiny), pivot);
    };
    inverse.resize(m, kLanes);
    upper.resize(m, kLanes);
    upper2.resize(m, kLanes);
    lower.resize(m, kLanes);
    swapped.resize(m, kLanes);
    Lanes diag = d(0) - sigma;                               // U's diagonal entry i, as far as it is known
    Lanes above = Lanes::Constant(m > 1 ? e(0) : 0.0);       // U's entry (i, i+1), as far as it is known
    for (Index i = 0; i + 1 < m; ++i) {
      const double sub = e(i);                                // T's (i+1, i): the candidate pivot row's
      const double next_above = i + 2 < m ? e(i + 1) : 0.0;  // T's (i+1, i+2)
      const Lanes next_diag = d(i + 1) - sigma;
      const auto keep = diag.abs() >= std::abs(sub);
      const Lanes pivot = guarded(diag);
      // Both branches' multipliers; a lane's unchosen one may be inf (sub = 0 keeps every lane's rows).
      const Lanes factor = keep.select(sub / pivot, diag / sub);
      inverse.row(i) = 1.0 / keep.select(pivot, Lanes::Constant(sub));
      upper.row(i) = keep.select(above, next_diag);
      upper2.row(i) = keep.select(zero, Lanes::Constant(next_above));
      lower.row(i) = factor;
      swapped.row(i) = keep.select(zero, one);
      const Lanes following = keep.select(next_diag - factor * above, above - factor * next_diag);
      above = keep.select(Lanes::Constant(next_above), -factor * next_above);
      diag = following;
    }
    inverse.row(m - 1) = 1.0 / guarded(diag);
  }

  // x ← (T − σI)⁻¹·x, lane by lane (column l of x for shift l).
  void solve(LaneRows& x) const {
    const Index m = x.rows();
    for (Index i = 0; i + 1 < m; ++i) {
      const auto exchanged = swapped.row(i) != 0.0;
      const Lanes here = x.row(i), next = x.row(i + 1);
      x.row(i) = exchanged.select(next, here);
      x.row(i + 1) = exchanged.select(here - lower.row(i) * next, next - lower.row(i) * here);
    }
    for (Index i = m; i-- > 0;) {
      Lanes v = x.row(i);
      if (i + 1 < m) v -= upper.row(i) * x.row(i + 1);
      if (i + 2 < m) v -= upper2.row(i) * x.row(i + 2);
      x.row(i) = v * inverse.row(i);
    }
  }
};

// The sum of row i's off-diagonal magnitudes in the tridiagonal T with subdiagonal e (m = e.size() + 1):
// its Gershgorin radius, and with |d_i| its contribution to ‖T‖_1.
double off_diagonal(const Eigen::VectorXd& e, Index i) {
  return (i > 0 ? std::abs(e(i - 1)) : 0.0) + (i < e.size() ? std::abs(e(i)) : 0.0);
}

// Sturm counts of T − x·I for kLanes shifts at once: how many eigenvalues of T lie below each x, by the
// recurrence q_i = d_i − x − e_{i−1}²/q_{i−1}. Pivots at or below `pivmin` are replaced by −pivmin, which
// keeps the count backward stable (as LAPACK's xSTEBZ). The count adds a select of two arrays: a
// comparison cast to double (and a loop over lanes with a select in it) stayed scalar under GCC.
Lanes sturm_counts(const Eigen::VectorXd& d, const Eigen::VectorXd& e2, const Lanes& x, double pivmin) {
  const Index m = d.size();
  const Lanes zero = Lanes::Zero(), one = Lanes::Ones();
  Lanes q = d(0) - x;
  q = (q.abs() <= pivmin).select(-pivmin, q);
  Lanes negative = (q < 0).select(one, zero);
  for (Index i = 1; i < m; ++i) {
    q = (d(i) - x) - e2(i - 1) / q;
    q = (q.abs() <= pivmin).select(-pivmin, q);
    negative += (q < 0).select(one, zero);
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
      // λ_j is above mid where at most its ascending index lie below. The counts are a named array: a
      // comparison expression keeps references to its operands, and one to a temporary would dangle.
      const Lanes below = sturm_counts(d, e2, mid, pivmin);
      const auto up = below <= target;
      lo = up.select(mid, lo);
      hi = up.select(hi, mid);
    }
    for (int l = 0; l < kLanes && first + l < count; ++l) out(first + l) = 0.5 * (lo(l) + hi(l));
  }
  return out;
}

}  // namespace

bool k_vector_eigen(const Eigen::MatrixXd& a, Index count, SymmetricEigen* out) {
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

  // The shifts. Shifts that agree to rounding are pulled apart (as xSTEIN does), so that each solve sees
  // a slightly different matrix as well as a different start. By 10 ulps of the eigenvalue, as xSTEIN,
  // not of ‖T‖: the pulls add up along a cluster, and at N·10ε·‖T‖ the shifts of a cluster of small
  // eigenvalues walked past the eigenvalues below it, whose vectors the solves then returned (within the
  // checks' bar, which is absolute).
  Eigen::VectorXd sigma(count);
  for (Index j = 0; j < count; ++j) {
    const double separation = 10 * kEps * std::abs(lambda(j));
    sigma(j) = lambda(j);
    if (j > 0 && sigma(j - 1) - sigma(j) < separation) sigma(j) = sigma(j - 1) - separation;
  }

  Eigen::MatrixXd x(m, count);
  std::mt19937_64 engine(0x73796d65);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  ShiftedLU lu;
  LaneRows v(m, kLanes);
  for (Index first = 0; first < count; first += kLanes) {
    const Index used = std::min<Index>(kLanes, count - first);
    Lanes shifts;
    for (int l = 0; l < kLanes; ++l) shifts(l) = sigma(first + std::min<Index>(l, used - 1));  // spare lanes repeat
    lu.factor(d, e, shifts, tiny);
    for (Index i = 0; i < m; ++i)
      for (int l = 0; l < kLanes; ++l) v(i, l) = uniform(engine);
    for (int s = 0; s < kSolves; ++s) {
      lu.solve(v);
      const Lanes largest = v.abs().colwise().maxCoeff();
      if (!((largest.head(used) > 0).all() && largest.head(used).isFinite().all())) return false;
      v.rowwise() *= largest.inverse();
    }
    for (Index l = 0; l < used; ++l) x.col(first + l) = v.col(l).matrix().normalized();
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

}  // namespace mpo
