// The parts of the apply kernel (include/mpo/apply.hpp), private to the core: the state's axes and the
// Simulator that the planner (plan.cpp) and the kernel (apply.cpp) share, so that the FLOPs a plan
// reports are those the kernel performs; the merge tree and the merging of runs of cores (merge.cpp).
#pragma once

#include "mpo/apply.hpp"
#include "mpo/checked.hpp"

#include <memory>
#include <vector>

namespace mpo::apply_internal {

// An index of the state tensor. Axes of extent 1 (the outer bonds d_0 = d_n = 1, unit factors, a batch
// of one) are never materialised: they change no memory layout, and leaving them out keeps every
// permutation and GEMM as small as it can be.
enum class Kind { batch, input, output, bond };
struct Axis {
  Kind kind;
  std::size_t k;  // factor index, or bond b (between cores b-1 and b)
  Index dim;
  bool same(const Axis& o) const { return kind == o.kind && k == o.k; }
};

// One contraction step: permute the state to (kept, shared) and multiply by the core as (shared, new).
struct Step {
  std::size_t core = 0;
  std::vector<Index> state_dims;          // state before the step
  std::vector<std::size_t> state_perm;    // target axis a <- source axis state_perm[a]
  std::vector<Index> core_dims;           // the core's materialised axes, natural order
  std::vector<std::size_t> core_perm;     // (shared, new) <- natural
  std::size_t shared_axes = 0;            // core_perm's first entries are the shared axes
  Index kept = 1, inner = 1, fresh = 1;   // GEMM: (kept × inner) · (inner × fresh)
  double flops() const { return 2.0 * static_cast<double>(kept) * inner * fresh; }
};

inline bool is_identity(const std::vector<std::size_t>& perm) {
  for (std::size_t a = 0; a < perm.size(); ++a)
    if (perm[a] != a) return false;
  return true;
}

// Core k's axes in storage order (d_{k-1}, i_k, j_k, d_k), labelled for the direction of the product:
// the factor the input carries is `input`, the one the output carries is `output`.
inline std::vector<Axis> core_axes(const CoreShape& c, std::size_t k, bool transposed) {
  const Kind row_kind = transposed ? Kind::output : Kind::input;
  const Kind col_kind = transposed ? Kind::input : Kind::output;
  std::vector<Axis> all{{Kind::bond, k, c.left_bond}, {row_kind, k, c.rows}, {col_kind, k, c.cols},
                        {Kind::bond, k + 1, c.right_bond}};
  std::vector<Axis> kept;
  for (const Axis& a : all)
    if (a.dim != 1) kept.push_back(a);
  return kept;
}

// Tracks the state's axes through a plan without touching data: the planner and the kernel share it,
// so the FLOPs a plan reports are those the kernel performs.
class Simulator {
 public:
  Simulator(const std::vector<CoreShape>& cores, Index batch, bool transposed, bool batch_last)
      : cores_(cores), transposed_(transposed) {
    const Axis b{Kind::batch, 0, batch};
    if (!batch_last && batch != 1) axes_.push_back(b);
    for (std::size_t k = 0; k < cores.size(); ++k) {
      const Index dim = transposed ? cores[k].cols : cores[k].rows;
      if (dim != 1) axes_.push_back({Kind::input, k, dim});
    }
    if (batch_last && batch != 1) axes_.push_back(b);
  }

  Step add(std::size_t k) {
    Step s;
    s.core = k;
    const std::vector<Axis> core = core_axes(cores_[k], k, transposed_);
    std::vector<bool> shared_core(core.size(), false), shared_state(axes_.size(), false);
    std::vector<std::size_t> shared_from;  // state axis of each shared axis, in core order
    for (std::size_t c = 0; c < core.size(); ++c) {
      s.core_dims.push_back(core[c].dim);
      for (std::size_t a = 0; a < axes_.size(); ++a) {
        if (core[c].same(axes_[a])) {
          shared_core[c] = true;
          shared_state[a] = true;
          shared_from.push_back(a);
        }
      }
    }
    std::vector<Axis> next;
    for (std::size_t a = 0; a < axes_.size(); ++a) {
      s.state_dims.push_back(axes_[a].dim);
      if (!shared_state[a]) {
        s.state_perm.push_back(a);
        s.kept = checked_mul(s.kept, axes_[a].dim, "a state of the product");
        next.push_back(axes_[a]);
      }
    }
    for (std::size_t a : shared_from) {
      s.state_perm.push_back(a);
      s.inner = checked_mul(s.inner, axes_[a].dim, "a state of the product");
    }
    for (std::size_t c = 0; c < core.size(); ++c)
      if (shared_core[c]) s.core_perm.push_back(c);
    s.shared_axes = s.core_perm.size();
    for (std::size_t c = 0; c < core.size(); ++c) {
      if (!shared_core[c]) {
        s.core_perm.push_back(c);
        s.fresh = checked_mul(s.fresh, core[c].dim, "a state of the product");
        next.push_back(core[c]);
      }
    }
    axes_ = std::move(next);
    (void)checked_mul(s.kept, s.fresh, "a state of the product");  // the next state's size
    return s;
  }

