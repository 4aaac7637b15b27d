// Shortcut of the scorer (SweepShortcuts::float32_gram): the central-pair bound in float32 for float data.
//
// The bound (python/mpo/_budget.py, central_pair) forms G(b) = Σ_{a<b} X_aᵀX_a from the rows of the last
// left split's R and the products X_a·V with the reference's eigenvectors. The plain route casts each
// chunk of float32 rows to double and accumulates there: on MiniLM's embedding G(b) alone is 3.3e9
// multiply-adds per reference. Here each chunk of rows is accumulated in float32 straight from R (half
// the time per multiply-add on AVX2, no cast copy) and the chunks are summed in double.
//
// Why the search's choices hold. A float32 chunk Gram matrix carries rounding of 1e-7 to 1e-6 of the
// chunk's energy (decompose's float32_gram measured the same, csrc/decompose/shortcuts.hpp), so every
// score ‖M‖² − (sum of the kept eigenvalues of G(b)) moves by that much of ‖M‖²: about the precision of
// the float32 data itself, where the candidates the search compares differ by 1e-4–1e-2 of ‖M‖² on
// MiniLM. The bound's products only rank candidates. Chunks of at most kChunkRows rows of X (whatever
// the width of a row of R) keep the float32 sums short.
//
// What the MPO keeps. The final build splits the last step from G(b) (central_reuse.cpp). A perturbation
// E of G(b) can lose at most 2k·‖E‖ of the energy a rank-k cut keeps, negligible while the cut discards
// much more, as decompose's float32 Gram route argues. So the build has the plain build's bonds and, to
// that rounding, its error; where eigenvalues of G(b) nearly tie at the cut, it may keep another
// subspace of equal energy, as decompose's float32 route may. G(b) is formed again in double, and the
// build is the plain one, where the cut discards less than kFloatGramDiscard·k of ‖X‖², does not cut,
// takes every eigenvector (kept_vectors off or not applicable), or a whole right step has a direction
// below 1e-5 of its energy. Data outside float32's product range (float_gram_in_range) never takes this
// route.
#include "mpo/sweep.hpp"

#include "decompose/shortcuts.hpp"

#include <algorithm>
#include <type_traits>

namespace mpo {

namespace {
// Rows of X (each row of R is `width` of them) accumulated in float32 before their sum goes to double.
constexpr Index kChunkRows = 2048;

// Rows of R per chunk of the bound's products, each row `width` rows of X (the products' sums run over
// side, not over rows, so this bounds memory only).
Index rows_of_r_per_chunk(Index width) { return std::max<Index>(1, kChunkRows / std::max<Index>(1, width)); }
}  // namespace

template <class T>
bool Sweep<T>::sums_in_float(double energy, Index count) const {
  if constexpr (!std::is_same<T, float>::value) {
    return false;
  } else {
    return shortcuts_.float32_gram && float_gram_in_range(energy, count);
  }
}

template <class T>
bool Sweep<T>::add_rows_in_float(Eigen::MatrixXd& gram, Index begin, Index end, double sign) {
  if (!bound_.in_float || !gram_in_float(central_rows(begin, end), sign, gram)) return false;
  if (end > begin) ++taken_.float32_gram;
  return true;
}

template <class T>
bool Sweep<T>::gram_in_float(const ConstMatrixMap<T>& x, double sign, Eigen::MatrixXd& gram) {
  if constexpr (!std::is_same<T, float>::value) {
    return false;
  } else {
    Eigen::MatrixXf chunk(x.cols(), x.cols());
    for (Index a = 0; a < x.rows(); a += kChunkRows) {
      chunk.setZero();
      chunk.selfadjointView<Eigen::Lower>().rankUpdate(x.middleRows(a, std::min(x.rows() - a, kChunkRows)).transpose());
      gram.template triangularView<Eigen::Lower>() += sign * chunk.cast<double>();
    }
    return true;
  }
}

template <class T>
bool Sweep<T>::bound_products_in_float(Index lo, Index hi, Index used, Eigen::MatrixXd* out) {
  if constexpr (!std::is_same<T, float>::value) {
    return false;
  } else {
    if (!bound_.in_float) return false;
    const Index width = nodes_.at(bound_.prefix).split.r.cols() / bound_.side;
    const Index step = rows_of_r_per_chunk(width);
    const Eigen::MatrixXf vectors = bound_.vectors.leftCols(used).template cast<float>();
    Eigen::MatrixXf projected;
    for (Index a0 = lo; a0 < hi; a0 += step) {
      const Index a1 = std::min(hi, a0 + step);
      projected.noalias() = central_rows(a0, a1) * vectors;
      for (Index a = a0; a < a1; ++a)
        out->row(a - lo) = projected.middleRows((a - a0) * width, width).cast<double>().cwiseAbs2().colwise().sum();
    }
    ++taken_.float32_gram;
    return true;
  }
}

template bool Sweep<float>::sums_in_float(double, Index) const;
template bool Sweep<double>::sums_in_float(double, Index) const;
template bool Sweep<float>::add_rows_in_float(Eigen::MatrixXd&, Index, Index, double);
template bool Sweep<double>::add_rows_in_float(Eigen::MatrixXd&, Index, Index, double);
template bool Sweep<float>::gram_in_float(const ConstMatrixMap<float>&, double, Eigen::MatrixXd&);
template bool Sweep<double>::gram_in_float(const ConstMatrixMap<double>&, double, Eigen::MatrixXd&);
template bool Sweep<float>::bound_products_in_float(Index, Index, Index, Eigen::MatrixXd*);
template bool Sweep<double>::bound_products_in_float(Index, Index, Index, Eigen::MatrixXd*);

}  // namespace mpo
