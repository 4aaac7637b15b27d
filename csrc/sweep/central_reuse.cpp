// Shortcut of the scorer's build (SweepShortcuts::reuse_bound): the last step from the central-pair bound.
//
// When the search ends on the central pair (python/mpo/_budget.py, central_pair), the right steps before
// the last keep their whole bonds and the bound holds G(b_ref) = Σ_{a<b_ref} X_aᵀX_a, the column Gram
// matrix of the last step's unfolding X (the first b rows of the last left split's R, each read as a
// pair_c × side block) for its reference b_ref, and its eigenvectors. The plain build splits again: each
// whole right step (a change of basis, Qᵀ square orthogonal), then the last step, forming X's Gram matrix
// anew. Here:
//  * a whole right step keeps the basis it is given: its core is the identity. Any orthonormal basis of
//    the whole bond is a valid split, and order_bonds (decompose.hpp), which build() runs whenever
//    something was cut, turns every bond into the spectral order the plain route's cores have;
//  * the last step's Gram matrix is G(b) for the chosen b, from G(b_ref) by the rows between (as
//    central_probe forms it), and its eigenvectors are the bound's own when b = b_ref;
//  * from there on it is the plain split: L = X·V in the data's precision, L's column norms the singular
//    values, the zero rule and the cut (assemble_rows, split.cpp), and the same truncation error.
// The MPO is then the plain build's up to rounding and the signs and order within repeated singular
// values (tests/test_budget.py compares them). It is taken only where the plain route would keep those
// whole bonds: each whole step's unfolding has at least as many rows as columns and its spectrum (the
// eigenvalues of a partial trace of G(b)) is far from the zero rule's bar.
#include "mpo/sweep.hpp"

#include "decompose/shortcuts.hpp"
#include "mpo/parallel.hpp"
#include "mpo/symmetric.hpp"

#include <Eigen/Eigenvalues>

#include <cmath>

