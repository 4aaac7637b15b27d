#include "mpo/apply.hpp"

#include "mpo/checked.hpp"
#include "mpo/contract.hpp"
#include "mpo/parallel.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>

namespace mpo {

PlanKind parse_plan(const std::string& name) {
  if (name == "auto") return PlanKind::automatic;
  if (name == "left") return PlanKind::left;
  if (name == "right") return PlanKind::right;
  if (name == "central") return PlanKind::central;
  throw std::invalid_argument("mpo: plan must be 'auto', 'left', 'right' or 'central', got '" + name + "'");
}

std::string plan_name(PlanKind kind) {
  switch (kind) {
    case PlanKind::left: return "left";
    case PlanKind::right: return "right";
    case PlanKind::central: return "central";
    default: return "auto";
  }
}

namespace {

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

bool is_identity(const std::vector<std::size_t>& perm) {
  for (std::size_t a = 0; a < perm.size(); ++a)
    if (perm[a] != a) return false;
  return true;
}

// Core k's axes in storage order (d_{k-1}, i_k, j_k, d_k), labelled for the direction of the product:
// the factor the input carries is `input`, the one the output carries is `output`.
std::vector<Axis> core_axes(const CoreShape& c, std::size_t k, bool transposed) {
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

double plan_flops(const std::vector<CoreShape>& cores, Index batch, bool transposed,
                  const std::vector<std::size_t>& order) {
  Simulator sim(cores, batch, transposed, false);
  double flops = 0;
  for (std::size_t k : order) flops += sim.add(k).flops();
  return flops;
}

// Central core outward: start at the central core, then take whichever neighbour of the contracted run is
// cheaper to add next (its cost depends on the bonds left open, so a fixed side order can lose).
std::vector<std::size_t> central_order(const std::vector<CoreShape>& cores, Index batch, bool transposed) {
  const std::size_t n = cores.size();
  const std::size_t c = central_index(n);
  Simulator sim(cores, batch, transposed, false);
  std::vector<std::size_t> order{c};
  sim.add(c);
  std::size_t lo = c, hi = c;
  while (order.size() < n) {
    std::size_t pick;
    if (lo == 0) {
      pick = hi + 1;
    } else if (hi + 1 == n) {
      pick = lo - 1;
    } else {
      Simulator left = sim, right = sim;
      pick = left.add(lo - 1).flops() <= right.add(hi + 1).flops() ? lo - 1 : hi + 1;
    }
    sim.add(pick);
    order.push_back(pick);
    if (pick < lo) lo = pick;
    if (pick > hi) hi = pick;
  }
  return order;
}


// target (cols × rows) = sourceᵀ (source rows × cols, both row-major), in square tiles of one SIMD
// packet per row, transposed in registers: a plain loop reads one cache line per value from whichever
// side is strided, and was 3-4x slower (the state moved past a bond of a few hundred in a right-to-left
// sweep, and a merged core packed for it, spent more time here than in their GEMM).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
template <class T>
void transpose_tiled(const T* source, Index rows, Index cols, T* target) {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  constexpr Index N = Eigen::internal::unpacket_traits<Packet>::size;
  Index r0 = 0;
  if constexpr (N > 1) {
    const Index full_cols = cols / N * N;
    for (; r0 + N <= rows; r0 += N) {
      for (Index c0 = 0; c0 < full_cols; c0 += N) {
        Eigen::internal::PacketBlock<Packet, N> tile;
        for (Index k = 0; k < N; ++k) tile.packet[k] = Eigen::internal::ploadu<Packet>(source + (r0 + k) * cols + c0);
        Eigen::internal::ptranspose(tile);
        for (Index k = 0; k < N; ++k) Eigen::internal::pstoreu(target + (c0 + k) * rows + r0, tile.packet[k]);
      }
      for (Index c = full_cols; c < cols; ++c)
        for (Index r = r0; r < r0 + N; ++r) target[c * rows + r] = source[r * cols + c];
    }
  }
  for (Index r = r0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) target[c * rows + r] = source[r * cols + c];
}
#pragma GCC diagnostic pop

// target (axes perm of source) = source, as mpo::permute, with the kernel's two transposes (the state
// moved past a bond, a merged core packed for its GEMM) done in SIMD tiles.
template <class T>
void permute_runs(const T* source, const std::vector<Index>& dims, const std::vector<std::size_t>& perm,
                  T* target) {
  const std::size_t rank = dims.size();
  if (rank == 2 && perm[0] == 1) {
    transpose_tiled(source, dims[0], dims[1], target);
    return;
  }
  if (rank == 3 && perm[0] == 0 && perm[1] == 2) {  // a batch of transposes (packing a merged core)
    const Index size = dims[1] * dims[2];
    for (Index b = 0; b < dims[0]; ++b) transpose_tiled(source + b * size, dims[1], dims[2], target + b * size);
    return;
  }
  permute(source, dims, perm, target);
}

// Permute after merging target axes that are already neighbours in the source: a move of one block of
// axes past another becomes a plain 2-D transpose, and an identity a copy.
template <class T>
void permute_merged(const T* source, const std::vector<Index>& dims, const std::vector<std::size_t>& perm,
                    T* target) {
  std::vector<std::pair<std::size_t, std::size_t>> groups;  // (first source axis, count), target order
  for (std::size_t a = 0; a < perm.size(); ++a) {
    if (a > 0 && perm[a] == perm[a - 1] + 1)
      ++groups.back().second;
    else
      groups.push_back({perm[a], 1});
  }
  Index total = 1;
  for (Index d : dims) total *= d;
  if (groups.size() <= 1) {
    std::copy(source, source + total, target);
    return;
  }
  std::vector<std::size_t> by_source(groups.size());
  std::iota(by_source.begin(), by_source.end(), 0);
  std::sort(by_source.begin(), by_source.end(),
            [&](std::size_t a, std::size_t b) { return groups[a].first < groups[b].first; });
  std::vector<Index> group_dims(groups.size());
  std::vector<std::size_t> group_perm(groups.size());
  for (std::size_t s = 0; s < by_source.size(); ++s) {
    const auto [first, count] = groups[by_source[s]];
    Index d = 1;
    for (std::size_t c = 0; c < count; ++c) d *= dims[first + c];
    group_dims[s] = d;
    group_perm[by_source[s]] = s;
  }
  permute_runs(source, group_dims, group_perm, target);
}

Index product_of(const std::vector<CoreShape>& cores, bool rows_side) {
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

}  // namespace

namespace {

// The cheapest way to multiply out each run of cores [a, b]: split it at s, multiply out both halves,
// then one GEMM (d_{a-1}·Π_{a..s} i j) × d_s times d_s × (Π_{s+1..b} i j · d_b) (interval DP, O(n³)).
struct MergeTree {
  std::vector<std::vector<double>> cost;
  std::vector<std::vector<std::size_t>> split;
};

MergeTree merge_tree(const std::vector<CoreShape>& cores) {
  const std::size_t n = cores.size();
  MergeTree tree;
  tree.cost.assign(n, std::vector<double>(n, 0.0));
  tree.split.assign(n, std::vector<std::size_t>(n, 0));
  std::vector<double> pairs(n + 1, 1.0);  // pairs[k] = Π_{m<k} i_m j_m
  for (std::size_t k = 0; k < n; ++k) pairs[k + 1] = pairs[k] * static_cast<double>(cores[k].rows * cores[k].cols);
  for (std::size_t length = 2; length <= n; ++length) {
    for (std::size_t a = 0; a + length <= n; ++a) {
      const std::size_t b = a + length - 1;
      double best = -1;
      for (std::size_t s = a; s < b; ++s) {
        const double gemm = 2.0 * static_cast<double>(cores[a].left_bond) * (pairs[s + 1] / pairs[a]) *
                            static_cast<double>(cores[s].right_bond) * (pairs[b + 1] / pairs[s + 1]) *
                            static_cast<double>(cores[b].right_bond);
        const double c = tree.cost[a][s] + tree.cost[s + 1][b] + gemm;
        if (best < 0 || c < best) {
          best = c;
          tree.split[a][b] = s;
        }
      }
      tree.cost[a][b] = best;
    }
  }
  return tree;
}

// Shapes of the cores after merging runs of `groups` sizes, and the FLOPs of merging them.
std::vector<CoreShape> merged_shapes(const std::vector<CoreShape>& cores, const std::vector<std::size_t>& groups,
                                     const MergeTree& tree, double* flops) {
  std::vector<CoreShape> out;
  std::size_t k = 0;
  *flops = 0;
  for (std::size_t g : groups) {
    CoreShape acc = cores[k];
    for (std::size_t m = k + 1; m < k + g; ++m) {
      acc.rows = checked_mul(acc.rows, cores[m].rows, "a merged run of cores");
      acc.cols = checked_mul(acc.cols, cores[m].cols, "a merged run of cores");
      acc.right_bond = cores[m].right_bond;
    }
    *flops += tree.cost[k][k + g - 1];
    checked_product({acc.left_bond, acc.rows, acc.cols, acc.right_bond}, "a merged run of cores");
    out.push_back(acc);
    k += g;
  }
  return out;
}

std::vector<std::size_t> sweep_order(const std::vector<CoreShape>& cores, Index batch, bool transposed,
                                     PlanKind kind) {
  const std::size_t n = cores.size();
  std::vector<std::size_t> order(n);
  if (kind == PlanKind::left) {
    std::iota(order.begin(), order.end(), 0);
  } else if (kind == PlanKind::right) {
    for (std::size_t i = 0; i < n; ++i) order[i] = n - 1 - i;
  } else {
    order = central_order(cores, batch, transposed);
  }
  return order;
}

}  // namespace

namespace {
ApplyPlan search_plan(const std::vector<CoreShape>& cores, Index batch, bool transposed, PlanKind kind,
                      bool allow_merge);
}  // namespace

ApplyPlan plan_apply(const std::vector<CoreShape>& cores, Index batch, bool transposed, PlanKind kind,
                     bool allow_merge) {
  check_chain(cores);
  if (batch < 1) throw std::invalid_argument("mpo: batch must be >= 1, got " + std::to_string(batch));
  // The search simulates 3·2^(n-1) plans (~100 µs for n = 5), as long as a whole small product: a layer
  // applied again and again with the same shapes finds its plan here instead.
  std::vector<Index> key{batch, transposed ? 1 : 0, static_cast<Index>(kind), allow_merge ? 1 : 0};
  for (const CoreShape& c : cores) key.insert(key.end(), {c.left_bond, c.rows, c.cols, c.right_bond});
  static std::mutex mutex;
  static std::map<std::vector<Index>, ApplyPlan> cache;
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto found = cache.find(key);
    if (found != cache.end()) return found->second;
  }
  ApplyPlan plan = search_plan(cores, batch, transposed, kind, allow_merge);
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() >= 4096) cache.clear();  // bounded: shapes in use are few
  cache.emplace(std::move(key), plan);
  return plan;
}

namespace {
ApplyPlan search_plan(const std::vector<CoreShape>& cores, Index batch, bool transposed, PlanKind kind,
                      bool allow_merge) {
  const std::size_t n = cores.size();
  // Every way to cut the chain into runs: bit b of `joined` set means cores b and b+1 are merged.
  // 2^(n-1) groupings × 3 orders of a few steps each: microseconds for the n <= 7 in use.
  const std::size_t groupings = allow_merge && n <= 12 ? (std::size_t{1} << (n - 1)) : 1;
  const MergeTree tree = merge_tree(cores);
  ApplyPlan best;
  bool have = false;
  std::string refused;  // why the last candidate that did not fit was skipped
  for (std::size_t joined = 0; joined < groupings; ++joined) {
    // A candidate whose merged cores or states do not fit in 64-bit sizes is skipped, not taken: the
    // checked arithmetic of merged_shapes and the Simulator refuses it.
    try {
    std::vector<std::size_t> groups{1};
    for (std::size_t b = 0; b + 1 < n; ++b) {
      if (joined >> b & 1)
        ++groups.back();
      else
        groups.push_back(1);
    }
    double merge = 0;
    const std::vector<CoreShape> shapes = merged_shapes(cores, groups, tree, &merge);
    for (PlanKind k : {PlanKind::left, PlanKind::right, PlanKind::central}) {
      if (kind != PlanKind::automatic && k != kind) continue;
      ApplyPlan p;
      p.kind = k;
      p.groups = groups;
      p.order = sweep_order(shapes, batch, transposed, k);
      p.merge_flops = merge;
      p.flops = merge + plan_flops(shapes, batch, transposed, p.order);
      // Strictly cheaper only: ties keep the unmerged plan and the earlier order.
      if (!have || p.flops < best.flops) best = p;
      have = true;
    }
    } catch (const std::length_error& e) {
      refused = e.what();
    }
  }
  if (!have) throw std::length_error(refused);
  return best;
}
}  // namespace

namespace {

// Rows [p0, p0 + m) of (d, I_L) and values [q0, q0 + w) of i_R of the product merge_pair describes,
// written to out (which points at row p0), through scratch (m·J_L·w·J_R·d' values) when J_L and I_R
// must swap.
template <class T>
void merge_block(const T* left, const CoreShape& l, const T* right, const CoreShape& r, Index p0, Index m,
                 Index q0, Index w, T* scratch, T* out) {
  const Index jl = l.cols, bond = l.right_bond, ir = r.rows, run = r.cols * r.right_bond;
  using Strided = Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>;
  const ConstMatrixMap<T> lhs(left + p0 * jl * bond, m * jl, bond);
  const Strided rhs(right + q0 * run, bond, w * run, Eigen::OuterStride<>(ir * run));
  if (jl == 1 || ir == 1) {  // the GEMM's layout is already the grouped one
    Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>(out + q0 * jl * run, m * jl, w * run,
                                                   Eigen::OuterStride<>(ir * run))
        .noalias() = lhs * rhs;
    return;
  }
  MatrixMap<T> block(scratch, m * jl, w * run);  // (p, j_L, q, ·)
  block.noalias() = lhs * rhs;
  for (Index p = 0; p < m; ++p) {
    for (Index q = 0; q < w; ++q) {
      const T* from = scratch + (p * jl * w + q) * run;  // (p, 0, q, ·)
      T* to = out + (p * ir + q0 + q) * jl * run;         // (p, q, 0, ·)
      detail::copy_runs_any(from, w * run, jl, run, to);
    }
  }
}

// Left (d, I_L, J_L, s) times right (s, I_R, J_R, d'), both grouped, into out (d, I_L, I_R, J_L, J_R, d'):
// grouped again, so a run of cores multiplied out needs no permutation afterwards. The GEMM's natural
// result is (d, I_L, J_L, I_R, J_R, d'); J_L and I_R swap places as it is written, one cache-sized
// block at a time, in runs of J_R·d' values: permuting the whole interleaved result afterwards (runs of
// j_n = 4 values, strided through memory) was a third of rebuild-then-multiply at small bonds.
template <class T>
void merge_pair(const T* left, const CoreShape& l, const T* right, const CoreShape& r, T* out) {
  const Index rows = l.left_bond * l.rows, jl = l.cols, bond = l.right_bond;
  const Index ir = r.rows, run = r.cols * r.right_bond;
  if (jl == 1 || ir == 1) {  // nothing to swap
    MatrixMap<T> result(out, rows * jl, ir * run);
    multiply_into<T>(result, ConstMatrixMap<T>(left, rows * jl, bond), ConstMatrixMap<T>(right, bond, ir * run));
    return;
  }
  // The GEMM runs in blocks whose result is ~256 KB, either of rows of the left factor (each block packs
  // the right factor again) or of values of i_R (each packs the left factor again): whichever repacks
  // less. A row block has at least 64 GEMM rows, so that packing stays small next to its product.
  constexpr Index target = Index{1} << 16;
  const Index row_chunk = std::min(rows, std::max<Index>(target / (jl * ir * run), (64 + jl - 1) / jl));
  const Index q_chunk = std::min(ir, std::max<Index>(target / (rows * jl * run), 1));
  const Index row_chunks = (rows + row_chunk - 1) / row_chunk, q_chunks = (ir + q_chunk - 1) / q_chunk;
  const bool by_rows = static_cast<double>(row_chunks) * bond * ir * run <=
                       static_cast<double>(q_chunks) * rows * jl * bond;
  const Index chunks = by_rows ? row_chunks : q_chunks;
  const double work = static_cast<double>(rows) * jl * bond * ir * run;
  const int blocks = detail::block_count(work, static_cast<double>(chunks));
  detail::run_blocks(blocks, [&](int b) {
    const auto [first, count] = detail::block_range(chunks, blocks, b);
    const auto scratch = uninitialised<T>(by_rows ? row_chunk * jl * ir * run : rows * jl * q_chunk * run);
    for (Index c = first; c < first + count; ++c) {
      const Index p0 = by_rows ? c * row_chunk : 0, m = by_rows ? std::min(row_chunk, rows - p0) : rows;
      const Index q0 = by_rows ? 0 : c * q_chunk, w = by_rows ? ir : std::min(q_chunk, ir - q0);
      merge_block(left, l, right, r, p0, m, q0, w, scratch.get(), out + p0 * ir * jl * run);
    }
  });
}

// Cores a..b multiplied out along the merge tree, grouped as (d_{a-1}, i_a…i_b, j_a…j_b, d_b): a single
// core is its caller's buffer (no copy), a longer run is written to `storage`.
template <class T>
const T* multiply_run(const std::vector<CoreView<T>>& cores, const MergeTree& tree, std::size_t a, std::size_t b,
                      std::unique_ptr<T[]>* storage) {
  if (a == b) return cores[a].data;
  const std::size_t s = tree.split[a][b];
  std::unique_ptr<T[]> left_storage, right_storage;
  const T* left = multiply_run(cores, tree, a, s, &left_storage);
  const T* right = multiply_run(cores, tree, s + 1, b, &right_storage);
  const CoreShape l = run_shape(cores, a, s), r = run_shape(cores, s + 1, b);
  *storage = uninitialised<T>(
      checked_product({l.left_bond, l.rows, l.cols, r.rows, r.cols, r.right_bond}, "a merged run of cores"));
  merge_pair(left, l, right, r, storage->get());
  return storage->get();
}

// The cores of a plan's groups: a run of one is the caller's buffer, a longer run is multiplied out
// into `storage` (which owns it while the views are used), grouped as (d, i_a…i_b, j_a…j_b, d'):
// row-major (i_a…i_b) is the merged row factor, as in M's index.
template <class T>
std::vector<CoreView<T>> merge_cores(const std::vector<CoreView<T>>& cores, const std::vector<std::size_t>& groups,
                                     std::vector<std::unique_ptr<T[]>>* storage) {
  std::vector<CoreView<T>> views;
  storage->reserve(groups.size());
  const MergeTree tree = merge_tree(shapes_of(cores));
  std::size_t k = 0;
  for (std::size_t g : groups) {
    if (g == 1) {
      views.push_back(cores[k++]);
      continue;
    }
    std::unique_ptr<T[]> product;
    multiply_run(cores, tree, k, k + g - 1, &product);
    views.push_back({run_shape(cores, k, k + g - 1), product.get()});
    storage->push_back(std::move(product));
    k += g;
  }
  return views;
}

}  // namespace

namespace {

// Rebuild-then-multiply (the plan whose one group is every core) without holding the matrix: the last
// merge of the tree makes M a block of whole rows at a time (~1 MB), and the block meets X while it is
// still in cache. Writing M to memory and reading it back cost more than a tenth of the product at
// batch 32, and the kernel never needs M's I·J values at once. x is the padded input (batch × Π i, or
// Π i × batch when batch_last; the sides swap when transposed) and y the padded output, overwritten.
template <class T>
void apply_rebuilt(const std::vector<CoreView<T>>& cores, bool transposed, const T* x, Index batch,
                   bool batch_last, T* y) {
  const std::size_t n = cores.size();
  const MergeTree tree = merge_tree(shapes_of(cores));
  const std::size_t split = tree.split[0][n - 1];
  std::unique_ptr<T[]> left_storage, right_storage;
  const T* left = multiply_run(cores, tree, 0, split, &left_storage);
  const T* right = multiply_run(cores, tree, split + 1, n - 1, &right_storage);
  const CoreShape l = run_shape(cores, 0, split), r = run_shape(cores, split + 1, n - 1);
  const Index rows = l.rows * r.rows, cols = l.cols * r.cols;  // M is rows × cols
  const Index in = transposed ? cols : rows, out_side = transposed ? rows : cols;
  const Index per_p = r.rows * cols;  // values of M per value of I_L
  // Blocks of ~1 MB of M; but every block reads and writes the whole product once (X · M sums over
  // blocks), so when the product outgrows M (large batches) fewer, larger blocks are cheaper: at most
  // |M| / |Y| of them, down to one block, which is plain rebuild-then-multiply.
  const double most_blocks = std::max(1.0, static_cast<double>(rows) * cols / (static_cast<double>(batch) * out_side));
  const Index fewest_p = static_cast<Index>(std::ceil(static_cast<double>(l.rows) / most_blocks));
  const Index chunk =
      std::min(l.rows, std::max<Index>({(Index{1} << 18) / per_p, (64 + l.cols - 1) / l.cols, fewest_p, 1}));
  const Index chunks = (l.rows + chunk - 1) / chunk;
  // X · M sums over row blocks of M (X's columns): threads beyond the first sum into their own copy.
  // X · Mᵀ and the batch-last forms write disjoint parts of y instead.
  const bool sums = !transposed;
  const double work = static_cast<double>(tree.cost[0][n - 1]) / 2 + static_cast<double>(batch) * rows * cols;
  const int blocks = detail::block_count(work, static_cast<double>(chunks));
  std::vector<std::vector<T>> partial(static_cast<std::size_t>(sums ? blocks - 1 : 0));
  if (sums) std::fill(y, y + batch * out_side, T(0));
  detail::run_blocks(blocks, [&](int b) {
    T* target = y;
    if (sums && b > 0) {
      partial[b - 1].assign(static_cast<std::size_t>(batch * out_side), T(0));
      target = partial[b - 1].data();
    }
    const auto [first, count] = detail::block_range(chunks, blocks, b);
    const auto scratch = uninitialised<T>(chunk * per_p), block = uninitialised<T>(chunk * per_p);
    for (Index c = first; c < first + count; ++c) {
      const Index p0 = c * chunk, m = std::min(chunk, l.rows - p0);
      merge_block(left, l, right, r, p0, m, 0, r.rows, scratch.get(), block.get());
      const Index r0 = p0 * r.rows, height = m * r.rows;  // rows [r0, r0 + height) of M
      const ConstMatrixMap<T> mb(block.get(), height, cols);
      if (!batch_last) {
        const ConstMatrixMap<T> xs(x, batch, in);
        MatrixMap<T> ys(target, batch, out_side);
        if (transposed)
          ys.middleCols(r0, height).noalias() = xs * mb.transpose();
        else
          ys.noalias() += xs.middleCols(r0, height) * mb;
      } else {
        const ConstMatrixMap<T> xs(x, in, batch);
        MatrixMap<T> ys(target, out_side, batch);
        if (transposed)
          ys.middleRows(r0, height).noalias() = mb * xs;
        else
          ys.noalias() += mb.transpose() * xs.middleRows(r0, height);
      }
    }
  });
  for (const std::vector<T>& p : partial)
    for (std::size_t k = 0; k < p.size(); ++k) y[k] += p[k];
}

}  // namespace

template <class T>
void apply(const std::vector<CoreView<T>>& given, bool transposed, const T* x, Index batch,
           Index x_width, bool batch_last, T* out, Index out_width, PlanKind kind, bool allow_merge) {
  check_chain(shapes_of(given));
  const Index padded_in = product_of(shapes_of(given), !transposed);
  const Index padded_out = product_of(shapes_of(given), transposed);
  if (x_width < 1 || x_width > padded_in)
    throw std::invalid_argument("mpo: the input's inner dimension must be in [1, " +
                                std::to_string(padded_in) + "], got " + std::to_string(x_width));
  if (out_width < 1 || out_width > padded_out)
    throw std::invalid_argument("mpo: the output width must be in [1, " + std::to_string(padded_out) +
                                "], got " + std::to_string(out_width));
  if (batch < 1) return;
  // The padded input and output: every state of the sweep is at most these times the bonds, and the
  // Simulator checks those; these two bound the padding copies below.
  (void)checked_mul(batch, padded_in, "the padded input");
  (void)checked_mul(batch, padded_out, "the padded output");

  // Zero padding of the input side: rows/columns the cores have but the matrix does not.
  std::vector<T> padded_x;
  const T* current = x;
  if (x_width < padded_in) {
    padded_x.assign(static_cast<std::size_t>(batch * padded_in), T(0));
    if (batch_last) {
      std::copy(x, x + x_width * batch, padded_x.begin());
    } else {
      for (Index b = 0; b < batch; ++b)
        std::copy(x + b * x_width, x + (b + 1) * x_width, padded_x.begin() + b * padded_in);
    }
    current = padded_x.data();
  }

  const ApplyPlan plan = plan_apply(shapes_of(given), batch, transposed, kind, allow_merge);
  if (plan.groups.size() == 1) {
    std::vector<T> full;
    T* y = out;
    if (out_width < padded_out) {
      full.resize(static_cast<std::size_t>(batch * padded_out));
      y = full.data();
    }
    apply_rebuilt(given, transposed, current, batch, batch_last, y);
    if (y == out) return;
    if (batch_last) {
      std::copy(y, y + out_width * batch, out);
    } else {
      for (Index b = 0; b < batch; ++b)
        std::copy(y + b * padded_out, y + b * padded_out + out_width, out + b * out_width);
    }
    return;
  }
  std::vector<std::unique_ptr<T[]>> storage;
  const std::vector<CoreView<T>> cores = merge_cores(given, plan.groups, &storage);
  const std::vector<CoreShape> shapes = shapes_of(cores);
  // One sweep of `rows` rows of X (at x0, rows padded_in apart, or the whole batch-last block) through
  // the cores, written to dst. `fork` lets single products split across threads.
  auto sweep = [&](const T* x0, Index rows, T* dst, bool fork) {
    const T* current = x0;
    // Two buffers sized once for the largest state, used in turn: the permuted state and the product.
    Index largest = checked_mul(rows, std::max(padded_in, padded_out), "a state of the product");
    {
      Simulator sim(shapes, rows, transposed, batch_last);
      for (std::size_t k : plan.order) {
        sim.add(k);
        largest = std::max(largest, sim.size());
      }
    }
    const std::unique_ptr<T[]> buffers[2] = {uninitialised<T>(largest), uninitialised<T>(largest)};
    T* const buffer[2] = {buffers[0].get(), buffers[1].get()};
    std::unique_ptr<T[]> packed;
    Index packed_size = 0;
    auto gemm = [fork](MatrixMap<T>& result, const auto& left, const auto& right) {
      if (fork)
        multiply_into<T>(result, left, right);
      else
        result.noalias() = left * right;
    };
    Simulator sim(shapes, rows, transposed, batch_last);
    for (std::size_t k : plan.order) {
      const Step s = sim.add(k);
      const T* lhs = current;
      if (!is_identity(s.state_perm)) {
        T* target = current == buffer[0] ? buffer[1] : buffer[0];
        permute_merged(current, s.state_dims, s.state_perm, target);
        lhs = target;
      }
      T* product = lhs == buffer[0] ? buffer[1] : buffer[0];
      MatrixMap<T> result(product, s.kept, s.fresh);
      const ConstMatrixMap<T> left(lhs, s.kept, s.inner);
      const T* core = cores[k].data;
      // The core as (shared × new): its own buffer when the shared axes come first in storage order,
      // the transpose of its own buffer when they come last, else a packed copy (only for plans that
      // run against the storage order, e.g. a transposed MPO contracted from the left).
      const std::size_t shared_count = s.shared_axes;
      std::vector<std::size_t> swapped;
      for (std::size_t c = shared_count; c < s.core_perm.size(); ++c) swapped.push_back(s.core_perm[c]);
      for (std::size_t c = 0; c < shared_count; ++c) swapped.push_back(s.core_perm[c]);
      if (is_identity(s.core_perm)) {
        gemm(result, left, ConstMatrixMap<T>(core, s.inner, s.fresh));
      } else if (is_identity(swapped)) {
        gemm(result, left, ConstMatrixMap<T>(core, s.fresh, s.inner).transpose());
      } else {
        if (packed_size < checked_mul(s.inner, s.fresh, "a packed core")) {
          packed_size = s.inner * s.fresh;
          packed = uninitialised<T>(packed_size);
        }
        permute_merged(core, s.core_dims, s.core_perm, packed.get());
        gemm(result, left, ConstMatrixMap<T>(packed.get(), s.inner, s.fresh));
      }
      current = product;
    }

    // Final layout: (batch, output factors) or (output factors, batch); padded columns dropped.
    std::vector<std::size_t> perm;
    std::vector<Index> dims;
    const std::vector<Axis>& axes = sim.axes();
    for (const Axis& a : axes) dims.push_back(a.dim);
    auto place = [&](Kind kind_wanted) {
      for (std::size_t k = 0; k < shapes.size(); ++k)
        for (std::size_t a = 0; a < axes.size(); ++a)
          if (axes[a].kind == kind_wanted && (kind_wanted == Kind::batch || axes[a].k == k)) {
            perm.push_back(a);
            if (kind_wanted == Kind::batch) return;
          }
    };
    if (!batch_last) place(Kind::batch);
    place(Kind::output);
    if (batch_last) place(Kind::batch);
    if (perm.size() != axes.size()) throw std::logic_error("mpo: apply left an axis uncontracted");
    const Index total = rows * padded_out;
    if (out_width == padded_out) {
      if (is_identity(perm))
        std::copy(current, current + total, dst);
      else
        permute_merged(current, dims, perm, dst);
      return;
    }
    const T* full = current;
    if (!is_identity(perm)) {
      T* target = current == buffer[0] ? buffer[1] : buffer[0];
      permute_merged(current, dims, perm, target);
      full = target;
    }
    if (batch_last) {
      std::copy(full, full + out_width * rows, dst);
    } else {
      for (Index b = 0; b < rows; ++b)
        std::copy(full + b * padded_out, full + b * padded_out + out_width, dst + b * out_width);
    }
  };

  // Large batches run in chunks of rows whose states stay in cache (a few hundred KB): every step of
  // the sweep reads and writes the whole state, and for small bonds those passes, not the GEMMs, set
  // the time. Chunks are independent, so threads take runs of them (one fork for the whole product).
  Index per_row = std::max(padded_in, padded_out);
  {
    Simulator sim(shapes, 1, transposed, false);
    for (std::size_t k : plan.order) {
      sim.add(k);
      per_row = std::max(per_row, sim.size());
    }
  }
  // Each chunk reads every core again, so a chunk must also carry several times the largest core's
  // size in state (no chunking at all for rebuild-then-multiply, whose one core is the whole matrix).
  Index largest_core = 1;
  for (const CoreShape& c : shapes)
    largest_core = std::max(largest_core, checked_product({c.left_bond, c.rows, c.cols, c.right_bond}, "a core"));
  const Index chunk =
      std::min(batch, std::max<Index>({8, (Index{1} << 16) / per_row, checked_mul(4, largest_core, "a core") / per_row}));
  const Index chunks = (batch + chunk - 1) / chunk;
  if (batch_last || chunks == 1) {
    sweep(current, batch, out, true);
    return;
  }
  const double sweep_work = 0.5 * (plan.flops - plan.merge_flops);  // multiply-adds
  const int blocks = detail::block_count(sweep_work, static_cast<double>(chunks));
  detail::run_blocks(blocks, [&](int b) {
    const auto [start, length] = detail::block_range(chunks, blocks, b);
    for (Index c = start; c < start + length; ++c) {
      const Index first = c * chunk;
      sweep(current + first * padded_in, std::min(chunk, batch - first), out + first * out_width, false);
    }
  });
}

template <class T>
Matrix<T> multiply_out(const std::vector<CoreView<T>>& cores) {
  const std::vector<CoreShape> shapes = shapes_of(cores);
  check_chain(shapes);
  std::vector<std::unique_ptr<T[]>> storage;
  const std::vector<CoreView<T>> merged = merge_cores(cores, {cores.size()}, &storage);
  const CoreShape& c = merged[0].shape;
  return ConstMatrixMap<T>(merged[0].data, c.rows, c.cols);
}

namespace {

// Row id's digits in the row factors (r_1 … r_n, r_n fastest) into `digits`, and how many leading
// digits, at most `limit`, it shares with the previous id's (`previous`, updated): the prefixes of the
// chain up to that level are the previous id's and need no recomputing.
std::size_t next_digits(Index id, const std::vector<Index>& radix, std::size_t limit, std::vector<Index>* digits,
                        std::vector<Index>* previous) {
  for (std::size_t k = radix.size(); k-- > 0;) {
    (*digits)[k] = id % radix[k];
    id /= radix[k];
  }
  std::size_t level = 0;
  while (level < limit && (*digits)[level] == (*previous)[level]) ++level;
  *previous = *digits;
  return level;
}

}  // namespace

template <class T>
void rows(const std::vector<CoreView<T>>& cores, bool transposed, const std::vector<Index>& ids, T* out,
          Index out_width) {
  const std::vector<CoreShape> shapes = shapes_of(cores);
  check_chain(shapes);
  const std::size_t n = shapes.size();
  const Index padded_rows = product_of(shapes, !transposed), padded_out = product_of(shapes, transposed);
  if (out_width < 1 || out_width > padded_out)
    throw std::invalid_argument("mpo: the output width must be in [1, " + std::to_string(padded_out) +
                                "], got " + std::to_string(out_width));
  for (Index id : ids)
    if (id < 0 || id >= padded_rows)
      throw std::out_of_range("mpo: row id " + std::to_string(id) + " is outside [0, " +
                              std::to_string(padded_rows) + ")");
  if (ids.empty()) return;

  // Each core as (d_{k-1}, r_k, c_k, d_k) with r the row side: the stored buffer, or for a transposed
  // MPO a copy with i and j swapped (cores are small next to the rows asked for).
  std::vector<std::vector<T>> swapped(n);
  std::vector<const T*> data(n);
  std::vector<Index> r(n), c(n), left(n), right(n);
  for (std::size_t k = 0; k < n; ++k) {
    const CoreShape& s = shapes[k];
    left[k] = s.left_bond;
    right[k] = s.right_bond;
    r[k] = transposed ? s.cols : s.rows;
    c[k] = transposed ? s.rows : s.cols;
    data[k] = cores[k].data;
    if (transposed) {
      swapped[k].resize(static_cast<std::size_t>(s.left_bond * s.rows * s.cols * s.right_bond));
      permute(cores[k].data, {s.left_bond, s.rows, s.cols, s.right_bond}, {0, 2, 1, 3}, swapped[k].data());
      data[k] = swapped[k].data();
    }
  }
  // Prefix k (cores 0..k-1 at fixed row factors) is a (c_0···c_{k-1}) × d_k matrix.
  std::vector<Index> prefix_rows(n + 1, 1);
  for (std::size_t k = 0; k < n; ++k) prefix_rows[k + 1] = checked_mul(prefix_rows[k], c[k], "a row prefix");

  // Sorting the ids orders them by (r_1, r_2, …): neighbours share the longest common prefixes.
  std::vector<std::size_t> order(ids.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return ids[a] < ids[b]; });

