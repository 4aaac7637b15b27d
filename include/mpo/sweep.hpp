// Algorithm 1 under any per-bond max_bond, scored exactly: what the budget search of decompose(ratio=)
// drives (python/mpo/_budget.py keeps only the search).
//
// Every cut of the sweep is an orthogonal projection of the current remainder, and later steps act
// inside the kept subspace, so the pieces the steps discard are mutually orthogonal and
//
//     ‖M − MPO‖_F² = Σ over steps of the λ² that step's cut discards,
//
// exactly, with no bound and no dense rebuild. A search can therefore score a max_bond vector by
// replaying the sweep, and vectors that agree on their first steps share those steps.
//
// Sweep makes each step's split once, uncapped, with the sweep's own left_split / right_split (one
// zero rule, that of split.cpp), and cuts it to any max_bond by keeping its leading singular directions:
// that is the optimal cut (Eckart–Young), the one a capped split makes, so a cut is a slice and not a
// new split. Splits are cached by the max_bond of the steps before them. No shortcut of decompose()
// (block or whole steps, randomized or float32 Gram routes) is taken: the search scores the plain sweep.
// The scorer has six shortcuts of its own (SweepShortcuts below), which give the plain sweep's scores
// and MPO up to rounding: the last step scored from eigenvalues alone, the final build's last step from
// the central-pair bound's Gram matrix, only the eigenvectors that the bound reads and the build keeps,
// left-step remainders read in place (bitwise the plain results), the bound of float32 data summed in
// float32 (scores and error to float32 rounding, the data's own; at a near-tie of eigenvalues its build
// may keep another subspace of equal energy), and the right steps of a scoring taken in the Gram matrix
// of the last left step's remainder.
#pragma once

#include "mpo/decompose.hpp"
#include "mpo/split.hpp"
#include "mpo/types.hpp"

#include <map>
#include <set>
#include <vector>

namespace mpo {

// The scorer's shortcuts, each in its own file of csrc/sweep/ behind its own switch (all on by default).
// Each gives the plain sweep's result up to rounding; tests/test_budget.py compares each with the plain
// route and asserts it was taken.
struct SweepShortcuts {
  // evaluate(): the last step's cut scored from the eigenvalues of its Gram matrix alone, without its
  // eigenvectors and its remainder (csrc/sweep/values_only.cpp).
  bool values_only = true;
  // build(): the last step split from the central-pair bound's Gram matrix G(b), and with the bound's own
  // eigenvectors when b is its reference, instead of forming that matrix again; the whole right steps
  // before it become identity cores (csrc/sweep/central_reuse.cpp).
  bool reuse_bound = true;
  // central_reference() and build(): only the eigenvectors of G(b) that are used, the `count` the bound
  // reads and the max_bond the last step keeps, by the k-vector route where it pays (a full solver pays
  // ~6m³ flops for the rotations of all m); the build's last step projects X on the kept ones only and
  // reads the discarded energy off ‖X‖² (csrc/sweep/kept_vectors.cpp).
  bool kept_vectors = true;
  // advance(): a left step's remainder (the first rows of its parent's R, contiguous) read in place
  // instead of copied; on MiniLM's embedding that copy was 47 MB per search, and its page faults and
  // memcpy ~3 % of the search (csrc/sweep/shared_rows.cpp). Bitwise the same results.
  bool shared_rows = true;
  // central_reference(), central_probe(), central_bound() and build() of float32 data: the central-pair
  // bound's Gram matrices G(b) and its products X_a·V accumulated in float32 and summed in double, where
  // the plain route casts every row of R to double first: half the multiply-add time, no cast copies
  // (csrc/sweep/float32_gram.cpp). Scores and the build's error to float32 rounding; the build forms
  // G(b) in double again where its cut discards too little for that rounding (decompose's float32_gram
  // rule), does not cut, needs every eigenvector, or a whole right step has a direction near it.
  bool float32_gram = true;
  // evaluate(): the right steps scored in the Gram matrix of the last left step's remainder (partial
  // traces and projections of one side × side matrix, the bound's G(b) where it holds the same rows),
  // instead of splitting each right step and forming the last step's Gram matrix
  // (csrc/sweep/right_from_gram.cpp).
  bool right_from_gram = true;
};

// How often each shortcut was taken.
struct SweepShortcutCounts {
  long values_only = 0;    // last cuts scored from eigenvalues alone
  long reuse_bound = 0;    // builds whose last step came from the bound's Gram matrix
  long reuse_vectors = 0;  // of those, builds that reused the bound's eigenvectors too
  long kept_vectors = 0;   // references and builds that computed or used only the kept eigenvectors
  long shared_rows = 0;    // left-step remainders read in place from their parent's R
  long float32_gram = 0;   // Gram updates and bound products of G(b) accumulated in float32
  long float32_gram_in_double = 0;  // of the builds that started from a float32 G(b), those that formed it
                                    // again in double (a cut too fine for float32 rounding, or the like)
  long right_from_gram = 0;  // evaluations whose right steps were scored in the remainder's Gram matrix
};

template <class T>
class Sweep {
 public:
  using value_type = T;

