// Shortcut of the scorer (SweepShortcuts::right_from_gram): evaluate()'s right steps scored in the Gram
// matrix of the last left step's remainder.
//
// After the left steps, the remainder X is the first b rows of the last left split's R, read as a
// (b·i_c j_c) × side matrix (side = the product of the pairs right of the central core). Every right step
// splits an unfolding whose columns are a trailing part of that side index (the pair it splits off and
// the bond kept to its right), and its split is the eigendecomposition of that unfolding's column Gram
// matrix. That matrix is a partial trace of G = XᵀX, which is side × side, small where X is tall. The
// plain route splits each right step on the remainder itself (a QR of a tall unfolding, its L = A·Q)
// and forms the last step's Gram matrix again. Here G is formed once (from the central-pair bound's G(b)
// when it holds the same rows, else from X), and each right step is scored in it:
//  * a step keeps the leading eigenvectors P of its partial trace, and what it discards is the trailing
//    eigenvalues of that trace; its kept remainder's Gram matrix is (I ⊗ P)ᵀ G (I ⊗ P), the next G;
//  * the last step discards the trailing eigenvalues of the last G beyond its cap.
// Every quantity is a spectrum of the plain route's own unfoldings, so the kept bonds and the squared
// error are the plain ones up to rounding (float32 sums where float32_gram holds for the bound), as long
// as each cut keeps the same subspace: at a tie of eigenvalues at a cut before the last step a split may
// keep any basis of the tied eigenspace, and the later steps depend on which, so the shortcut refuses
// there (a gap below 1e-6 of the step's largest eigenvalue, 1e-3 for a float32 G) and the plain split
// decides, as the build will. The work counted is what the plain route counts for the same steps (the
// nodes it would have made stay counted across forget_all_but, right_plan), so the search's limits and
// choices do not depend on the shortcut. It is taken only where each step's kept bond is clear of the
// zero rule (the cap-th eigenvalue, or a whole step's smallest, above 1e-10 of the step's energy, 1e-5
// for a float32 G), the last step's cap cuts, and side is at most kMaxSide; elsewhere evaluate() splits
// as before.
#include "mpo/sweep.hpp"

#include "decompose/shortcuts.hpp"

#include <Eigen/Eigenvalues>

#include <algorithm>