namespace mpo {

namespace {

// Lower triangle of the Gram matrix of the trailing `cols` columns' index: Σ_f G[f·cols + a, f·cols + b].
Eigen::MatrixXd partial_trace(const Eigen::MatrixXd& lower, Index cols) {
  Eigen::MatrixXd out = Eigen::MatrixXd::Zero(cols, cols);
  for (Index f = 0; f < lower.rows() / cols; ++f)
    out += lower.block(f * cols, f * cols, cols, cols);  // the upper triangle is not read
  return out;
}

}  // namespace

template <class T>
bool Sweep<T>::build_right_from_bound(const Path& caps, const Path& prefix, bool cut_before,
                                      Decomposition<T>& out) {
  const std::size_t n = factors_.n();
  if (!shortcuts_.reuse_bound || central_ < 1 || bound_.b == 0 || prefix.size() != central_) return false;
  if (!std::equal(bound_.prefix.begin(), bound_.prefix.end(), prefix.begin()) ||
      bound_.prefix.size() + 1 != prefix.size())
    return false;
  const Node& node = nodes_.at(prefix);
  const Index b = prefix.back();
  const Index side = bound_.side;
  const Index width = pair(central_);
  const Index rows = b * width;
  // X is the first b rows of the bound's R (the remainder before the right steps holds the same values, a
  // copy or shared_rows' view, which a scoring through this node may have released).
  if (node.left != b || node.right != 1 || b > nodes_.at(bound_.prefix).split.r.rows() || rows < side) return false;
  // The whole right steps (bonds n-2 … c+1, in step order): each must be uncapped or capped at or above
  // its whole bond, with an unfolding at least as tall as wide and no spectral value near the zeros.
  const Index cap = caps.back();
  std::vector<Index> whole(n, 1);  // whole[k]: the product of the pairs right of bond k (the whole bond)
  for (std::size_t k = n - 1; k-- > 0;) whole[k] = whole[k + 1] * pair(k + 1);
  if (whole[central_] != side) return false;
  for (std::size_t t = central_; t + 1 < caps.size(); ++t) {
    const std::size_t bond = steps_[t];
    if (caps[t] != 0 && caps[t] < whole[bond]) return false;
    if (rows * (side / whole[bond]) < whole[bond]) return false;
  }
  // float32_gram: G(b) is the bound's float32 sums (float32_gram.cpp). Where a whole step shows directions
  // within reach of float32 rounding, or the last cut discards too little for it, G(b) is formed again in
  // double, and the bound's eigenvectors (float32 G(b)'s) are then not reused.
  Eigen::MatrixXd gram = bound_gram_at(b);
  bool in_float = bound_.in_float;
  std::vector<Spectrum> whole_spectra(n - 1);
  Eigen::MatrixXd vectors;
  double tail = 0;
  bool reuse = false, few = false;
  enum class Outcome { done, refused, in_double };
  auto last_steps = [&]() {
    // The whole right steps (bonds n-2 … c+1): no spectral value near the zeros (a float32 G(b) shows
    // ~1e-7 of its energy in directions that are zeros, so its floor is far above that).
    const double floor = in_float ? 1e-5 : 1e-10;
    for (std::size_t t = central_; t + 1 < caps.size(); ++t) {
      const std::size_t bond = steps_[t];
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(partial_trace(gram, whole[bond]), Eigen::EigenvaluesOnly);
      if (eigen.info() != Eigen::Success) return Outcome::refused;
      const Eigen::VectorXd energy = eigen.eigenvalues().reverse();
      if (!(energy[energy.size() - 1] > floor * energy.sum())) return in_float ? Outcome::in_double : Outcome::refused;
      whole_spectra[bond] = energy.cwiseSqrt();
    }
    // The last step (bond c): the eigenvectors of G(b), descending, the bound's own at its reference;
    // only the kept ones where that gives the plain cut (kept_vectors.cpp), which then also gives the
    // discarded energy from G(b)'s eigenvalues.
    const bool own = in_float || !bound_.in_float;  // G(b) is the bound's, so are its eigenvectors
    few = kept_eigenvectors(gram, b, cap, own, &vectors, &tail, &reuse);
    if (in_float && (!few || float_gram_too_fine(tail, cap, gram.trace()))) return Outcome::in_double;
    if (!few) {
      reuse = own && b == bound_.b && bound_.vectors.cols() == side;
      if (reuse) {
        vectors = bound_.vectors;
      } else {
        SymmetricEigen eigen = symmetric_eigen(gram, side, false);  // the plain split's full solver
        vectors = std::move(eigen.vectors);
      }
    }
    return Outcome::done;
  };
  Outcome outcome = last_steps();
  if (outcome == Outcome::in_double) {
    ++taken_.float32_gram_in_double;
    gram.setZero();
    add_rows_in_double(gram, 0, b, 1.0);
    in_float = false;
    outcome = last_steps();
  }
  if (outcome != Outcome::done) return false;
  if (few) ++taken_.kept_vectors;
  Matrix<T> basis = vectors.template cast<T>();
  const ConstMatrixMap<T> x = central_rows(0, b);
  // Lᵀ = Vᵀ·Xᵀ: the plain split's L = X·V, one row per candidate so that assemble_rows orders and cuts it.
  Matrix<T> l_t = multiply<T>(basis.transpose(), x.transpose());
  Split<T> split = assemble_rows<T>(std::move(basis), std::move(l_t), 0, few ? gram.trace() : 0.0, !few);
  // With the kept vectors alone the plain split keeps `cap` of more nonzero directions (checked there).
  const Index nonzero = few ? cap + 1 : split.spectrum.size();
  if (few) split.discarded = tail;
  const Index keep = cap == 0 ? nonzero : std::min(cap, nonzero);
  if (!(cut_before || keep < nonzero)) return false;  // nothing cut: order_bonds would not run

  auto place = [&](std::size_t k, Index left, Index right, Matrix<T> data) {
    out.cores[k] = make_core<T>(left, factors_.in_shape[k], factors_.out_shape[k], right, std::move(data));
  };
  for (std::size_t t = central_; t + 1 < caps.size(); ++t) {
    const std::size_t bond = steps_[t];
    place(bond + 1, whole[bond], whole[bond + 1], Matrix<T>::Identity(whole[bond], whole[bond]));
    out.spectra[bond] = whole_spectra[bond];  // replaced by order_bonds, like every spectrum
    out.truncation_errors[bond] = 0.0;
    out.cut[bond] = false;
  }
  place(central_ + 1, keep, whole[central_ + 1], split.q.leftCols(keep).transpose());
  place(central_, b, keep, split.r.topRows(keep).transpose());
  out.spectra[central_] = split.spectrum.head(keep);
  out.truncation_errors[central_] =
      std::sqrt(split.discarded + split.spectrum.tail(split.spectrum.size() - keep).squaredNorm());
  out.cut[central_] = keep < nonzero;
  ++taken_.reuse_bound;
  if (reuse) ++taken_.reuse_vectors;
  return true;
}

template bool Sweep<float>::build_right_from_bound(const Path&, const Path&, bool, Decomposition<float>&);
template bool Sweep<double>::build_right_from_bound(const Path&, const Path&, bool, Decomposition<double>&);

}  // namespace mpo
