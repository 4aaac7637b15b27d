// Matrix products on all cores, forked only where they are large.
//
// Eigen's OpenMP mode parallelises every product and joins at a barrier each time; on a shared machine
// a descheduled thread stalls each barrier for a time slice, which made a 768 × 768 decomposition 80×
// slower under load. Here a product is split into a few independent blocks, one per thread, and only
// when it is big enough for that to pay: one fork and join per large product, none for small ones.
#pragma once

#include "mpo/types.hpp"

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <limits>
#include <thread>
#include <vector>

namespace mpo {

// Threads for large products: MPO_NUM_THREADS if set (>= 1), else the hardware's count.
inline int thread_count() {
  static const int count = [] {
    if (const char* env = std::getenv("MPO_NUM_THREADS")) {
      const int v = std::atoi(env);
      if (v >= 1) return v;
    }
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
  }();
  return count;
}

namespace detail {
// Below this many multiply-adds (~5 ms on one core) a product runs on the calling thread. A fork costs
// ~50 µs on an idle machine but a scheduler slice (milliseconds) when the other core is busy: with
// 4e6 a 384 × 384 decomposition took 23 ms on a loaded machine against 10 ms single-threaded.
constexpr double kParallelWork = 5.0e7;

// Threads to fork for `work` multiply-adds that split into at most `pieces` independent parts: one per
// kParallelWork of work, at most one per core and per piece, at least one.
inline int block_count(double work, double pieces = std::numeric_limits<double>::infinity()) {
  return std::max(1, static_cast<int>(std::min({static_cast<double>(thread_count()), pieces,
                                                work / kParallelWork + 1})));
}

// body(0..blocks-1), block 0 on the calling thread and the others each on a thread of their own. An
// exception escaping a std::thread calls std::terminate (an out-of-memory in a worker aborted the
// interpreter), so every block catches its own, every thread is joined, and the first block's
// exception in block order is rethrown here, on the caller's thread. A thread that cannot be started
// runs its block on the calling thread instead.
template <class F>
void run_blocks(int blocks, F&& body) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(std::max(blocks, 1)));
  auto guarded = [&body, &errors](int b) noexcept {
    try {
      body(b);
    } catch (...) {
      errors[static_cast<std::size_t>(b)] = std::current_exception();
    }
  };
  std::vector<std::thread> workers;
  int started = 1;
  try {
    workers.reserve(static_cast<std::size_t>(std::max(blocks - 1, 0)));
    for (; started < blocks; ++started) workers.emplace_back(guarded, started);
  } catch (...) {  // no memory or no thread: the rest run here
  }
  guarded(0);
  for (int b = started; b < blocks; ++b) guarded(b);
  for (std::thread& w : workers) w.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

inline std::pair<Index, Index> block_range(Index size, int blocks, int b) {
  const Index begin = size * b / blocks;
  const Index end = size * (b + 1) / blocks;
  return {begin, end - begin};
}

// Σ_b G_b for `blocks` partial Gram matrices (p × p, lower triangles), one per thread: add(G_b, start,
// length) rank-updates G_b with block b's share [start, start + length) of `range`. Returned as Out with
// both triangles.
template <class Out, class Add>
Out summed_gram(Index p, Index range, int blocks, Add add) {
  using Partial = Eigen::Matrix<typename Out::Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  std::vector<Partial> partial(static_cast<std::size_t>(blocks));
  run_blocks(blocks, [&](int b) {
    const auto [start, length] = block_range(range, blocks, b);
    partial[b] = Partial::Zero(p, p);
    add(partial[b], start, length);
  });
  for (int b = 1; b < blocks; ++b) partial[0] += partial[b];
  Out out = partial[0].template selfadjointView<Eigen::Lower>();
  return out;
}
}  // namespace detail

// out = lhs · rhs for any Eigen expressions, written into `out` (a Matrix or a Map over a reused
// buffer) of the right size. Splits the longest of the output's rows, its columns, or the inner
// dimension (then sums the partial products).
template <class T, class Out, class Lhs, class Rhs>
void multiply_into(Out&& out, const Lhs& lhs, const Rhs& rhs) {
  const Index rows = lhs.rows(), cols = rhs.cols(), depth = lhs.cols();
  const double work = static_cast<double>(rows) * cols * depth;
  const int blocks = detail::block_count(work);
  if (blocks <= 1 || std::max({rows, cols, depth}) < 2 * blocks) {
    out.noalias() = lhs * rhs;
    return;
  }
  if (depth >= 4 * std::max(rows, cols)) {
    std::vector<Matrix<T>> partial(static_cast<std::size_t>(blocks));
    detail::run_blocks(blocks, [&](int b) {
      const auto [start, length] = detail::block_range(depth, blocks, b);
      partial[b].noalias() = lhs.middleCols(start, length) * rhs.middleRows(start, length);
    });
    out = partial[0];
    for (int b = 1; b < blocks; ++b) out += partial[b];
  } else if (rows >= cols) {
    detail::run_blocks(blocks, [&](int b) {
      const auto [start, length] = detail::block_range(rows, blocks, b);
      out.middleRows(start, length).noalias() = lhs.middleRows(start, length) * rhs;
    });
  } else {
    detail::run_blocks(blocks, [&](int b) {
      const auto [start, length] = detail::block_range(cols, blocks, b);
      out.middleCols(start, length).noalias() = lhs * rhs.middleCols(start, length);
    });
  }
}

// out = lhs · rhs, returned as a new matrix.
template <class T, class Lhs, class Rhs>
Matrix<T> multiply(const Lhs& lhs, const Rhs& rhs) {
  Matrix<T> out(lhs.rows(), rhs.cols());
  multiply_into<T>(out, lhs, rhs);
  return out;
}

// The Gram matrix A·Aᵀ. Only its lower triangle is accumulated (half the work of a general product),
// in blocks of A's columns, one per thread.
template <class T, class A>
Matrix<T> gram(const A& a) {
  const Index m = a.rows(), depth = a.cols();
  const double work = 0.5 * static_cast<double>(m) * m * depth;
  // Each block is taken in chunks of columns: Eigen evaluates an expression argument (a float32 matrix
  // cast to double, say) into a temporary, and a chunk keeps that temporary to ~8 MB instead of a
  // double copy of the whole block (94 MB for the embedding's first unfolding, mostly page faults).
  const Index chunk = std::max<Index>(256, (Index{1} << 20) / std::max<Index>(m, 1));
  auto add = [&](auto& g, Index start, Index length) {
    for (Index c = start; c < start + length; c += chunk)
      g.template selfadjointView<Eigen::Lower>().rankUpdate(a.middleCols(c, std::min(chunk, start + length - c)));
  };
  return detail::summed_gram<Matrix<T>>(m, depth, detail::block_count(work), add);
}

}  // namespace mpo
