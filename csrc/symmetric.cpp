// Eigenpairs of symmetric matrices: the full solver and its fallback. The route for the k largest
// eigenvectors is a shortcut of its own, csrc/decompose/k_vector_eigen.cpp (see include/mpo/symmetric.hpp).
#include "mpo/symmetric.hpp"

#include "decompose/shortcuts.hpp"

#include <Eigen/Eigenvalues>
#include <Eigen/SVD>

#include <stdexcept>
#include <string>

namespace mpo {

namespace {

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
    case EigenRoute::partial: return k_vector_eigen(a, count, out);
    case EigenRoute::jacobi: jacobi_solver(a, count, out); return true;
  }
  return false;
}

SymmetricEigen symmetric_eigen(const Eigen::MatrixXd& a, Index count, bool k_vector) {
  SymmetricEigen out;
  const Index m = a.rows();
  const bool partial = k_vector && k_vector_pays(m, count);
  if (partial && symmetric_eigen_route(a, count, EigenRoute::partial, &out)) return out;
  if (symmetric_eigen_route(a, count, EigenRoute::full, &out)) return out;
  if (k_vector && !partial && symmetric_eigen_route(a, count, EigenRoute::partial, &out)) return out;
  symmetric_eigen_route(a, count, EigenRoute::jacobi, &out);
  return out;
}

}  // namespace mpo
