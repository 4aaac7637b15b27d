"""The benchmarks' ``--threads N`` flag, applied before numpy (and its BLAS) is imported.

BLAS libraries read their thread count once, when they load, so the scripts call
:func:`apply_threads_flag` at the top, before ``import numpy``. This module imports nothing else.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

#: The variables BLAS builds read (OpenMP, OpenBLAS, MKL).
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def threads_flag(argv: Sequence[str], default: Optional[str] = None) -> Optional[str]:
    """The value of ``--threads N`` or ``--threads=N`` in ``argv`` (the last one wins), else ``default``."""
    value = default
    for k, arg in enumerate(argv):
        if arg.startswith("--threads="):
            value = arg.split("=", 1)[1]
        elif arg == "--threads" and k + 1 < len(argv):
            value = argv[k + 1]
    return value


def apply_threads_flag(argv: Sequence[str], default: Optional[str] = None, extra: Sequence[str] = ()) -> None:
    """Set the thread variables (and ``extra`` ones) to the ``--threads`` value, or ``default``.

    With neither, the environment is left as it is.
    """
    value = threads_flag(argv, default)
    if value is not None:
        for var in (*THREAD_VARS, *extra):
            os.environ[var] = value
