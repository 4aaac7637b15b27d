"""Stacked cross-layer forms on MiniLM-L6 (issue 6, docs/ALGORITHMS.md §11).

1. Error against parameters: the 72 blocks (384 x 384) of MiniLM's 36 encoder matrices in forms II
   (per_matrix), III (shared) and IV (tucker, the best of several bank sizes l) beside a per-matrix
   truncated SVD and a per-matrix MPO (n = 5, uniform cap) of the 36 original matrices, each at the
   largest size within the same budget rho * (all encoder weights). Relative Frobenius error over all
   encoder weights.
2. HOOI: our NumPy kernel against TensorLy's ``tucker`` (same ranks, same sweep count, SVD init),
   median seconds and final errors.
3. Reconstruction-free forward of one layer (Q, K, V, O, FFN in, FFN out; x U shared by Q, K, V)
   against the dense products, at d in {32, 64, 128}, ratios from one interleaved run.

    OMP_NUM_THREADS=1 python benchmarks/bench_stacked.py [--rhos ...] [--tokens 1024] [--out PATH]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from _common import (  # noqa: E402
    RESULTS_DIR,
    command_line,
    format_table,
    library_versions,
    print_machine,
    time_interleaved,
    write_json,
)
from bench_fisher import largest_cap  # noqa: E402

RHOS = (0.5, 0.25, 0.125, 0.0625)
BANKS = (18, 36, 54)
SPEED_RANKS = (32, 64, 128)


def largest(fn, limit, budget):
    """The largest k in [1, limit] with fn(k) <= budget (0 if none)."""
    best = 0
    for k in range(1, limit + 1):
        if fn(k) <= budget:
            best = k
    return best


def error_vs_budget(state, rhos):
    import mpo
    from mpo import stacked

    cut = stacked.bert_blocks(state)
    N, D = len(cut.blocks), cut.block_size
    matrices = {}
    for ref, block in zip(cut.refs, cut.blocks):
        matrices.setdefault(ref.key, np.asarray(state[ref.key], dtype=np.float64).T)
    total_sq = sum(float(np.sum(W * W)) for W in matrices.values())
    dense = N * D * D
    assert dense == sum(W.size for W in matrices.values())
    rows = []
    for rho in rhos:
        budget = int(rho * dense)
        entry = {"rho": rho, "budget": budget}
        d2 = largest(lambda d: stacked.num_params("per_matrix", N, D, d), D, budget)
        s2 = stacked.decompose(cut.blocks, "per_matrix", rank=d2)
        entry["II per_matrix"] = {"params": s2.num_params, "error": s2.relative_error(), "rank": d2}
        d3 = largest(lambda d: stacked.num_params("shared", N, D, d), D, budget)
        s3 = stacked.decompose(cut.blocks, "shared", rank=d3, max_iter=20)
        entry["III shared"] = {"params": s3.num_params, "error": s3.relative_error(), "rank": d3, "sweeps": s3.iterations}
        best = None
        for bank in BANKS:
            d4 = largest(lambda d: stacked.num_params("tucker", N, D, d, bank), D, budget)
            if d4 == 0:
                continue
            s4 = stacked.decompose(cut.blocks, "tucker", rank=d4, bank=bank, max_iter=20)
            cand = {"params": s4.num_params, "error": s4.relative_error(), "rank": d4, "bank": bank, "sweeps": s4.iterations}
            entry[f"IV tucker l={bank}"] = cand
            if best is None or cand["error"] < best["error"]:
                best = cand
        entry["IV tucker best"] = best
        # Per-matrix baselines on the original matrices, each at rho of its own size.
        svd_sq, svd_params, mpo_sq, mpo_params = 0.0, 0, 0.0, 0
        for W in matrices.values():
            I, J = W.shape
            r = int(rho * I * J) // (I + J)
            u, s, vt = np.linalg.svd(W, full_matrices=False)
            svd_sq += float(np.sum(s[r:] ** 2))
            svd_params += r * (I + J)
            cap = largest_cap(mpo.plan_shape(I, J, 5), int(rho * I * J))
            m = mpo.decompose(W, max_bond=cap)
            mpo_sq += float(np.linalg.norm(W - m.to_dense()) ** 2)
            mpo_params += m.num_params
        entry["SVD per matrix"] = {"params": svd_params, "error": float(np.sqrt(svd_sq / total_sq))}
        entry["MPO per matrix"] = {"params": mpo_params, "error": float(np.sqrt(mpo_sq / total_sq))}
        for key, value in entry.items():
            if isinstance(value, dict):
                assert value["params"] <= budget, (key, value)
        rows.append(entry)
        print(f"rho {rho}: " + ", ".join(f"{k} {v['error']:.4f}" for k, v in entry.items() if isinstance(v, dict)), flush=True)
    return rows


def hooi_race(blocks, ranks, sweeps, repeats):
    """Our HOOI against TensorLy's tucker on the same stack, ranks and number of sweeps."""
    from mpo import stacked

    T = np.stack(blocks).astype(np.float64)
    norm = np.linalg.norm(T)
    fns = {"mpo": lambda: stacked._hooi(T, ranks[1], ranks[0], sweeps, 0.0)}
    try:
        import tensorly as tl
        from tensorly.decomposition import tucker

        tl.set_backend("numpy")
        fns["tensorly"] = lambda: tucker(T, rank=list(ranks), n_iter_max=sweeps, init="svd", tol=0.0)
    except ImportError:
        print("tensorly is not installed: HOOI timed without the peer")
    timed = time_interleaved(fns, repeats=repeats, warmup=0)
    out = {}
    for label, value in timed.items():
        if isinstance(value, BaseException):
            out[label] = {"error": repr(value)}
            continue
        median, times, result = value
        if label == "mpo":
            U, V, P, core, _ = result
            approx = np.einsum("nl,lde->nde", P, core)
            rebuilt = U @ approx @ V
        else:
            import tensorly as tl

            rebuilt = tl.tucker_to_tensor(result)
        out[label] = {"median_s": median, "times_s": times, "relative_error": float(np.linalg.norm(T - rebuilt) / norm)}
    if "tensorly" in out and "median_s" in out["tensorly"]:
        out["ratio_tensorly_over_mpo"] = out["tensorly"]["median_s"] / out["mpo"]["median_s"]
    return out


