// The split of one unfolding (Algorithm 1, one step). See include/mpo/split.hpp for the routes.
#include "mpo/split.hpp"

#include "mpo/parallel.hpp"
#include "mpo/symmetric.hpp"

#include <Eigen/Householder>
#include <Eigen/QR>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace mpo {

template <class T>
double zero_threshold() {
  // Rows of R = Uᵀ·A that belong to A's null space come out at the rounding level of the products
  // that form them (a few ulps of ‖A‖). The smallest singular values whose joint energy is below this
  // fraction of ‖A‖_F are zeros. A decomposition and its re-canonicalisation make up to ~4n splits, so
  // the sum of all drops stays far inside the rebuild targets (1e-12 in double, 1e-5 in float).
  return (std::is_same<T, float>::value ? 4.0 : 256.0) * static_cast<double>(std::numeric_limits<T>::epsilon());
}

namespace {

template <class T>
double squared_norm(const Eigen::Ref<const Matrix<T>>& a) {
  // Accumulated in double: float32 sums over millions of entries would lose digits the bound needs.
  double total = 0;
  for (Index i = 0; i < a.rows(); ++i) total += a.row(i).template cast<double>().squaredNorm();
  return total;
}

// Which candidate singular directions a split keeps: ordered by energy (λ²), zeros dropped (see
// zero_threshold), then cut to the cap. Bonds never vanish: at least one direction stays.
struct Selection {
  std::vector<double> energy;  // λ² per candidate
  std::vector<Index> order;    // candidates by decreasing energy
  Index keep = 0;
  Index nonzero = 0;
  double zero_energy = 0;
  bool sorted = true;  // order is the identity
};

template <class T>
Selection select(std::vector<double> energy, Index cap, double total) {
  Selection sel;
  const Index k = static_cast<Index>(energy.size());
  sel.order.resize(energy.size());
  std::iota(sel.order.begin(), sel.order.end(), Index{0});
  std::stable_sort(sel.order.begin(), sel.order.end(),
                   [&](Index x, Index y) { return energy[x] > energy[y]; });
  for (Index i = 0; i < k; ++i) sel.sorted = sel.sorted && sel.order[i] == i;
  sel.energy = std::move(energy);
  sel.zero_energy = std::pow(zero_threshold<T>(), 2) * total;
  Index keep = k;
  double tail = 0;
  while (keep > 0 && tail + sel.energy[sel.order[keep - 1]] <= sel.zero_energy)
    tail += sel.energy[sel.order[--keep]];
  sel.nonzero = keep;
  if (cap > 0) keep = std::min(keep, cap);
  sel.keep = std::max<Index>(keep, 1);
  return sel;
}

// Fills spectrum and discarded energy. With every candidate present (A = Q·W, Q square orthogonal)
// the error of dropping candidates is exactly their own energy; otherwise ‖A‖² minus what is kept.
template <class T>
void account(const Selection& sel, double total, bool all_present, Split<T>* out) {
  out->spectrum.resize(sel.keep);
  double kept = 0, dropped = 0;
  for (Index i = 0; i < sel.keep; ++i) {
    out->spectrum[i] = std::sqrt(sel.energy[sel.order[i]]);
    kept += sel.energy[sel.order[i]];
  }
  for (std::size_t i = static_cast<std::size_t>(sel.keep); i < sel.order.size(); ++i)
    dropped += sel.energy[sel.order[i]];
  out->discarded = all_present ? dropped : std::max(0.0, total - kept);
  out->truncated = sel.keep < sel.nonzero || (!all_present && out->discarded > sel.zero_energy);
}

// Left split from candidates: columns of `basis` (Q) and rows of `w` (R = Qᵀ·A).
template <class T>
Split<T> assemble_rows(Matrix<T>&& basis, Matrix<T>&& w, Index cap, double total, bool all_present) {
  std::vector<double> energy(static_cast<std::size_t>(w.rows()));
  for (Index i = 0; i < w.rows(); ++i) energy[i] = w.row(i).template cast<double>().squaredNorm();
  if (all_present) total = std::accumulate(energy.begin(), energy.end(), 0.0);
  const Selection sel = select<T>(std::move(energy), cap, total);
  Split<T> out;
  account<T>(sel, total, all_present, &out);
  const Index keep = sel.keep;
  if (sel.sorted) {
    // The usual case: no reordering, so the (large) R is moved or cut, never gathered.
    out.q = basis.leftCols(keep);
    if (keep == w.rows()) {
      out.r = std::move(w);
    } else {
      w.conservativeResize(keep, Eigen::NoChange);
      out.r = std::move(w);
    }
    return out;
  }
  out.q.resize(basis.rows(), keep);
  out.r.resize(keep, w.cols());
  for (Index i = 0; i < keep; ++i) {
    out.q.col(i) = basis.col(sel.order[i]);
    out.r.row(i) = w.row(sel.order[i]);
  }
  return out;
}

// Right split from candidates: columns of `l` (L = A·V) and rows of `basis_t` (Qᵀ = Vᵀ).
template <class T>
Split<T> assemble_columns(Matrix<T>&& l, Matrix<T>&& basis_t, Index cap, double total, bool all_present) {
  Eigen::VectorXd energy_v = Eigen::VectorXd::Zero(l.cols());
  for (Index i = 0; i < l.rows(); ++i) energy_v += l.row(i).transpose().template cast<double>().cwiseAbs2();
  std::vector<double> energy(energy_v.data(), energy_v.data() + energy_v.size());
  if (all_present) total = energy_v.sum();
  const Selection sel = select<T>(std::move(energy), cap, total);
  Split<T> out;
  account<T>(sel, total, all_present, &out);
  const Index keep = sel.keep;
  if (sel.sorted && keep == l.cols()) {
    out.q = std::move(l);
    out.r = std::move(basis_t);
    return out;
  }
  out.q.resize(l.rows(), keep);
  out.r.resize(keep, basis_t.cols());
  for (Index i = 0; i < keep; ++i) {
    out.q.col(i) = l.col(sel.order[i]);
    out.r.row(i) = basis_t.row(sel.order[i]);
  }
  return out;
}

// The Gram matrix of A's rows, formed in double: for float32 data a float32 Gram matrix would put
// noise of ~1e-5·σ_max into the small singular values and the bases that separate them.
template <class T, class A>
Matrix<double> gram_double(const A& a) {
  if constexpr (std::is_same<T, double>::value) {
    return gram<double>(a);
  } else {
    return gram<double>(a.template cast<double>());
  }
}

// Eigenvectors of a symmetric matrix, largest eigenvalue first: the `count` leading ones (a capped split
// needs no more; see symmetric.hpp). The eigensolver always runs in double: orthonormality of the basis
// to double rounding is what makes float32 rebuilds exact to 1e-6.
Eigen::MatrixXd eigenvectors_descending(const Eigen::MatrixXd& gram, Index count, Eigen::VectorXd* values = nullptr) {
  SymmetricEigen eigen = symmetric_eigen(gram, count);
  if (values) *values = std::move(eigen.values);
  return std::move(eigen.vectors);
}

// Below this fraction of ‖A‖² a discarded energy found as ‖A‖² − kept has lost its digits to
// cancellation (the kept energy carries the rounding of the products that formed it, ~ε·‖A‖²); it is
// then summed from the discarded part itself. Keeps the bound's relative accuracy near 1e-3 or better.
template <class T>
constexpr double cancellation() {
  return std::is_same<T, float>::value ? 1e-3 : 1e-6;
}

// A capped float32 split may form its Gram matrix in float32: half the time of the double one, and the
// cast copy disappears. Rounding then perturbs the Gram matrix by ~1e-7·‖A‖² (measured; ≤ 1e-6 assumed),
// and a perturbation E can lose at most 2k·‖E‖ of the energy a rank-k cut keeps. That is negligible
// against the energy the cut discards as long as the discarded energy is large, which is what a cap is
// for; below this fraction (times k) of ‖A‖² the split is redone with the double Gram matrix, so the cut
// stays within 1 % of the optimal error.
constexpr double kFloatGramDiscard = 1e-4;

template <class T>
bool float_gram_allowed(Index cap, Index m) {
  return std::is_same<T, float>::value && cap > 0 && cap < m;
}

// ...and only for data whose float32 products neither overflow nor underflow: every entry of a Gram
// matrix and of its partial sums is at most ‖A‖², and products below FLT_MIN (~1.2e-38) lose up to
// that much each, which over `count` entries stays below 1e-7·‖A‖² when the mean square is above 1e-30.
// Outside (float32 data scaled to ~1e±19) the float32 Gram matrix is inf/NaN or all zeros.
inline bool float_gram_in_range(double total, Index count) {
  return total <= 1e36 && total >= 1e-30 * static_cast<double>(count);
}

// The split through the Gram matrix of A's short side, m of them: its rows (Side::rows, A wide: A = Q·R
// with Q = U, the eigenvectors, and R = Uᵀ·A) or its columns (Side::columns, A tall: A = L·Qᵀ with
// Qᵀ = Vᵀ and L = A·V, no transposed copy of A ever made: the right sweep's unfoldings are tall and
// large). Only the eigenvectors that can survive the cap are computed and turned into R or L.
enum class Side { rows, columns };

template <class T, Side side>
Split<T> gram_split(const Eigen::Ref<const Matrix<T>>& a, Index cap, bool float_gram) {
  constexpr bool by_rows = side == Side::rows;
  const Index m = by_rows ? a.rows() : a.cols();
  const bool capped = cap > 0 && cap < m;
  const Index k = capped ? cap : m;
  // ‖A‖²: from the Gram matrix's trace, except where it decides whether float32 can hold that matrix.
  double total = 0;
  if (float_gram) {
    total = squared_norm<T>(a);
    float_gram = float_gram_in_range(total, a.size());
  }
  auto gram_of = [&](const auto& x) -> Eigen::MatrixXd {
    if (float_gram) return gram<T>(x).template cast<double>();
    return gram_double<T>(x);
  };
  const Eigen::MatrixXd g = by_rows ? gram_of(a) : gram_of(a.transpose());
  if (capped && !float_gram) total = g.trace();
  Eigen::MatrixXd vectors = eigenvectors_descending(g, k);
  Matrix<T> basis = vectors.template cast<T>();
  auto assemble = [&](Matrix<T>&& b, double energy, bool all_present) {
    if constexpr (by_rows) {
      Matrix<T> w = multiply<T>(b.transpose(), a);
      return assemble_rows<T>(std::move(b), std::move(w), cap, energy, all_present);
    } else {
      Matrix<T> l = multiply<T>(a, b);
      Matrix<T> basis_t = b.transpose();
      return assemble_columns<T>(std::move(l), std::move(basis_t), cap, energy, all_present);
    }
  };
  if (!capped) return assemble(std::move(basis), 0.0, true);
  Split<T> out = assemble(std::move(basis), total, false);
  if (float_gram && out.discarded < kFloatGramDiscard * static_cast<double>(k) * total)
    return gram_split<T, side>(a, cap, false);
  if (out.discarded < cancellation<T>() * total) {
    // A cut that drops almost nothing: the dropped part is measured from the other eigenvectors. They
    // must be the complement of the kept ones, so both come from one full solve: the k-vector route's
    // basis is orthogonal to the full solver's others only to ~ε·‖G‖/gap, and with gaps below ε·‖G‖
    // that missed part was all of what is dropped here (error 0.14 % above the bound).
    vectors = eigenvectors_descending(g, m);
    out = assemble(vectors.leftCols(k).template cast<T>(), total, false);
    const Matrix<T> others = vectors.rightCols(m - k).template cast<T>();
    out.discarded = by_rows ? squared_norm<T>(multiply<T>(others.transpose(), a)) : squared_norm<T>(multiply<T>(a, others));
    out.truncated = out.discarded > std::pow(zero_threshold<T>(), 2) * total;
  }
  return out;
}

template <class T>
Matrix<T> orthonormal_basis(const Matrix<T>& y) {
  Eigen::HouseholderQR<Matrix<T>> qr(y);
  Matrix<T> q = qr.householderQ() * Matrix<T>::Identity(y.rows(), y.cols());
  return q;
}

// Sum of the `rank` largest eigenvalues of B·Bᵀ, i.e. the energy a rank-`rank` cut of B keeps, and the
// eigenvectors (descending).
template <class T>
double top_energy(const Matrix<T>& b, Index rank, Eigen::MatrixXd* vectors) {
  Eigen::VectorXd values;
  *vectors = eigenvectors_descending(gram<T>(b).template cast<double>(), rank, &values);
  return values.head(rank).sum();
}

// Wide A, cap far below m: randomized range finder with power iterations (Halko, Martinsson, Tropp
// 2011). Each iteration costs two passes over A. It stops when one more iteration changes the kept
// energy by less than 1 % of the discarded energy, so the rank-`cap` error is within a fraction of a
// percent of the optimal one; without convergence it returns false and the caller takes the exact route.
template <class T>
bool randomized_split(const Eigen::Ref<const Matrix<T>>& a, Index cap, const SplitOptions& options,
                      Split<T>* out) {
  const Index m = a.rows();
  const Index width = std::min(m, range_finder_width(cap));
  std::mt19937_64 engine(options.seed);
  std::normal_distribution<double> normal;
  // Start from a random basis of R^m: Y = A·(Aᵀ·Ω) is already one power iteration and needs only m·l
  // random numbers instead of N·l.
  Matrix<T> q(m, width);
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < width; ++j) q(i, j) = static_cast<T>(normal(engine));
  q = orthonormal_basis<T>(q);

