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
#include <stdexcept>
#include <thread>
#include <type_traits>
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

// What the product routine reads: a row-major block with unit inner stride (a Matrix, a Map, a block of
// rows), used as it is or transposed. Any other expression is evaluated into one where the call binds
// it, as Eigen's own product does.
template <class T>
using Operand = Eigen::Ref<const Matrix<T>, 0, Eigen::OuterStride<>>;
// What it writes: a block of a Matrix or a Map of the product's size.
template <class T>
using Target = Eigen::Ref<Matrix<T>, 0, Eigen::OuterStride<>>;

namespace detail {
// out = op(lhs) · op(rhs), op the transpose where flagged. The one product routine behind multiply_into
// (csrc/parallel.cpp), compiled once per scalar type: written as a template over the operands'
// expression types, every call site instantiated four Eigen products of its own (split.cpp's front end
// alone took 45 s of the build).
template <class T>
void multiply_operands(Target<T> out, const Operand<T>& lhs, bool lhs_transposed, const Operand<T>& rhs,
                       bool rhs_transposed);

template <class E>
struct is_transpose : std::false_type {};
template <class E>
struct is_transpose<Eigen::Transpose<E>> : std::true_type {};

// The expression a transpose wraps, or the expression itself.
template <class E>
decltype(auto) untransposed(const E& e) {
  if constexpr (is_transpose<E>::value) {
    return e.nestedExpression();
  } else {
    return (e);
  }
}
}  // namespace detail

// out = lhs · rhs for Eigen expressions of scalar T, written into `out` (a Matrix, resized, or a Map over
// a reused buffer of the product's size). Large products split the longest of the output's rows, its
// columns, or the inner dimension (then sum the partial products) across threads.
template <class T, class Out, class Lhs, class Rhs>
void multiply_into(Out&& out, const Lhs& lhs, const Rhs& rhs) {
  if constexpr (std::is_same<std::decay_t<Out>, Matrix<T>>::value) out.resize(lhs.rows(), rhs.cols());
  if (out.rows() != lhs.rows() || out.cols() != rhs.cols() || lhs.cols() != rhs.rows())
    throw std::logic_error("mpo: a product's target or operands have the wrong shape");
  detail::multiply_operands<T>(out, detail::untransposed(lhs), detail::is_transpose<Lhs>::value,
                               detail::untransposed(rhs), detail::is_transpose<Rhs>::value);
}

// out = lhs · rhs, returned as a new matrix.
template <class T, class Lhs, class Rhs>
Matrix<T> multiply(const Lhs& lhs, const Rhs& rhs) {
  Matrix<T> out(lhs.rows(), rhs.cols());
  multiply_into<T>(out, lhs, rhs);
  return out;
}

namespace detail {
// op(a)·op(a)ᵀ accumulated in T from data of scalar S (csrc/parallel.cpp; T = S, or double from float).
template <class T, class S>
Matrix<T> gram_operand(const Operand<S>& a, bool transposed);
}  // namespace detail

// The Gram matrix A·Aᵀ, accumulated in T (A's scalar, or double for float data). Only its lower triangle
// is accumulated (half the work of a general product), in blocks of A's columns, one per thread. A is a
// Matrix, Map or block, or the transpose of one: an expression (a cast, say) is refused at compile time,
// since it would be evaluated whole first (a double copy of the embedding's first unfolding is 94 MB);
// the routine casts a chunk of columns at a time instead.
template <class T, class A>
Matrix<T> gram(const A& a) {
  const auto& data = detail::untransposed(a);
  using Data = std::decay_t<decltype(data)>;
  static_assert(bool(Eigen::internal::traits<Data>::Flags & Eigen::DirectAccessBit),
                "mpo::gram takes stored data (Matrix, Map, block) or its transpose, not an expression");
  using S = typename Data::Scalar;
  return detail::gram_operand<T, S>(data, detail::is_transpose<A>::value);
}

}  // namespace mpo
