"""Run independent partitions on any ``concurrent.futures`` executor, with progress.

One code path serves a laptop (a local process pool), a debugger (in-process)
and a cluster (a ``distributed.Client``'s executor, which also covers
dask-jobqueue): partitions are plain functions of picklable arguments.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tqdm.auto import tqdm


class SynchronousExecutor(cf.Executor):
    """Runs each submitted call at once in this process (``workers=0``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(e)
        return future


def as_executor(executor: Any) -> cf.Executor:
    """Accept an Executor, or a ``distributed.Client`` (turned into its executor)."""
    if isinstance(executor, cf.Executor):
        return executor
    if hasattr(executor, "get_executor"):
        return executor.get_executor()
    raise TypeError(
        f"executor must be a concurrent.futures.Executor or a distributed.Client, got {type(executor)}"
    )


def default_workers() -> int:
    """Worker processes to use when none are asked for: the usable CPUs."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def _worker_start(initializer: Callable[[], None] | None) -> None:
    """Tie a pool worker's life to its parent's, then run ``initializer``.

    Without this, workers whose driver is killed (``kill -9``, the OOM killer) finish
    the queue and wait for more forever, holding the driver's stdout and stderr.
    """
    import sys

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # not glibc
            pass
        if os.getppid() == 1:  # the parent died before the line above
            os._exit(1)
    if initializer is not None:
        initializer()


def process_pool(workers: int, initializer: Callable[[], None] | None = None,
                 preload: Sequence[str] = ()) -> cf.ProcessPoolExecutor:
    """A pool of ``workers`` local processes, started now.

    On Linux, from a process with no other thread, the workers are forked: they start
    at once with every module this process has imported (a fresh interpreter costs
    ~0.4 s and its imports another ~0.5 s per worker). Otherwise (threads running —
    zarr's I/O thread once it has read or written anything, a notebook's — or another
    OS), they start from a ``forkserver``, as forking a threaded process can deadlock;
    the forkserver, started once per session, imports the modules in ``preload`` so
    that its workers start with them. ``initializer`` runs in each worker as it starts,
    e.g. to load compiled kernels while this process goes on.
    """
    import sys
    import threading

    if sys.platform.startswith("linux") and threading.active_count() == 1:
        method = "fork"
    else:
        method = "forkserver" if os.name == "posix" else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver" and preload:
        ctx.set_forkserver_preload(["__main__", *preload])  # no effect once it runs
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                  initializer=functools.partial(_worker_start, initializer))
    if method == "fork":  # all workers are forked at the first submit, while still safe
        pool.submit(os.getpid)
    return pool


def run(
    fn: Callable[..., Any],
    args: Sequence[tuple[Any, ...]],
    *,
    workers: int | None = None,
    executor: Any = None,
    progress: bool | None = None,
    desc: str = "partitions",
) -> list[Any]:
    """Call ``fn(*a)`` for every ``a`` in ``args``; return the results in order.

    Parameters
    ----------
    fn
        A module-level function (it is pickled to the workers).
    args
        One argument tuple per call.
    workers
        Local worker processes when no ``executor`` is given; 0 runs in-process.
    executor
        A ``concurrent.futures.Executor`` or ``distributed.Client`` to run on instead.
    progress
        Show a progress bar; by default only on a terminal.
    desc
        Label of the progress bar.
    """
    own = executor is None
    if own:
        workers = default_workers() if workers is None else workers
        if workers == 0 or not args:
            pool: cf.Executor = SynchronousExecutor()
        else:
            pool = process_pool(min(workers, len(args)))
    else:
        pool = as_executor(executor)
    results: list[Any] = [None] * len(args)
    futures: dict[Any, int] = {}
    try:
        for i, a in enumerate(args):
            futures[pool.submit(fn, *a)] = i
        with tqdm(total=len(futures), desc=desc, disable=_no_bar(progress), unit="part") as bar:
            for future in _as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except cf.process.BrokenProcessPool as e:
                    raise _died(desc, i) from e
                bar.update(1)
    except cf.process.BrokenProcessPool as e:  # already broken when a task was submitted
        for f in futures:
            f.cancel()
        raise _died(desc, len(futures)) from e
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    finally:
        if own:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def _died(desc: str, i: int) -> MemoryError:
    return MemoryError(
        f"a worker process died while running {desc} {i} (its error output, above, tells "
        "why); most often it ran out of memory: use fewer workers, a smaller row_group_size, "
        "or a larger memory_budget"
    )


def _as_completed(futures: Iterable[Any]) -> Iterable[Any]:
    futures = list(futures)
    if futures and not isinstance(futures[0], cf.Future):  # distributed futures
        from distributed import as_completed

        return as_completed(futures)
    return cf.as_completed(futures)


def _no_bar(progress: bool | None) -> bool | None:
    if progress is None:
        return None  # tqdm: only when attached to a terminal
    return not progress


def release_memory() -> None:
    """Hand freed heap memory back to the OS between tasks (glibc keeps it otherwise)."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def _add(*parts: Any) -> Any:
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def tree_sum(parts: Sequence[Any], split_every: int = 4) -> Any:
    """The sum of Dask delayed values as a tree of delayed additions (bounded memory, any
    scheduler, whatever Dask's array mode)."""
    import dask

    parts = list(parts)
    add = dask.delayed(_add, pure=True)
    while len(parts) > 1:
        parts = [add(*parts[i : i + split_every]) if len(parts[i : i + split_every]) > 1
                 else parts[i] for i in range(0, len(parts), split_every)]
    return parts[0]
