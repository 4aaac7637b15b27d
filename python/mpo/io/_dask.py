"""Tasks run in this process or on Dask's distributed scheduler, with a bounded number in flight.

Why Dask and not Ray (or a scheduler of our own): people who compress 8B-70B models already run Dask
clusters (and ``dask-jobqueue`` puts one on a batch system); a ``LocalCluster`` is plain processes
with no service to install; tasks are addressed by key; and a worker process that dies is restarted
by its nanny while the scheduler reruns its tasks elsewhere (``distributed.scheduler.allowed-failures``
times before it gives up with ``KilledWorker``).

Only this module imports dask, and only when a cluster is asked for: ``pip install "mpo[distributed]"``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = [
    "INSTALL_HINT", "KEEP_FREED_MEMORY", "connect", "is_killed_worker", "local_client", "require_distributed",
    "run_tasks", "worker_count", "worker_env",
]

INSTALL_HINT = 'compressing on Dask workers needs dask.distributed: pip install "mpo[distributed]"'

#: One kernel thread per worker process: N workers on N cores, not N x N threads fighting for them.
_ONE_THREAD = ("MPO_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


#: glibc's allocator in a local worker keeps what it frees and takes large blocks from its heap, not
#: from fresh mappings. A task allocates and frees buffers of hundreds of MB (the widened matrix, Gram
#: matrices, cores); glibc maps each block above 32 MB anew and unmaps it when freed, and Dask's own
#: default (MALLOC_TRIM_THRESHOLD_=65536) hands even heap memory back at once, so every task faulted
#: in all its pages again: measured on this project's 2-core machine, a third of a worker's time was
#: the kernel's, and 4096 x 14336 matrices took 1.2 s each against 0.98 s with these two settings. A
#: worker's resident memory then stays at its largest task's working set, which is the issue's bound.
#: They must be in the environment when the process starts (glibc reads them once), so they go to
#: Dask's ``distributed.nanny.pre-spawn-environ``, not to a worker's ``env``.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def require_distributed():
    """The ``distributed`` module, or ImportError with the install line."""
    try:
        import distributed
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return distributed


def is_killed_worker(exc: BaseException) -> bool:
    """Whether ``exc`` is Dask's KilledWorker (a task that took down ``allowed-failures`` workers); False
    when dask is not installed."""
    try:
        from distributed import KilledWorker
    except ImportError:
        return False
    return isinstance(exc, KilledWorker)


def worker_env(threads: int = 1) -> dict[str, str]:
    """The environment of a local worker process: every kernel (mpo's, BLAS, OpenMP) on ``threads``."""
    return dict.fromkeys(_ONE_THREAD, str(int(threads)))


@contextlib.contextmanager
def local_client(workers: int, **cluster_kwargs: Any) -> Iterator[Any]:
    """A Client of a new LocalCluster of ``workers`` processes, one task thread and one kernel thread
    (:func:`worker_env`) each, no dashboard; both closed when the block ends. ``cluster_kwargs`` go
    to ``distributed.LocalCluster``."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    distributed = require_distributed()
    import dask

    # No dashboard; the scheduler's HTTP server (always started) on a free port, not a busy 8787.
    kwargs = dict(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                  scheduler_kwargs={"dashboard_address": ":0"}, env=worker_env(1))
    kwargs.update(cluster_kwargs)
    # Read by each nanny when it is made, and again when it restarts a worker that died.
    pre_spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **KEEP_FREED_MEMORY}
    # A nanny writes these into this process's own os.environ before it spawns a worker (Dask's way of
    # passing them on); they are put back as they were when the cluster closes, so that programs this
    # process starts later do not inherit one kernel thread and an allocator that never gives back.
    saved = {name: os.environ.get(name) for name in pre_spawn}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}), \
                distributed.LocalCluster(**kwargs) as cluster, \
                distributed.Client(cluster, set_as_default=False) as client:
            yield client
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def connect(address: str):
    """A Client of the running Dask scheduler at ``address`` (e.g. ``tcp://10.0.0.1:8786``); a context
    manager that disconnects (the cluster keeps running)."""
    distributed = require_distributed()
    return distributed.Client(address, set_as_default=False)


def worker_count(client) -> int:
    """How many workers the client's scheduler has now (at least 1, so a window is never empty)."""
    try:
        info = client.scheduler_info(n_workers=-1)  # newer distributed lists only a few workers by default
    except TypeError:
        info = client.scheduler_info()
    return max(1, len(info.get("workers", {})))


def run_tasks(fn: Callable[[Any], Any], tasks: Iterable[Any], *, client=None, window: int | None = None,
              name: str = "mpo") -> Iterator[Any]:
    """``fn(task)`` for every task, yielded as each finishes.

    Without ``client``: in this process, in order. With a Dask ``client``: submitted under the keys
    ``{name}-{run}-{k}``, at most ``window`` (default twice the workers) submitted and not yet yielded,
    so the caller holds only that many results however many tasks there are. A task that raises
    raises here; when the caller stops early (an error, Ctrl-C), the tasks not yet done are cancelled.
    """
    if client is None:
        for task in tasks:
            yield fn(task)
        return
    distributed = require_distributed()
    window = window if window is not None else 2 * worker_count(client)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    run = uuid.uuid4().hex[:8]
    todo = iter(enumerate(tasks))
    live = set()

    def submit(batch) -> list:
        futures = [client.submit(fn, task, key=f"{name}-{run}-{k:06d}", pure=False) for k, task in batch]
        live.update(futures)
        return futures

    try:
        first = submit(itertools.islice(todo, window))
        if not first:
            return
        # with_results: the results are gathered in the background and the loop waits on a plain queue,
        # so Ctrl-C never lands inside a blocking client call (distributed logs a NameError then).
        pending = distributed.as_completed(first, loop=client.loop, with_results=True)
        for future, result in pending:
            live.discard(future)
            future.release()
            yield result
            for more in submit(itertools.islice(todo, 1)):
                pending.add(more)
    finally:
        if live:
            client.cancel(list(live))