def forward_race(cut, tokens, repeats, rng):
    """One layer's linears: dense products against the reconstruction protocol at each rank."""
    from mpo import stacked

    layer = [i for i, r in enumerate(cut.refs) if r.layer == 0]
    blocks = [cut.blocks[i] for i in layer]
    refs = [cut.refs[i] for i in layer]
    D = cut.block_size
    q, k, v, o = 0, 1, 2, 3
    ffn_in = [i for i, r in enumerate(refs) if r.matrix == "intermediate"]
    ffn_out = [i for i, r in enumerate(refs) if r.matrix == "output"]
    W_in = np.concatenate([blocks[i] for i in ffn_in], axis=1)
    W_out = np.concatenate([blocks[i] for i in ffn_out], axis=0)
    x, ctx, h = (rng.standard_normal((tokens, D)) for _ in range(3))
    hidden = rng.standard_normal((tokens, len(ffn_out) * D))

    def dense():
        return [x @ blocks[q], x @ blocks[k], x @ blocks[v], ctx @ blocks[o], h @ W_in, hidden @ W_out]

    fns = {"dense": dense}
    fits = {}
    for d in SPEED_RANKS:
        s = stacked.decompose(blocks, "tucker", rank=d, bank=len(blocks) // 2, max_iter=5)
        s.cores()  # mix the bank once, as a deployed model would
        fits[d] = s

        def protocol(s=s):
            qkv = s.apply(x, [q, k, v])  # x U once for Q, K and V
            out = [*qkv, s.apply(ctx, o), np.concatenate(s.apply(h, ffn_in), axis=-1)]
            parts = hidden.reshape(tokens, len(ffn_out), D) @ s.U  # one GEMM for all FFN-out parts
            cores = s.cores()[ffn_out]
            out.append(np.einsum("tpd,pde->te", parts, cores) @ s.V)
            return out

        fns[f"d={d}"] = protocol
    timed = time_interleaved(fns, repeats=repeats, warmup=1)
    base = timed["dense"][0]
    out = {"tokens": tokens, "dense_median_s": base}
    for d, s in fits.items():
        median, _, result = timed[f"d={d}"]
        # The protocol's products equal those of the (never formed) blocks Ŵ_i.
        expect = [x @ s.block(q), ctx @ s.block(o), hidden @ np.concatenate([s.block(i) for i in ffn_out], axis=0)]
        assert np.allclose(result[0], expect[0]) and np.allclose(result[3], expect[1]) and np.allclose(result[5], expect[2])
        macs = tokens * ((3 + len(ffn_out)) * D * d + len(blocks) * d * d + (len(blocks) - len(ffn_out) + 1) * d * D)
        out[f"d={d}"] = {"median_s": median, "speedup_vs_dense": base / median, "macs_ratio": macs / (tokens * len(blocks) * D * D)}
    return out


def model_race(repeats):
    """MiniLM's whole encoder in torch: the dense BertModel against compress_stacked copies (tucker,
    l = 36) at each rank, on the real sentences, one thread, interleaved."""
    import copy

    import torch

    from bench_fisher import DATA, load_model
    from mpo.torch import compress_stacked

    torch.set_num_threads(1)
    model, tokenizer = load_model()
    model.eval()
    sentences = [t for t in DATA.read_text(encoding="utf-8").splitlines() if t.strip()][:32]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    models = {"dense": model}
    fits = {}
    for d in SPEED_RANKS:
        models[f"d={d}"] = copy.deepcopy(model)
        fits[d] = compress_stacked(models[f"d={d}"], "tucker", rank=d, bank=36, max_iter=5)

    def run(m):
        with torch.no_grad():
            return m(**batch).last_hidden_state

    timed = time_interleaved({k: (lambda m=m: run(m)) for k, m in models.items()}, repeats=repeats, warmup=1)
    base = timed["dense"][0]
    out = {"sentences": len(sentences), "tokens_padded": int(batch["input_ids"].numel()), "dense_median_s": base}
    for d in SPEED_RANKS:
        median, _, hidden = timed[f"d={d}"]
        assert torch.isfinite(hidden).all()
        fit = fits[d].fit
        out[f"d={d}"] = {
            "median_s": median,
            "speedup_vs_dense": base / median,
            "encoder_matrix_params": fit.num_params,
            "relative_error": fit.relative_error(),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rhos", type=float, nargs="+", default=list(RHOS))
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-torch", action="store_true", help="skip the whole-model torch forward race")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "stacked.json")
    args = parser.parse_args()

    import mpo
    from mpo import stacked
    from mpo._data import load_minilm

    print(f"command: {command_line()}")
    machine = print_machine()
    state = load_minilm()
    cut = stacked.bert_blocks(state)
    rng = np.random.default_rng(0)

    errors = error_vs_budget(state, args.rhos)
    keys = [k for k in errors[0] if isinstance(errors[0][k], dict) and "l=" not in k]
    table = [[f"{e['rho']:g}", k, str(e[k]["params"]), f"{e[k]['error']:.4f}",
              ", ".join(f"{a}={e[k][a]}" for a in ("rank", "bank") if a in e[k])] for e in errors for k in keys]
    print(format_table(["rho", "form", "params", "relative error", "sizes"], table))

    hooi = hooi_race(cut.blocks, (36, 64, 64), sweeps=5, repeats=3)
    print("HOOI (72 x 384 x 384, ranks (36, 64, 64), 5 sweeps):", {k: (v if not isinstance(v, dict) else {a: b for a, b in v.items() if a != "times_s"}) for k, v in hooi.items()})

    speed = forward_race(cut, args.tokens, args.repeats, rng)
    print(format_table(
        ["d", "median s", "speed-up vs dense", "MAC ratio"],
        [[k, f"{v['median_s']:.5f}", f"{v['speedup_vs_dense']:.2f}", f"{v['macs_ratio']:.3f}"] for k, v in speed.items() if k.startswith("d=")]
        + [["dense", f"{speed['dense_median_s']:.5f}", "1.00", "1.000"]],
    ))
    model = None
    if not args.no_torch:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            print("torch or transformers is missing: the whole-model race is skipped")
        else:
            model = model_race(args.repeats)
            print(format_table(
                ["MiniLM encoder", "median s", "speed-up vs dense", "matrix params", "relative error"],
                [[k, f"{v['median_s']:.4f}", f"{v['speedup_vs_dense']:.2f}", str(v["encoder_matrix_params"]), f"{v['relative_error']:.4f}"]
                 for k, v in model.items() if k.startswith("d=")] + [["dense", f"{model['dense_median_s']:.4f}", "1.00", "10616832", "0"]],
            ))
    write_json(
        args.out,
        {
            "benchmark": "stacked",
            "command": command_line(),
            "versions": library_versions(mpo),
            "machine": machine,
            "errors": errors,
            "hooi": hooi,
            "forward": speed,
            "model_forward": model,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
