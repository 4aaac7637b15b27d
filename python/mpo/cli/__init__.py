"""The ``mpo`` command: compress a checkpoint, inspect and rebuild the result, compare with SVD/CP/Tucker.

    mpo compress CHECKPOINT -o OUT [--n 5] (--max-bond B | --ratio R | --tol T | --exact) [--force] [--dtype D]
                 [--include GLOB]... [--exclude GLOB]... [--calibration STATS [--held-out STATS] [--scaling S] [--allocate model]]
                 [--workers N | --scheduler ADDRESS]
    mpo calibrate MODEL_DIR --text FILE -o STATS [--include GLOB]... [--exclude GLOB]...
    mpo inspect OUT
    mpo rebuild OUT -o DENSE
    mpo compare CHECKPOINT [--matrix NAME]... [--ratios R ...] [--plot FILE.png]
    mpo demo

Bad input (a missing or unreadable file, a pattern that matches nothing, a ratio outside (0, 1]) ends
with one line on stderr and exit status 2, never a traceback. Outputs are written to a temporary file
and renamed into place, so Ctrl-C (exit status 130) never leaves a half-written file. Tables go to
stdout, progress to stderr.

This file holds the argument parsing and ``main``; ``_commands`` compress / inspect / rebuild,
``_compare`` the comparison with the baselines, ``_demo`` the demo, ``_report`` the tables and progress.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .. import __version__
from .._validation import parse_ratio, parse_tol
from ._commands import UsageError, calibrate, compress, inspect, rebuild
from ._compare import compare, compare_table, plot_compare, run_compare
from ._demo import demo

__all__ = ["main", "build_parser", "UsageError", "run_compare", "compare_table", "plot_compare"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit status 2 (argparse would print the usage too)
        raise UsageError(f"{message} (see {self.prog} --help)")


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio must be a number in (0, 1], got {text!r}") from None
    try:
        return parse_ratio(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tol(text: str) -> float:
    try:
        return parse_tol(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _n(text: str) -> int:
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"n must be >= 2 (an MPO has at least two cores), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mpo", description="Matrix Product Operator compression of checkpoints (MPOP).")
    parser.add_argument("--version", action="version", version=f"mpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("compress", help="decompose every matching 2-D weight of a checkpoint")
    p.add_argument("checkpoint", help="a Hugging Face model folder, .safetensors, .npz, or .bin/.pt (needs torch)")
    p.add_argument("-o", "--output", required=True,
                   help="a folder (the compressed model, loaded by mpo.torch.from_pretrained), or a .safetensors "
                        "file for a single-file checkpoint (read by mpo inspect / rebuild)")
    p.add_argument("--n", type=_n, default=5, help="number of cores (default 5)")
    p.add_argument("--max-bond", type=_positive, help="cap on every bond")
    p.add_argument("--ratio", type=_ratio,
                   help="compression ratio in (0, 1] per matrix (budget mode; with --max-bond no bond exceeds it, "
                        "as mpo.decompose does)")
    p.add_argument("--tol", type=_tol, help="relative error target in [0, 1) per matrix")
    p.add_argument("--exact", action="store_true", help="full bonds (no cut; usually larger than the matrix)")
    p.add_argument("--force", action="store_true",
                   help="compress tiny matrices and those whose MPO is not smaller too (else they stay dense)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32", "float64"],
                   help="dtype of the cores (default: each matrix's own)")
    p.add_argument("--max-shard-size", default="1GB", help="largest output shard of a folder (default 1GB)")
    p.add_argument("--include", action="append",
                   help="only the weights matching this fnmatch glob (repeatable): module names in a model folder "
                        "(e.g. '*.mlp.*', as mpo.torch.compress), tensor names in a single file")
    p.add_argument("--exclude", action="append", help="not the weights matching this glob (repeatable)")
    p.add_argument("--calibration", metavar="FILE",
                   help="activation statistics of this model folder (mpo.torch.calibrate(...).save(FILE), or mpo "
                        "calibrate): its untied Linear layers with statistics are fitted to their inputs, as "
                        "mpo.torch.compress(weights='activations') does; needs torch and transformers")
    p.add_argument("--held-out", metavar="FILE",
                   help="with --calibration: statistics of other text (mpo calibrate on other lines); each fitted "
                        "layer's activation error on them is reported as held_out (nothing is fitted to them)")
    p.add_argument("--scaling", choices=["auto", "none", "diagonal", "whiten", "diagonal+whiten"], default="auto",
                   help="how --calibration's statistics are used (default auto: whiten for --n 2, diagonal for n > 2)")
    p.add_argument("--allocate", choices=["model"],
                   help="with --calibration and --ratio: one parameter budget over all calibrated Linear layers, "
                        "whitened-SVD ranks chosen by their activation spectra (mpo.torch.compress(allocate='model'))")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive,
                       help="decompose on N local worker processes of one kernel thread each (a Dask LocalCluster; "
                            'needs pip install "mpo[distributed]")')
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="decompose on the workers of the running Dask cluster at ADDRESS (e.g. tcp://host:8786); "
                            "they must see the checkpoint at the same path")
    p.set_defaults(func=compress)

    p = sub.add_parser("calibrate", help="save a model folder's layer input statistics for compress --calibration")
    p.add_argument("model", help="a Hugging Face model folder with its tokenizer")
    p.add_argument("--text", required=True, help="UTF-8 text, one sample per line (real text the model will meet)")
    p.add_argument("-o", "--output", required=True, help="the statistics file (.safetensors)")
    p.add_argument("--include", action="append", help="only the Linear/Conv1D modules matching this glob (repeatable)")
    p.add_argument("--exclude", action="append", help="not the modules matching this glob (repeatable)")
    p.add_argument("--batch-size", type=_positive, default=8, help="lines per batch (default 8)")
    p.add_argument("--max-length", type=_positive, default=128, help="tokens per line at most (default 128)")
    p.set_defaults(func=calibrate)

    p = sub.add_parser("inspect", help="print the table of a compressed file")
    p.add_argument("file")
    p.set_defaults(func=inspect)

    p = sub.add_parser("rebuild", help="write the dense weights of a compressed file")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, help="dense checkpoint (.safetensors, or .npz)")
    p.set_defaults(func=rebuild)

    ratios: dict[str, Any] = dict(type=_ratio, nargs="+", default=[0.5, 0.2, 0.1, 0.05], help="target ratios")
    cp: dict[str, Any] = dict(type=_positive, default=200, help="skip CP above this rank (ALS costs R^2 per sweep)")
    p = sub.add_parser("compare", help="MPO vs SVD, CP and Tucker at the same ratios")
    p.add_argument("checkpoint")
    p.add_argument("--matrix", action="append", help="a weight to compare (repeatable; default one per shape)")
    p.add_argument("--ratios", **ratios)
    p.add_argument("--n", type=_n, default=5)
    p.add_argument("--cp-max-rank", **cp)
    p.add_argument("--plot", help="write error-vs-rho curves to this PNG (needs matplotlib)")
    p.set_defaults(func=compare)

    p = sub.add_parser("demo", help="compress and compare on the MiniLM-L6 checkpoint")
    p.add_argument("--out-dir", default="mpo-demo", help="where the outputs go (default ./mpo-demo)")
    p.add_argument("--ratio", type=_ratio, default=0.2)
    p.add_argument("--ratios", **ratios)
    p.add_argument("--cp-max-rank", **cp)
    p.add_argument("--layers", type=_positive, default=None,
                   help="compress for function only the first LAYERS encoder layers (default all 6; 1 is a quick look)")
    p.set_defaults(func=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpo`` console script and ``python -m mpo``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        print(f"mpo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmpo: interrupted; no output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mpo inspect x | head`
        return 0