  // Not copyable: with shared_rows a node reads its parent's R in place, and a copy's nodes would point
  // into the original's.
  Sweep(const Sweep&) = delete;
  Sweep& operator=(const Sweep&) = delete;

  // The sweep of the row-major rows × cols matrix at `data` divided by `unit` (copied, interleaved; a
  // power of two makes that exact, and budget mode passes one near the largest entry so that Gram matrices
  // cannot overflow, without a scaled copy of its own). Throws std::invalid_argument for factors that do
  // not multiply to the matrix's sides, n < 2, or a unit that is not positive and finite.
  Sweep(const T* data, Index rows, Index cols, const Factors& factors, const SweepShortcuts& shortcuts = {},
        double unit = 1.0);

  const SweepShortcutCounts& shortcuts_taken() const { return taken_; }

  // Bonds in the order the sweep cuts them: 0..c-1 from the left, then n-2 down to c from the right
  // (c = (n-1)/2, the central index).
  const std::vector<std::size_t>& steps() const { return steps_; }

  // ‖M‖_F² of the swept matrix.
  double energy() const { return energy_; }

  // Multiply-adds of the Gram matrices of the splits made so far (a search's measure of its work).
  double work() const { return work_; }

  // The sweep with these n-1 max_bond entries (0 = uncapped): the bonds it keeps, by bond index, and
  // its exact squared error ‖M − MPO‖_F². Throws std::invalid_argument for a wrong count or sign.
  std::vector<Index> evaluate(const std::vector<Index>& max_bond, double* squared_error);

  // The sweep's MPO with these max_bond entries, as decompose() returns it: mixed canonical form
  // around the central index, every bond ordered by the spectrum of the MPO's own unfolding
  // (order_bonds) when something was cut, truncation_errors ε_k of each bond's cut.
  Decomposition<T> build(const std::vector<Index>& max_bond);

  // Drop the cached splits off the path of `max_bond` (each holds up to a remainder's size).
  void forget_all_but(const std::vector<Index>& max_bond);

  // The uncapped split of the last left step (bond c-1) on the path of `max_bond` (only the max_bond of
  // steps 0..c-2 are read): its R, every nonzero candidate row, in descending norm. A cut of bond c-1 to
  // b keeps R's first b rows as the remainder, so the search can bound the sweep's error for every b at
  // once from these rows (python/mpo/_budget.py, docs/ALGORITHMS.md §8). Throws std::invalid_argument
  // for n < 3 (no left step before the central core's) or a wrong max_bond.
  const Matrix<T>& last_left_rows(const std::vector<Index>& max_bond);
  // How many rows last_left_rows(max_bond) has (the split made, nothing copied).
  Index last_left_count(const std::vector<Index>& max_bond) { return last_left_rows(max_bond).rows(); }