namespace mpo {

namespace {

// Above this side, G and its eigenvalues cost more than the plain right steps (and the central-pair
// bound, which forms the same matrix, does not run: python/mpo/_budget.py, _MAX_SIDE).
constexpr Index kMaxSide = 2048;

// The Gram matrix of the trailing `w` index of a symmetric (lead·w)² matrix (full storage).
Eigen::MatrixXd trailing_trace(const Eigen::MatrixXd& g, Index w) {
  Eigen::MatrixXd out = Eigen::MatrixXd::Zero(w, w);
  for (Index f = 0; f < g.rows() / w; ++f) out += g.block(f * w, f * w, w, w);
  return out;
}

// (I ⊗ P)ᵀ G (I ⊗ P) for G of (lead·w)² (full storage) and P of w × k.
Eigen::MatrixXd project_trailing(const Eigen::MatrixXd& g, const Eigen::MatrixXd& p) {
  const Index w = p.rows(), k = p.cols(), lead = g.rows() / w;
  Eigen::MatrixXd right(g.rows(), lead * k);
  for (Index f = 0; f < lead; ++f) right.middleCols(f * k, k).noalias() = g.middleCols(f * w, w) * p;
  Eigen::MatrixXd out(lead * k, lead * k);
  for (Index f = 0; f < lead; ++f) out.middleRows(f * k, k).noalias() = p.transpose() * right.middleRows(f * w, w);
  return out;
}

}  // namespace

template <class T>
std::vector<typename Sweep<T>::RightStep> Sweep<T>::right_plan(const Path& prefix, const Path& caps) const {
  std::vector<RightStep> plan;
  const auto found = nodes_.find(prefix);
  if (central_ < 1 || prefix.size() != central_ || found == nodes_.end() || found->second.right != 1) return plan;
  Path path = prefix;
  Index right = 1, remainder = remainder_size(found->second);
  for (std::size_t t = central_; t < caps.size(); ++t) {
    RightStep step;
    step.path = path;
    step.columns = t + 1 < caps.size() ? pair(steps_[t] + 1) * right : remainder / (found->second.left * pair(central_));
    step.rows = remainder / step.columns;
    const Index m = std::min(step.rows, step.columns);
    step.keep = caps[t] == 0 ? m : std::min(caps[t], m);
    step.work = static_cast<double>(m) * static_cast<double>(remainder);
    plan.push_back(step);
    remainder = step.rows * step.keep;
    right = step.keep;
    path.push_back(step.keep);
  }
  return plan;
}

template <class T>
bool Sweep<T>::right_steps_from_gram(const Path& prefix, const Path& caps, std::vector<Index>& bonds,
                                     double* discarded) {
  if (!shortcuts_.right_from_gram || central_ < 1 || prefix.size() != central_) return false;
  const Node& node = nodes_.at(prefix);
  if (node.has_split || node.right != 1) return false;  // a split made already costs nothing more
  const Index b = node.left;
  const Index width = pair(central_);
  const Index size = remainder_size(node);
  const Index side = size / (b * width);
  if (side > kMaxSide || side < 1 || b * width * side != size) return false;
  // Without right steps before the last, values_only scores the last step from the short side's Gram
  // matrix; and where X is wide, its columns' Gram matrix is the larger one.
  if (caps.size() == central_ + 1 || side > b * width) return false;
  const std::vector<RightStep> plan = right_plan(prefix, caps);
  const RightStep& final_step = plan.back();
  const Index cap = caps.back();
  // The last cap must cut: otherwise only the zero rule decides the bond.
  if (cap <= 0 || cap >= std::min(final_step.rows, final_step.columns)) return false;

  // G = XᵀX: the bound's G(b) where it holds these rows (its reference path and side), else from X.
  Eigen::MatrixXd lower;
  bool in_float = false, summed_in_float = false;
  const Path parent(prefix.begin(), prefix.end() - 1);
  if (bound_.b > 0 && bound_.prefix == parent && bound_.side == side) {
    lower = bound_gram_at(b);
    in_float = bound_.in_float;
  } else {
    lower = Eigen::MatrixXd::Zero(side, side);
    const ConstMatrixMap<T> x(remainder_data(node), b * width, side);
    in_float = summed_in_float =
        sums_in_float(energy_, size) && gram_in_float(x, 1.0, lower);
    if (!in_float) gram_in_double(x, 1.0, lower);
  }
  Eigen::MatrixXd g = lower.selfadjointView<Eigen::Lower>();
  // A kept bond must be clear of the zero rule, and a cut before the last step clear of a tie: there the
  // split may keep any basis of the tied eigenspace, the plain split its own, and the later steps (so the
  // score) depend on which. Bars far above the rounding of G (double, or float32 sums).
  const double floor = in_float ? 1e-5 : 1e-10;
  const double gap = in_float ? 1e-3 : 1e-6;

  double dropped = 0;
  for (std::size_t i = 0; i + 1 < plan.size(); ++i) {
    const RightStep& step = plan[i];
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(trailing_trace(g, step.columns));
    if (eigen.info() != Eigen::Success) return false;
    const Eigen::VectorXd values = eigen.eigenvalues().reverse().cwiseMax(0.0);
    const double energy = values.sum();
    if (!(values[step.keep - 1] > floor * energy)) return false;
    if (step.keep < step.columns && !(values[step.keep - 1] - values[step.keep] > gap * values[0])) return false;
    dropped += values.tail(step.columns - step.keep).sum();
    g = project_trailing(g, eigen.eigenvectors().rowwise().reverse().leftCols(step.keep));
  }
  // The last step (bond c): its unfolding is (b·i_c j_c) × (pair·right), G its column Gram matrix.
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> last(g, Eigen::EigenvaluesOnly);
  if (last.info() != Eigen::Success) return false;
  const Eigen::VectorXd values = last.eigenvalues().reverse().cwiseMax(0.0);
  if (!(values[cap - 1] > floor * values.sum())) return false;
  dropped += values.tail(g.rows() - cap).sum();

  for (std::size_t i = 0; i < plan.size(); ++i) bonds[steps_[central_ + i]] = plan[i].keep;
  *discarded = dropped;
  // The plain route's work count for the same nodes (count_work: the short side times the size, once per
  // node; a node counted before, by either route, is not counted again).
  for (const RightStep& step : plan) {
    const auto found = nodes_.find(step.path);
    if (found != nodes_.end()) {
      if (!found->second.counted) work_ += step.work;
      found->second.counted = true;
    } else if (gram_counted_.insert(step.path).second) {
      work_ += step.work;
    }
  }
  if (summed_in_float) ++taken_.float32_gram;
  ++taken_.right_from_gram;
  return true;
}

template bool Sweep<float>::right_steps_from_gram(const Path&, const Path&, std::vector<Index>&, double*);
template bool Sweep<double>::right_steps_from_gram(const Path&, const Path&, std::vector<Index>&, double*);
template std::vector<Sweep<float>::RightStep> Sweep<float>::right_plan(const Path&, const Path&) const;
template std::vector<Sweep<double>::RightStep> Sweep<double>::right_plan(const Path&, const Path&) const;

}  // namespace mpo
