// Shortcut (Shortcuts::block): the first left steps of the sweep made from M read in place, without its
// interleaved copy. See left_block in shortcuts.hpp for the method, docs/ALGORITHMS.md §2.
#include "decompose/shortcuts.hpp"

#include "mpo/parallel.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace mpo {

namespace {

// The left steps are made from M in place while their unfoldings have at most this many rows: the block
// Gram matrix is then at most 1024 × 1024, and the passes it saves are over all of M.
constexpr Index kBlockRows = 1024;

}  // namespace

// The left steps whose unfoldings have at most kBlockRows rows, and are wide (a tall unfolding is split
// through QR, which the block does not do), are made at once from M in place. At least four columns per
// row: the gathered Gram matrix only pays for itself by the passes over M it saves.
std::size_t block_steps(const Factors& factors, const std::vector<Index>& caps, const SplitOptions& plain) {
  const std::size_t c = central_index(factors.n());
  const Index rows = factors.rows(), cols = factors.cols();
  std::size_t steps = 0;
  for (Index p = 1; steps < c; ++steps) {
    p *= factors.in_shape[steps] * factors.out_shape[steps];
    if (p > kBlockRows || 4 * p * p > rows * cols) break;
  }
  // Not up to a step the plain sweep would make more cheaply by its randomized range finder: the block
  // pays the whole Gram matrix and an eigensolve of the step's rows (~P²N/2 + 9m³ multiply-adds, P
  // the block's rows, N its columns, m the step's rows), the range finder ~8 passes of m·N·width.
  auto range_finder_cheaper = [&](std::size_t count) {
    Index p = 1, bond = 1;
    for (std::size_t k = 0; k + 1 < count; ++k) {
      p *= factors.in_shape[k] * factors.out_shape[k];
      bond = std::min(bond * factors.in_shape[k] * factors.out_shape[k], caps[k] > 0 ? caps[k] : p);
    }
    const std::size_t last = count - 1;
    const Index pair = factors.in_shape[last] * factors.out_shape[last];
    p *= pair;
    SplitOptions step = plain;  // the options the plain sweep would split this step with
    step.max_rank = caps[last];
    if (!takes_range_finder(bond * pair, step)) return false;
    const double m = static_cast<double>(bond * pair);
    const double width = static_cast<double>(range_finder_width(step.max_rank));
    const double columns = static_cast<double>(rows) * static_cast<double>(cols) / static_cast<double>(p);
    const double block = 0.5 * static_cast<double>(p) * static_cast<double>(p) * columns + 9 * m * m * m;
    return block > 8 * m * columns * width;
  };
  while (steps >= 1 && range_finder_cheaper(steps)) --steps;
  return steps;
}

