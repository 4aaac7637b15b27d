// MPO decomposition of a matrix (MPOP Algorithm 1) into mixed canonical form.
//
// M (I × J, I = i_1···i_n, J = j_1···j_n) is reshaped row-major to (i_1..i_n, j_1..j_n) and permuted to
// (i_1, j_1, …, i_n, j_n) (docs/ALGORITHMS.md §1). The sequential SVD then runs from both ends towards the
// central tensor c = (n-1)/2: cores left of c are left-orthonormal, cores right of it right-orthonormal,
// and core c holds the rest. This is the "normalisation" of Algorithm 1: every bond's index is ordered by
// the singular values of M's unfolding at that bond, so slicing a bond is the optimal cut of that
// unfolding, and slicing any set of bonds obeys ‖M − MPO‖_F ≤ sqrt(Σ ε_k²) (MPOP Eq. 4).
#pragma once

#include "mpo/split.hpp"
#include "mpo/types.hpp"

namespace mpo {

template <class T>
struct Decomposition {
  std::vector<Core<T>> cores;            // n cores
  std::vector<Spectrum> spectra;         // n-1 spectra, one per bond, descending
  std::vector<double> truncation_errors; // n-1 values ε_k = sqrt(Σ discarded λ²)
  std::vector<bool> cut;                 // n-1 flags: a cap dropped nonzero singular values here
  double norm = 0;                       // ‖M‖_F
  bool randomized = false;               // some bond was found by the randomized route
};

// The shortcuts of the sweep: cheaper routes to the same cores up to rounding. csrc/decompose.cpp is the
// plain sweep; each shortcut lives in its own file under csrc/decompose/ and is taken only while its
// switch is on. All are on by default; a switch off makes that part of the sweep the plain route, which
// is how the tests compare each shortcut with it (tests/test_properties.py, tests/test_decompose.py).
struct Shortcuts {
  bool block = true;         // the first left steps from M in place (block_steps.cpp)
  bool whole = true;         // outer steps a cap leaves whole take the identity (whole_steps.cpp)
  bool rescale = true;       // data far from unit scale is decomposed scaled by a power of two (rescale.cpp)
  bool float32_gram = true;  // capped float32 splits may form their Gram matrix in float32 (float32_gram.cpp)
  bool k_vector = true;      // capped splits compute only the k kept eigenvectors (k_vector_eigen.cpp)
};

struct DecomposeOptions {
  std::vector<Index> max_bond;  // n-1 caps, 0 = uncapped; empty = all uncapped
  bool allow_randomized = true;  // wide splits capped far below their rows may take the range finder
  Shortcuts shortcuts;
  std::uint64_t seed = 0x6d706f31;
};

// Decompose the row-major rows × cols matrix at `data`. Throws std::invalid_argument for factors that
// do not multiply to the matrix's sides, n < 2, or caps of the wrong count or sign.
template <class T>
Decomposition<T> decompose(const T* data, Index rows, Index cols, const Factors& factors,
                           const DecomposeOptions& options = {});

// Bring any cores to the exact mixed canonical form (central index (n-1)/2) of the matrix they represent and
// return that matrix's bond spectra. Zero singular values are dropped, so every bond ends at the exact
// rank of its unfolding. Costs a few splits per core, never one of the dense matrix.
template <class T>
std::vector<Spectrum> canonicalize(std::vector<Core<T>>& cores);

// The same canonical form for cores already in mixed canonical form around (n-1)/2 (cores left of the
// central core left-orthonormal, right of it right-orthonormal), as a truncated sweep leaves them: each bond
// is only rotated, by one split of its neighbour core weighted with the next bond's spectrum, working
// outwards from the central core. That orthonormality is the caller's promise; it is not checked.
// `central_right_ordered` promises more: the central core's left unfolding already has orthogonal columns in
// descending norm (the sweep's last split leaves it so), and bond c is left as it is.
template <class T>
std::vector<Spectrum> order_bonds(std::vector<Core<T>>& cores, bool central_right_ordered = false);

}  // namespace mpo
