"""Peak memory of ``mpo compress`` on a sharded bf16 checkpoint against its largest tensor and its size.

The benchmark writes a synthetic Hugging Face folder (``--tensors`` bf16 matrices of random values,
the last one twice the size of the others, in shards of ``--shard-mb``), then runs, each in its own
subprocess so that each peak is its own:

- the baseline: the interpreter with numpy and mpo imported, doing nothing;
- ``mpo compress DIR -o OUT --max-bond B``.

Each child reports its own peak resident set (``getrusage(RUSAGE_SELF).ru_maxrss``). The table sets the
compress peak above the baseline beside the largest tensor's float32 size and the whole checkpoint's
size (bf16 as stored, and float32). Streaming means the peak above baseline tracks the largest tensor,
not the checkpoint. The output is also checked: every compressed module's cores are in the folder and
the untouched tensors are bit-exact.

    python benchmarks/bench_checkpoint.py            # 23 matrices of 1536 x 1536 and one of 3072 x 4608
    python benchmarks/bench_checkpoint.py --quick    # a few seconds: a smoke run, figures not meaningful
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# The child runs a script that prints its own peak RSS (kB on Linux) as the last line of stderr.
_CHILD = r"""
import resource, runpy, sys
argv = sys.argv[1:]
code = 0
if argv:
    sys.argv = ["mpo", *argv]
    try:
        runpy.run_module("mpo", run_name="__main__")
    except SystemExit as exc:
        code = exc.code or 0
else:
    import numpy, mpo  # noqa: F401  (the baseline: what every run pays before reading a tensor)
sys.stderr.write(f"\nMAXRSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\n")
sys.exit(code)
"""


def write_checkpoint(folder: str, count: int, side: int, shard_bytes: int) -> dict:
    """A sharded bf16 folder with ``count`` matrices (the last 2 side x 3 side), a bias per matrix and an
    integer tensor; returns its sizes."""
    import ml_dtypes

    from mpo.io._safetensors import SafetensorsWriter

    rng = np.random.default_rng(0)
    shapes = [(side, side)] * (count - 1) + [(2 * side, 3 * side)]
    weight_map, shard, writer, shard_size, files = {}, 0, None, 0, []
    largest = 0
    total = 0
    for k, shape in enumerate(shapes):
        tensors = {
            f"layers.{k}.proj.weight": (rng.standard_normal(shape, dtype=np.float32) / side).astype(ml_dtypes.bfloat16),
            f"layers.{k}.proj.bias": np.zeros(shape[0], dtype=ml_dtypes.bfloat16),
        }
        if k == 0:
            tensors["position_ids"] = np.arange(64, dtype=np.int64)
        for name, a in tensors.items():
            if writer is None or shard_size + a.nbytes > shard_bytes and shard_size:
                if writer is not None:
                    writer.close()
                shard += 1
                files.append(f"model-{shard:05d}.safetensors")
                writer = SafetensorsWriter(os.path.join(folder, files[-1]))
                shard_size = 0
            writer.add(name, a)
            weight_map[name] = files[-1]
            shard_size += a.nbytes
            total += a.nbytes
            if a.ndim == 2:
                largest = max(largest, a.size * 4)
    writer.close()
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "synthetic"}, f)
    return {"tensors": len(weight_map), "matrices": count, "shards": shard, "bytes": total,
            "largest_f32": largest, "whole_f32": total * 2}


def run_child(args: list[str]) -> tuple[int, float, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("MAXRSS_KB"):
        raise SystemExit(f"bench_checkpoint: the child {args} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return int(lines[-1].split()[1]) * 1024, seconds, proc.stdout


def check_output(source: str, out: str) -> int:
    """Every tensor of the source either compressed (its cores present) or copied bit-exactly."""
    from mpo.io import _hf

    manifest, ckpt = _hf.open_compressed(out)
    with ckpt, _hf.open_checkpoint(source) as src:
        for name in src.names:
            path = _hf.module_path(name)
            if path in manifest["modules"]:
                assert f"{path}.cores.0" in ckpt.names, name
            else:
                assert ckpt.read(name).tobytes() == src.read(name).tobytes(), name
    return len(manifest["modules"])


def mb(x: float) -> str:
    return f"{x / 2**20:8.1f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="matrices of side 128: a smoke run")
    parser.add_argument("--tensors", type=int, default=24)
    parser.add_argument("--side", type=int, default=1536)
    parser.add_argument("--max-bond", type=int, default=16)
    parser.add_argument("--shard-mb", type=float, default=20.0)
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.side, args.shard_mb = 128, 0.1
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp:
        source, out = os.path.join(tmp, "model"), os.path.join(tmp, "model-mpo")
        os.mkdir(source)
        sizes = write_checkpoint(source, args.tensors, args.side, int(args.shard_mb * 2**20))
        baseline, _, _ = run_child([])
        peak, seconds, _ = run_child(["compress", source, "-o", out, "--max-bond", str(args.max_bond)])
        compressed = check_output(source, out)
    above = peak - baseline
    print(f"checkpoint: {sizes['tensors']} tensors ({sizes['matrices']} bf16 matrices) in {sizes['shards']} shards; "
          f"{compressed} compressed at max_bond {args.max_bond} in {seconds:.1f} s")
    print(f"{'':34}{'MiB':>8}")
    print(f"{'largest tensor as float32':34}{mb(sizes['largest_f32'])}")
    print(f"{'whole checkpoint (bf16, on disk)':34}{mb(sizes['bytes'])}")
    print(f"{'whole checkpoint as float32':34}{mb(sizes['whole_f32'])}")
    print(f"{'peak RSS, baseline (imports)':34}{mb(baseline)}")
    print(f"{'peak RSS, mpo compress':34}{mb(peak)}")
    print(f"{'peak RSS above baseline':34}{mb(above)}")
    print(f"above baseline / largest float32 tensor: {above / sizes['largest_f32']:.2f}; "
          f"/ whole checkpoint as float32: {above / sizes['whole_f32']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**sizes, "baseline_rss": baseline, "peak_rss": peak, "seconds": seconds,
                       "max_bond": args.max_bond, "quick": args.quick}, f, indent=2)
    if not args.quick and above >= sizes["whole_f32"]:
        raise SystemExit("bench_checkpoint: the peak above baseline reached the whole checkpoint's float32 size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
