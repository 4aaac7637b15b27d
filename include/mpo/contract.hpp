// Contractions of MPO cores: rebuilding the dense matrix, and the index permutation between M's
// (i_1..i_n, j_1..j_n) layout and the cores' interleaved (i_1, j_1, …, i_n, j_n) layout.
#pragma once

#include "mpo/types.hpp"

#include <algorithm>

namespace mpo {

namespace detail {
// The innermost loop of a permutation: `middle` runs of `Run` contiguous values, `stride` apart in the
// source, packed one after another in the target. A compile-time run length lets the compiler emit a
// few vector moves per run instead of a call to memmove (the interleaved product of merged cores has runs
// of only j_n·d values, and a memmove per run cost a third of rebuild-then-multiply at small bonds).
template <int Run, class T>
void copy_runs(const T* from, Index stride, Index middle, T* to) {
  for (Index y = 0; y < middle; ++y)
    for (int x = 0; x < Run; ++x) to[y * Run + x] = from[y * stride + x];
}

// copy_runs for a run length known only at run time.
template <class T>
void copy_runs_any(const T* from, Index stride, Index middle, Index run, T* to) {
  switch (run) {
    case 1: copy_runs<1>(from, stride, middle, to); break;
    case 2: copy_runs<2>(from, stride, middle, to); break;
    case 3: copy_runs<3>(from, stride, middle, to); break;
    case 4: copy_runs<4>(from, stride, middle, to); break;
    case 6: copy_runs<6>(from, stride, middle, to); break;
    case 8: copy_runs<8>(from, stride, middle, to); break;
    case 12: copy_runs<12>(from, stride, middle, to); break;
    case 16: copy_runs<16>(from, stride, middle, to); break;
    default:
      for (Index y = 0; y < middle; ++y) std::copy(from + y * stride, from + y * stride + run, to + y * run);
  }
}

}  // namespace detail

// Copy the row-major tensor `source` of dimensions `dims` into `target` with its axes reordered:
// target axis a is source axis perm[a]. The one permute kernel of the core (interleave, the apply kernel's
// states and packed cores, the row lookup): neighbouring axes are merged first, transposes go through
// SIMD tiles, everything else through an odometer with compile-time run lengths.
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
