// Shortcut (Shortcuts::whole): outer steps a cap leaves whole. A step whose unfolding has as many rows
// (left of the central core) or columns (right of it) as its full bond, and whose cap does not cut that
// bond, keeps everything: its split is only a change of basis of the bond. When a cap cuts some other
// bond, order_bonds puts every bond in order at the end anyway, from the small cores. So a run of such
// steps from either end takes the identity as its core and leaves the remainder as it is, which saves
// the step's Gram matrix, eigensolve and product over the largest arrays of the sweep (on 3072×768 at
// cap 256, a third of the multiply-adds). The left steps are skipped only all together: the block route
// makes them cheaply from one Gram matrix of M otherwise. Zero singular values in a whole step are
// dropped by order_bonds, as the sweep would have dropped them.
#include "decompose/shortcuts.hpp"

#include <algorithm>

namespace mpo {

WholeSteps whole_steps(const Factors& factors, const std::vector<Index>& caps) {
  const std::size_t n = factors.n();
  const std::size_t c = central_index(n);
  const std::vector<Index> full = factors.full_bonds();
  bool cuts = false;
  for (std::size_t k = 0; k + 1 < n; ++k) cuts = cuts || (caps[k] > 0 && caps[k] < full[k]);
  WholeSteps out;
  if (!cuts) return out;  // nothing will be reordered at the end: every step must be split
  auto whole = [&](std::size_t bond, Index side) {
    return side == full[bond] && (caps[bond] == 0 || caps[bond] >= side);
  };
  out.left = c > 0;
  Index prefix = 1;  // rows of the left unfolding at step k, Π_{m<=k} i_m·j_m
  for (std::size_t k = 0; k < c && out.left; ++k) {
    prefix *= factors.in_shape[k] * factors.out_shape[k];
    out.left = whole(k, prefix);
  }
  Index suffix = 1;  // columns of the right unfolding at step k, Π_{m>=k} i_m·j_m
  for (std::size_t k = n - 1; k > c; --k) {
    suffix *= factors.in_shape[k] * factors.out_shape[k];
    if (!whole(k - 1, suffix)) break;
    ++out.right;
  }
  return out;
}

// Left of the central core (d_{k-1}·i_k·j_k) × d_k with d_k = d_{k-1}·i_k·j_k, right of it
// d_{k-1} × (i_k·j_k·d_k) with d_{k-1} = i_k·j_k·d_k: the identity either way.
template <class T>
Core<T> identity_core(Index left, Index rows, Index cols, Index right) {
  const Index side = std::max(left, right);
  return make_core<T>(left, rows, cols, right, Matrix<T>::Identity(side, side));
}

template Core<float> identity_core<float>(Index, Index, Index, Index);
template Core<double> identity_core<double>(Index, Index, Index, Index);

}  // namespace mpo