  // The central-pair bound of budget mode's search (python/mpo/_budget.py, docs/ALGORITHMS.md §8), on
  // the rows of last_left_rows(max_bond), row a read as the matrix X_a (width × side, row-major, width =
  // i_c·j_c). G(b) = Σ_{a<b} X_aᵀX_a is the column Gram matrix of the last step's unfolding when bond
  // c-1 keeps b rows and the steps between keep their whole bonds. Everything is summed in double (float32
  // data's chunks of rows in float32 first, with float32_gram), on this thread: the search calls it a few
  // times on small matrices, where a threaded BLAS only spins.
  //
  // central_reference makes b the reference: G(b) is formed from the previous reference's by the rows
  // between (or from scratch for new rows or side) and its eigenvalues returned, descending; its
  // eigenvectors are kept for central_bound. Only the `count` largest are returned and kept (0 = all
  // side; with kept_vectors off all are computed and the first `count` returned). Throws
  // std::invalid_argument for b, side or count out of range.
  Spectrum central_reference(const std::vector<Index>& max_bond, Index side, Index b, Index count = 0);
  // W[a - lo, j] = ‖X_a v_j‖² for rows a in [lo, hi) and the reference's first `used` eigenvectors
  // (used <= the count of the reference).
  Eigen::MatrixXd central_bound(Index lo, Index hi, Index used);
  // The eigenvalues of G(b), descending; the reference is unchanged.
  Spectrum central_probe(Index b);

 private:
  // The remainder before one step, and (once made) that step's uncapped split.
  struct Node {
    Matrix<T> remainder;  // 1 × size, read as the step's unfolding (empty while `shared` is set)
    // shared_rows: the remainder is the first `shared_size` values of the parent node's R, read in place.
    // The parent outlives it: nodes_ is a std::map (its nodes never move), a node is made on its parent's
    // path, forget_all_but keeps every prefix of a kept path, and the parent's split is never changed.
    const T* shared = nullptr;
    Index shared_size = 0;
    Index left = 1, right = 1;  // the bonds around it (d of the cores cut so far on either side)
    bool has_split = false;
    bool counted = false;  // its split's work is in work_ (made, or scored by values_only)
    Split<T> split;  // q: m × r (L for a right step), r: r × N (Qᵀ for a right step)
    Spectrum energies;  // values_only: the eigenvalues of the last step's Gram matrix, descending
  };
  using Path = std::vector<Index>;  // max_bond of the steps made, in step order

