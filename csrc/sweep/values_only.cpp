// Shortcut of the scorer (SweepShortcuts::values_only): the last step's cut scored from eigenvalues alone.
//
// evaluate() needs of the sweep's last step only what its cut discards, never the cores. The plain
// route makes the whole split: the Gram matrix of the short side, all its eigenvectors, and L = A·V,
// whose column norms are the singular values. Here only the Gram matrix (in double, as the plain split
// forms it) and its eigenvalues are computed: on MiniLM's 384 × 384 matrices that is about half of a
// scoring's time, since Eigen's solver spends most of its time on the eigenvectors.
//
// Why the score is the plain one up to rounding. Both compute the same exact number, the λ² the cut
// drops. The eigenvalues of a Gram matrix formed in double are within ~m·ε_double·‖A‖² of the exact λ²
// (a backward-stable solver); the plain route reads λ² off the columns of L = A·V, formed in the data's
// precision, so for float32 data its rounding is the larger of the two. Only the kept bond could differ,
// where the zero rule (split.cpp) would drop directions near the cap: so the shortcut is taken only for a
// cap that cuts (cap < m) and whose cap-th eigenvalue is above 1e-10·‖A‖², far above both the zero
// rule's bar (at most 2.3e-13·‖A‖²) and the eigenvalues' rounding. Then the plain split keeps exactly
// `cap` directions too, and everything else falls back to the plain split.
#include "mpo/sweep.hpp"

#include "mpo/parallel.hpp"

#include <Eigen/Eigenvalues>

#include <algorithm>

namespace mpo {

template <class T>
bool Sweep<T>::last_cut_from_values(Node& node, Index cap, Index* keep, double* discarded) {
  if (!shortcuts_.values_only || node.has_split || cap <= 0) return false;
  const std::size_t bond = steps_.back();  // the last step is a right step (bond c)
  const Index size = remainder_size(node);
  const Index rows = size / (pair(bond + 1) * node.right);
  const Index cols = size / rows;
  const Index m = std::min(rows, cols);
  if (cap >= m) return false;  // the cap cuts nothing: only the zero rule decides the bond
  if (node.energies.size() == 0) {
    const ConstMatrixMap<T> unfolding(remainder_data(node), rows, cols);
    // The short side's Gram matrix, as the plain split forms it (lower triangle, double).
    const Eigen::MatrixXd g = rows >= cols ? gram<double>(unfolding.transpose()) : gram<double>(unfolding);
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(g, Eigen::EigenvaluesOnly);
    if (eigen.info() != Eigen::Success) return false;
    node.energies = eigen.eigenvalues().reverse().cwiseMax(0.0);
    count_work(node, rows);
  }
  const Spectrum& energy = node.energies;
  if (!(energy[cap - 1] > 1e-10 * energy.sum())) return false;
  *keep = cap;
  *discarded = energy.tail(m - cap).sum();
  ++taken_.values_only;
  return true;
}

template bool Sweep<float>::last_cut_from_values(Node&, Index, Index*, double*);
template bool Sweep<double>::last_cut_from_values(Node&, Index, Index*, double*);

}  // namespace mpo
