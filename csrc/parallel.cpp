// The product routine behind multiply_into (include/mpo/parallel.hpp), once per scalar type.
#include "mpo/parallel.hpp"

namespace mpo {
namespace detail {
namespace {

// out = op(lhs) · op(rhs) on the calling thread: Eigen's product, four instantiations per scalar type.
template <class T>
void product(Target<T> out, const Operand<T>& lhs, bool lhs_transposed, const Operand<T>& rhs, bool rhs_transposed) {
  if (lhs_transposed && rhs_transposed)
    out.noalias() = lhs.transpose() * rhs.transpose();
  else if (lhs_transposed)
    out.noalias() = lhs.transpose() * rhs;
  else if (rhs_transposed)
    out.noalias() = lhs * rhs.transpose();
  else
    out.noalias() = lhs * rhs;
}

// Rows [start, start + length) of op(x), or (`columns`) its columns: a block of x itself, which binds to an
// Operand without a copy (a transposed operand's rows are x's columns).
template <class T>
Operand<T> slice(const Operand<T>& x, bool transposed, bool columns, Index start, Index length) {
  if (transposed != columns) return Operand<T>(x.middleCols(start, length));
  return Operand<T>(x.middleRows(start, length));
}

}  // namespace

// Splits the longest of the output's rows, its columns, or the inner dimension (then sums the partial
// products) into one block per thread, where the product is large enough for a fork to pay. Every block
// is again an Operand or a Target, so the blocks run the same four products as the single-thread route.
template <class T>
void multiply_operands(Target<T> out, const Operand<T>& lhs, bool lhs_transposed, const Operand<T>& rhs,
                       bool rhs_transposed) {
  const Index rows = lhs_transposed ? lhs.cols() : lhs.rows();
  const Index depth = lhs_transposed ? lhs.rows() : lhs.cols();
  const Index cols = rhs_transposed ? rhs.rows() : rhs.cols();
  const double work = static_cast<double>(rows) * cols * depth;
  const int blocks = block_count(work);
  if (blocks <= 1 || std::max({rows, cols, depth}) < 2 * blocks) {
    product<T>(out, lhs, lhs_transposed, rhs, rhs_transposed);
    return;
  }
  if (depth >= 4 * std::max(rows, cols)) {
    std::vector<Matrix<T>> partial(static_cast<std::size_t>(blocks));
    run_blocks(blocks, [&](int b) {
      const auto [start, length] = block_range(depth, blocks, b);
      partial[b].resize(rows, cols);
      product<T>(partial[b], slice<T>(lhs, lhs_transposed, true, start, length), lhs_transposed,
                 slice<T>(rhs, rhs_transposed, false, start, length), rhs_transposed);
    });
    out = partial[0];
    for (int b = 1; b < blocks; ++b) out += partial[b];
  } else if (rows >= cols) {
    run_blocks(blocks, [&](int b) {
      const auto [start, length] = block_range(rows, blocks, b);
      product<T>(out.middleRows(start, length), slice<T>(lhs, lhs_transposed, false, start, length),
                 lhs_transposed, rhs, rhs_transposed);
    });
  } else {
    run_blocks(blocks, [&](int b) {
      const auto [start, length] = block_range(cols, blocks, b);
      product<T>(out.middleCols(start, length), lhs, lhs_transposed,
                 slice<T>(rhs, rhs_transposed, true, start, length), rhs_transposed);
    });
  }
}

template void multiply_operands<float>(Target<float>, const Operand<float>&, bool, const Operand<float>&, bool);
template void multiply_operands<double>(Target<double>, const Operand<double>&, bool, const Operand<double>&,
                                        bool);

template <class T, class S>
Matrix<T> gram_operand(const Operand<S>& a, bool transposed) {
  const Index m = transposed ? a.cols() : a.rows();
  const Index depth = transposed ? a.rows() : a.cols();
  const double work = 0.5 * static_cast<double>(m) * m * depth;
  // Each block is taken in chunks of columns of op(A): float data is cast to double a chunk at a time,
  // ~8 MB instead of a double copy of the whole block.
  const Index chunk = std::max<Index>(256, (Index{1} << 20) / std::max<Index>(m, 1));
  auto add = [&](auto& g, Index start, Index length) {
    for (Index c = start; c < start + length; c += chunk) {
      const Index width = std::min(chunk, start + length - c);
      const Operand<S> part = transposed ? Operand<S>(a.middleRows(c, width)) : Operand<S>(a.middleCols(c, width));
      auto lower = g.template selfadjointView<Eigen::Lower>();
      if constexpr (std::is_same<S, T>::value) {
        if (transposed)
          lower.rankUpdate(part.transpose());
        else
          lower.rankUpdate(part);
      } else {
        if (transposed)
          lower.rankUpdate(part.transpose().template cast<T>());
        else
          lower.rankUpdate(part.template cast<T>());
      }
    }
  };
  return summed_gram<Matrix<T>>(m, depth, block_count(work), add);
}

template Matrix<float> gram_operand<float, float>(const Operand<float>&, bool);
template Matrix<double> gram_operand<double, double>(const Operand<double>&, bool);
template Matrix<double> gram_operand<double, float>(const Operand<float>&, bool);

}  // namespace detail
}  // namespace mpo
