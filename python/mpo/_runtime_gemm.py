"""The process's BLAS for the C++ core's merge products (include/mpo/runtime_gemm.hpp), set lazily.

The core multiplies cores out with Eigen's GEMM, fixed when the module was built. On an AVX2 machine
that GEMM ran at 64-84 % of the OpenBLAS the Python process loads (issue 20), and a product that
multiplies cores out (``to_dense``, the BLAS route, the kernel's plans that merge every core) is
decided by it. SciPy publishes its BLAS as documented C capsules (``scipy.linalg.cython_blas``); where
SciPy is installed, the first product of at least ``_apply_route.BLAS_MIN_BATCH`` rows imports it (about
0.4 s, once per process) and hands its ``sgemm``/``dgemm`` to the core, which then runs the merges'
block products through them. ``to_dense`` alone never imports SciPy: it uses the GEMM once something
has. Without SciPy everything stays on Eigen.

Only where the core runs on one thread (``MPO_NUM_THREADS=1``, or a one-core machine). SciPy's BLAS
is another library than NumPy's, with its own pool of threads, and OpenBLAS's idle threads spin for a
while after each call: at two threads the two pools took each other's cores (bench_apply, 3072 x 768
at max_bond 48, float32 batch 2048: 163 ms against 111 ms on one thread; float64 batch 32: 29 ms
against 12.6 ms). With several threads the core's own threads and Eigen serve, as before.

Switches: ``MPO_RUNTIME_GEMM=0`` keeps Eigen's GEMM everywhere (the plain route; read at every large
product, so setting it later clears a GEMM already set), and ``MPO_DETERMINISTIC=1`` does the same (the
same GEMM, so the same rounding, on every machine that has the same build).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from . import _core
from ._timed_choice import deterministic

__all__ = ["ENV", "clear", "enabled", "install"]

#: The switch: "0" keeps Eigen's GEMM everywhere.
ENV = "MPO_RUNTIME_GEMM"
_MODULE = "scipy.linalg.cython_blas"
_import_failed = False


def _kernel_threads() -> int:
    return _core.kernel_threads()


def enabled() -> bool:
    """Whether the runtime GEMM may be used: ``MPO_RUNTIME_GEMM`` not "0", not deterministic, and the
    core on one thread."""
    return os.environ.get(ENV, "1").strip() != "0" and not deterministic() and _kernel_threads() == 1


def install(load: bool) -> bool:
    """Set SciPy's GEMMs in the core where allowed; True when a runtime GEMM is set afterwards.

    ``load``: import SciPy's BLAS module if it is not imported yet (else use it only if it is). Where
    the switch is off, a GEMM set earlier is cleared.
    """
    global _import_failed
    if not enabled():
        if _core.has_runtime_gemm():
            _core.set_runtime_gemm(None, None)
        return False
    if _core.has_runtime_gemm():
        return True
    module: Any = sys.modules.get(_MODULE)
    if module is None:
        if not load or _import_failed:
            return False
        try:
            module = importlib.import_module(_MODULE)
        except ImportError:  # SciPy is optional: Eigen's GEMM then
            _import_failed = True
            return False
    capi = module.__pyx_capi__
    _core.set_runtime_gemm(capi["sgemm"], capi["dgemm"])
    return True


def clear() -> None:
    """Back to Eigen's GEMM (a later large product sets the runtime GEMM again unless switched off)."""
    _core.set_runtime_gemm(None, None)
