// The C++ core on its own, without Python: decompose, rebuild, bound, entropy, canonical form.
#include "mpo/apply.hpp"
#include "mpo/checked.hpp"
#include "mpo/contract.hpp"
#include "mpo/decompose.hpp"
#include "mpo/measures.hpp"
#include "mpo/parallel.hpp"
#include "mpo/split.hpp"
#include "mpo/sweep.hpp"
#include "mpo/symmetric.hpp"

#include <Eigen/SVD>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const char* what, double value) {
  std::printf("%s %-58s %.3e\n", ok ? "ok  " : "FAIL", what, value);
  if (!ok) ++failures;
}

mpo::Matrix<double> random_matrix(mpo::Index rows, mpo::Index cols, unsigned seed) {
  std::mt19937 engine(seed);
  std::normal_distribution<double> normal;
  mpo::Matrix<double> m(rows, cols);
  for (mpo::Index i = 0; i < rows; ++i)
    for (mpo::Index j = 0; j < cols; ++j) m(i, j) = normal(engine);
  return m;
}

double relative_error(const mpo::Matrix<double>& a, const mpo::Matrix<double>& b) {
  // stableNorm: the matrices of the scale tests (1e-170) would underflow a plain sum of squares.
  return (a - b).stableNorm() / a.stableNorm();
}

// How far a decomposition with some shortcut switched off is from the default one: the largest of the
// rebuilt matrices' difference over ‖M‖, the spectra's over σ_max and the truncation errors' over ‖M‖;
// 1 when a bond differs.
template <class T>
double shortcut_gap(const mpo::Matrix<T>& a, const mpo::Factors& f, const mpo::DecomposeOptions& off) {
  mpo::DecomposeOptions on;
  on.max_bond = off.max_bond;
  const auto x = mpo::decompose<T>(a.data(), a.rows(), a.cols(), f, on);
  const auto y = mpo::decompose<T>(a.data(), a.rows(), a.cols(), f, off);
  const double norm = a.template cast<double>().stableNorm();
  double gap = (mpo::rebuild(x.cores) - mpo::rebuild(y.cores)).template cast<double>().stableNorm() / norm;
  double top = 0;
  for (const auto& s : y.spectra) top = std::max(top, s(0));
  for (std::size_t k = 0; k < x.spectra.size(); ++k) {
    if (x.spectra[k].size() != y.spectra[k].size()) return 1;
    gap = std::max({gap, (x.spectra[k] - y.spectra[k]).stableNorm() / top,
                    std::abs(x.truncation_errors[k] - y.truncation_errors[k]) / norm});
  }
  return gap;
}

}  // namespace

