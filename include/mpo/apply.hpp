// Applying an MPO to a batch of vectors without rebuilding the matrix (MPOP Table 2's O(n m d^3) mode).
//
// Y = X · M with X (B × I') is computed by contracting X with the cores one at a time. Each step is one
// GEMM over reshaped views: the state tensor is permuted so that the indices it shares with core k
// (i_k and any bond already open) come last, and multiplied by core k viewed as (shared) × (new). The
// order in which the cores are taken is a plan: left to right, right to left, or from the central core
// outward; their FLOPs differ with the bonds and the batch size, so the cheapest is chosen per call.
//
// M · X is the same problem for the transposed MPO, whose core k is T_k with i_k and j_k swapped; the
// kernel takes a flag instead of a copied core, so a transposed MPO is a view.
#pragma once

#include "mpo/types.hpp"

#include <string>
#include <vector>

namespace mpo {

// Shape of core k: T_k[d_{k-1}, i_k, j_k, d_k].
// A core's coefficients in someone else's row-major buffer (a NumPy array): no copy.
template <class T>
struct CoreView {
  CoreShape shape;
  const T* data = nullptr;
};

enum class PlanKind { automatic, left, right, central };

// Parse "auto", "left", "right", "central"; throws std::invalid_argument naming the value.
PlanKind parse_plan(const std::string& name);
std::string plan_name(PlanKind kind);

// A plan first merges runs of neighbouring cores into one core each (a product of cores that does not
// involve X; merging all of them is rebuild-then-multiply), then sweeps X through the merged cores in
// one of the three orders. Large bonds make the sweep cost O(B·d²) per step; merging trades that for
// work independent of the batch, which wins for wide bonds at large batches (the paths opt_einsum finds).
struct ApplyPlan {
  PlanKind kind = PlanKind::left;
  std::vector<std::size_t> groups;  // sizes of the runs of cores merged, in core order (all 1: none)
  std::vector<std::size_t> order;   // merged cores in the order they are contracted with X
  double merge_flops = 0;           // Σ 2·rows·inner·cols of the merging GEMMs
  double flops = 0;                 // merge_flops + the sweep's Σ 2·rows·inner·cols
};

// The cheapest plan of kind `kind` (of any kind for PlanKind::automatic) for Y = X·M (or X·Mᵀ when
// `transposed`) with `batch` rows of X; with allow_merge false, cores are never merged. The FLOPs are
// counted from the same step list the kernel executes, so they are the kernel's own.
ApplyPlan plan_apply(const std::vector<CoreShape>& cores, Index batch, bool transposed, PlanKind kind,
                     bool allow_merge = true);

// out = X · M (X · Mᵀ when `transposed`), all row-major.
//  * X is batch × x_width with x_width <= the padded input side (Π i_k, or Π j_k when transposed);
//    missing columns are the zero padding and are never read.
//  * out is batch × out_width with out_width <= the padded output side; padded columns are dropped.
//  * batch_last: X is x_width × batch and out is out_width × batch instead (M · X without transposing).
// Throws std::invalid_argument for widths that do not fit the cores.
template <class T>
void apply(const std::vector<CoreView<T>>& cores, bool transposed, const T* x, Index batch,
           Index x_width, bool batch_last, T* out, Index out_width, PlanKind kind = PlanKind::automatic,
           bool allow_merge = true);

// The padded dense matrix of the cores (Π i_k × Π j_k, row-major), multiplied out along the cheapest
// tree of pairwise products (the merge of a plan whose one group is all cores), written into `out`
// (Π i_k · Π j_k values), which the last product of the tree fills directly: no second buffer and no
// copy. The bindings pass a NumPy array here, whose allocator asks the kernel for huge pages: a fresh
// 9 MB buffer in 4 KB pages cost ~2,300 page faults, as much time as the product that fills it
// (3072 × 768 at max_bond 48). Throws std::invalid_argument for cores that do not form a chain.
template <class T>
void multiply_out_into(const std::vector<CoreView<T>>& cores, T* out);

// out (ids.size() × out_width) = rows `ids` of M (of Mᵀ when `transposed`): an embedding lookup.
// Ids are sorted, so ids sharing leading factor indices (i_1, …, i_k) share the partial contraction of
// cores 1..k; repeated ids cost a copy. Throws std::out_of_range naming the first id outside
// [0, padded rows).
template <class T>
void rows(const std::vector<CoreView<T>>& cores, bool transposed, const std::vector<Index>& ids, T* out,
          Index out_width);

}  // namespace mpo
