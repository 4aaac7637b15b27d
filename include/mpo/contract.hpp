// Contractions of MPO cores: rebuilding the dense matrix, and the index permutation between M's
// (i_1..i_n, j_1..j_n) layout and the cores' interleaved (i_1, j_1, …, i_n, j_n) layout.
#pragma once

#include "mpo/types.hpp"

namespace mpo {

// Copy the row-major tensor `source` of dimensions `dims` into `target` with its axes reordered:
// target axis a is source axis perm[a].
template <class T>
void permute(const T* source, const std::vector<Index>& dims, const std::vector<std::size_t>& perm,
             T* target);

// M (I × J, row-major) -> the interleaved tensor (i_1 j_1 … i_n j_n), row-major.
template <class T>
void interleave(const T* matrix, const Factors& factors, T* tensor);

// The inverse of interleave.
template <class T>
void deinterleave(const T* tensor, const Factors& factors, T* matrix);

// Contract the cores and return the dense I × J matrix (I = Π i_k, J = Π j_k).
template <class T>
Matrix<T> rebuild(const std::vector<Core<T>>& cores);

// Check that consecutive cores agree on their bonds and that the outer bonds are 1.
template <class T>
void validate_cores(const std::vector<Core<T>>& cores);

}  // namespace mpo
