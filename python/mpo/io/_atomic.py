"""Atomic writes: every file mpo writes goes through :func:`atomic_path`.

The temporary file is ``.mpo-<pid>-<random>.tmp`` beside the target. Cleaning up after an interrupt
(Ctrl-C at any point once the file exists) is done here; a writer that is killed outright (SIGKILL,
power loss) cannot clean up, so every atomic write first removes the temp files of its own pattern in
the same folder whose process no longer runs, or that are older than a day (the pid may be reused).
Other files, and temp files of processes still running, are left alone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator

__all__ = ["atomic_path", "remove_stale_temps"]

_PREFIX = ".mpo-"
_SUFFIX = ".tmp"
_STALE_SECONDS = 24 * 3600


def _running(pid: int) -> bool:
    """Whether a process with this pid exists (a signal-0 probe)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but is not ours to signal
        return True
    return True


def remove_stale_temps(folder: str) -> list[str]:
    """Delete the temp files of interrupted mpo writes in ``folder``: ``.mpo-<pid>-*.tmp`` whose process
    is gone or that are older than a day. Returns the names removed."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    now = time.time()
    for name in names:
        if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
            continue
        full = os.path.join(folder, name)
        try:
            pid = int(name[len(_PREFIX):].split("-", 1)[0])
            age = now - os.stat(full).st_mtime
        except (ValueError, OSError):
            continue  # no pid in the name: not one of ours; or already gone
        if age < _STALE_SECONDS and (pid == os.getpid() or _running(pid)):
            continue  # a write in progress
        with contextlib.suppress(OSError):
            os.unlink(full)
            removed.append(name)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path beside ``path``; renamed onto ``path`` when the block ends normally, and
    removed when it raises (KeyboardInterrupt included, at any point after the file exists), so
    ``path`` is never left half-written. Stale temp files of killed writers are removed first."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temps(folder)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{_PREFIX}{os.getpid()}-", suffix=_SUFFIX, dir=folder)
        os.close(fd)
        # mkstemp makes the file private (0600); give the result the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield tmp
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
