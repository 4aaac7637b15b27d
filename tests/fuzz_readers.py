"""Time-boxed fuzz pass over every file reader: random bytes and mutated valid files.

Readers: ``mpo.load`` (the ``mpo.MPO`` .npz), the ``mpo.checkpoint`` safetensors file of ``mpo compress``
(read as ``mpo inspect``/``rebuild`` read it), plain checkpoints through ``mpo.io.read_tensors`` (mpo's own
safetensors parser and the .npz path) and, when torch imports, ``mpo.torch.load``. Every case must either
load (and then rebuild through the kernels) or raise ValueError naming the file; anything else fails.

Used twice: by the suite (tests/test_file_safety.py, under the normal build) and by tests/sanitize.sh
(``python -m pytest tests/fuzz_readers.py`` with the ASan+UBSan build of ``_core``), so that a file that
slips past validation into the kernels is caught by the sanitizers too. MPO_READER_FUZZ_SECONDS sets the
budget (default 20 s), MPO_FUZZ_SEED the seed (default 0, so a failure reproduces; the reader, case and
seed are in the message).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import mpo
from mpo.cli import _commands as cli
from mpo.io import read_tensors, write_checkpoint, write_tensors

SECONDS = float(os.environ.get("MPO_READER_FUZZ_SECONDS", "20"))
SEED = int(os.environ.get("MPO_FUZZ_SEED", "0"))


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """1-7 random edits of ``data``: a byte overwritten, a cut, random bytes inserted, or 8 bytes copied
    from elsewhere in the file (sizes and offsets pasted into headers)."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 8))):
        kind = rng.random()
        if kind < 0.5 and b:
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        elif kind < 0.7 and b:
            del b[int(rng.integers(0, len(b))):]
        elif kind < 0.85:
            pos = int(rng.integers(0, len(b) + 1))
            b[pos:pos] = rng.bytes(int(rng.integers(1, 64)))
        elif len(b) > 16:
            start, length = int(rng.integers(0, len(b) - 8)), 8
            to = int(rng.integers(0, len(b) - length))
            b[to:to + length] = b[start:start + length]
    return bytes(b)


def _load_npz(path: Path) -> None:
    m = mpo.load(path)
    if m.num_params < 10**6:
        m.to_dense()


def _load_checkpoint(path: Path) -> None:
    try:
        mpos, _, _ = cli.read_compressed(str(path))
    except cli.UsageError as e:  # the CLI's one-line error; it names the file as ValueError does
        raise ValueError(str(e)) from None
    for m in mpos.values():
        m.to_dense()


def _load_tensors(path: Path) -> None:
    for a in read_tensors(path).values():
        np.asarray(a).sum()  # touch every byte the reader mapped


class Reader:
    """One reader under fuzz: a valid file's bytes, the suffix it must carry, and the call that reads it."""

    def __init__(self, name: str, suffix: str, valid: bytes, read: Callable[[Path], None]):
        self.name, self.suffix, self.valid, self.read = name, suffix, valid, read


def readers(folder: Path) -> list[Reader]:
    """Every reader with a small valid file of its own, written into ``folder`` by mpo's writers."""
    rng = np.random.default_rng(0)
    m = mpo.decompose(rng.standard_normal((12, 10)), shape=((3, 4), (2, 5)), max_bond=3)
    m.save(folder / "valid.npz")
    weight = rng.standard_normal((24, 16)).astype(np.float32)
    small = mpo.decompose(weight, n=2, max_bond=4)
    write_checkpoint(folder / "valid.safetensors", {"layer.weight": small.to_arrays()},
                            {"layer.bias": np.ones(24, np.float32)},
                            {"layer.weight": {"error": 0.5, "seconds": 0.0, "dtype": "float32"}}, mpo.__version__)
    write_tensors(folder / "plain.safetensors", {"w": weight, "b": np.arange(5, dtype=np.int64)})
    write_tensors(folder / "plain.npz", {"w": weight})
    out = [
        Reader("mpo.load", ".npz", (folder / "valid.npz").read_bytes(), _load_npz),
        Reader("checkpoint", ".safetensors", (folder / "valid.safetensors").read_bytes(), _load_checkpoint),
        Reader("read_tensors", ".safetensors", (folder / "plain.safetensors").read_bytes(), _load_tensors),
        Reader("read_tensors", ".npz", (folder / "plain.npz").read_bytes(), _load_tensors),
    ]
    torch_reader = _torch_reader(folder)
    if torch_reader is not None:
        out.append(torch_reader)
    return out


def _torch_reader(folder: Path) -> Reader | None:
    try:
        import torch

        import mpo.torch as mt
    except ImportError:
        return None

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8))

    compressed = model()
    mt.compress(compressed, max_bond=2, progress=False, force=True)
    mt.save(compressed, folder / "valid.pt")

    return Reader("mpo.torch.load", ".pt", (folder / "valid.pt").read_bytes(), lambda path: mt.load(model(), path))


def fuzz(folder: Path, seconds: float = SECONDS, seed: int = SEED) -> dict[str, int]:
    """Feed random bytes (one case in ten) and mutated valid files to every reader in turn for
    ``seconds``; return the number of cases per reader. AssertionError on anything but a clean load or
    a ValueError naming the file."""
    rng = np.random.default_rng(seed)
    table = readers(folder)
    counts = {f"{r.name}{r.suffix}": 0 for r in table}
    stop = time.monotonic() + seconds
    case = 0
    while time.monotonic() < stop or case < len(table):
        reader = table[case % len(table)]
        payload = rng.bytes(int(rng.integers(0, 512))) if rng.random() < 0.1 else mutate(reader.valid, rng)
        path = folder / f"case{case}{reader.suffix}"
        path.write_bytes(payload)
        try:
            reader.read(path)
        except ValueError as e:
            assert path.name in str(e), (reader.name, case, str(e))
        except Exception as e:  # pragma: no cover - the failure path
            raise AssertionError(f"{reader.name} on case {case} (seed {seed}) raised {type(e).__name__}: {e}") from e
        path.unlink()
        counts[f"{reader.name}{reader.suffix}"] += 1
        case += 1
    return counts


def test_readers_refuse_or_load_random_and_mutated_files(tmp_path):
    counts = fuzz(tmp_path)
    assert all(n > 0 for n in counts.values()), counts