  // Many ids share few prefixes near the right end of the chain, where each id still pays a GEMM per
  // core with a wide bond. Cores split..n-1 are therefore contracted once for every combination of
  // their row factors (a table of Π r_k matrices d_{split-1} × Π c_k), and each id ends with one GEMM
  // against its entry. split is chosen by counting FLOPs: the prefixes the sorted ids actually
  // recompute, the final GEMMs and the table (split = n: no table, for few ids).
  std::vector<double> recomputed(n, 0.0);  // ids whose first new digit is at level <= k
  {
    std::vector<Index> digits(n), previous(n, -1);
    for (std::size_t slot : order)
      for (std::size_t k = next_digits(ids[slot], r, n, &digits, &previous); k < n; ++k) recomputed[k] += 1;
  }
  std::vector<Index> suffix_cols(n + 1, 1), suffix_rows(n + 1, 1);  // Π_{m>=k} c_m, Π_{m>=k} r_m
  for (std::size_t k = n; k-- > 0;) {
    suffix_cols[k] = checked_mul(suffix_cols[k + 1], c[k], "a row suffix");
    suffix_rows[k] = checked_mul(suffix_rows[k + 1], r[k], "a row suffix");
  }
  std::size_t split = n;
  {
    double best = 0;
    for (std::size_t k = 0; k < n; ++k) best += recomputed[k] * 2.0 * prefix_rows[k] * left[k] * c[k] * right[k];
    double prefixes = 0, table = 0;
    std::vector<double> costs(n + 1, 0.0);
    for (std::size_t k = n; k-- > 1;) {
      table += static_cast<double>(suffix_rows[k]) * 2.0 * left[k] * c[k] * right[k] * suffix_cols[k + 1];
      costs[k] = table;
    }
    for (std::size_t k = 1; k < n; ++k) {
      prefixes += recomputed[k - 1] * 2.0 * prefix_rows[k - 1] * left[k - 1] * c[k - 1] * right[k - 1];
      const double total = prefixes + costs[k] + static_cast<double>(ids.size()) * 2.0 * prefix_rows[k] * left[k] * suffix_cols[k];
      const double size = static_cast<double>(suffix_rows[k]) * left[k] * suffix_cols[k];
      if (total < best && size <= static_cast<double>(Index{1} << 24)) {
        best = total;
        split = k;
      }
    }
  }
  // table[split] entry e (e = id mod Π_{m>=split} r_m) is a d_{split-1} × Π_{m>=split} c_m matrix.
  std::vector<T> table;
  if (split < n) {
    std::vector<T> next, slice;
    for (std::size_t k = n; k-- > split;) {
      const Index entry = checked_mul(left[k], suffix_cols[k], "a row table");  // values per entry at level k
      std::vector<T> current(static_cast<std::size_t>(checked_mul(suffix_rows[k], entry, "a row table")));
      slice.resize(static_cast<std::size_t>(left[k] * c[k] * right[k]));
      for (Index d = 0; d < r[k]; ++d) {
        // Slice T_k[:, d, :, :] made contiguous: (d_{k-1}·c_k) × d_k.
        for (Index l = 0; l < left[k]; ++l)
          std::copy(data[k] + (l * r[k] + d) * c[k] * right[k], data[k] + (l * r[k] + d + 1) * c[k] * right[k],
                    slice.begin() + l * c[k] * right[k]);
        const ConstMatrixMap<T> sl(slice.data(), left[k] * c[k], right[k]);
        for (Index rest = 0; rest < suffix_rows[k + 1]; ++rest) {
          MatrixMap<T> to(current.data() + (d * suffix_rows[k + 1] + rest) * entry, left[k] * c[k], suffix_cols[k + 1]);
          if (k + 1 == n)
            to = sl;  // d_n = 1
          else
            to.noalias() = sl * ConstMatrixMap<T>(next.data() + rest * right[k] * suffix_cols[k + 1], right[k],
                                                  suffix_cols[k + 1]);
        }
      }
      next.swap(current);
    }
    table.swap(next);
  }