namespace {

// Where M's sub-blocks start and where R's entries go, for the first K factor pairs.
struct BlockLayout {
  Index cols = 0;                  // J, M's row stride
  Index sub_rows = 0, sub_cols = 0;  // I' = Π_{m>=K} i_m and J' = Π_{m>=K} j_m: one sub-block
  std::vector<Index> source;       // P entries, interleaved (i_1 j_1 … i_K j_K) order: offset of row 0
  std::vector<Index> row_target;   // I' entries: offset of (i_{K+1}..i_n) in the interleaved rest
  std::vector<Index> col_target;   // J' entries: offset of (j_{K+1}..j_n) in the interleaved rest
};

BlockLayout block_layout(const Factors& f, std::size_t steps) {
  const std::size_t n = f.n();
  BlockLayout layout;
  layout.cols = f.cols();
  Index a_count = 1, b_count = 1;
  for (std::size_t m = 0; m < steps; ++m) {
    a_count *= f.in_shape[m];
    b_count *= f.out_shape[m];
  }
  layout.sub_rows = f.rows() / a_count;
  layout.sub_cols = layout.cols / b_count;
  // Odometer over (i_1, j_1, …, i_K, j_K), last digit fastest: the row order of G and of the chain.
  std::vector<Index> digit(2 * steps, 0);
  layout.source.resize(static_cast<std::size_t>(a_count * b_count));
  for (std::size_t p = 0; p < layout.source.size(); ++p) {
    Index a = 0, b = 0;
    for (std::size_t m = 0; m < steps; ++m) {
      a = a * f.in_shape[m] + digit[2 * m];
      b = b * f.out_shape[m] + digit[2 * m + 1];
    }
    layout.source[p] = a * layout.sub_rows * layout.cols + b * layout.sub_cols;
    for (std::size_t d = 2 * steps; d-- > 0;) {
      const Index extent = d % 2 == 0 ? f.in_shape[d / 2] : f.out_shape[d / 2];
      if (++digit[d] < extent) break;
      digit[d] = 0;
    }
  }
  // The rest is stored interleaved, (i_{K+1} j_{K+1} … i_n j_n) row-major: pair m's stride is the
  // product of the later pairs, and i_m's is j_m times that.
  std::vector<Index> i_stride(n, 0), j_stride(n, 0);
  Index stride = 1;
  for (std::size_t m = n; m-- > steps;) {
    j_stride[m] = stride;
    i_stride[m] = stride * f.out_shape[m];
    stride *= f.in_shape[m] * f.out_shape[m];
  }
  auto offsets = [&](const std::vector<Index>& shape, const std::vector<Index>& strides, Index count) {
    std::vector<Index> table(static_cast<std::size_t>(count), 0);
    for (Index x = 0; x < count; ++x) {
      Index rest = x, offset = 0;
      for (std::size_t m = n; m-- > steps;) {
        offset += (rest % shape[m]) * strides[m];
        rest /= shape[m];
      }
      table[static_cast<std::size_t>(x)] = offset;
    }
    return table;
  };
  layout.row_target = offsets(f.in_shape, i_stride, layout.sub_rows);
  layout.col_target = offsets(f.out_shape, j_stride, layout.sub_cols);
  return layout;
}

// Scratch memory for the block passes, kept by each thread between calls: the chunks below are
// allocated afresh for every chunk and every decomposition otherwise, and a fresh allocation of a few MB
// is a fresh set of pages from the kernel (glibc returns the top of its heap as soon as a call frees its
// working set), which took up to a sixth of a small decomposition's time in page faults. A slot holds
// at most max(2^18, one row of X_r) values (see chunk_rows). The worker threads that run_blocks forks
// end with the call and free theirs: only the calling thread's are reused.
template <class S>
S* scratch(int slot, Index size) {
  thread_local std::vector<S> buffers[2];
  std::vector<S>& buffer = buffers[slot];
  if (static_cast<Index>(buffer.size()) < size) buffer.resize(static_cast<std::size_t>(size));
  return buffer.data();
}

// X_r for r in [begin, begin + count): P × (count·J'), column block t holding row begin+t of every
// sub-block. Each row of X_r is one contiguous run of a row of M.
template <class T, class S>
MatrixMap<S> gather(const T* matrix, const BlockLayout& layout, Index begin, Index count) {
  const Index width = layout.sub_cols;
  const Index rows = static_cast<Index>(layout.source.size());
  MatrixMap<S> x(scratch<S>(0, rows * count * width), rows, count * width);
  for (std::size_t p = 0; p < layout.source.size(); ++p) {
    S* to = x.row(static_cast<Index>(p)).data();
    for (Index t = 0; t < count; ++t) {
      const T* from = matrix + layout.source[p] + (begin + t) * layout.cols;
      std::copy(from, from + width, to + t * width);  // converts float to double when S is double
    }
  }
  return x;
}

// Rows of X_r per chunk: enough for GEMMs of useful depth, few enough to stay in cache (~2 MB).
Index chunk_rows(const BlockLayout& layout) {
  const Index per_row = static_cast<Index>(layout.source.size()) * layout.sub_cols;
  return std::max<Index>(1, (Index{1} << 18) / std::max<Index>(per_row, 1));
}

// G = Σ_r X_r·X_rᵀ, accumulated in S, in blocks of r, one per thread.
template <class T, class S>
Eigen::MatrixXd block_gram(const T* matrix, const BlockLayout& layout) {
  const Index p = static_cast<Index>(layout.source.size());
  const double work = 0.5 * static_cast<double>(p) * p * layout.sub_rows * layout.sub_cols;
  const Index chunk = chunk_rows(layout);
  auto add = [&](auto& g, Index start, Index length) {
    for (Index r = start; r < start + length; r += chunk)
      g.template selfadjointView<Eigen::Lower>().rankUpdate(
          gather<T, S>(matrix, layout, r, std::min(chunk, start + length - r)));
  };
  using Full = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
  return detail::summed_gram<Full>(p, layout.sub_rows, detail::block_count(work), add).template cast<double>();
}

// R = Wᵀ·M_K (k × I'·J'), written in the interleaved layout of the rest.
template <class T>
Matrix<T> block_project(const T* matrix, const BlockLayout& layout, const Matrix<T>& w) {
  const Index k = w.cols();
  const Index width = layout.sub_cols;
  const Index rest = layout.sub_rows * width;
  Matrix<T> r(k, rest);
  const double work = static_cast<double>(k) * static_cast<double>(layout.source.size()) * rest;
  const int blocks = detail::block_count(work);
  const Index chunk = chunk_rows(layout);
  const Matrix<T> wt = w.transpose();
  detail::run_blocks(blocks, [&](int b) {
    const auto [start, length] = detail::block_range(layout.sub_rows, blocks, b);
    for (Index r0 = start; r0 < start + length; r0 += chunk) {
      const Index count = std::min(chunk, start + length - r0);
      const MatrixMap<T> x = gather<T, T>(matrix, layout, r0, count);
      MatrixMap<T> y(scratch<T>(1, k * x.cols()), k, x.cols());
      y.noalias() = wt * x;
      for (Index row = 0; row < k; ++row) {
        T* to = r.row(row).data();
        const T* from = y.row(row).data();
        for (Index t = 0; t < count; ++t) {
          T* base = to + layout.row_target[static_cast<std::size_t>(r0 + t)];
          for (Index c = 0; c < width; ++c) base[layout.col_target[static_cast<std::size_t>(c)]] = from[t * width + c];
        }
      }
    }
  });
  return r;
}

// Kept eigenvalues below this fraction of the step's energy are not trusted to be nonzero: a Gram
// eigenvalue carries an absolute error of ~ε·‖G‖ (ε of the precision G was formed in), so only well
// above that does sqrt(λ) give the singular value to the accuracy the row norms of R would.
template <class S>
constexpr double trusted_eigenvalue() {
  return std::is_same<S, float>::value ? 1e-4 : 1e-6;
}

// (C ⊗ I_pair)·V for V with rows (b, q): rows (p, q) of the result are C·V[(·, q), :] for each q. E is
// never formed: that would cost `pair` times the work (2e9 multiply-adds for a 1024-row block).
inline Eigen::MatrixXd chain_times(const Eigen::MatrixXd& chain, Index pair, const Eigen::MatrixXd& v) {
  using Strided = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
  const Index before = chain.rows(), bond = chain.cols(), cols = v.cols();
  Eigen::MatrixXd out(before * pair, cols);
  for (Index q = 0; q < pair; ++q) {
    Eigen::Map<Eigen::MatrixXd, 0, Strided> rows_out(out.data() + q, before, cols, Strided(out.rows(), pair));
    Eigen::Map<const Eigen::MatrixXd, 0, Strided> rows_in(v.data() + q, bond, cols, Strided(v.rows(), pair));
    rows_out.noalias() = chain * rows_in;
  }
  return out;
}

// Eᵀ·T·E with E = C ⊗ I_pair, T symmetric with rows and columns (p, q): first Y = T·E, whose column
// (b', q') is T's columns (·, q') times C's column b', then Eᵀ·Y row block by row block.
inline Eigen::MatrixXd chain_projected(const Eigen::MatrixXd& traced, const Eigen::MatrixXd& chain, Index pair) {
  using Strided = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
  const Index before = chain.rows(), bond = chain.cols(), side = traced.rows(), width = bond * pair;
  Eigen::MatrixXd y(side, width);
  for (Index q = 0; q < pair; ++q) {
    Eigen::Map<const Eigen::MatrixXd, 0, Strided> cols_in(traced.data() + q * side, side, before,
                                                          Strided(pair * side, 1));
    Eigen::Map<Eigen::MatrixXd, 0, Strided> cols_out(y.data() + q * side, side, bond, Strided(pair * side, 1));
    cols_out.noalias() = cols_in * chain;
  }
  Eigen::MatrixXd h(width, width);
  for (Index q = 0; q < pair; ++q) {
    Eigen::Map<const Eigen::MatrixXd, 0, Strided> rows_in(y.data() + q, before, width, Strided(side, pair));
    Eigen::Map<Eigen::MatrixXd, 0, Strided> rows_out(h.data() + q, bond, width, Strided(width, pair));
    rows_out.noalias() = chain.transpose() * rows_in;
  }
  return h;
}

template <class T, class S>
bool left_block_in(const T* matrix, const Factors& f, std::size_t steps, const std::vector<Index>& caps,
                   bool k_vector, LeftBlock<T>* out) {
  const BlockLayout layout = block_layout(f, steps);
  const Eigen::MatrixXd g = block_gram<T, S>(matrix, layout);
  const Index p_total = g.rows();
  const double zero_energy_fraction = std::pow(zero_threshold<T>(), 2);
  out->steps.clear();
  out->float_gram = std::is_same<S, float>::value;

  // C_j: the chain of the cores found so far, (i_1 j_1 … i_{j-1} j_{j-1}) × d_{j-1}.
  Eigen::MatrixXd chain = Eigen::MatrixXd::Ones(1, 1);
  for (std::size_t j = 0; j < steps; ++j) {
    const Index pair = f.in_shape[j] * f.out_shape[j];
    const Index before = chain.rows();
    const Index trailing = p_total / (before * pair);
    // Tr_{>j} G: the Gram matrix of M's unfolding at this step.
    const Index side = before * pair;
    Eigen::MatrixXd traced = Eigen::MatrixXd::Zero(side, side);
    for (Index t = 0; t < trailing; ++t)
      traced += Eigen::Map<const Eigen::MatrixXd, 0, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>(
          g.data() + t * (p_total + 1), side, side,
          Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(trailing * p_total, trailing));
    // With E = C_j ⊗ I_pair (rows (p, q), columns (b, q)) the step's Gram matrix is Eᵀ·Tr·E.
    const Eigen::MatrixXd h = chain_projected(traced, chain, pair);
    const double total = std::max(h.trace(), 0.0);
    const Index candidates = h.rows();
    const Index cap = caps[j];
    const bool capped = cap > 0 && cap < candidates;
    const Index k = capped ? cap : candidates;
    Eigen::VectorXd lambda;
    const Eigen::MatrixXd vectors = eigenvectors_descending(h, k, k_vector, &lambda);
    Split<T> s;
    if (j + 1 < steps) {
      if (lambda(k - 1) <= trusted_eigenvalue<S>() * total) return false;
      // What a cut drops is the trace less what it keeps (only the k kept eigenvalues are computed).
      // The subtraction loses ~ε·‖G‖ of it, far below the cancellation bar that follows.
      const double dropped = capped ? std::max(0.0, total - lambda.head(k).sum()) : 0.0;
      if (out->float_gram && capped && float_gram_too_fine(dropped, k, total)) return false;
      // The dropped eigenvalues each carry an absolute error of ~ε·‖G‖: a cut that drops almost nothing
      // (a cap at the rank, a Kronecker factor) would report that noise as its error, and as a cut. The
      // plain route measures the dropped part itself, as the last step below also leaves to it.
      if (capped && dropped < cancellation<S>() * total) return false;
      s.q = vectors.leftCols(k).template cast<T>();
      s.spectrum = lambda.head(k).cwiseSqrt();
      s.discarded = dropped;
      s.truncated = dropped > zero_energy_fraction * total;
    } else {
      // The last step: R from M, its rows' norms the singular values, as in the plain sweep.
      const Eigen::MatrixXd w = chain_times(chain, pair, vectors.leftCols(k));
      Matrix<T> r = block_project<T>(matrix, layout, w.template cast<T>());
      Matrix<T> basis = vectors.leftCols(k).template cast<T>();
      s = assemble_rows<T>(std::move(basis), std::move(r), cap, total, !capped);
      if (capped && out->float_gram && float_gram_too_fine(s.discarded, k, total)) return false;
      // A cut that drops almost nothing needs the dropped part measured, which the plain route does.
      if (capped && s.discarded < cancellation<T>() * total) return false;
    }
    chain = chain_times(chain, pair, s.q.template cast<double>());
    out->steps.push_back(std::move(s));
  }
  return true;
}

}  // namespace

