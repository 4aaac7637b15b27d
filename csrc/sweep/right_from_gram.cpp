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
// error are the plain ones up to rounding (float32 sums where float32_gram holds for the bound). The
// work counted is what the plain route counts for the same steps, so the search's limits and choices do
// not depend on the shortcut. It is taken only where each step's kept bond is clear of the zero rule
// (the cap-th eigenvalue, or a whole step's smallest, above 1e-10 of the step's energy, 1e-5 for a float32
// G), the last step's cap cuts, and side is at most kMaxSide; elsewhere evaluate() splits as before.
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

  // G = XᵀX: the bound's G(b) where it holds these rows (its reference path and side), else from X.
  Eigen::MatrixXd lower;
  bool in_float = false;
  const Path parent(prefix.begin(), prefix.end() - 1);
  if (bound_.b > 0 && bound_.prefix == parent && bound_.side == side) {
    lower = bound_gram_at(b);
    in_float = bound_.in_float;
  } else {
    lower = Eigen::MatrixXd::Zero(side, side);
    const ConstMatrixMap<T> x(remainder_data(node), b * width, side);
    in_float = shortcuts_.float32_gram && float_gram_in_range(energy_, size) && gram_in_float(x, 1.0, lower);
    if (in_float) ++taken_.float32_gram;
    else gram_in_double(x, 1.0, lower);
  }
  Eigen::MatrixXd g = lower.selfadjointView<Eigen::Lower>();
  const double floor = in_float ? 1e-5 : 1e-10;

  // The plain route's work count for the same nodes (count_work: the short side times the size, once
  // per node: `path` is the node's, and a node counted before, by either route, is not counted again).
  std::vector<std::pair<Path, double>> work;
  Path path = prefix;
  Index rows = b * width, right = 1, remainder = size;
  double dropped = 0;
  std::vector<Index> kept(caps.size(), 0);
  for (std::size_t t = central_; t + 1 < caps.size(); ++t) {
    const std::size_t bond = steps_[t];
    const Index w = pair(bond + 1) * right;  // the columns this step splits off
    rows = remainder / w;
    work.emplace_back(path, static_cast<double>(std::min(rows, w)) * static_cast<double>(remainder));
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(trailing_trace(g, w));
    if (eigen.info() != Eigen::Success) return false;
    const Eigen::VectorXd values = eigen.eigenvalues().reverse().cwiseMax(0.0);
    const double energy = values.sum();
    const Index m = std::min(rows, w);
    const Index cap = caps[t] == 0 ? m : std::min(caps[t], m);
    if (!(values[cap - 1] > floor * energy)) return false;  // the zero rule could decide this bond
    kept[t] = cap;
    dropped += values.tail(w - cap).sum();
    g = project_trailing(g, eigen.eigenvectors().rowwise().reverse().leftCols(cap));
    remainder = rows * cap;
    right = cap;
    path.push_back(cap);
  }
  // The last step (bond c): its unfolding is (b·i_c j_c) × (pair·right), G its column Gram matrix.
  const Index w = g.rows();
  rows = remainder / w;
  const Index m = std::min(rows, w);
  const Index cap = caps.back();
  if (cap <= 0 || cap >= m) return false;  // no cut: the zero rule decides the bond
  work.emplace_back(path, static_cast<double>(m) * static_cast<double>(remainder));
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> last(g, Eigen::EigenvaluesOnly);
  if (last.info() != Eigen::Success) return false;
  const Eigen::VectorXd values = last.eigenvalues().reverse().cwiseMax(0.0);
  if (!(values[cap - 1] > floor * values.sum())) return false;
  dropped += values.tail(w - cap).sum();
  kept.back() = cap;

  for (std::size_t t = central_; t < caps.size(); ++t) bonds[steps_[t]] = kept[t];
  *discarded = dropped;
  for (const auto& [at, count] : work) {
    const auto found = nodes_.find(at);
    if (found != nodes_.end()) {
      if (!found->second.counted) work_ += count;
      found->second.counted = true;
    } else if (gram_counted_.insert(at).second) {
      work_ += count;
    }
  }
  ++taken_.right_from_gram;
  return true;
}

template bool Sweep<float>::right_steps_from_gram(const Path&, const Path&, std::vector<Index>&, double*);
template bool Sweep<double>::right_steps_from_gram(const Path&, const Path&, std::vector<Index>&, double*);

}  // namespace mpo
