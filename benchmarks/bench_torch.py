"""Benchmark: an MPOLinear forward pass against nn.Linear at >= 4096 tokens a batch, rho <= 0.1.

For each matrix (the real MiniLM-L6 FFN 1536x384 input projection, seen by torch as Linear(384, 1536),
and Gaussian 768x3072 and 4096x4096), each bond cap with rho <= 0.1, float32 and bfloat16 (where
torch runs it on CPU), without autograd (inference) and with it (forward plus the backward pass to the
parameters), in one run:
  * linear    ``F.linear`` through ``nn.Linear`` with the MPO's own dense matrix (the same product);
  * auto      ``MPOLinear`` in mode "auto" (timed on this machine once per kind of pass);
  * contract  ``MPOLinear`` forced to contract (the C++ kernel; with autograd through its written-out
              backward, ``mpo.torch._kernel.KernelProduct``);
  * rebuild   ``MPOLinear`` forced to rebuild the weight, then ``F.linear``.
Times are medians of interleaved rounds; ratios are to ``linear`` in the same run. Every output is
asserted against ``linear``'s. Two checks per row: auto against the faster of its own modes (time of
the faster / time of auto >= 0.97), and, where the contraction needs at most 60 % of the dense FLOPs,
auto against linear (linear's time / auto's >= 0.97). The first check reads a second interleaved timing,
auto head to head with the faster mode of the four-way timing (and with the other mode too where it
came within 10 %), in at least three times the rounds: in the four-way timing a bfloat16 nn.Linear of
0.5-0.8 s leaves the modes 8 rounds of 40 ms passes, and a timing of the three modes alone, 12 rounds
paced by a 2.7 s bfloat16 rebuild, still moved auto against the very mode it had chosen (the same
code) by 8 %, where the pair alone in 24 rounds gave 1.000 and 1.003. Writes
benchmarks/results/bench_torch.json.

    python benchmarks/bench_torch.py [--tokens 4096] [--repeats 8] [--min-seconds 2] [--quick] [--threads 1]
                                     [--max-bond 4 8 ...] [--dtypes float32 bfloat16] [--grad both|no|yes]
"""

from __future__ import annotations

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _threads import apply_threads_flag  # noqa: E402  (benchmarks/ is not a package)

# Thread counts are fixed before torch and NumPy load (one thread unless --threads says otherwise).
apply_threads_flag(sys.argv, default="1", extra=("MPO_NUM_THREADS",))

import _common as C  # noqa: E402

if __name__ == "__main__":
    C.rerun_without_openblas_coretype()

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import mpo  # noqa: E402
from mpo.torch import MPOLinear  # noqa: E402

