// Shortcut of the scorer (SweepShortcuts::kept_vectors): only the eigenvectors of G(b) that are used.
//
// The central-pair bound (python/mpo/_budget.py, central_pair) reads the reference's first `count`
// eigenvectors, count a few above the widest bond c a cut of bond c-1 in its window can keep; the final
// build keeps the first max_bond of the last step's. The plain route computes all side of them: Eigen's
// full solver applies its QR rotations to the whole side × side basis (≈ 6·side³ flops of its ≈ 9·side³),
// and the build then projects X on every one (L = X·V, side columns) to read the dropped energies off L's
// columns. Here:
//  * the reference takes the `count` largest eigenpairs by the k-vector route (symmetric_eigen, where
//    k_vector_pays; include/mpo/symmetric.hpp): the same eigenpairs to the solvers' rounding, each checked
//    there, with the full solver as the fallback;
//  * the build projects X on the `cap` kept eigenvectors only, and takes what the cut drops from the
//    eigenvalues, trace G(b) − (sum of the `cap` largest), in double: the plain route's number (the sum of
//    the dropped λ²) up to rounding, and no cancellation since it is taken only where that sum is a
//    visible share of ‖X‖².
// It is taken only where the plain split keeps exactly `cap` directions and drops some: the cap cuts
// (cap < side), the cap-th eigenvalue is above 1e-10·‖X‖², far above the zero rule's bar (at most
// 2.3e-13·‖X‖², split.cpp) and the eigenvalues' rounding, and the dropped sum is above 1e-8·‖X‖² (so the
// plain split's zero rule keeps at least one direction more). Elsewhere every vector is computed.
#include "mpo/sweep.hpp"

#include "mpo/symmetric.hpp"

namespace mpo {

template <class T>
void Sweep<T>::reference_eigen(Index count) {
  const Index side = bound_.side;
  SymmetricEigen eigen = symmetric_eigen(bound_.gram, shortcuts_.kept_vectors ? count : side);
  if (eigen.route == EigenRoute::partial) ++taken_.kept_vectors;
  bound_.vectors = std::move(eigen.vectors);
  bound_.values = std::move(eigen.values);
}

template <class T>
bool Sweep<T>::kept_eigenvectors(const Eigen::MatrixXd& gram, Index b, Index cap, bool own,
                                 Eigen::MatrixXd* vectors, double* tail, bool* reused) {
  const Index side = gram.rows();
  if (!shortcuts_.kept_vectors || cap <= 0 || cap >= side) return false;
  Eigen::VectorXd values;
  *reused = own && b == bound_.b && bound_.vectors.cols() >= cap;
  if (*reused) {
    *vectors = bound_.vectors.leftCols(cap);
    values = bound_.values.head(cap);
  } else {
    SymmetricEigen eigen = symmetric_eigen(gram, cap);
    *vectors = std::move(eigen.vectors);
    values = std::move(eigen.values);
  }
  const double total = gram.trace();
  *tail = total - values.sum();
  // (counted by the caller, which may still discard this attempt: build_right_from_bound)
  return values[cap - 1] > 1e-10 * total && *tail > 1e-8 * total;
}

template void Sweep<float>::reference_eigen(Index);
template void Sweep<double>::reference_eigen(Index);
template bool Sweep<float>::kept_eigenvectors(const Eigen::MatrixXd&, Index, Index, bool, Eigen::MatrixXd*, double*,
                                              bool*);
template bool Sweep<double>::kept_eigenvectors(const Eigen::MatrixXd&, Index, Index, bool, Eigen::MatrixXd*, double*,
                                               bool*);

}  // namespace mpo
