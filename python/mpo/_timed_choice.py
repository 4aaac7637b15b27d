"""Choices made by timing, once per process: which of a few equivalent routes runs fastest here.

Used where FLOPs alone mislead (``_apply_route`` for products, ``mpo.torch._autotune`` for the
layers' modes): the candidates are timed in interleaved rounds, so that both see the same load on a
shared machine, and the fastest call of each counts.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable, Mapping

__all__ = ["Choices", "fastest"]


class Choices:
    """A table of choices made for the process, safe to read and fill from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: dict[Hashable, str] = {}

    def get(self, key: Hashable) -> str | None:
        """The choice made for ``key``, or None."""
        with self._lock:
            return self._table.get(key)

    def set(self, key: Hashable, choice: str) -> None:
        """Record ``choice`` for ``key``."""
        with self._lock:
            self._table[key] = choice

    def clear(self) -> None:
        """Forget every choice."""
        with self._lock:
            self._table.clear()


def fastest(runs: Mapping[str, Callable[[], object]], rounds: int) -> tuple[str, dict[str, object]]:
    """(name of the fastest, the last result of each): ``rounds`` interleaved calls of each run."""
    if rounds < 1:
        raise ValueError(f"fastest: rounds must be >= 1, got {rounds}")
    best = {name: math.inf for name in runs}
    last: dict[str, object] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            last[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    return min(best, key=best.__getitem__), last
