"""``mode="auto"`` of the MPO layers, chosen by timing the two modes on the machine that runs them.

FLOPs alone mislead here: how fast a contraction FLOP is next to a dense-GEMM FLOP depends on the
machine (the C++ kernel ran at GEMM speed on one with AVX-512 and at 64-84 % of it on an AVX2 one),
on the dtype (bfloat16 runs the float32 kernel and pays its conversions), on the thread count, and on whether
autograd runs (torch's permutes copy the whole state at every core, and the backward pass doubles
that). A constant factor measured once on one machine held there and failed elsewhere.

So the first forward pass of each kind (core shapes, features, dtype, device, autograd or not,
bias and row scale or not, rows rounded up to a power of two, torch's thread count) runs both modes
on a random input of the same size a few times, interleaved, with the backward pass when autograd
is on (``torch.autograd.grad``, so no ``.grad`` of the layer is touched), and later passes of that
kind take the faster mode. Where FLOPs alone settle it (one mode needs far fewer), nothing is timed.
The choice lives for the process; :func:`clear` forgets it.

A timed choice can differ between runs where the two modes are close, and the modes round differently,
so a training run that must repeat bit for bit turns timing off: under
``torch.use_deterministic_algorithms(True)`` or ``MPO_DETERMINISTIC=1`` "auto" takes the mode that
needs fewer FLOPs, the same on every run and machine (:func:`reproducible`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from .._timed_choice import Choices, deterministic, fastest

__all__ = ["FLOP_SLACK", "ROUNDS", "choose", "chosen", "clear", "mode_key", "probe_runner", "reproducible", "settled"]

#: Modes whose FLOPs differ by more than this factor are not timed: the cheaper one is taken.
FLOP_SLACK = 50.0
#: Timed passes of each mode when a kind of forward is first seen (the fastest counts).
ROUNDS = 3

_choices = Choices()


def mode_key(
    kind: str,
    cores: Sequence[torch.Tensor],
    features: tuple[int, int],
    batch: int,
    autograd: bool,
    extras: tuple = (),
) -> tuple:
    """The kind of a forward pass, as the cache files it."""
    ref = cores[0]
    bucket = 1 << max(0, int(batch) - 1).bit_length()
    shapes = tuple(tuple(c.shape) for c in cores)
    return (kind, shapes, features, str(ref.dtype), str(ref.device), bool(autograd), bucket,
            torch.get_num_threads(), extras, reproducible())


def chosen(key: tuple) -> str | None:
    """The mode already chosen for this kind of forward pass, or None."""
    return _choices.get(key)


def clear() -> None:
    """Forget every choice: the next forward pass of each kind is timed again."""
    _choices.clear()


def reproducible() -> bool:
    """Whether "auto" must pick the same mode on every run: ``torch.use_deterministic_algorithms(True)``
    or ``MPO_DETERMINISTIC=1``. Then the mode needing fewer FLOPs runs ("contract" on a tie), untimed."""
    return torch.are_deterministic_algorithms_enabled() or deterministic()


def settled(contract_flops: float, rebuild_flops: float) -> str | None:
    """The mode FLOPs alone decide, or None where the two must be timed."""
    if contract_flops * FLOP_SLACK < rebuild_flops:
        return "contract"
    if contract_flops > 1.5 * rebuild_flops:
        # A contraction needing more FLOPs than rebuild-then-GEMM never ran faster on any machine seen.
        return "rebuild"
    return None


def choose(key: tuple, contract_flops: float, rebuild_flops: float, run: Callable[[str], object]) -> str:
    """The cached mode for ``key``, or the faster of "contract" and "rebuild", timed with ``run(mode)``."""
    known = chosen(key)
    if known is not None:
        return known
    mode = settled(contract_flops, rebuild_flops)
    if mode is None and reproducible():
        mode = "contract" if contract_flops <= rebuild_flops else "rebuild"
    if mode is None:
        mode, _ = fastest({name: functools.partial(run, name) for name in ("contract", "rebuild")}, ROUNDS)
    _choices.set(key, mode)
    return mode


def probe_runner(
    forward: Callable[[torch.Tensor, str], torch.Tensor],
    like: torch.Tensor,
    params: Sequence[torch.Tensor],
    autograd: bool,
    probe: torch.Tensor | None = None,
) -> Callable[[str], object]:
    """``run(mode)``: one pass of ``forward`` on a random input shaped and typed like ``like``, or on
    ``probe`` when given (an embedding's integer ids, which no random normal input can stand for).

    With autograd, the pass includes the backward to the parameters that require gradients (and to
    the input when ``like`` requires one), through ``torch.autograd.grad``: the layer's ``.grad``
    fields stay as they were.
    """
    if probe is None:
        probe = torch.randn(like.shape, dtype=like.dtype, device=like.device)
    if not autograd:
        def run(mode: str) -> object:
            with torch.no_grad():
                return forward(probe, mode)
        return run
    if probe.is_floating_point():
        probe.requires_grad_(like.requires_grad)
    wrt = [p for p in params if p.requires_grad] + ([probe] if probe.requires_grad else [])

    def run_grad(mode: str) -> object:
        with torch.enable_grad():
            out = forward(probe, mode)
            return torch.autograd.grad(out, wrt, grad_outputs=torch.ones_like(out), allow_unused=True)

    return run_grad
