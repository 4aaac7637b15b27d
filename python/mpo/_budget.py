"""Budget mode of ``decompose(M, ratio=)``: per-bond caps of the sweep, chosen by their true error.

MPOP Algorithm 1 splits a remainder at every step (bonds 0..c-1 from the left, then n-2..c from the
right, c the central index) and cuts each split to its cap. Every cut is an orthogonal projection of the
current remainder, and later steps act inside the kept subspace, so the pieces each step discards are
mutually orthogonal: the sweep's true error is exactly

    ||M - MPO||_F^2 = sum over steps of the discarded lambda^2 of that step's remainder,

no bound and no densifying needed. A candidate allocation (one cap per bond) is therefore scored
exactly by replaying the sweep, and candidates that share the caps of their first steps share those
steps' splits (cached here). The search starts at the largest uniform cap within the budget and moves
parameters between bonds while the true error falls (first improvement, halving step sizes), so the
result is never worse than the uniform cap; a work limit keeps its cost near one extra sweep.

Splits go through the Gram matrix of the remainder's short side (one GEMM and a small symmetric
eigenproblem) in float64. The search scores a candidate from the eigenvalues of its last split; the
MPO built records eps_k^2 = ||R||^2 - ||kept||^2 of the arrays actually formed (the residual's own
energy where that difference loses its digits), so its bound is that of the matrix built.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Search work beyond the uniform candidate's own sweep: this many times its flops, at least the floor
#: (so a small matrix, whose sweep is cheap, still gets a useful search).
_WORK_FACTOR = 1.0
_WORK_FLOOR = 1e9


def interleaved(padded: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
    """M (prod i_k x prod j_k) as the flat float64 tensor of index order (i_1, j_1, ..., i_n, j_n)."""
    n = len(in_shape)
    t = np.asarray(padded, dtype=np.float64).reshape(*in_shape, *out_shape)
    order = [axis for k in range(n) for axis in (k, n + k)]
    return np.ascontiguousarray(t.transpose(order)).reshape(-1)


def layout_params(pairs: Sequence[int], bonds: Sequence[int]) -> int:
    """sum_k d_(k-1) i_k j_k d_k for bonds d_1..d_(n-1) (d_0 = d_n = 1)."""
    b = [1, *bonds, 1]
    return sum(b[k] * p * b[k + 1] for k, p in enumerate(pairs))


class Sweep:
    """MPOP Algorithm 1 replayed in float64 for any per-bond caps, with the splits cached by prefix.

    ``steps`` is the core's order of bonds: 0..c-1 split from the left, then n-2 down to c from the
    right. ``evaluate(caps)`` returns the kept bonds and the exact squared error of the sweep with those
    caps; ``build(caps)`` returns its cores and per-bond discarded energies.
    """

    def __init__(self, tensor: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        self.pairs = [i * j for i, j in zip(in_shape, out_shape)]
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        n = len(self.pairs)
        c = (n - 1) // 2
        self.steps = [*range(c), *range(n - 2, c - 1, -1)]
        self.work = 0.0  # flops of the Gram and projection products formed so far
        # prefix (caps of the steps done, in step order) -> (remainder, left bond, right bond)
        self._states: dict[tuple[int, ...], tuple[np.ndarray, int, int]] = {(): (tensor, 1, 1)}
        # prefix -> (eigenvalues descending, eigenvectors, which side) of the next step's Gram matrix
        self._splits: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, str]] = {}
        self._energy: dict[tuple[int, ...], float] = {(): float(tensor @ tensor)}

    def _shape_of(self, t: int, left: int, right: int, size: int) -> tuple[int, int]:
        """The unfolding split at step t: (left d * pair, rest) from the left, (rest, pair * right d)."""
        bond = self.steps[t]
        if t < (len(self.pairs) - 1) // 2:
            rows = left * self.pairs[bond]
            return rows, size // rows
        cols = self.pairs[bond + 1] * right
        return size // cols, cols

    def _split(self, prefix: tuple[int, ...]):
        if prefix in self._splits:
            return self._splits[prefix]
        flat, left, right = self._states[prefix]
        rows, cols = self._shape_of(len(prefix), left, right, flat.size)
        a = flat.reshape(rows, cols)
        # The Gram matrix of the short side: its eigenvectors are the singular vectors of that side.
        side = "rows" if rows <= cols else "cols"
        gram = a @ a.T if side == "rows" else a.T @ a
        self.work += float(min(rows, cols)) ** 2 * max(rows, cols)
        w, v = np.linalg.eigh(gram)
        out = (np.clip(w[::-1], 0.0, None), np.ascontiguousarray(v[:, ::-1]), side)
        self._splits[prefix] = out
        return out

    def _rank(self, prefix: tuple[int, ...], cap: int) -> int:
        w, _, _ = self._split(prefix)
        # Gram eigenvalues below ~1e-13 of the largest are its rounding (singular values below ~3e-7 of
        # the largest): those directions carry nothing a bond should pay for; their energy is still counted.
        nonzero = int(np.count_nonzero(w > w[0] * 1e-13)) if w.size and w[0] > 0 else 0
        return max(1, min(cap, nonzero))

    def _advance(self, prefix: tuple[int, ...], cap: int) -> tuple[int, ...]:
        """The state after the next step cuts to ``cap``: the kept remainder and the new bond."""
        nxt = (*prefix, cap)
        if nxt in self._states:
            return nxt
        flat, left, right = self._states[prefix]
        t = len(prefix)
        rows, cols = self._shape_of(t, left, right, flat.size)
        a = flat.reshape(rows, cols)
        _, v, side = self._split(prefix)
        r = self._rank(prefix, cap)
        from_left = t < (len(self.pairs) - 1) // 2
        if from_left and r == rows or not from_left and r == cols:
            # Nothing is cut and any orthonormal basis will do (order_bonds rotates the bonds later):
            # the core is the identity and the remainder is shared, not copied.
            state = (flat, r, right) if from_left else (flat, left, r)
        elif from_left:  # core = U_r (rows x r); the remainder becomes U_r^T A
            self.work += float(r) * rows * cols
            kept = self._basis(a, v, r, side, from_left).T @ a
            state = (np.ascontiguousarray(kept).reshape(-1), r, right)
        else:  # core = V_r^T (r x cols); the remainder becomes A V_r
            self.work += float(r) * rows * cols
            kept = a @ self._basis(a, v, r, side, from_left)
            state = (np.ascontiguousarray(kept).reshape(-1), left, r)
        self._states[nxt] = state
        self._energy[nxt] = float(state[0] @ state[0])
        return nxt

    @staticmethod
    def _basis(a: np.ndarray, v: np.ndarray, r: int, side: str, from_left: bool) -> np.ndarray:
        """The r kept directions of the split side, orthonormal: U_r (rows x r) or V_r (cols x r).

        From the Gram matrix of that side they are its eigenvectors. From the other side's Gram matrix
        they are A V_r (or A^T U_r), orthonormalised by QR rather than divided by the singular values,
        so the core stays orthonormal when small ones are kept.
        """
        if (side == "rows") == from_left:
            return v[:, :r]
        spanned = a @ v[:, :r] if from_left else a.T @ v[:, :r]
        return np.linalg.qr(spanned)[0]

    @property
    def energy(self) -> float:
        """||M||_F^2 of the swept matrix."""
        return self._energy[()]

    def forget_all_but(self, caps: Sequence[int]) -> None:
        """Drop the cached remainders off the path of ``caps`` (they hold up to a copy of M each)."""
        ordered = self.order(caps)
        path = {ordered[:t] for t in range(len(ordered) + 1)}
        for prefix in [p for p in self._states if p not in path]:
            del self._states[prefix]

    def order(self, caps: Sequence[int]) -> tuple[int, ...]:
        """Caps (indexed by bond) in the sweep's step order."""
        return tuple(int(caps[b]) for b in self.steps)

    def evaluate(self, caps: Sequence[int]) -> tuple[list[int], float]:
        """(kept bonds by bond index, exact squared Frobenius error of the sweep with these caps)."""
        ordered = self.order(caps)
        bonds = [0] * len(self.steps)
        prefix: tuple[int, ...] = ()
        for t, cap in enumerate(ordered):
            if t == len(ordered) - 1:
                # The last cut needs only its eigenvalues: kept energy = sum of the kept lambda^2.
                w, _, _ = self._split(prefix)
                r = self._rank(prefix, cap)
                bonds[self.steps[t]] = r
                return bonds, max(self._energy[()] - float(w[:r].sum()), 0.0)
            prefix = self._advance(prefix, cap)
            bonds[self.steps[t]] = self._states[prefix][1 if t < (len(self.pairs) - 1) // 2 else 2]
        return bonds, 0.0  # n == 1 cannot happen (n >= 2 has a bond); kept for the type checker

    def build(self, caps: Sequence[int]) -> tuple[list[np.ndarray], list[float]]:
        """Cores (d_(k-1), i_k, j_k, d_k), float64, and per-bond discarded energy of the sweep."""
        n = len(self.pairs)
        c = (n - 1) // 2
        ordered = self.order(caps)
        cores: list[np.ndarray | None] = [None] * n
        discarded = [0.0] * (n - 1)
        prefix: tuple[int, ...] = ()
        for t, cap in enumerate(ordered):
            flat, left, right = self._states[prefix]
            rows, cols = self._shape_of(t, left, right, flat.size)
            a = flat.reshape(rows, cols)
            _, v, side = self._split(prefix)
            nxt = self._advance(prefix, cap)
            kept, new_left, new_right = self._states[nxt]
            bond = self.steps[t]
            r = new_left if t < c else new_right
            if t < c:
                u = np.eye(rows) if r == rows else self._basis(a, v, r, side, True)
                cores[bond] = u.reshape(left, self.in_shape[bond], self.out_shape[bond], r)
                rebuilt = u @ kept.reshape(r, cols) if r < rows else a
            else:
                vt = np.eye(cols) if r == cols else self._basis(a, v, r, side, False).T
                k = bond + 1
                cores[k] = vt.reshape(r, self.in_shape[k], self.out_shape[k], right)
                rebuilt = kept.reshape(rows, r) @ vt if r < cols else a
            dropped = self._energy[prefix] - self._energy[nxt]
            if rebuilt is not a and dropped < 1e-6 * self._energy[prefix]:
                # ||A||^2 - ||kept||^2 has lost its digits to cancellation: sum the residual itself, so
                # that eps_k (and the bound) stay accurate for a cut of rounding-level values.
                dropped = float(np.sum((a - rebuilt) ** 2))
            discarded[bond] = max(dropped, 0.0)
            prefix = nxt
        flat, left, right = self._states[prefix]
        cores[c] = flat.reshape(left, self.in_shape[c], self.out_shape[c], right)
        return [x for x in cores if x is not None], discarded


def search(
    sweep: Sweep, start: Sequence[int], limits: Sequence[int], allowed: float
) -> tuple[list[int], float]:
    """Caps within ``limits`` whose sweep keeps <= ``allowed`` parameters, by true error.

    Starts at ``start`` (the largest uniform cap within budget) and repeats: for each ordered pair of
    bonds (k, l), cheapest to replay first, shrink bond k by a step (an eighth of its size, halved
    down to 1) and grow bond l as far as the freed parameters allow; take the first move whose exact
    error is lower. Stops when no move
    helps or the work limit (see ``_WORK_FACTOR``) is spent. Returns (caps, squared error).
    """
    pairs = sweep.pairs
    best = [int(x) for x in start]
    bonds, best_err = sweep.evaluate(best)
    budget_work = sweep.work + max(_WORK_FACTOR * sweep.work, _WORK_FLOOR)
    m = len(best)

    def fits(caps: list[int]) -> bool:
        return layout_params(pairs, sweep.evaluate(caps)[0]) <= allowed

    # Moves in order of cost: a move replays the sweep from the first step it changes, so moves between
    # bonds the sweep splits last (cached prefixes) come first.
    position = {bond: t for t, bond in enumerate(sweep.steps)}
    moves = sorted(((k, l) for k in range(m) for l in range(m) if k != l),
                   key=lambda kl: -min(position[kl[0]], position[kl[1]]))
    improved = True
    while improved and sweep.work < budget_work:
        improved = False
        for k, l in moves:
            if best[l] >= limits[l] or best[k] <= 1:
                continue
            step = max(best[k] // 8, 1)
            while step >= 1 and not improved and sweep.work < budget_work:
                cand = list(best)
                cand[k] -= step
                # Grow bond l by bisection on the parameter count of the caps themselves (an upper
                # bound on what the sweep keeps), then confirm with the sweep's kept bonds.
                lo, hi = best[l], limits[l]
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    trial = [*cand[:l], mid, *cand[l + 1 :]]
                    lo, hi = (mid, hi) if layout_params(pairs, trial) <= allowed else (lo, mid - 1)
                cand[l] = lo
                if cand[l] > best[l] and fits(cand):
                    _, err = sweep.evaluate(cand)
                    if err < best_err * (1 - 1e-12):
                        best, best_err, improved = cand, err, True
                    sweep.forget_all_but(best)
                step //= 2
            if improved:
                break
    return best, best_err


def ratio_floor_message(ratio: float, smallest: int, rows: int, cols: int) -> str:
    """The error message of a budget below every bond at 1."""
    return (
        f"ratio must be >= {smallest / (rows * cols):.6g} for these factors (every bond at 1 keeps "
        f"{smallest} parameters of {rows}x{cols}), got ratio = {ratio}; use a larger ratio or fewer cores n"
    )


def uniform_start(pairs: Sequence[int], limits: Sequence[int], allowed: float) -> list[int] | None:
    """min(limit_k, c) for the largest c whose layout fits ``allowed`` (None when c = 1 does not)."""
    def at(c: int) -> list[int]:
        return [min(lim, c) for lim in limits]

    if layout_params(pairs, at(1)) > allowed:
        return None
    lo, hi = 1, max(limits)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if layout_params(pairs, at(mid)) <= allowed else (lo, mid - 1)
    return at(lo)

