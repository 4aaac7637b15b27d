// Y = X·M (or X·Mᵀ) through the cores (include/mpo/apply.hpp): the plan's merged cores, then X swept
// through them one GEMM per core, in chunks of rows that stay in cache; or, for the plan that merges
// every core, rebuild-then-multiply a block of M at a time.
#include "apply/internal.hpp"

#include "mpo/runtime_gemm.hpp"

#include "mpo/contract.hpp"
#include "mpo/parallel.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace mpo {

namespace {

using namespace apply_internal;

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
  // With a runtime GEMM (include/mpo/runtime_gemm.hpp) one block: the BLAS threads its products itself.
  const bool runtime = has_runtime_gemm();
  const int blocks = runtime ? 1 : detail::block_count(work, static_cast<double>(chunks));
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
      merge_block(left, l, right, r, p0, m, 0, r.rows, scratch.get(), block.get(), runtime);
      const Index r0 = p0 * r.rows, height = m * r.rows;  // rows [r0, r0 + height) of M
      const ConstMatrixMap<T> mb(block.get(), height, cols);
      if (runtime && !batch_last && !transposed && static_cast<double>(batch) * height * cols >= kRuntimeGemmMin &&
          runtime_gemm<T>(batch, cols, height, x + r0, in, block.get(), cols, target, out_side, true))
        continue;  // Y += X[:, rows r0..] · M_block
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
        permute(current, s.state_dims, s.state_perm, target);
        lhs = target;
      }
      T* product = lhs == buffer[0] ? buffer[1] : buffer[0];
      MatrixMap<T> result(product, s.kept, s.fresh);
      const ConstMatrixMap<T> left(lhs, s.kept, s.inner);
      const T* core = cores[k].data;
      // The core as (shared × new): its own buffer when the shared axes come first in storage order,
      // the transpose of its own buffer when they come last, else a packed copy (only for plans that
      // run against the storage order, e.g. a transposed MPO contracted from the left).
      // A large step whose core is already (shared × new) goes to the runtime GEMM where one is set
      // (include/mpo/runtime_gemm.hpp), from the calling thread only (`fork`: not inside parallel sweeps).
      if (fork && is_identity(s.core_perm) && s.flops() / 2 >= kRuntimeGemmMin &&
          runtime_gemm<T>(s.kept, s.fresh, s.inner, lhs, s.inner, core, s.fresh, product, s.fresh)) {
        current = product;
        continue;
      }
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
        permute(core, s.core_dims, s.core_perm, packed.get());
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
        permute(current, dims, perm, dst);
      return;
    }
    const T* full = current;
    if (!is_identity(perm)) {
      T* target = current == buffer[0] ? buffer[1] : buffer[0];
      permute(current, dims, perm, target);
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

template void apply<float>(const std::vector<CoreView<float>>&, bool, const float*, Index, Index, bool, float*, Index,
                           PlanKind, bool);
template void apply<double>(const std::vector<CoreView<double>>&, bool, const double*, Index, Index, bool, double*,
                            Index, PlanKind, bool);

}  // namespace mpo