  auto work = [&](std::size_t begin, std::size_t end) {
    std::vector<std::vector<T>> prefix(n + 1);
    prefix[0].assign(1, T(1));
    for (std::size_t k = 1; k <= split; ++k)
      prefix[k].resize(static_cast<std::size_t>(checked_mul(prefix_rows[k], right[k - 1], "a row prefix")));
    std::vector<T> row(split < n ? static_cast<std::size_t>(padded_out) : 0);
    std::vector<Index> digits(n), previous(n, -1);
    for (std::size_t t = begin; t < end; ++t) {
      const std::size_t slot = order[t];
      const std::size_t level = next_digits(ids[slot], r, split, &digits, &previous);
      for (std::size_t k = level; k < split; ++k) {
        using Strided = Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>;
        // Slice T_k[:, r, :, :]: d_{k-1} rows of c_k·d_k values, r_k·c_k·d_k apart.
        const Strided slice(data[k] + digits[k] * c[k] * right[k], left[k], c[k] * right[k],
                            Eigen::OuterStride<>(r[k] * c[k] * right[k]));
        MatrixMap<T> next(prefix[k + 1].data(), prefix_rows[k], c[k] * right[k]);
        next.noalias() = ConstMatrixMap<T>(prefix[k].data(), prefix_rows[k], left[k]) * slice;
      }
      const T* result = prefix[n].data();
      if (split < n) {
        const Index entry = ids[slot] % suffix_rows[split];
        MatrixMap<T> full(row.data(), prefix_rows[split], suffix_cols[split]);
        full.noalias() = ConstMatrixMap<T>(prefix[split].data(), prefix_rows[split], left[split]) *
                         ConstMatrixMap<T>(table.data() + entry * left[split] * suffix_cols[split], left[split],
                                           suffix_cols[split]);
        result = row.data();
      }
      std::copy(result, result + out_width, out + static_cast<Index>(slot) * out_width);
    }
  };
  // Ids split into one contiguous run of the sorted order per thread; a run's first id recomputes its
  // prefixes, which costs little next to a run.
  const double estimate = static_cast<double>(ids.size()) * padded_out * left[n - 1];
  const int blocks = detail::block_count(estimate);
  if (blocks <= 1 || ids.size() < static_cast<std::size_t>(2 * blocks)) {
    work(0, ids.size());
    return;
  }
  detail::run_blocks(blocks, [&](int b) {
    const auto [start, length] = detail::block_range(static_cast<Index>(ids.size()), blocks, b);
    work(static_cast<std::size_t>(start), static_cast<std::size_t>(start + length));
  });
}

#define MPO_INSTANTIATE(T)                                                                              \
  template void apply<T>(const std::vector<CoreView<T>>&, bool, const T*, Index, Index, bool, T*, Index, \
                         PlanKind, bool);                                                               \
  template void rows<T>(const std::vector<CoreView<T>>&, bool, const std::vector<Index>&, T*, Index); \
  template Matrix<T> multiply_out<T>(const std::vector<CoreView<T>>&);
MPO_INSTANTIATE(float)
MPO_INSTANTIATE(double)
#undef MPO_INSTANTIATE

}  // namespace mpo
