"""The core's eigensolver for the k leading eigenpairs of a Gram matrix, against its full solver and LAPACK.

Every capped split of Algorithm 1 diagonalises a Gram matrix and keeps k of its m eigenvectors. This
times, on Gram matrices of the sizes the MiniLM decompositions meet (m = 144 … 768) and caps of 32 … 256:

- ``partial``: ``_core.symmetric_eigen(G, k, "partial")`` (bisection + inverse iteration + QR + back
  transform, include/mpo/symmetric.hpp), the route the decomposition takes where it pays (up to
  k ~ 0.6m at m = 144, a share growing to all but one vector by m = 384; the "auto takes" column);
- ``full``: the same call with ``"full"`` (Eigen's SelfAdjointEigenSolver, all m eigenvectors);
- ``lapack_evd``: ``scipy.linalg.eigh(G)`` (divide and conquer, all eigenvectors);
- ``lapack_evr``: ``scipy.linalg.eigh(G, subset_by_index=…)`` (MRRR, only the k wanted).

Every result is checked against ``numpy.linalg.eigvalsh`` and for orthonormality and residual.
Prints medians and the ratios full/partial and LAPACK/partial, and writes JSON. Run single-threaded
(``--threads 1``, the default) for steady ratios.

    python benchmarks/bench_symmetric.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _threads import apply_threads_flag  # noqa: E402  (benchmarks/ is not a package)

# BLAS threads are fixed before numpy loads; the core's own threads do not take part in an eigensolve.
apply_threads_flag(sys.argv[1:], default="1")

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402

import _common as C  # noqa: E402  (benchmarks/ is not a package)

from mpo import _core  # noqa: E402

CASES = [(64, 32), (144, 32), (144, 64), (144, 100), (192, 32), (192, 96), (192, 128), (256, 32), (256, 100),
         (256, 128), (256, 192), (384, 100), (384, 192), (384, 300), (512, 448), (768, 100), (768, 256),
         (768, 700)]


def check(g: np.ndarray, k: int, values: np.ndarray, vectors: np.ndarray) -> float:
    """Largest of: eigenvalue error, loss of orthonormality, residual, all relative to ||G||."""
    scale = np.abs(np.linalg.eigvalsh(g)).max()
    expected = np.linalg.eigvalsh(g)[::-1][:k]
    return float(max(np.abs(values - expected).max() / scale,
                     np.abs(vectors.T @ vectors - np.eye(k)).max(),
                     np.abs(g @ vectors - vectors * values).max() / scale))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="BLAS threads for LAPACK (default 1)")
    p.add_argument("--repeats", type=int, default=9, help="timed repeats per contender (default 9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=C.RESULTS_DIR / "bench_symmetric.json")
    args = p.parse_args(argv)
    import mpo

    versions, machine = C.print_header(mpo)
    rng = np.random.default_rng(args.seed)
    rows, records = [], []
    for m, k in CASES:
        x = rng.standard_normal((m, 3 * m))
        g = x @ x.T  # a Gram matrix as the splits form them (Marchenko–Pastur spectrum)
        timed = C.time_interleaved({
            "partial": lambda: _core.symmetric_eigen(g, k, "partial"),
            "full": lambda: _core.symmetric_eigen(g, k, "full"),
            "lapack_evd": lambda: scipy.linalg.eigh(g, driver="evd"),
            "lapack_evr": lambda: scipy.linalg.eigh(g, driver="evr", subset_by_index=(m - k, m - 1)),
        }, repeats=args.repeats, warmup=1)
        for label, result in timed.items():
            if isinstance(result, Exception):
                raise SystemExit(f"m={m}, k={k}: {label} raised {result!r}")
        partial = timed["partial"][2]
        if partial is None:
            raise SystemExit(f"the partial route refused m={m}, k={k}")
        err = max(check(g, k, partial[0], partial[1]),
                  check(g, k, timed["full"][2][0], timed["full"][2][1]))
        if err > 1e-10:
            raise SystemExit(f"m={m}, k={k}: eigenpairs off by {err:.2e} of ||G||")
        t = {label: timed[label][0] for label in timed}
        auto = _core.symmetric_eigen(g, k, "auto")[2]
        rows.append([str(m), str(k), auto, f"{t['partial'] * 1e3:.2f}", f"{t['full'] * 1e3:.2f}",
                     f"{t['lapack_evd'] * 1e3:.2f}", f"{t['lapack_evr'] * 1e3:.2f}",
                     f"{t['full'] / t['partial']:.2f}x", f"{t['lapack_evd'] / t['partial']:.2f}x",
                     f"{t['lapack_evr'] / t['partial']:.2f}x", f"{err:.1e}"])
        records.append({"m": m, "k": k, "median_seconds": t, "max_error": err, "auto_route": auto})
    print(C.format_table(["m", "k", "auto takes", "partial ms", "full ms", "evd ms", "evr ms", "full/partial",
                          "evd/partial", "evr/partial", "error"], rows))
    C.write_json(args.json, {"benchmark": "bench_symmetric", "command": C.command_line(),
                             "versions": versions, "machine_start": machine,
                             "machine_end": C.machine_info(), "records": records})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
