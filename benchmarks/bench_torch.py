"""Benchmark: an MPOLinear forward pass against nn.Linear at >= 4096 tokens a batch, rho <= 0.1.

For each matrix (the real MiniLM-L6 FFN 1536x384 input projection, seen by torch as Linear(384, 1536),
and Gaussian 768x3072 and 4096x4096) and each bond cap with rho <= 0.1, in one run and on one thread:
  * linear    ``nn.Linear`` with the MPO's own dense matrix (so both compute the same product);
  * auto      ``MPOLinear`` in inference (no grad), mode "auto" (FLOP rule: kernel contraction or rebuild);
  * contract  ``MPOLinear`` forced to contract (the C++ kernel: no autograd is needed);
  * rebuild   ``MPOLinear`` forced to rebuild the weight, then ``F.linear``.
Times are medians of interleaved rounds; ratios are to ``linear`` in the same run. Every output is
asserted against ``linear``'s. Writes benchmarks/results/bench_torch.json.

    python benchmarks/bench_torch.py [--tokens 4096] [--repeats 5] [--quick]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPO_NUM_THREADS"):
    os.environ[_var] = "1"  # single-threaded contenders, fixed before torch and NumPy load

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, format_table, machine_info, time_interleaved, write_json  # noqa: E402

import mpo  # noqa: E402
from mpo.torch import MPOLinear  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_torch.json"
CAPS = (4, 8, 16, 32, 64)
HEADERS = [
    "matrix", "cap", "rho", "linear ms", "auto/linear", "contract/linear", "rebuild/linear", "auto picks",
    "contract FLOPs/dense",
]


def matrices(quick: bool):
    """(label, M as in_features x out_features float32) pairs."""
    rng = np.random.default_rng(0)
    try:
        from mpo._data import load_minilm

        name = "encoder.layer.0.intermediate.dense.weight"
        yield "minilm ffn_in 384x1536", np.ascontiguousarray(load_minilm([name])[name].T)
    except (FileNotFoundError, ImportError) as exc:
        print(f"skipping the MiniLM matrix: {exc}", file=sys.stderr)
    yield "gauss 768x3072", rng.standard_normal((768, 3072)).astype(np.float32)
    if not quick:
        yield "gauss 4096x4096", rng.standard_normal((4096, 4096)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="skip the 4096x4096 matrix")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows, records = [], []
    with torch.no_grad():
        full_cache = {}
        for label, M in matrices(args.quick):
            full = full_cache.setdefault(label, mpo.decompose(M.astype(np.float64)))
            x = torch.randn(args.tokens, M.shape[0])
            for cap in CAPS:
                m = full.truncate(max_bond=cap)
                if m.compression_ratio > 0.1:
                    break
                layer = MPOLinear(m, mode="auto", dtype=torch.float32)
                linear = torch.nn.Linear(*m.shape, bias=False)
                linear.weight.copy_(layer.weight_matrix().T)
                fns = {
                    "linear": lambda: linear(x),
                    "auto": lambda: layer(x),
                    "contract": lambda: layer(x, mode="contract"),
                    "rebuild": lambda: layer(x, mode="rebuild"),
                }
                timed = time_interleaved(fns, repeats=args.repeats, warmup=1)
                want = timed["linear"][2]
                scale = float(want.abs().max())
                for key in ("auto", "contract", "rebuild"):
                    err = float((timed[key][2] - want).abs().max()) / scale
                    assert err < 1e-4, f"{label} cap {cap}: {key} differs from nn.Linear by {err:.2e} (relative)"
                base = timed["linear"][0]
                flops = layer.forward_flops(args.tokens, autograd=False)
                record = {
                    "matrix": label,
                    "cap": cap,
                    "bond_dims": list(m.bond_dims),
                    "rho": m.compression_ratio,
                    "tokens": args.tokens,
                    "auto_picks": flops["auto"],
                    "flops_ratio_contract": flops["contract"] / (2.0 * args.tokens * m.shape[0] * m.shape[1]),
                    "median_s": {k: v[0] for k, v in timed.items()},
                    "ratio_to_linear": {k: timed[k][0] / base for k in ("auto", "contract", "rebuild")},
                }
                records.append(record)
                rows.append(
                    [label, str(cap), f"{m.compression_ratio:.4f}", f"{base * 1e3:.1f}"]
                    + [f"{record['ratio_to_linear'][k]:.2f}" for k in ("auto", "contract", "rebuild")]
                    + [flops["auto"], f"{record['flops_ratio_contract']:.3f}"]
                )
                print(format_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_table(HEADERS, rows))
    payload = {"command": command_line(), "machine": machine_info(), "torch": torch.__version__, "results": records}
    write_json(RESULTS, payload)


if __name__ == "__main__":
    main()
