"""Atomic writes: every file mpo writes goes through :func:`atomic_path`."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

__all__ = ["atomic_path"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path beside ``path``; renamed onto ``path`` when the block ends normally, and
    removed when it raises (KeyboardInterrupt included), so ``path`` is never left half-written."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".mpo-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    # mkstemp makes the file private (0600); give the result the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