  Path ordered(const std::vector<Index>& max_bond) const;
  bool from_left(std::size_t step) const { return step < central_; }
  Index pair(std::size_t bond) const { return factors_.in_shape[bond] * factors_.out_shape[bond]; }
  Node& split_at(const Path& prefix);
  Node& advance(const Path& prefix, Index cap);
  Index kept(const Node& node, Index cap) const;
  // The remainder before a node's step (owned or shared_rows' view of the parent's R) and its size.
  static const T* remainder_data(const Node& node) { return node.shared ? node.shared : node.remainder.data(); }
  static Index remainder_size(const Node& node) { return node.shared ? node.shared_size : node.remainder.size(); }
  // shared_rows.cpp: the left step's child keeps the parent's first `keep` rows of R in place; false (the
  // caller copies them) where the switch is off.
  bool share_rows(const Node& parent, Index keep, Node& child);
  double discarded(const Node& node, Index keep) const;
  void count_work(Node& node, Index rows);
  // values_only.cpp: the last step's cut (kept bond, discarded λ²) from its Gram matrix's eigenvalues;
  // false where the plain split must decide (shortcut off, split cached, no cap or a cap near the zeros).
  bool last_cut_from_values(Node& node, Index cap, Index* keep, double* discarded);
  // A right step (or the last) on the path of `caps` after the node at `prefix` (the last left cut), as the
  // plain route would make it: its node's path, its unfolding's rows and columns, the bond it keeps (the
  // cap within the short side: what the plain split keeps where no zero is near) and count_work's count.
  struct RightStep {
    Path path;
    Index rows = 0, columns = 0, keep = 0;
    double work = 0;
  };
  // right_from_gram.cpp: those steps, computed without splitting (empty where `prefix` is not a made node
  // after the last left step).
  std::vector<RightStep> right_plan(const Path& prefix, const Path& caps) const;
  // right_from_gram.cpp: evaluate()'s right steps from the node at `prefix` (after the last left cut),
  // scored in its Gram matrix: fills their kept bonds into `bonds` and what they and the last step
  // discard into `discarded`; false (nothing written) where it does not apply.
  bool right_steps_from_gram(const Path& prefix, const Path& caps, std::vector<Index>& bonds, double* discarded);
  // central_reuse.cpp: build()'s right steps (bonds n-2 … c, cores c … n-1) from the central-pair bound,
  // for the path `caps` whose left steps end at `prefix`; false (nothing written) where it does not apply.
  bool build_right_from_bound(const Path& caps, const Path& prefix, bool cut_before, Decomposition<T>& out);
  Eigen::MatrixXd bound_gram_at(Index b);
  // kept_vectors.cpp: the last step's eigenvectors of G(b) (lower triangle `gram`) for
  // build_right_from_bound, only the `cap` it keeps, and the eigenvalues' sum beyond them (`tail`), where
  // that gives the plain split's cut; false (the caller takes every vector) where it does not apply.
  // `own`: `gram` is the bound's G(b), so at its reference b its eigenvectors may be reused.
  bool kept_eigenvectors(const Eigen::MatrixXd& gram, Index b, Index cap, bool own, Eigen::MatrixXd* vectors,
                         double* tail, bool* reused);
  // The reference's eigenpairs from bound_.gram: the `count` largest by the k-vector route with
  // kept_vectors (where it pays), else all of them (the plain route).
  void reference_eigen(Index count);

  // The central-pair bound's state: whose rows, the reference b, G(b) (lower triangle) and its eigenpairs
  // (the `count` largest, or all side of them).
  struct CentralBound {
    Path prefix;
    Index side = 0, b = 0;
    bool in_float = false;  // float32_gram: G(b) and the products accumulated in float32
    Eigen::MatrixXd gram, vectors;
    Eigen::VectorXd values;
  };
  Path last_left_prefix(const std::vector<Index>& max_bond);
  ConstMatrixMap<T> central_rows(Index begin, Index end) const;
  void add_rows(Eigen::MatrixXd& gram, Index begin, Index end, double sign);
  // float32_gram.cpp: add_rows and central_bound's products in float32 for float data while
  // bound_.in_float; false (the caller takes the double route) where it does not apply.
  bool add_rows_in_float(Eigen::MatrixXd& gram, Index begin, Index end, double sign);
  bool bound_products_in_float(Index lo, Index hi, Index used, Eigen::MatrixXd* out);
  // Whether `count` values of this energy may be summed in float32 (float data, float32_gram on, and
  // values whose float32 products neither overflow nor underflow): the bound's rows of R, or
  // right_from_gram's remainder (bounded by the swept matrix's energy).
  bool sums_in_float(double energy, Index count) const;
  // The plain route of add_rows: rows cast to double a chunk at a time.
  void add_rows_in_double(Eigen::MatrixXd& gram, Index begin, Index end, double sign) const;
  // gram += sign·XᵀX (lower triangle) for the rows × side matrix x: chunks cast to double (the plain
  // route), or chunks accumulated in float32 (float32_gram.cpp; false for double data).
  static void gram_in_double(const ConstMatrixMap<T>& x, double sign, Eigen::MatrixXd& gram);
  static bool gram_in_float(const ConstMatrixMap<T>& x, double sign, Eigen::MatrixXd& gram);

  Factors factors_;
  SweepShortcuts shortcuts_;
  SweepShortcutCounts taken_;
  CentralBound bound_;
  std::size_t central_ = 0;
  std::vector<std::size_t> steps_;
  double energy_ = 0;
  double work_ = 0;
  std::map<Path, Node> nodes_;
  std::set<Path> gram_counted_;  // node paths whose work right_from_gram counted without making them
};

}  // namespace mpo
