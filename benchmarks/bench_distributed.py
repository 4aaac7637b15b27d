"""``mpo compress`` of a Llama-3-8B-shaped checkpoint: serial, on 1 and on 2 Dask workers.

The benchmark writes a synthetic Hugging Face folder with the layout of Llama-3-8B (``config.json`` with
``LlamaForCausalLM``; ``model.embed_tokens.weight``, ``model.layers.L.self_attn.{q,k,v,o}_proj.weight``,
``model.layers.L.mlp.{gate,up,down}_proj.weight``, the RMSNorm weights, ``model.norm.weight``,
``lm_head.weight``; hidden 4096, FFN 14336, grouped-query K/V 1024 x 4096, vocabulary 128256) with
random bf16 weights, ``--layers`` decoder layers, in shards of ``--shard-mb``, indexed as the Hub does.
It then compresses the decoder matrices (``--include 'model.layers.*'``) three ways with the same
settings, every kernel on one thread (the variables are set before NumPy loads):

- serial: ``compress_checkpoint`` in this process;
- 1 worker and 2 workers: a ``LocalCluster`` of that many processes (``mpo.io._dask.local_client``).

and reports matrices/s, MB/s (bf16 bytes of the decomposed matrices over the wall time, cluster start
excluded and reported apart), each worker's peak RSS (VmHWM, asked of each worker after its run), and the
scaling of 2 workers over 1 (the target on a 2-core machine: at least 1.7x) over the task phase, the part
the workers share; the assembly of the output folder after it (copying the tensors not compressed)
stays in this process and is reported apart, with the end-to-end scaling. Every run's output is
checked to be byte-identical to the serial one.

The projection: one matrix of every distinct shape of Llama-3-8B and of a 70B (80 layers, hidden 8192,
FFN 28672, K/V 1024 x 8192, vocabulary 128256) is written to a file and compressed once by
``compress_task`` at the same settings, and timed (peak memory: the largest, 128256 x 8192, is 4.2 GB in
float32 before its decomposition's work space; ``--max-timed-mb`` estimates shapes above a size per
value from the largest one timed, and says so), then the whole model's time on 1, 8
and 64 workers is the sum over its matrices divided by workers x the measured efficiency per worker,
times the measured overhead of a run over its decompositions (reading, writing). It is a projection:
linear scaling at the efficiency measured here is an assumption, and a cluster's file system may differ.

    python benchmarks/bench_distributed.py                 # 2 layers, --max-bond 64 (long; several GB of memory)
    python benchmarks/bench_distributed.py --quick         # tiny shapes, under a minute; figures not meaningful
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

if __name__ == "__main__":
    # One kernel thread everywhere, this process's serial run too (set before NumPy or mpo load their
    # libraries; not when a test imports the checkpoint writer from here). Forced, not defaulted: mpo's
    # parallel products add in another order on more threads, and the serial output would then differ
    # from the workers' in the last bits, failing the identity check.
    for _var in ("MPO_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import format_machine, machine_info  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

#: Llama-3-8B and Llama-3-70B as published (config.json of meta-llama/Meta-Llama-3-8B / -70B).
LLAMA3_8B = dict(hidden=4096, ffn=14336, kv=1024, vocab=128256, layers=32)
LLAMA3_70B = dict(hidden=8192, ffn=28672, kv=1024, vocab=128256, layers=80)
#: --quick: the same layout, every side divided by 16 (vocabulary by 64).
QUICK = dict(hidden=256, ffn=896, kv=64, vocab=2004, layers=2)


def layer_shapes(hidden: int, ffn: int, kv: int) -> dict[str, tuple[int, int]]:
    """The seven weight matrices of one Llama decoder layer as stored (out_features x in_features)."""
    return {
        "self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv, hidden), "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, hidden), "mlp.gate_proj": (ffn, hidden), "mlp.up_proj": (ffn, hidden),
        "mlp.down_proj": (hidden, ffn),
    }


def model_shapes(spec: dict) -> list[tuple[int, int]]:
    """Every weight matrix of the model: 7 per layer, the embedding and an untied lm_head."""
    per_layer = list(layer_shapes(spec["hidden"], spec["ffn"], spec["kv"]).values())
    return per_layer * spec["layers"] + [(spec["vocab"], spec["hidden"])] * 2


def llama_tensors(spec: dict, layers: int):
    """(name, shape) of every tensor of a Llama checkpoint, in the Hub's order."""
    h = spec["hidden"]
    yield "model.embed_tokens.weight", (spec["vocab"], h)
    for layer in range(layers):
        p = f"model.layers.{layer}."
        yield p + "input_layernorm.weight", (h,)
        for name, shape in layer_shapes(h, spec["ffn"], spec["kv"]).items():
            yield p + name + ".weight", shape
        yield p + "post_attention_layernorm.weight", (h,)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (spec["vocab"], h)