int main() {
  const mpo::Factors factors{{2, 3, 4, 2}, {3, 2, 4, 3}};
  const mpo::Matrix<double> m = random_matrix(factors.rows(), factors.cols(), 7);

  // Exact MPO (MPOP Eq. 2): full bonds, rebuild to rounding.
  const auto exact = mpo::decompose<double>(m.data(), m.rows(), m.cols(), factors);
  check(relative_error(m, mpo::rebuild(exact.cores)) < 1e-12, "exact rebuild, relative error",
        relative_error(m, mpo::rebuild(exact.cores)));
  const auto full = factors.full_bonds();
  bool bonds_full = true;
  for (std::size_t k = 0; k < full.size(); ++k) bonds_full &= exact.cores[k].right_bond == full[k];
  check(bonds_full, "exact bonds equal the full bonds of Eq. 2", 0);

  // Each bond's spectrum equals the singular values of M's unfolding at that bond.
  mpo::Matrix<double> tensor(1, m.size());
  mpo::interleave(m.data(), factors, tensor.data());
  mpo::Index left = 1;
  double worst = 0;
  for (std::size_t k = 0; k + 1 < factors.n(); ++k) {
    left *= factors.in_shape[k] * factors.out_shape[k];
    const mpo::ConstMatrixMap<double> unfolding(tensor.data(), left, m.size() / left);
    Eigen::JacobiSVD<Eigen::MatrixXd> svd(unfolding);
    const Eigen::VectorXd sv = svd.singularValues().head(exact.spectra[k].size());
    worst = std::max(worst, (sv - exact.spectra[k]).norm() / sv.norm());
  }
  check(worst < 1e-10, "spectra equal the unfoldings' singular values", worst);

  // Capped: the error never exceeds the bound sqrt(sum eps_k^2) (MPOP Eq. 4).
  mpo::DecomposeOptions capped;
  capped.max_bond.assign(factors.n() - 1, 5);
  const auto cut = mpo::decompose<double>(m.data(), m.rows(), m.cols(), factors, capped);
  const double error = (m - mpo::rebuild(cut.cores)).norm();
  const double bound = mpo::error_bound(cut.truncation_errors);
  check(error <= bound * (1 + 1e-10), "capped error <= bound (error shown)", error);
  check(bound > 0, "capped bound is positive", bound);

  // The first left steps made from M in place (left_block) give the plain sweep's MPO.
  mpo::DecomposeOptions plain = capped;
  plain.shortcuts.block = false;
  const auto swept = mpo::decompose<double>(m.data(), m.rows(), m.cols(), factors, plain);
  const double block_gap = (mpo::rebuild(cut.cores) - mpo::rebuild(swept.cores)).norm() / m.norm();
  check(block_gap < 1e-12, "block left steps equal the plain sweep (relative gap)", block_gap);

  // Caps that cut bond 1 only: the outer steps, left whole, take the identity as their core and the
  // final ordering finds their bonds. Same MPO and spectra as splitting them.
  {
    mpo::DecomposeOptions outer;
    outer.max_bond = {6, 5, 6};
    mpo::DecomposeOptions split = outer;
    split.shortcuts.whole = false;
    const auto a = mpo::decompose<double>(m.data(), m.rows(), m.cols(), factors, outer);
    const auto b = mpo::decompose<double>(m.data(), m.rows(), m.cols(), factors, split);
    double gap = (mpo::rebuild(a.cores) - mpo::rebuild(b.cores)).norm() / m.norm();
    for (std::size_t k = 0; k < a.spectra.size(); ++k)
      gap = std::max(gap, a.spectra[k].size() == b.spectra[k].size()
                              ? (a.spectra[k] - b.spectra[k]).norm() / m.norm()
                              : 1.0);
    check(gap < 1e-12, "whole outer steps equal the split ones (relative gap)", gap);
  }

  // The other shortcuts against the plain route (their switch off) on a 256 × 256 matrix cut at 32 on its
  // one bond: a 256-row Gram matrix at k = 32 takes the k-vector route, float32 data the float32 Gram
  // matrix, and 2^-400 (double) or 2^-30 (float32) the rescaling. Tolerances relative to σ_max / ‖M‖:
  // 1e-10 in double (rounding, as for the block and whole steps); 1e-4 in float32, where a float32 Gram
  // matrix's rounding (~1e-7·‖A‖²) moves the kept subspace by ~1e-6·‖A‖²/gap (tests/strategies.py,
  // route_rtol).
  {
    const mpo::Factors square{{16, 16}, {16, 16}};
    const mpo::Matrix<double> a = random_matrix(256, 256, 17);
    const mpo::Matrix<float> af = a.cast<float>();
    mpo::DecomposeOptions off;
    off.max_bond = {32};
    off.shortcuts.k_vector = false;
    const double k_vector = shortcut_gap<double>(a, square, off), k_vector_f = shortcut_gap<float>(af, square, off);
    check(k_vector < 1e-10, "k-vector eigensolver route equals the full solver's (gap)", k_vector);
    check(k_vector_f < 1e-4, "k-vector eigensolver route, float32 (gap)", k_vector_f);
    off.shortcuts.k_vector = true;
    off.shortcuts.float32_gram = false;
    const double float_gram = shortcut_gap<float>(af, square, off);
    check(float_gram < 1e-4, "float32 Gram matrices equal the double ones (float32 gap)", float_gram);
    off.shortcuts.float32_gram = true;
    off.shortcuts.rescale = false;
    const mpo::Matrix<double> tiny = a * std::ldexp(1.0, -400);
    const mpo::Matrix<float> small = (a * std::ldexp(1.0, -30)).cast<float>();
    const double rescale = shortcut_gap<double>(tiny, square, off), rescale_f = shortcut_gap<float>(small, square, off);
    check(rescale < 1e-10, "power-of-two rescaling equals the unscaled sweep (gap)", rescale);
    check(rescale_f < 1e-4, "power-of-two rescaling, float32 (gap)", rescale_f);
  }

  // Budget mode's scorer (sweep.hpp): its score is the squared error of the MPO it builds, and at the
  // same max_bond that MPO is the plain sweep's (same bonds, spectra, truncation errors, matrix).
  {
    mpo::Sweep<double> sweep(m.data(), m.rows(), m.cols(), factors);
    const std::vector<mpo::Index> caps{4, 7, 5};
    double score = 0;
    const std::vector<mpo::Index> bonds = sweep.evaluate(caps, &score);
    sweep.evaluate({3, 9, 5}, &score);  // another path through the cache first
    sweep.forget_all_but(caps);
    sweep.evaluate(caps, &score);
    const auto built = sweep.build(caps);
    mpo::DecomposeOptions exact;
    exact.max_bond = caps;
    exact.allow_randomized = false;
    const auto swept = mpo::decompose<double>(m.data(), m.rows(), m.cols(), factors, exact);
    const mpo::Matrix<double> dense = mpo::rebuild(built.cores);
    const double score_gap = std::abs(score - (m - dense).squaredNorm()) / m.squaredNorm();
    check(score_gap < 1e-12, "scorer's score = ||M - its MPO||^2 (relative gap)", score_gap);
    double gap = (dense - mpo::rebuild(swept.cores)).norm() / m.norm();
    for (std::size_t k = 0; k < caps.size(); ++k) {
      const bool same_bond = built.cores[k].right_bond == swept.cores[k].right_bond &&
                             built.cores[k].right_bond == bonds[k] &&
                             built.spectra[k].size() == swept.spectra[k].size();
      gap = std::max({gap, same_bond ? (built.spectra[k] - swept.spectra[k]).norm() / m.norm() : 1.0,
                      std::abs(built.truncation_errors[k] - swept.truncation_errors[k]) / m.norm()});
    }
    check(gap < 1e-12, "scorer builds the plain sweep's MPO (relative gap)", gap);
  }

  // Entropy of every bond lies in [0, ln d_k].
  bool in_range = true;
  for (const auto& s : exact.spectra) {
    const double e = mpo::entropy(s);
    in_range &= e >= 0 && e <= std::log(static_cast<double>(s.size())) + 1e-12;
  }
  check(in_range, "0 <= entropy <= ln d_k", 0);

  // float32 runs the same algorithm.
  const mpo::Matrix<float> mf = m.cast<float>();
  const auto single = mpo::decompose<float>(mf.data(), mf.rows(), mf.cols(), factors);
  const double single_error =
      (mf - mpo::rebuild(single.cores)).cast<double>().norm() / mf.cast<double>().norm();
  check(single_error < 1e-5, "float32 exact rebuild, relative error", single_error);

  // A wrong factorisation is rejected with an exception, not a crash.
  bool threw = false;
  try {
    mpo::decompose<double>(m.data(), m.rows() - 1, m.cols(), factors);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  check(threw, "mismatched factors throw std::invalid_argument", 0);

  // The one permute kernel (contract.hpp), which the apply kernel and interleave share, against a plain
  // loop over every target index. Random ranks 1-6 with odd extents and unit axes, and the shapes its
  // fast routes take: neighbouring axes merged into a 2-D transpose or a batch of transposes (SIMD tiles
  // with remainders on both sides), an identity (a copy), an empty tensor.
  {
    std::mt19937 engine(5);
    int mismatched = 0, trials = 0;
    auto compare = [&](auto zero, const std::vector<mpo::Index>& dims, const std::vector<std::size_t>& perm) {
      using T = decltype(zero);
      const std::size_t rank = dims.size();
      mpo::Index total = 1;
      for (mpo::Index d : dims) total *= d;
      std::vector<T> source(static_cast<std::size_t>(total)), fast(source.size(), T(-1)), slow(source.size());
      for (std::size_t i = 0; i < source.size(); ++i) source[i] = static_cast<T>(i);
      mpo::permute(source.data(), dims, perm, fast.data());
      std::vector<mpo::Index> stride(rank, 1);  // the source's row-major strides
      for (std::size_t a = rank; a-- > 1;) stride[a - 1] = stride[a] * dims[a];
      for (mpo::Index t = 0; t < total; ++t) {
        mpo::Index rest = t, offset = 0;  // target digits, last axis fastest, mapped to the source
        for (std::size_t a = rank; a-- > 0;) {
          offset += (rest % dims[perm[a]]) * stride[perm[a]];
          rest /= dims[perm[a]];
        }
        slow[static_cast<std::size_t>(t)] = source[static_cast<std::size_t>(offset)];
      }
      ++trials;
      if (fast != slow) ++mismatched;
    };
    auto both = [&](const std::vector<mpo::Index>& dims, const std::vector<std::size_t>& perm) {
      compare(0.0f, dims, perm);
      compare(0.0, dims, perm);
    };
    for (int t = 0; t < 240; ++t) {
      const std::size_t rank = 1 + static_cast<std::size_t>(t % 6);
      std::vector<mpo::Index> dims(rank);
      for (auto& d : dims) d = 1 + static_cast<mpo::Index>(engine() % (rank <= 3 ? 40 : 6));
      std::vector<std::size_t> perm(rank);
      std::iota(perm.begin(), perm.end(), std::size_t{0});
      if (rank == 3 && t % 4 == 2)
        perm = {0, 2, 1};  // a batch of transposes (a merged core packed for its GEMM)
      else
        std::shuffle(perm.begin(), perm.end(), engine);
      both(dims, perm);
    }
    both({37, 29}, {1, 0});                       // a transpose, remainders on both sides
    both({3, 17, 19}, {0, 2, 1});                 // a batch of transposes
    both({5, 4, 3, 18}, {0, 3, 1, 2});            // axes 1-2 merge: a batch of transposes
    both({9, 2, 3, 11, 1}, {3, 4, 0, 1, 2});      // two blocks of axes swap: one transpose
    both({7, 1, 13, 1}, {2, 0, 3, 1});            // unit axes
    both({4, 5, 6}, {0, 1, 2});                   // the identity: a copy
    both({0, 5}, {1, 0});                         // empty
    check(mismatched == 0, "permute equals a plain loop (odd shapes, merges, tiles)", mismatched);
    check(trials == 494, "permute trials run", trials);
  }

  // Applying the cores to a batch equals the dense product for every plan, both orientations.
  {
    std::vector<mpo::CoreView<double>> views;
    for (const auto& c : cut.cores) views.push_back({{c.left_bond, c.rows, c.cols, c.right_bond}, c.data.data()});
    const mpo::Matrix<double> dense = mpo::rebuild(cut.cores);
    const mpo::Matrix<double> x = random_matrix(7, dense.rows(), 11);
    const mpo::Matrix<double> xt = random_matrix(5, dense.cols(), 12);
    double apply_worst = 0;
    for (auto kind : {mpo::PlanKind::left, mpo::PlanKind::right, mpo::PlanKind::central, mpo::PlanKind::automatic}) {
      mpo::Matrix<double> y(7, dense.cols()), yt(5, dense.rows());
      mpo::apply<double>(views, false, x.data(), 7, x.cols(), false, y.data(), y.cols(), kind);
      mpo::apply<double>(views, true, xt.data(), 5, xt.cols(), false, yt.data(), yt.cols(), kind);
      apply_worst = std::max({apply_worst, relative_error(x * dense, y),
                              relative_error(xt * dense.transpose(), yt)});
    }
    check(apply_worst < 1e-12, "apply equals X*M and X*M^T for every plan", apply_worst);
    const std::vector<mpo::Index> ids{3, 0, 3, dense.rows() - 1};
    mpo::Matrix<double> picked(4, dense.cols());
    mpo::rows<double>(views, false, ids, picked.data(), picked.cols());
    double rows_worst = 0;
    for (int r = 0; r < 4; ++r)
      rows_worst = std::max(rows_worst, (picked.row(r) - dense.row(ids[r])).norm() / dense.row(ids[r]).norm());
    check(rows_worst < 1e-12, "rows equal the dense rows", rows_worst);
  }

  // The k-vector eigensolver route: the 12 largest eigenpairs of a Gram matrix whose eigenvalues come in
  // equal pairs (a Kronecker product with I_2), against the full solver.
  {
    const mpo::Matrix<double> x = random_matrix(48, 60, 13);
    const Eigen::MatrixXd base = x * x.transpose();
    Eigen::MatrixXd a = Eigen::MatrixXd::Zero(96, 96);
    for (int i = 0; i < 48; ++i)
      for (int j = 0; j < 48; ++j) a(2 * i, 2 * j) = a(2 * i + 1, 2 * j + 1) = base(i, j);
    mpo::SymmetricEigen partial, full;
    const bool took = mpo::symmetric_eigen_route(a, 12, mpo::EigenRoute::partial, &partial);
    mpo::symmetric_eigen_route(a, 12, mpo::EigenRoute::full, &full);
    check(took, "k-vector route accepts repeated eigenvalues", 0);
    const double scale = full.values(0);
    const double value_gap = took ? (partial.values - full.values).cwiseAbs().maxCoeff() / scale : 1;
    const Eigen::MatrixXd& v = partial.vectors;
    const double orthogonality = took ? (v.transpose() * v - Eigen::MatrixXd::Identity(12, 12)).norm() : 1;
    const double residual = took ? (a * v - v * partial.values.asDiagonal()).norm() / scale : 1;
    check(value_gap < 1e-12, "k-vector route: eigenvalues equal the full solver's", value_gap);
    check(orthogonality < 1e-13, "k-vector route: vectors orthonormal", orthogonality);
    check(residual < 1e-11, "k-vector route: A*V = V*diag(values)", residual);
  }

  // Sizes that wrap 64-bit products are refused before anything is allocated (issue 15, C1: row
  // factors multiplying to 2**62 times a batch of 2 corrupted the heap).
  {
    bool refused = false;
    try {
      mpo::checked_mul(std::numeric_limits<mpo::Index>::max() / 2 + 1, 2, "a test size");
    } catch (const std::length_error& e) {
      refused = std::string(e.what()).find("a test size") != std::string::npos;
    }
    check(refused, "checked_mul refuses a wrapping product, naming it", 0);
    const mpo::Index q[] = {10, 10, 10, 10, 11, 11};
    std::vector<mpo::CoreView<float>> views;
    std::vector<float> one(1 << 11, 1.0f);
    for (mpo::Index e : q) views.push_back({{1, mpo::Index{1} << e, 1, 1}, one.data()});
    std::vector<float> x(2 * 5, 1.0f), y(2, 0.0f);
    bool apply_refused = false;
    try {
      mpo::apply<float>(views, false, x.data(), 2, 5, false, y.data(), 1, mpo::PlanKind::automatic, true);
    } catch (const std::length_error&) {
      apply_refused = true;
    }
    check(apply_refused, "apply refuses cores whose padded side times the batch wraps", 0);
    bool chain_refused = false;
    try {
      mpo::check_chain({{1, mpo::Index{1} << 40, mpo::Index{1} << 30, 1}, {1, 1, 1, 1}});
    } catch (const std::length_error&) {
      chain_refused = true;
    }
    check(chain_refused, "check_chain refuses a core whose size wraps", 0);
  }

  // An exception in a worker thread reaches the caller (C2: std::bad_alloc in a std::thread called
  // std::terminate); every block still runs and the threads are joined.
  {
    std::vector<int> ran(4, 0);
    bool caught = false;
    try {
      mpo::detail::run_blocks(4, [&](int b) {
        ran[b] = 1;
        if (b == 2) throw std::bad_alloc();
      });
    } catch (const std::bad_alloc&) {
      caught = true;
    }
    check(caught && ran[0] + ran[1] + ran[2] + ran[3] == 4, "run_blocks rethrows a worker's bad_alloc", 0);
  }

  // Entropy and the bound at any scale (W2): computed from λ/λmax and ε/εmax.
  {
    Eigen::VectorXd tiny(2), huge(3);
    tiny << 1e-170, 1e-170;
    huge << 3e300, 2e300, 1e300;
    Eigen::VectorXd unit = huge / 1e300;
    check(std::abs(mpo::entropy(tiny) - std::log(2.0)) < 1e-15, "entropy of (1e-170, 1e-170) is ln 2",
          mpo::entropy(tiny));
    check(std::abs(mpo::entropy(huge) - mpo::entropy(unit)) < 1e-14, "entropy unchanged at scale 1e300",
          mpo::entropy(huge));
    const double bound = mpo::error_bound({3e200, 4e200});
    check(std::abs(bound / 5e200 - 1) < 1e-15, "error bound of (3e200, 4e200) is 5e200", bound);
    check(std::abs(mpo::error_bound({3e-200, 4e-200}) / 5e-200 - 1) < 1e-15, "error bound at 1e-200", 0);
  }

  // W1: a matrix of entries below 1e-162 is not zero; its decomposition is the scaled one's.
  {
    const mpo::Matrix<double> small = m * 1e-170;
    const auto d = mpo::decompose<double>(small.data(), small.rows(), small.cols(), factors);
    const double err = relative_error(small, mpo::rebuild(d.cores));
    check(std::abs(d.norm / (m.norm() * 1e-170) - 1) < 1e-12, "norm of a 1e-170 matrix", d.norm);
    check(err < 1e-12, "exact rebuild of a 1e-170 matrix", err);
  }

  {  // A cap near the largest Index means "no practical cap": no overflow, and never the randomized route.
    const mpo::Index top = std::numeric_limits<mpo::Index>::max();
    mpo::SplitOptions huge;
    huge.max_rank = top;
    check(mpo::range_finder_width(top) == top && !mpo::takes_range_finder(top, huge),
          "range finder width saturates at the largest cap", 0);
    mpo::SplitOptions small;  // 6 * (8 + 10 + 0) = 108: the randomized route from m = 109 on
    small.max_rank = 8;
    check(!mpo::takes_range_finder(108, small) && mpo::takes_range_finder(109, small),
          "randomized route exactly when 6 * width < m", 0);
  }

  {  // The one product routine (csrc/parallel.cpp) against Eigen's plain product: every transposition of
    // the operands, and shapes that take each route (one block; rows, columns or the inner dimension
    // split across threads where the machine has more than one).
    const mpo::Index shapes[][3] = {{7, 5, 3}, {600, 300, 300}, {300, 300, 600}, {100, 6000, 100}};
    double worst = 0, worst_float = 0;
    for (const auto& s : shapes) {
      const mpo::Index rows = s[0], depth = s[1], cols = s[2];
      const mpo::Matrix<double> l = random_matrix(rows, depth, 11), r = random_matrix(depth, cols, 12);
      const mpo::Matrix<double> lt = l.transpose(), rt = r.transpose();
      const mpo::Matrix<double> plain = l * r;
      worst = std::max({worst, relative_error(plain, mpo::multiply<double>(l, r)),
                        relative_error(plain, mpo::multiply<double>(lt.transpose(), r)),
                        relative_error(plain, mpo::multiply<double>(l, rt.transpose())),
                        relative_error(plain, mpo::multiply<double>(lt.transpose(), rt.transpose()))});
      const mpo::Matrix<float> lf = l.cast<float>(), rtf = rt.cast<float>();
      worst_float = std::max(worst_float, relative_error(plain, mpo::multiply<float>(lf, rtf.transpose()).cast<double>()));
      std::vector<double> buffer(static_cast<std::size_t>(rows * cols));  // a Map target over a buffer
      mpo::MatrixMap<double> target(buffer.data(), rows, cols);
      mpo::multiply_into<double>(target, l, r);
      worst = std::max(worst, relative_error(plain, target));
    }
    check(worst < 1e-12, "products equal Eigen's for every transposition and route", worst);
    check(worst_float < 1e-5, "float32 products equal Eigen's", worst_float);
    const mpo::Matrix<double> a = random_matrix(4, 3, 13), b = random_matrix(3, 2, 14);
    std::vector<double> buffer(6);
    mpo::MatrixMap<double> wrong(buffer.data(), 3, 2);
    bool refused = false;
    try {
      mpo::multiply_into<double>(wrong, a, b);
    } catch (const std::logic_error&) {
      refused = true;
    }
    check(refused, "a product target of the wrong shape is refused", 0);

    // Gram matrices: float data accumulated in double (cast a chunk at a time), either side.
    const mpo::Matrix<double> g = random_matrix(70, 1500, 15);
    const mpo::Matrix<float> gf = g.cast<float>();
    const mpo::Matrix<double> gd = gf.cast<double>(), gdt = gd.transpose();
    const mpo::Matrix<float> gft = gdt.cast<float>();
    const mpo::Matrix<double> oracle = gd * gd.transpose();
    const double gram_gap = std::max({relative_error(oracle, mpo::gram<double>(gf)),
                                      relative_error(oracle, mpo::gram<double>(gft.transpose())),
                                      relative_error(oracle, mpo::gram<double>(gdt.transpose()))});
    check(gram_gap < 1e-13, "Gram matrices of float data formed in double, either side", gram_gap);
  }

  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
