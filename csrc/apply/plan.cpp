// Planning a product through the cores (include/mpo/apply.hpp, ApplyPlan): which runs of cores to merge
// and in which order to sweep X through them, the cheapest by the FLOPs the kernel will perform.
#include "apply/internal.hpp"

#include <map>
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

using apply_internal::MergeTree;
using apply_internal::merge_tree;
using apply_internal::Simulator;

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

}  // namespace mpo