RESULTS = C.RESULTS_DIR / "bench_torch.json"
CAPS = (4, 8, 16, 32, 64)
#: auto must run at least this fast relative to the faster mode, and to linear where it applies.
TOLERANCE = 0.97
#: Contractions needing at most this share of the dense FLOPs must not be slower than linear.
FLOP_SHARE = 0.6
#: A mode whose four-way median is within this factor of the faster one's is also timed head to head.
CLOSE = 1.10
#: The head-to-head timing runs at least this many times --repeats rounds (its passes are the short ones).
HEAD_ROUNDS = 3
HEADERS = [
    "matrix", "dtype", "grad", "cap", "rho", "linear ms", "auto/linear", "contract/linear", "rebuild/linear",
    "auto picks", "FLOPs/dense", "auto>=modes", "auto>=linear",
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


def cpu_supports(dtype: torch.dtype) -> bool:
    """Whether torch runs F.linear, forward and backward, in ``dtype`` on this CPU."""
    try:
        w = torch.randn(4, 4, dtype=dtype, requires_grad=True)
        F.linear(torch.randn(2, 4, dtype=dtype), w).sum().backward()
        return True
    except (RuntimeError, TypeError):
        return False


def pass_fn(module, x: torch.Tensor, grad: bool, **kwargs):
    """One timed pass: the forward, and with ``grad`` the backward to the module's parameters."""
    params = [p for p in module.parameters() if p.requires_grad]

    def run():
        if not grad:
            with torch.no_grad():
                return module(x, **kwargs)
        with torch.enable_grad():
            out = module(x, **kwargs)
            torch.autograd.grad(out, params, grad_outputs=torch.ones_like(out))
            return out.detach()

    return run


def rounds(fns: dict, least: int, seconds: float) -> int:
    """Runs each contender twice (the warm-up) and returns the timed rounds: at least ``least``, more
    where the slowest second pass times them stays under ``seconds``, in whole cycles of the balanced
    orders (so each contender still follows every other one equally often). The first pass is not
    timed: "auto" times its two modes there."""
    slowest = 0.0
    for fn in fns.values():
        fn()
        start = time.perf_counter()
        fn()
        slowest = max(slowest, time.perf_counter() - start)
    cycle = len(C.balanced_orders(len(fns)))  # one whole set of the orders time_interleaved follows
    wanted = max(least, math.ceil(seconds / max(slowest, 1e-9)))
    return cycle * math.ceil(wanted / cycle)


def head_to_head(median_s: dict) -> list[str]:
    """The modes "auto" is timed against again: the faster of the four-way timing, and the other one
    too where it came within ``CLOSE`` of it (there the four-way timing cannot tell which is faster)."""
    faster = min(("contract", "rebuild"), key=lambda mode: median_s[mode])
    return [mode for mode in ("contract", "rebuild") if median_s[mode] <= median_s[faster] * CLOSE]


def checks(record: dict) -> dict:
    """The two targets of a row: None where one does not apply. Auto against its modes reads the head
    to head timing (``median_s_modes``: auto and the modes of :func:`head_to_head`), auto against
    linear the four-way one."""
    t = record["median_s"]
    modes = record["median_s_modes"]
    faster_mode = min(v for k, v in modes.items() if k != "auto")
    out = {"auto_vs_modes": faster_mode / modes["auto"] >= TOLERANCE, "auto_vs_linear": None}
    if record["flops_ratio_contract"] <= FLOP_SHARE:
        out["auto_vs_linear"] = t["linear"] / t["auto"] >= TOLERANCE
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=8,
                        help="timed rounds at least (default 8: two whole cycles of the balanced orders of 4 "
                             "contenders; with 4, bfloat16 rows spread by up to 15 %% between rounds on a quiet "
                             "AVX2 machine)")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="more rounds, in whole cycles of 4, until the slowest contender's warm-up pass "
                             "times the rounds reaches this (default 2: a 55 ms row gets 40 rounds)")
    parser.add_argument("--quick", action="store_true", help="skip the 4096x4096 matrix; max_bond 4 and 16")
    parser.add_argument("--threads", type=int, default=1, help="torch, BLAS and mpo threads (default 1)")
    C.add_max_bond_option(parser, None, "max_bond values (default 4 8 16 32 64; --quick: 4 16)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--grad", default="both", choices=["both", "no", "yes"],
                        help="time inference (no), training passes (yes) or both")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    caps = args.max_bond or ((4, 16) if args.quick else CAPS)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"command: {C.command_line()}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in C.library_versions(mpo).items()) + f", torch {torch.__version__}")
    machine = C.print_machine()
    dtypes = []
    for name in args.dtypes:
        if cpu_supports(getattr(torch, name)):
            dtypes.append(name)
        else:
            print(f"skipping {name}: torch does not run it on this CPU")
    grads = {"both": (False, True), "no": (False,), "yes": (True,)}[args.grad]
    print(f"{args.tokens} tokens, {args.threads} thread(s); checks: auto >= {TOLERANCE}x the faster of its modes, "
          f"and >= {TOLERANCE}x linear where the contraction needs <= {FLOP_SHARE:.0%} of the dense FLOPs")
    rows, records = [], []
    for label, M in matrices(args.quick):
        full = mpo.decompose(M.astype(np.float64))
        for cap in caps:
            m = full.truncate(max_bond=cap)
            if m.compression_ratio > 0.1:
                break
            for dtype_name in dtypes:
                dtype = getattr(torch, dtype_name)
                x = torch.randn(args.tokens, M.shape[0]).to(dtype)
                for grad in grads:
                    layer = MPOLinear(m, mode="auto", dtype=dtype)
                    linear = torch.nn.Linear(*m.shape, bias=False, dtype=dtype)
                    with torch.no_grad():
                        linear.weight.copy_(layer.weight_matrix().T)
                    fns = {
                        "linear": pass_fn(linear, x, grad),
                        "auto": pass_fn(layer, x, grad),
                        "contract": pass_fn(layer, x, grad, mode="contract"),
                        "rebuild": pass_fn(layer, x, grad, mode="rebuild"),
                    }
                    timed = C.time_interleaved(fns, repeats=rounds(fns, args.repeats, args.min_seconds), warmup=0)
                    median = {k: v[0] for k, v in timed.items()}
                    own = {key: fns[key] for key in ("auto", *head_to_head(median))}
                    timed_modes = C.time_interleaved(
                        own, repeats=rounds(own, HEAD_ROUNDS * args.repeats, args.min_seconds), warmup=0
                    )
                    want = timed["linear"][2].float()
                    scale = float(want.abs().max())
                    tol = 1e-4 if dtype == torch.float32 else 5e-2
                    for key in ("auto", "contract", "rebuild"):
                        err = float((timed[key][2].float() - want).abs().max()) / scale
                        assert err < tol, f"{label} cap {cap} {dtype_name}: {key} differs from nn.Linear by {err:.2e}"
                    flops = layer.forward_flops(args.tokens, autograd=grad)
                    record = {
                        "matrix": label,
                        "dtype": dtype_name,
                        "autograd": grad,
                        "cap": cap,
                        "bond_dims": list(m.bond_dims),
                        "rho": m.compression_ratio,
                        "tokens": args.tokens,
                        "auto_picks": flops["auto"],
                        "flops_ratio_contract": flops["contract"] / (2.0 * args.tokens * m.shape[0] * m.shape[1]),
                        "median_s": median,
                        "rounds": len(timed["linear"][1]),
                        "median_s_modes": {k: v[0] for k, v in timed_modes.items()},
                        "rounds_modes": len(timed_modes["auto"][1]),
                    }
                    base = record["median_s"]["linear"]
                    record["ratio_to_linear"] = {k: record["median_s"][k] / base for k in ("auto", "contract", "rebuild")}
                    record["checks"] = checks(record)
                    records.append(record)
                    verdict = {True: "ok", False: "FAIL", None: "-"}
                    rows.append(
                        [label, dtype_name, "yes" if grad else "no", str(cap), f"{m.compression_ratio:.4f}", f"{base * 1e3:.1f}"]
                        + [f"{record['ratio_to_linear'][k]:.2f}" for k in ("auto", "contract", "rebuild")]
                        + [str(flops["auto"]), f"{record['flops_ratio_contract']:.3f}"]
                        + [verdict[record["checks"]["auto_vs_modes"]], verdict[record["checks"]["auto_vs_linear"]]]
                    )
                    print(C.format_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(C.format_table(HEADERS, rows))
    failed = sum(1 for r in records for v in r["checks"].values() if v is False)
    held = sum(1 for r in records for v in r["checks"].values() if v is True)
    print(f"checks: {held} hold, {failed} fail")
    payload = {
        "benchmark": "bench_torch",
        "command": C.command_line(),
        "machine": machine,
        "torch": torch.__version__,
        "tolerance": TOLERANCE,
        "flop_share": FLOP_SHARE,
        "close": CLOSE,
        "summary": {"held": held, "failed": failed},
        "results": records,
    }
    C.write_json(Path(args.out), payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
