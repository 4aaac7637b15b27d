"""Choices made by timing, once per process: which of a few equivalent routes runs fastest here.

Used where FLOPs alone mislead (``_apply_route`` for products, ``mpo.torch._autotune`` for the
layers' modes): the candidates are timed in interleaved rounds, so that both see the same load on a
shared machine, and the fastest call of each counts. A timed choice can differ from run to run (the
routes are within noise of each other where they are timed), and the routes round differently, so a
run that must repeat bit for bit sets ``MPO_DETERMINISTIC=1`` (:func:`deterministic`): every choice then
follows its FLOP rule.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping

__all__ = ["DETERMINISTIC_VAR", "Choices", "deterministic", "fastest"]

#: Set to 1 to make every timed choice follow its FLOP rule instead: the same route on every run and
#: machine, so that results repeat bit for bit (the routes round differently); 0 or unset: timed.
DETERMINISTIC_VAR = "MPO_DETERMINISTIC"


def deterministic() -> bool:
    """Whether ``MPO_DETERMINISTIC`` asks for choices by FLOPs alone ("1"; "0" or unset: timed).

    Read at every new choice, so setting it mid-process takes effect for kinds not yet chosen; the
    cache keys carry it, so a choice made by timing is not reused under it."""
    value = os.environ.get(DETERMINISTIC_VAR, "").strip()
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    raise ValueError(f"{DETERMINISTIC_VAR} must be 0 or 1 (or unset), got {value!r}")


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
