// Eigenpairs of the symmetric (Gram) matrices that every split of Algorithm 1 diagonalises: the k
// largest eigenvalues and their eigenvectors.
//
// A capped split keeps k of a Gram matrix's m eigenvectors. A full eigensolver pays for all m: after the
// Householder reduction to a tridiagonal T (≈ 4/3·m³ flops) the implicit QR iteration applies its
// rotations to the whole m × m basis (≈ 6m³) and the Householder vectors are accumulated into it
// (≈ 4/3·m³). The route for k vectors (LAPACK's xSTEBZ + xSTEIN + xORMTR, in outline):
//  1. the k largest eigenvalues of T by bisection on Sturm counts, several shifts side by side;
//  2. their eigenvectors of T by inverse iteration (O(m) per vector and solve);
//  3. a Householder QR of those k vectors (2m·k²), which makes them orthonormal;
//  4. the reduction's reflectors applied to those k columns only (2m²·k).
// On one core, for a 256 × 256 Gram matrix, it takes 33 % of the full solver's time at k = 32 and 69 %
// at k = 128; for 768 × 768 at k = 256, 35 %. The recurrences of steps 1 and 2 run many shifts side by
// side in the lanes of the vector units (csrc/decompose/k_vector_eigen.cpp, a shortcut of the sweep with its
// own switch: the plain route is the full solver).
//
// Inverse iteration (Wilkinson; Peters and Wilkinson 1971): from a shift σ within rounding of an
// eigenvalue, one solve with T − σI multiplies that eigenvector's share of a random start by
// 1/|λ − σ| ~ 1/(ε‖T‖), so two solves give it to working accuracy. Where eigenvalues agree to rounding
// (repeated singular values, Kronecker structure) the solves give random vectors of the shared
// eigenspace, and the QR makes them an orthonormal basis of it. Every result is checked: each vector's
// residual ‖Tq − ρq‖, and its Rayleigh quotient ρ against the eigenvalue it was computed for. A failed
// check falls back to the full solver. The checks' bar is absolute (1e-10·‖T‖): vectors of eigenvalues
// that agree to that are one eigenspace to them, as to any backward-stable solver whose results are
// exact for a matrix within rounding of A.
#pragma once

#include "mpo/types.hpp"

#include <Eigen/Core>

namespace mpo {

// Which route produced a result.
enum class EigenRoute { full, partial, jacobi };

struct SymmetricEigen {
  Eigen::VectorXd values;   // the `count` largest eigenvalues, descending
  Eigen::MatrixXd vectors;  // m × count: the eigenvectors of the `count` largest, orthonormal columns
  EigenRoute route = EigenRoute::full;
};

// The symmetric matrix `a` is read from its lower triangle. count in [0, m]; count = m gives every
// eigenvector. Routes, in order: the k-vector route where it pays (see k_vector_eigen.cpp), else Eigen's
// full solver; if that does not converge, the k-vector route for any count; if that refuses, a Jacobi SVD
// of the shifted matrix, slow but always convergent. With `k_vector` false the k-vector route is never
// taken (the plain route: the full solver, then Jacobi). Throws std::invalid_argument for a non-square
// matrix or a count outside [0, m].
SymmetricEigen symmetric_eigen(const Eigen::MatrixXd& a, Index count, bool k_vector = true);

// One route alone, for tests and benchmarks. Returns false if it failed: the full solver did not
// converge, or the k-vector route's checks rejected its result (the Jacobi route does not fail).
bool symmetric_eigen_route(const Eigen::MatrixXd& a, Index count, EigenRoute route, SymmetricEigen* out);

}  // namespace mpo
