// Shared vocabulary of the mpo core: matrices, cores and shapes.
//
// Everything is row-major, like the NumPy arrays that reach us, so that a reshape of a buffer is a
// change of view and never a copy (docs/ALGORITHMS.md §1 fixes the row-major layout).
#pragma once

#include <Eigen/Core>

#include <cstdint>
#include <vector>

namespace mpo {

using Index = Eigen::Index;

template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatrixMap = Eigen::Map<Matrix<T>>;
template <class T>
using ConstMatrixMap = Eigen::Map<const Matrix<T>>;
using Spectrum = Eigen::VectorXd;  // singular values, descending, always in double

// The four dimensions of a core T_k[d_{k-1}, i_k, j_k, d_k].
struct CoreShape {
  Index left_bond = 1, rows = 1, cols = 1, right_bond = 1;
};

// Throws std::invalid_argument unless the shapes form an MPO: n >= 2 cores, no empty dimension, outer
// bonds 1, and every bond agreed on by the two cores it joins.
void check_chain(const std::vector<CoreShape>& cores);

// Core k of an MPO: the 4-way tensor T_k[d_{k-1}, i_k, j_k, d_k] (MPOP Eq. 1).
// It is stored as its left unfolding, a (d_{k-1}·i_k·j_k) × d_k row-major matrix; the same buffer read
// as d_{k-1} × (i_k·j_k·d_k) is its right unfolding.
template <class T>
struct Core {
  Index left_bond = 1;   // d_{k-1}
  Index rows = 1;        // i_k
  Index cols = 1;        // j_k
  Index right_bond = 1;  // d_k
  Matrix<T> data;        // left unfolding

  Index size() const { return left_bond * rows * cols * right_bond; }
  CoreShape shape() const { return {left_bond, rows, cols, right_bond}; }
  ConstMatrixMap<T> left_unfolding() const {
    return ConstMatrixMap<T>(data.data(), left_bond * rows * cols, right_bond);
  }
  ConstMatrixMap<T> right_unfolding() const {
    return ConstMatrixMap<T>(data.data(), left_bond, rows * cols * right_bond);
  }
};

// The factorisation I = i_1···i_n, J = j_1···j_n of a matrix's two sides.
struct Factors {
  std::vector<Index> in_shape;   // i_1..i_n (rows)
  std::vector<Index> out_shape;  // j_1..j_n (columns)

  std::size_t n() const { return in_shape.size(); }
  Index rows() const;
  Index cols() const;
  // Full bond of Eq. 2: d_k = min(prod_{m<=k} i_m j_m, prod_{m>k} i_m j_m), k = 0..n-2.
  std::vector<Index> full_bonds() const;
  // Throws std::invalid_argument unless n >= 2, both lists have n entries and every factor is >= 1.
  void validate() const;
};

// Index of the central tensor: (n-1)//2, as the authors chose (2 for n = 5).
inline std::size_t central_index(std::size_t n) { return (n - 1) / 2; }

}  // namespace mpo