  const double total = squared_norm<T>(a);
  Matrix<T> b;
  Eigen::MatrixXd vectors;
  double previous = -1;
  for (int iteration = 0; iteration <= options.max_power_iterations; ++iteration) {
    b = multiply<T>(q.transpose(), a);
    const double kept = top_energy<T>(b, cap, &vectors);
    const double tail = std::max(0.0, total - kept);
    if (previous >= 0 && kept - previous <= 0.01 * tail + std::pow(zero_threshold<T>(), 2) * total) {
      // B = Qᵀ·A; its eigenbasis V (descending) turns Q·V into the left singular vectors.
      const Matrix<T> rotation = vectors.template cast<T>();
      *out = assemble_rows<T>(q * rotation, multiply<T>(rotation.transpose(), b), cap, total, false);
      out->randomized = true;
      if (out->discarded < cancellation<T>() * total) {
        // Cap at or above the numerical rank: measure the residual A − Q·R itself.
        Matrix<T> residual = a;
        residual.noalias() -= multiply<T>(out->q, out->r);
        out->discarded = squared_norm<T>(residual);
        out->truncated = out->discarded > std::pow(zero_threshold<T>(), 2) * total;
      }
      return true;
    }
    previous = kept;
    q = orthonormal_basis<T>(multiply<T>(a, b.transpose()));
  }
  return false;
}

}  // namespace