def llama_config(spec: dict, layers: int) -> dict:
    """A config.json of the Llama-3 family with these sizes."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": spec["hidden"],
        "intermediate_size": spec["ffn"], "num_hidden_layers": layers, "num_attention_heads": spec["hidden"] // 128,
        "num_key_value_heads": spec["kv"] // 128 if spec["kv"] >= 128 else 1, "head_dim": 128,
        "vocab_size": spec["vocab"], "hidden_act": "silu", "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "bos_token_id": 128000, "eos_token_id": 128001,
    }


def write_llama_folder(folder: str, spec: dict, layers: int, shard_bytes: int, seed: int = 0) -> dict:
    """A sharded bf16 Llama folder (random weights ~ N(0, 1/hidden), norms of ones): config.json,
    ``model-0000k-of-0000N.safetensors`` and ``model.safetensors.index.json``. Its sizes."""
    import ml_dtypes

    from mpo.io._safetensors import SafetensorsWriter

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    groups: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for name, shape in llama_tensors(spec, layers):
        nbytes = 2 * int(np.prod(shape))
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    weight_map, total = {}, 0
    for k, group in enumerate(groups, 1):
        shard = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        with SafetensorsWriter(os.path.join(folder, shard), {"format": "pt"}) as w:
            for name, shape in group:
                if len(shape) == 1:
                    a = np.ones(shape, dtype=ml_dtypes.bfloat16)
                else:
                    a = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[1])).astype(ml_dtypes.bfloat16)
                w.add(name, a)
                weight_map[name] = shard
                total += a.nbytes
                del a
    with open(os.path.join(folder, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(llama_config(spec, layers), f, indent=2)
    return {"tensors": len(weight_map), "shards": len(groups), "bytes": total}


def _folder_bytes(folder: str) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
            if name.endswith((".safetensors", ".json"))}


def run_once(source: str, out: str, settings: dict, workers: int | None) -> dict:
    """One compress run (serial when ``workers`` is None); wall time, cluster start, per-worker peaks."""
    from mpo.io import _dask, _hf

    seen: dict[int, int] = {}
    started = time.perf_counter()

    marks: list[float] = []

    def run(client):
        start = time.perf_counter()
        # progress() is called once at the start and after each matrix: the last call ends the task phase
        # (what the workers share); the rest is the assembly of the output folder in this process.
        result = _hf.compress_checkpoint(source, out, include=["model.layers.*"], client=client,
                                         progress=lambda *_: marks.append(time.perf_counter()), **settings)
        return result, time.perf_counter() - start

    if workers is None:
        result, wall = run(None)
        cluster_s = 0.0  # (this process's peak is not reported: writing the checkpoint set it)
    else:
        with _dask.local_client(workers) as client:
            client.run(_warm)  # every worker imports mpo before the clock starts (counted in "start")
            cluster_s = time.perf_counter() - started
            result, wall = run(client)
            # Each worker's own peak resident set, asked of the worker itself.
            peaks = client.run(_worker_peak)
            seen.update({int(v[0]): int(v[1]) for v in peaks.values() if v[1] is not None})
    tasks_s = marks[-1] - marks[0]
    return {"result": result, "wall_s": wall, "tasks_s": tasks_s, "assembly_s": wall - tasks_s,
            "cluster_start_s": cluster_s, "peak_rss_mb": sorted(round(kb / 1024, 1) for kb in seen.values())}


def _warm() -> None:
    import mpo.io._hf  # noqa: F401


def _worker_peak() -> tuple[int, int | None]:
    from mpo.io._hf import peak_rss_kb

    return os.getpid(), peak_rss_kb()


def time_shapes(shapes: list[tuple[int, int]], settings: dict, folder: str,
                max_timed_mb: float | None = None, seed: int = 1) -> tuple[dict[str, float], list[str]]:
    """Seconds for one task on a random bf16 matrix of each shape (``compress_task``: read the tensor,
    widen, decompose, cast), and the shapes estimated instead: those above ``max_timed_mb`` in float32
    get the seconds per value of the largest shape timed."""
    import ml_dtypes

    from mpo.io import _hf
    from mpo.io._safetensors import save_file

    rng = np.random.default_rng(seed)
    s = _hf.Settings.make(**settings, force=True)
    out: dict[str, float] = {}
    skipped = []
    largest = None
    for shape in sorted(set(shapes), key=lambda sh: sh[0] * sh[1]):
        key = f"{shape[0]}x{shape[1]}"
        if max_timed_mb is not None and 4 * shape[0] * shape[1] / 1e6 > max_timed_mb:
            skipped.append(shape)
            continue
        path = os.path.join(folder, "shape.safetensors")
        raw = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[1])).astype(ml_dtypes.bfloat16)
        save_file(path, {"w": raw})
        del raw
        start = time.perf_counter()
        _hf.compress_task(_hf.MatrixTask(path, "w"), s)
        out[key] = time.perf_counter() - start
        os.unlink(path)
        largest = shape
    if skipped and largest is None:
        raise SystemExit("bench_distributed: --max-timed-mb leaves no shape to time")
    for shape in skipped:
        per_value = out[f"{largest[0]}x{largest[1]}"] / (largest[0] * largest[1])
        out[f"{shape[0]}x{shape[1]}"] = per_value * shape[0] * shape[1]
    return out, [f"{r}x{c}" for r, c in skipped]


def project(spec: dict, seconds: dict[str, float], overhead: float, efficiency: float,
            assembly_s_per_gb: float = 0.0, workers=(1, 8, 64)) -> dict:
    """Hours for the whole model on each worker count: the sum of per-shape times x the task overhead,
    over workers x efficiency (1 worker: efficiency 1), plus the assembly, which stays in one process:
    its measured seconds per GB copied x the bf16 bytes of the tensors not compressed (the embedding
    and the output head; the RMSNorm weights are too small to count)."""
    total = sum(seconds[f"{r}x{c}"] for r, c in model_shapes(spec)) * overhead
    assembly = assembly_s_per_gb * 2 * 2 * spec["vocab"] * spec["hidden"] / 1e9
    return {str(w): (total / (w * (1.0 if w == 1 else efficiency)) + assembly) / 3600 for w in workers}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the synthetic checkpoint (2-4)")
    parser.add_argument("--shard-mb", type=float, default=1000, help="shard size of the synthetic checkpoint")
    parser.add_argument("--max-bond", type=int, default=64)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--max-timed-mb", type=float, default=None,
                        help="time only the projection's shapes up to this size in float32 (the 70B embedding is "
                             "4.2 GB); larger ones are estimated per value from the largest timed (default: time all)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes; a smoke run")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "bench_distributed.json"))
    args = parser.parse_args(argv)

    spec = dict(QUICK) if args.quick else dict(LLAMA3_8B)
    big = dict(QUICK, hidden=512, ffn=1792, layers=80) if args.quick else dict(LLAMA3_70B)
    full = dict(spec, layers=32)
    settings = {"n": args.n, "max_bond": 8 if args.quick else args.max_bond}
    shard_bytes = int(args.shard_mb * 1e6) if not args.quick else 600_000
    machine = machine_info()
    print("\n".join(format_machine(machine)))

    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        source = os.path.join(tmp, "llama")
        sizes = write_llama_folder(source, spec, args.layers, shard_bytes)
        from mpo.io._hf import open_checkpoint

        with open_checkpoint(source) as ckpt:
            decoder = [n for n in ckpt.names if n.startswith("model.layers.") and len(ckpt.info(n).shape) == 2]
            matrix_bytes = sum(ckpt.info(n).nbytes for n in decoder)
        print(f"\nsynthetic Llama checkpoint: {args.layers} layers, {sizes['tensors']} tensors in {sizes['shards']} "
              f"shards, {sizes['bytes'] / 1e6:.1f} MB; {len(decoder)} decoder matrices ({matrix_bytes / 1e6:.1f} MB)")
        runs = {}
        reference = None
        for label, workers in (("serial", None), ("1 worker", 1), ("2 workers", 2)):
            out = os.path.join(tmp, f"out-{label.replace(' ', '-')}")
            r = run_once(source, out, settings, workers)
            files = _folder_bytes(out)
            if reference is None:
                reference = files
            identical = files == reference
            if not identical:
                raise SystemExit(f"bench_distributed: the {label} output differs from the serial one")
            rows = r["result"].rows
            runs[label] = {
                "workers": workers, "wall_s": r["wall_s"], "tasks_s": r["tasks_s"], "assembly_s": r["assembly_s"],
                "cluster_start_s": r["cluster_start_s"], "matrices": len(rows),
                "matrices_per_s": len(rows) / r["wall_s"], "task_matrices_per_s": len(rows) / r["tasks_s"],
                "mb_per_s": matrix_bytes / 1e6 / r["wall_s"], "peak_rss_mb": r["peak_rss_mb"],
                "decompose_s": sum(row["seconds"] for row in rows), "identical_to_serial": identical,
            }
            shutil.rmtree(out)

    # The target is on the task phase, the part the workers share. The end-to-end figure is reported
    # too: its assembly (copying the tensors not compressed, 2.1 GB of embeddings here) runs in this
    # process after the tasks and does not shrink with workers.
    speedup = runs["2 workers"]["task_matrices_per_s"] / runs["1 worker"]["task_matrices_per_s"]
    speedup_wall = runs["2 workers"]["matrices_per_s"] / runs["1 worker"]["matrices_per_s"]
    efficiency = speedup / 2
    overhead = runs["1 worker"]["tasks_s"] / max(runs["serial"]["decompose_s"], 1e-9)
    passthrough = sizes["bytes"] - matrix_bytes
    assembly_s_per_gb = runs["1 worker"]["assembly_s"] / max(passthrough / 1e9, 1e-9)
    shapes = model_shapes(full) + model_shapes(big)
    with tempfile.TemporaryDirectory(prefix="bench-distributed-shapes-") as tmp:
        seconds, estimated = time_shapes(shapes, settings, tmp, args.max_timed_mb)
    projection = {"llama-3-8b": project(full, seconds, overhead, efficiency, assembly_s_per_gb),
                  "llama-3-70b": project(big, seconds, overhead, efficiency, assembly_s_per_gb)}

    print(f"\n{'run':<10} {'wall s':>8} {'tasks s':>8} {'assembly s':>10} {'start s':>8} {'matrices/s':>11} "
          f"{'(tasks)':>8} {'MB/s':>8}  peak RSS per worker (MB)")
    for label, r in runs.items():
        print(f"{label:<10} {r['wall_s']:8.2f} {r['tasks_s']:8.2f} {r['assembly_s']:10.2f} {r['cluster_start_s']:8.2f} "
              f"{r['matrices_per_s']:11.3f} {r['task_matrices_per_s']:8.3f} {r['mb_per_s']:8.2f}  {r['peak_rss_mb']}")
    print(f"\n2 workers over 1, task phase: {speedup:.2f}x (target >= 1.7x; efficiency {efficiency:.2f} per worker); "
          f"end to end with the assembly: {speedup_wall:.2f}x; task time over decomposition time: {overhead:.2f}; "
          f"assembly {assembly_s_per_gb:.2f} s per GB copied")
    print("\nPROJECTION (not measured: per-shape times measured here, linear scaling at the measured efficiency "
          "assumed):" + (f" (shapes {estimated} estimated per value, not timed)" if estimated else ""))
    for model, hours in projection.items():
        print(f"  {model:<12} " + "  ".join(f"{w} workers {h:7.3f} h ({60 * h:6.1f} min)" for w, h in hours.items()))

    data = {
        "benchmark": "bench_distributed", "quick": args.quick, "machine": machine,
        "checkpoint": {"layers": args.layers, "spec": spec, **sizes, "decoder_matrices": len(decoder),
                       "decoder_bytes": matrix_bytes},
        "settings": settings, "runs": runs,
        "speedup_2_over_1": speedup, "speedup_2_over_1_end_to_end": speedup_wall, "efficiency": efficiency,
        "overhead": overhead, "assembly_s_per_gb": assembly_s_per_gb,
        "shape_seconds": seconds, "shapes_estimated_not_timed": estimated,
        "projection_hours": projection, "projection_models": {"llama-3-8b": full, "llama-3-70b": big},
        "projection_note": "a projection, not a measurement: per-shape decomposition times measured on this "
                           "machine x the task overhead, divided by workers x the measured 2-worker efficiency, "
                           "plus the measured assembly time per GB x the bytes not compressed",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
