// Algorithm 1 under any per-bond max_bond, scored exactly; see include/mpo/sweep.hpp.
#include "mpo/sweep.hpp"

#include "decompose/shortcuts.hpp"
#include "mpo/contract.hpp"
#include "mpo/symmetric.hpp"

#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>
#include <string>

namespace mpo {

template <class T>
Sweep<T>::Sweep(const T* data, Index rows, Index cols, const Factors& factors, const SweepShortcuts& shortcuts,
                double unit)
    : factors_(factors), shortcuts_(shortcuts) {
  factors_.validate();
  if (!(unit > 0) || !std::isfinite(unit))
    throw std::invalid_argument("mpo: the Sweep's unit must be positive and finite, got " + std::to_string(unit));
  if (factors_.rows() != rows || factors_.cols() != cols)
    throw std::invalid_argument("mpo: the factors multiply to " + std::to_string(factors_.rows()) + "x" +
                                std::to_string(factors_.cols()) + " but the matrix is " +
                                std::to_string(rows) + "x" + std::to_string(cols));
  const std::size_t n = factors_.n();
  central_ = central_index(n);
  for (std::size_t k = 0; k < central_; ++k) steps_.push_back(k);
  for (std::size_t k = n - 1; k-- > central_;) steps_.push_back(k);
  Node root;
  root.remainder.resize(1, rows * cols);
  interleave(data, factors_, root.remainder.data());
  T* values = root.remainder.data();
  for (Index i = 0; i < root.remainder.size(); ++i) {
    // In double: exact for a power-of-two unit, and 1/unit may not exist in T.
    const double x = unit == 1.0 ? static_cast<double>(values[i]) : static_cast<double>(values[i]) / unit;
    values[i] = static_cast<T>(x);
    energy_ += x * x;
  }
  nodes_.emplace(Path{}, std::move(root));
}

template <class T>
typename Sweep<T>::Path Sweep<T>::ordered(const std::vector<Index>& max_bond) const {
  if (max_bond.size() != steps_.size())
    throw std::invalid_argument("mpo: max_bond needs n-1 = " + std::to_string(steps_.size()) +
                                " entries, got " + std::to_string(max_bond.size()));
  Path path;
  for (std::size_t bond : steps_) {
    if (max_bond[bond] < 0)
      throw std::invalid_argument("mpo: max_bond entries must be >= 1 (0 = uncapped), got " +
                                  std::to_string(max_bond[bond]));
    path.push_back(max_bond[bond]);
  }
  return path;
}

// The node before step prefix.size(), with its split made. Its remainder is then no longer needed:
// every remainder after it is a slice of the split.
template <class T>
typename Sweep<T>::Node& Sweep<T>::split_at(const Path& prefix) {
  Node& node = nodes_.at(prefix);
  if (node.has_split) return node;
  const std::size_t t = prefix.size();
  const std::size_t bond = steps_[t];
  const Index size = remainder_size(node);
  const Index rows = from_left(t) ? node.left * pair(bond) : size / (pair(bond + 1) * node.right);
  const ConstMatrixMap<T> unfolding(remainder_data(node), rows, size / rows);
  node.split = from_left(t) ? left_split<T>(unfolding) : right_split<T>(unfolding);
  count_work(node, rows);
  node.has_split = true;
  node.remainder = Matrix<T>();
  node.shared = nullptr;
  node.shared_size = 0;
  return node;
}

// Counted as the Gram matrix of the short side (m of them), m·size multiply-adds, once per node (a cut
// scored by values_only and split later is one split): the split's projection costs as much again, but
// the search's work limit (python/mpo/_budget.py) was set in units of Gram matrices plus kept
// projections, and a smaller count would end the search sooner. The shortcuts count what the plain
// split counts, so that the search's limits, and with them its choices, do not depend on them.
template <class T>
void Sweep<T>::count_work(Node& node, Index rows) {
  if (node.counted) return;
  const Index size = remainder_size(node);
  work_ += static_cast<double>(std::min(rows, size / rows)) * static_cast<double>(size);
  node.counted = true;
}

// How many directions a cut to `cap` keeps: the split has already dropped the zeros.
template <class T>
Index Sweep<T>::kept(const Node& node, Index cap) const {
  const Index nonzero = node.split.spectrum.size();
  return cap == 0 ? nonzero : std::min(cap, nonzero);
}

// What the cut discards: the dropped directions' λ² (the norms of R's rows, or L's columns) and the
// zeros the split dropped.
template <class T>
double Sweep<T>::discarded(const Node& node, Index keep) const {
  const Spectrum& s = node.split.spectrum;
  return node.split.discarded + s.tail(s.size() - keep).squaredNorm();
}

// The node after the cut of step prefix.size() to `keep` directions: the kept part of the split.
template <class T>
typename Sweep<T>::Node& Sweep<T>::advance(const Path& prefix, Index keep) {
  Path next = prefix;
  next.push_back(keep);
  auto found = nodes_.find(next);
  if (found != nodes_.end()) return found->second;
  const Node& parent = split_at(prefix);
  Node child;
  child.left = parent.left;
  child.right = parent.right;
  if (from_left(prefix.size())) {  // R = Qᵀ·A: its first rows, contiguous
    if (!share_rows(parent, keep, child)) child.remainder = parent.split.r.topRows(keep);
    child.left = keep;
  } else {  // L = A·Q: its first columns
    child.remainder = parent.split.q.leftCols(keep);
    child.right = keep;
  }
  child.remainder.resize(1, child.remainder.size());  // a view change: same coefficients
  child.counted = gram_counted_.count(next) > 0;  // right_from_gram counted its split already
  return nodes_.emplace(std::move(next), std::move(child)).first->second;
}

template <class T>
std::vector<Index> Sweep<T>::evaluate(const std::vector<Index>& max_bond, double* squared_error) {
  const Path caps = ordered(max_bond);
  std::vector<Index> bonds(steps_.size());
  double error = 0;
  Path prefix;
  for (std::size_t t = 0; t < caps.size(); ++t) {
    if (t == central_) {
      double dropped = 0;
      if (right_steps_from_gram(prefix, caps, bonds, &dropped)) {
        error += dropped;
        break;
      }
    }
    if (t + 1 == caps.size()) {
      Index keep = 0;
      double dropped = 0;
      if (last_cut_from_values(nodes_.at(prefix), caps[t], &keep, &dropped)) {
        error += dropped;
        bonds[steps_[t]] = keep;
        break;
      }
    }
    const Node& node = split_at(prefix);
    const Index keep = kept(node, caps[t]);
    error += discarded(node, keep);
    bonds[steps_[t]] = keep;
    // The last cut needs only its spectrum: its remainder (the central core) is not formed.
    if (t + 1 < caps.size()) {
      advance(prefix, keep);
      prefix.push_back(keep);
    }
  }
  *squared_error = error;
  return bonds;
}

template <class T>
Decomposition<T> Sweep<T>::build(const std::vector<Index>& max_bond) {
  const Path caps = ordered(max_bond);
  const std::size_t n = factors_.n();
  Decomposition<T> out;
  out.cores.resize(n);
  out.spectra.resize(n - 1);
  out.truncation_errors.assign(n - 1, 0.0);
  out.cut.assign(n - 1, false);
  out.norm = std::sqrt(energy_);
  auto place = [&](std::size_t k, Index left, Index right, Matrix<T> data) {
    out.cores[k] = make_core<T>(left, factors_.in_shape[k], factors_.out_shape[k], right, std::move(data));
  };
  bool cut = false;
  Path prefix;
  for (std::size_t t = 0; t < caps.size(); ++t) {
    if (t == central_ && build_right_from_bound(caps, prefix, cut, out)) {
      out.spectra = order_bonds(out.cores, true);  // the shortcut applies only where something was cut
      return out;
    }
    const Node& node = split_at(prefix);
    const Index keep = kept(node, caps[t]);
    const std::size_t bond = steps_[t];
    if (from_left(t))
      place(bond, node.left, keep, node.split.q.leftCols(keep));
    else
      place(bond + 1, keep, node.right, node.split.r.topRows(keep));
    out.spectra[bond] = node.split.spectrum.head(keep);
    out.truncation_errors[bond] = std::sqrt(discarded(node, keep));
    out.cut[bond] = keep < node.split.spectrum.size();
    cut = cut || out.cut[bond];
    advance(prefix, keep);
    prefix.push_back(keep);
  }
  const Node& last = nodes_.at(prefix);
  place(central_, last.left, last.right,
        ConstMatrixMap<T>(remainder_data(last), 1, remainder_size(last)));  // the last step is a right step: owned
  // A cut changes the remainders later steps split, so the bonds cut before the last step are not
  // exactly ordered by the MPO's own unfoldings: one rotation per bond from the small cores restores
  // that, as decompose() does. The last step split bond c in order (order_bonds' promise).
  if (cut) out.spectra = order_bonds(out.cores, true);
  return out;
}

template <class T>
void Sweep<T>::forget_all_but(const std::vector<Index>& max_bond) {
  const Path caps = ordered(max_bond);
  std::set<Path> path;
  Path prefix;
  path.insert(prefix);
  // The nodes made on this path, and the right steps right_from_gram scored on it without making them
  // (their work stays counted, as the plain route's nodes stay).
  for (std::size_t t = 0; t + 1 < caps.size(); ++t) {
    const auto node = nodes_.find(prefix);
    if (node == nodes_.end() || !node->second.has_split) break;
    prefix.push_back(kept(node->second, caps[t]));
    path.insert(prefix);
  }
  for (const RightStep& step : right_plan(prefix, caps)) {
    if (!nodes_.count(step.path) && !gram_counted_.count(step.path)) break;
    path.insert(step.path);
  }
  path.insert(bound_.prefix);  // the central-pair bound reads its rows
  for (auto it = nodes_.begin(); it != nodes_.end();)
    it = path.count(it->first) ? std::next(it) : nodes_.erase(it);
  // A node forgotten here and made again later counts again, whichever route scored it.
  for (auto it = gram_counted_.begin(); it != gram_counted_.end();)
    it = path.count(*it) ? std::next(it) : gram_counted_.erase(it);
}

template <class T>
typename Sweep<T>::Path Sweep<T>::last_left_prefix(const std::vector<Index>& max_bond) {
  const Path caps = ordered(max_bond);
  if (central_ == 0)
    throw std::invalid_argument("mpo: last_left_rows needs n >= 3 (a left step before the central core's)");
  Path prefix;
  for (std::size_t t = 0; t + 1 < central_; ++t) {
    const Index keep = kept(split_at(prefix), caps[t]);
    advance(prefix, keep);
    prefix.push_back(keep);
  }
  split_at(prefix);
  return prefix;
}

template <class T>
const Matrix<T>& Sweep<T>::last_left_rows(const std::vector<Index>& max_bond) {
  return nodes_.at(last_left_prefix(max_bond)).split.r;
}

// Rows [begin, end) of the bound's R, as (end - begin)·width × side: each row of R is width rows here.
template <class T>
ConstMatrixMap<T> Sweep<T>::central_rows(Index begin, Index end) const {
  const Matrix<T>& r = nodes_.at(bound_.prefix).split.r;
  const Index per_row = r.cols() / bound_.side;
  return ConstMatrixMap<T>(r.data() + begin * r.cols(), (end - begin) * per_row, bound_.side);
}

namespace {
// Rows cast to double at a time: a few MB, so that no copy of a whole window (69 MB for MiniLM's
// embedding) is allocated, page-faulted and freed per call.
Index rows_per_chunk(Index values_per_row) {
  return std::max<Index>(1, (Index{1} << 19) / std::max<Index>(1, values_per_row));
}
}  // namespace

// gram += sign · Σ_{begin <= a < end} X_aᵀX_a, lower triangle, in double.
template <class T>
void Sweep<T>::add_rows(Eigen::MatrixXd& gram, Index begin, Index end, double sign) {
  if (!add_rows_in_float(gram, begin, end, sign)) add_rows_in_double(gram, begin, end, sign);
}

template <class T>
void Sweep<T>::add_rows_in_double(Eigen::MatrixXd& gram, Index begin, Index end, double sign) const {
  gram_in_double(central_rows(begin, end), sign, gram);
}

template <class T>
void Sweep<T>::gram_in_double(const ConstMatrixMap<T>& x, double sign, Eigen::MatrixXd& gram) {
  const Index step = rows_per_chunk(x.cols());
  for (Index a = 0; a < x.rows(); a += step) {
    const Eigen::MatrixXd block = x.middleRows(a, std::min(x.rows() - a, step)).template cast<double>();
    gram.template selfadjointView<Eigen::Lower>().rankUpdate(block.transpose(), sign);
  }
}

namespace {
Spectrum descending_eigenvalues(const Eigen::MatrixXd& lower) {
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(lower, Eigen::EigenvaluesOnly);
  return eigen.eigenvalues().reverse();
}
}  // namespace

template <class T>
Spectrum Sweep<T>::central_reference(const std::vector<Index>& max_bond, Index side, Index b, Index count) {
  const Path prefix = last_left_prefix(max_bond);
  const Matrix<T>& r = nodes_.at(prefix).split.r;
  if (side < 1 || r.cols() % side != 0)
    throw std::invalid_argument("mpo: the last step's side " + std::to_string(side) + " does not divide the " +
                                std::to_string(r.cols()) + " columns of the last left split");
  if (b < 1 || b > r.rows())
    throw std::invalid_argument("mpo: b must be in [1, " + std::to_string(r.rows()) + "], got " + std::to_string(b));
  if (count < 0 || count > side)
    throw std::invalid_argument("mpo: count must be in [0, " + std::to_string(side) + "] (0 = all), got " +
                                std::to_string(count));
  if (prefix != bound_.prefix || side != bound_.side || bound_.gram.rows() != side) {
    const double energy = nodes_.at(prefix).split.spectrum.squaredNorm();  // R's rows are normed by it
    bound_ = CentralBound{prefix, side, 0, sums_in_float(energy, r.size()),
                          Eigen::MatrixXd::Zero(side, side),
                          Eigen::MatrixXd(), Eigen::VectorXd()};
  }
  // From the old reference by the rows between, unless recomputing from nothing is cheaper. Taking rows
  // away loses digits near ε‖G‖, far below the differences the search compares.
  if (b < bound_.b && b < bound_.b - b) {
    bound_.gram.setZero();
    bound_.b = 0;
  }
  if (b > bound_.b) add_rows(bound_.gram, bound_.b, b, 1.0);
  else add_rows(bound_.gram, b, bound_.b, -1.0);
  bound_.b = b;
  reference_eigen(count == 0 ? side : count);
  return bound_.values.head(count == 0 ? side : count);
}

template <class T>
Eigen::MatrixXd Sweep<T>::central_bound(Index lo, Index hi, Index used) {
  if (bound_.b == 0) throw std::invalid_argument("mpo: central_bound needs a central_reference first");
  const Index rows = nodes_.at(bound_.prefix).split.r.rows();
  if (lo < 0 || hi > rows || lo > hi || used < 1 || used > bound_.vectors.cols())
    throw std::invalid_argument("mpo: central_bound rows or directions out of range (used <= " +
                                std::to_string(bound_.vectors.cols()) + ", the reference's count)");
  Eigen::MatrixXd out = Eigen::MatrixXd::Zero(hi - lo, used);
  if (bound_products_in_float(lo, hi, used, &out)) return out;
  const Index per_row = nodes_.at(bound_.prefix).split.r.cols();
  const Index width = per_row / bound_.side;
  const Index step = rows_per_chunk(per_row);
  for (Index a0 = lo; a0 < hi; a0 += step) {
    const Index a1 = std::min(hi, a0 + step);
    const Eigen::MatrixXd block = central_rows(a0, a1).template cast<double>();
    const Eigen::MatrixXd projected = (block * bound_.vectors.leftCols(used)).cwiseAbs2();
    for (Index a = a0; a < a1; ++a) out.row(a - lo) = projected.middleRows((a - a0) * width, width).colwise().sum();
  }
  return out;
}

template <class T>
Spectrum Sweep<T>::central_probe(Index b) {
  if (bound_.b == 0) throw std::invalid_argument("mpo: central_probe needs a central_reference first");
  const Index rows = nodes_.at(bound_.prefix).split.r.rows();
  if (b < 1 || b > rows)
    throw std::invalid_argument("mpo: b must be in [1, " + std::to_string(rows) + "], got " + std::to_string(b));
  return descending_eigenvalues(bound_gram_at(b));
}

// G(b) from the reference's by the rows between (lower triangle).
template <class T>
Eigen::MatrixXd Sweep<T>::bound_gram_at(Index b) {
  Eigen::MatrixXd gram = bound_.gram;
  if (b > bound_.b) add_rows(gram, bound_.b, b, 1.0);
  else add_rows(gram, b, bound_.b, -1.0);
  return gram;
}

template class Sweep<float>;
template class Sweep<double>;

}  // namespace mpo