template <class T>
Split<T> left_split(const Eigen::Ref<const Matrix<T>>& a, const SplitOptions& options) {
  const Index m = a.rows();
  const Index n = a.cols();
  if (m == 0 || n == 0) throw std::invalid_argument("mpo: cannot split an empty unfolding");
  if (options.max_rank < 0) throw std::invalid_argument("mpo: max_rank must be >= 0");
  if (m > n) {
    // Tall: A = Q0·R0 with R0 square, then split R0; Q0 stays orthonormal, so does Q0·Q1.
    Eigen::HouseholderQR<Matrix<T>> qr(a);
    Matrix<T> q0 = qr.householderQ() * Matrix<T>::Identity(m, n);
    Matrix<T> r0 = qr.matrixQR().topRows(n).template triangularView<Eigen::Upper>();
    Split<T> inner = left_split<T>(r0, options);
    inner.q = multiply<T>(q0, inner.q);
    return inner;
  }
  const Index cap = options.max_rank;
  if (takes_range_finder(m, options)) {
    Split<T> result;
    if (randomized_split<T>(a, cap, options, &result)) return result;
  }
  return gram_split<T, Side::rows>(a, cap, float_gram_allowed<T>(cap, m));
}

template <class T>
Split<T> right_split(const Eigen::Ref<const Matrix<T>>& a, const SplitOptions& options) {
  if (a.rows() == 0 || a.cols() == 0) throw std::invalid_argument("mpo: cannot split an empty unfolding");
  const Index cap = options.max_rank;
  if (a.rows() >= a.cols() && !takes_range_finder(a.cols(), options))
    return gram_split<T, Side::columns>(a, cap, float_gram_allowed<T>(cap, a.cols()));
  // Otherwise split the transpose from the left: Aᵀ = Q·R  =>  A = Rᵀ·Qᵀ.
  const Matrix<T> transposed = a.transpose();
  Split<T> s = left_split<T>(transposed, options);
  Split<T> out;
  out.q = s.r.transpose();
  out.r = s.q.transpose();
  out.spectrum = std::move(s.spectrum);
  out.discarded = s.discarded;
  out.truncated = s.truncated;
  out.randomized = s.randomized;
  return out;
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
                   LeftBlock<T>* out) {
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
    const Index before = chain.rows(), bond = chain.cols();
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
    const Eigen::MatrixXd vectors = eigenvectors_descending(h, k, &lambda);
    Split<T> s;
    if (j + 1 < steps) {
      if (lambda(k - 1) <= trusted_eigenvalue<S>() * total) return false;
      // What a cut drops is the trace less what it keeps (only the k kept eigenvalues are computed).
      // The subtraction loses ~ε·‖G‖ of it, far below the cancellation bar that follows.
      const double dropped = capped ? std::max(0.0, total - lambda.head(k).sum()) : 0.0;
      if (out->float_gram && capped && dropped < kFloatGramDiscard * static_cast<double>(k) * total) return false;
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
      if (capped && out->float_gram && s.discarded < kFloatGramDiscard * static_cast<double>(k) * total) return false;
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
                double energy, LeftBlock<T>* out) {
  if (steps < 1 || steps >= factors.n() || caps.size() + 1 < factors.n())
    throw std::invalid_argument("mpo: left_block needs 1 <= steps < n and n-1 caps");
  // float32 data with a cap on the last fused step may form G in float32 (see kFloatGramDiscard).
  const Index last_cap = caps[steps - 1];
  Index p = 1;
  for (std::size_t m = 0; m < steps; ++m) p *= factors.in_shape[m] * factors.out_shape[m];
  if (float_gram_allowed<T>(last_cap, p) && float_gram_in_range(energy, factors.rows() * factors.cols()) &&
      left_block_in<T, float>(matrix, factors, steps, caps, out))
    return true;
  return left_block_in<T, double>(matrix, factors, steps, caps, out);
}

template double zero_threshold<float>();
template double zero_threshold<double>();
template Split<float> left_split<float>(const Eigen::Ref<const Matrix<float>>&, const SplitOptions&);
template Split<double> left_split<double>(const Eigen::Ref<const Matrix<double>>&, const SplitOptions&);
template Split<float> right_split<float>(const Eigen::Ref<const Matrix<float>>&, const SplitOptions&);
template Split<double> right_split<double>(const Eigen::Ref<const Matrix<double>>&,
                                           const SplitOptions&);
template bool left_block<float>(const float*, const Factors&, std::size_t, const std::vector<Index>&, double,
                                LeftBlock<float>*);
template bool left_block<double>(const double*, const Factors&, std::size_t, const std::vector<Index>&, double,
                                 LeftBlock<double>*);

}  // namespace mpo
