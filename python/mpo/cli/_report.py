"""What the ``mpo`` command prints: the progress bar (stderr) and the tables (stdout)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._mpo import MPO

__all__ = ["progress", "table", "print_report", "print_folder_report", "print_dense"]


def progress(done: int, total: int, label: str) -> None:
    """A progress bar on stderr: redrawn in place on a terminal, one line per step otherwise."""
    width = 30
    filled = width * done // max(total, 1)
    line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line[:119].ljust(119) + ("\n" if done == total else ""))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """``rows`` under ``header`` as left-aligned text columns."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


_HEADER = ["name", "shape", "factors", "bonds", "rho", "rel_error", "rel_bound", "S_central", "seconds"]


def _row(name: str, m: MPO, error: float, seconds: float) -> list[str]:
    factors = "x".join(map(str, m.in_shape)) + " | " + "x".join(map(str, m.out_shape))
    entropy = m.entropy()
    central = entropy[min(m.central_index, len(entropy) - 1)]
    return [
        name,
        f"{m.shape[0]}x{m.shape[1]}",
        factors,
        ",".join(map(str, m.bond_dims)),
        f"{m.compression_ratio:.4f}",
        f"{error:.4f}",
        f"{m.relative_error_bound():.4f}",
        f"{central:.3f}",
        f"{seconds:.3f}",
    ]


def print_report(mpos: Mapping[str, MPO], info: Mapping[str, Any], plain: Mapping[str, np.ndarray],
                 dense: Mapping[str, str] | None = None) -> None:
    """The per-matrix table, the matrices left dense with the reason, and the totals, to stdout."""
    rows = [_row(name, mpos[name], info[name]["error"], info[name]["seconds"]) for name in info]
    print(table(rows, _HEADER))
    print_dense(dense or {})
    entries = sum(m.shape[0] * m.shape[1] for m in mpos.values())
    kept = sum(m.num_params for m in mpos.values())
    others = sum(int(np.asarray(t).size) for t in plain.values())
    seconds = sum(info[name]["seconds"] for name in info)
    print(
        f"\n{len(mpos)} matrices: {entries:,} -> {kept:,} parameters (rho {kept / max(entries, 1):.4f}), "
        f"{seconds:.2f} s decomposing; {len(plain)} other tensors ({others:,} values) kept as they were; "
        f"whole checkpoint {entries + others:,} -> {kept + others:,} values "
        f"({(kept + others) / max(entries + others, 1):.4f})"
    )


_FOLDER_HEADER = ["module", "shape", "factors", "bonds", "rho", "rel_error", "rel_bound", "S_central", "seconds"]


def print_folder_report(result: Any, activations: bool = False) -> None:
    """The table of a compressed model folder (mpo.io._hf.CompressResult): one row per compressed module,
    then every candidate matrix left dense with the reason, then the totals. ``activations`` adds the
    column act_error, ||X(M - M')|| / ||XM|| on the calibration statistics ("-" where a matrix had none),
    and held_out, the same on --held-out's statistics, when some matrix has it."""
    held = activations and any(r.get("held_out_error") is not None for r in result.rows)
    rows = []
    for r in result.rows:
        entropy = r["entropy"]
        central = entropy[min((len(r["in_factors"]) - 1) // 2, len(entropy) - 1)]
        rows.append([
            r["name"], f"{r['shape'][0]}x{r['shape'][1]}",
            "x".join(map(str, r["in_factors"])) + " | " + "x".join(map(str, r["out_factors"])),
            ",".join(map(str, r["bonds"])), f"{r['rho']:.4f}", f"{r['error']:.4f}", f"{r['bound']:.4f}",
            f"{central:.3f}", f"{r['seconds']:.3f}",
        ])
        if activations:
            act = r.get("act_error")
            rows[-1].insert(6, "-" if act is None else f"{act:.4f}")
            if held:
                out = r.get("held_out_error")
                rows[-1].insert(7, "-" if out is None else f"{out:.4f}")
    header = list(_FOLDER_HEADER)
    if activations:
        header.insert(6, "act_error")
        if held:
            header.insert(7, "held_out")
    print(table(rows, header))
    print_dense(result.dense)
    dense = sum(r["dense_params"] for r in result.rows)
    kept = sum(r["params"] for r in result.rows)
    print(
        f"\n{len(result.rows)} matrices: {dense:,} -> {kept:,} parameters (rho {kept / max(dense, 1):.4f}); "
        f"{len(result.dense)} left dense; {result.copied_tensors} tensors ({result.copied_values:,} values) "
        f"copied as they were; whole checkpoint {dense + result.copied_values:,} -> "
        f"{kept + result.copied_values:,} values ({(kept + result.copied_values) / max(dense + result.copied_values, 1):.4f})"
    )


def print_dense(dense: Mapping[str, str]) -> None:
    """The candidate matrices left dense, each with its reason (nothing when there are none)."""
    if dense:
        print("\n" + table([[name, reason] for name, reason in dense.items()], ["left dense", "reason"]))