  const std::vector<Axis>& axes() const { return axes_; }
  Index size() const {
    Index total = 1;
    for (const Axis& a : axes_) total = checked_mul(total, a.dim, "a state of the product");
    return total;
  }

 private:
  const std::vector<CoreShape>& cores_;
  bool transposed_;
  std::vector<Axis> axes_;
};

inline Index product_of(const std::vector<CoreShape>& cores, bool rows_side) {
  Index p = 1;
  for (const CoreShape& c : cores) p = checked_mul(p, rows_side ? c.rows : c.cols, "a padded side of the matrix");
  return p;
}

// Scratch that every caller overwrites before reading: a std::vector would zero it first, and those
// memsets of states and merged cores were 5-8 % of a batch-1 product.
template <class T>
std::unique_ptr<T[]> uninitialised(Index size) {
  return std::unique_ptr<T[]>(new T[static_cast<std::size_t>(size)]);
}

// The shape of cores a..b multiplied out: (d_{a-1}, Π i, Π j, d_b).
template <class T>
CoreShape run_shape(const std::vector<CoreView<T>>& cores, std::size_t a, std::size_t b) {
  CoreShape acc = cores[a].shape;
  for (std::size_t m = a + 1; m <= b; ++m) {
    acc.rows = checked_mul(acc.rows, cores[m].shape.rows, "a merged run of cores");
    acc.cols = checked_mul(acc.cols, cores[m].shape.cols, "a merged run of cores");
    acc.right_bond = cores[m].shape.right_bond;
  }
  return acc;
}

template <class T>
std::vector<CoreShape> shapes_of(const std::vector<CoreView<T>>& cores) {
  std::vector<CoreShape> shapes;
  for (const CoreView<T>& c : cores) shapes.push_back(c.shape);
  return shapes;
}

// ------------------------------------------------------------------------------------------ merge.cpp

// The cheapest way to multiply out each run of cores [a, b]: split it at s, multiply out both halves,
// then one GEMM (d_{a-1}·Π_{a..s} i j) × d_s times d_s × (Π_{s+1..b} i j · d_b) (interval DP, O(n³)).
struct MergeTree {
  std::vector<std::vector<double>> cost;
  std::vector<std::vector<std::size_t>> split;
};

MergeTree merge_tree(const std::vector<CoreShape>& cores);

// Left (d, I_L, J_L, s) times right (s, I_R, J_R, d'), both grouped, into out (d, I_L, I_R, J_L, J_R, d').
template <class T>
void merge_pair(const T* left, const CoreShape& l, const T* right, const CoreShape& r, T* out);

// Rows [p0, p0 + m) of (d, I_L) and values [q0, q0 + w) of i_R of the product merge_pair describes,
// written to out (which points at row p0), through scratch (m·J_L·w·J_R·d' values) when J_L and I_R
// must swap. `runtime`: the GEMM may go to the runtime GEMM (include/mpo/runtime_gemm.hpp); callers pass
// it only from the calling thread, never from parallel blocks.
template <class T>
void merge_block(const T* left, const CoreShape& l, const T* right, const CoreShape& r, Index p0, Index m,
                 Index q0, Index w, T* scratch, T* out, bool runtime);

// Cores a..b multiplied out along the merge tree, grouped as (d_{a-1}, i_a…i_b, j_a…j_b, d_b): a single
// core is its caller's buffer (no copy), a longer run is written to `storage`.
template <class T>
const T* multiply_run(const std::vector<CoreView<T>>& cores, const MergeTree& tree, std::size_t a, std::size_t b,
                      std::unique_ptr<T[]>* storage);

// The cores of a plan's groups: a run of one is the caller's buffer, a longer run is multiplied out
// into `storage` (which owns it while the views are used).
template <class T>
std::vector<CoreView<T>> merge_cores(const std::vector<CoreView<T>>& cores, const std::vector<std::size_t>& groups,
                                     std::vector<std::unique_ptr<T[]>>* storage);

}  // namespace mpo::apply_internal