template <class T>
bool left_block(const T* matrix, const Factors& factors, std::size_t steps, const std::vector<Index>& caps,
                double energy, const SplitOptions& options, LeftBlock<T>* out) {
  if (steps < 1 || steps >= factors.n() || caps.size() + 1 < factors.n())
    throw std::invalid_argument("mpo: left_block needs 1 <= steps < n and n-1 caps");
  // float32 data with a cap on the last fused step may form G in float32 (float32_gram.cpp).
  const Index last_cap = caps[steps - 1];
  Index p = 1;
  for (std::size_t m = 0; m < steps; ++m) p *= factors.in_shape[m] * factors.out_shape[m];
  if (float_gram_allowed<T>(options, last_cap, p) && float_gram_in_range(energy, factors.rows() * factors.cols()) &&
      left_block_in<T, float>(matrix, factors, steps, caps, options.k_vector, out))
    return true;
  return left_block_in<T, double>(matrix, factors, steps, caps, options.k_vector, out);
}

template bool left_block<float>(const float*, const Factors&, std::size_t, const std::vector<Index>&, double,
                                const SplitOptions&, LeftBlock<float>*);
template bool left_block<double>(const double*, const Factors&, std::size_t, const std::vector<Index>&, double,
                                 const SplitOptions&, LeftBlock<double>*);

}  // namespace mpo
