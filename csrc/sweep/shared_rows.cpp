// Shortcut of the scorer (SweepShortcuts::shared_rows): a left step's remainder read in place.
//
// A cut of a left step keeps the first `keep` rows of its split's R = Qᵀ·A, and that block is the next
// step's remainder. R is row-major, so those rows are the first keep·cols values of R, contiguous: the
// plain route copies them into a node of their own, which for MiniLM's 30522 × 384 embedding is 47 MB
// after the first step (whose cut keeps every row) and 27 MB again in the final build, each copy paid
// in memcpy and in page faults of fresh memory (together ~3 % of that search). Here the child reads them
// in place. The unfolding the next split sees is the same numbers at another address, so every result
// is bitwise the plain route's (tests/test_budget.py compares them).
//
// Why the view stays valid (see Node in include/mpo/sweep.hpp): nodes_ is a std::map, whose nodes never
// move; a node is made from its parent, whose split is never changed once made; and forget_all_but keeps
// every prefix of a path it keeps, so a parent is erased only with its children (the central-pair bound's
// node, which it also keeps, has been split, and a split node no longer reads its remainder).
#include "mpo/sweep.hpp"

namespace mpo {

template <class T>
bool Sweep<T>::share_rows(const Node& parent, Index keep, Node& child) {
  if (!shortcuts_.shared_rows) return false;
  child.shared = parent.split.r.data();
  child.shared_size = keep * parent.split.r.cols();
  ++taken_.shared_rows;
  return true;
}

template bool Sweep<float>::share_rows(const Node&, Index, Node&);
template bool Sweep<double>::share_rows(const Node&, Index, Node&);

}  // namespace mpo
