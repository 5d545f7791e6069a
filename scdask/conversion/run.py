"""``convert``: the three steps run on local worker processes, a cluster or any executor.

Local workers are as many as the memory budget holds (:func:`estimate_partition_bytes`);
each loads the compiled kernels once and keeps its buffers from one partition to
the next. With an active ``distributed`` client, work runs there.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from dask.utils import format_bytes, parse_bytes

from scdask.conversion.plan import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_ROW_GROUP_SIZE,
    estimate_partition_bytes,
    make_plan,
)
from scdask.conversion.spill import spill_tasks
from scdask.conversion.steps import (
    METADATA_DONE,
    METADATA_TASK,
    convert_finalise,
    convert_metadata,
    convert_partition,
    convert_spill,
    init_store,
    partition_marker,
    warn_dropped,
)
from scdask.format import Codecs, LossyDtypeError
from scdask.parallel import release_memory
from scdask.sources import open_source
from scdask.sources.scratch import Scratch
from scdask.store.location import Location

# Buffers a local worker process reuses from one partition to the next (see
# scdask.sources.scratch); set by _warm_worker, so in-process and cluster conversions keep nothing.
_SCRATCH: Scratch | None = None


def _convert_task(dst: str, task: int | str | tuple[str, int],
                  storage_options: dict[str, Any] | None) -> Any:
    """One task of :func:`convert`: the metadata, a CSC column range, or a partition."""
    try:
        if isinstance(task, tuple):
            return convert_spill(dst, *task, storage_options)
        if task == METADATA_TASK:
            if _SCRATCH is not None:
                _SCRATCH.clear()  # the metadata task needs memory of its own
            return convert_metadata(dst, storage_options)
        return convert_partition(dst, int(task), storage_options, _SCRATCH)
    finally:
        release_memory()


def _active_client() -> Any:
    import sys

    if "distributed" not in sys.modules:  # no Client without it; importing it costs 75 MB
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # no client
        return None


def _local_workers(source: str | os.PathLike[str], row_group_size: int, chunk_size: int,
                   codecs: Codecs | None, workers: int | None, memory_budget: int | str) -> int:
    """Worker processes for a local conversion: as asked (default: the CPUs), as many
    as ``memory_budget`` holds, at least one (with a warning when even one does not fit)."""
    from scdask import parallel

    src = open_source(source)
    try:
        per = estimate_partition_bytes(src, make_plan(src, row_group_size, chunk_size, codecs))
    finally:
        src.close()
    budget = parse_bytes(memory_budget) if isinstance(memory_budget, str) else int(memory_budget)
    requested = parallel.default_workers() if workers is None else workers
    if per > budget and requested:
        import warnings

        warnings.warn(
            f"one partition needs about {format_bytes(per)}, more than memory_budget "
            f"{format_bytes(budget)}; using 1 worker. Lower row_group_size to fit.",
            stacklevel=3,
        )
    return min(requested, max(1, budget // per)) if requested else 0


# What a worker imports; a forkserver imports them once for all its workers.
_WORKER_MODULES = ("scdask.conversion.run", "scdask.conversion.steps", "scdask.conversion.transpose", "scdask.format.codecs",
                   "scdask.sources.h5ad")


def _warm_worker() -> None:
    """Load the compiled kernels in a new worker while the driver prepares the store,
    and give it the buffers it keeps from one partition to the next."""
    global _SCRATCH
    _SCRATCH = Scratch()
    # A worker does no linear algebra, but numba's start loads SciPy's OpenBLAS, whose
    # threads spin on both cores for a while: 0.2 s of CPU per worker, taken from partitions.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        import numpy as np

        import scdask.format.codecs  # noqa: F401
        import scdask.sources.h5ad  # noqa: F401
        from scdask.conversion.transpose import to_group
        from scdask.format.blocks import CSRBlock

        one = np.array([1], np.uint16)
        to_group(CSRBlock(np.array([0, 1]), one - 1, one, 1), np.uint16)
    except Exception:  # noqa: BLE001 - a task would meet the same problem and report it
        pass


def convert(
    source: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    codecs: Codecs | None = None,
    workers: int | None = None,
    executor: Any = None,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    overwrite: bool = False,
    progress: bool | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Convert an H5AD file into a scdask store.

    Parameters
    ----------
    source
        Path of the ``.h5ad`` file.
    dst
        Path or fsspec URL of the store to write.
    row_group_size
        Cells per row group, at most 65,536.
    chunk_size
        Non-zeros per Zarr chunk.
    codecs
        Compression settings (:class:`scdask.format.Codecs`).
    workers
        Local worker processes (default: the CPUs, capped by ``memory_budget``);
        0 converts in this process. They are forked, which starts them fastest, when
        this process has no other thread yet (a script, the command line); otherwise
        they start from a ``forkserver`` (see :func:`scdask.parallel.process_pool`).
    executor
        Run partitions on this ``concurrent.futures.Executor`` or
        ``distributed.Client`` instead of a local pool. By default, the active
        ``distributed`` client (e.g. from :func:`scdask.cluster`) when there is one
        and ``workers`` is not given.
    memory_budget
        Memory the local workers may use together, e.g. ``"2GB"``.
    overwrite
        Replace ``dst`` if it holds a scdask store; anything else is refused.
    progress
        Show a progress bar (default: on a terminal).
    storage_options
        fsspec options for ``dst``.

    Returns
    -------
    str
        ``dst``.

    Examples
    --------
    >>> import scdask
    >>> scdask.convert("plate7.h5ad", "plate7.zarr")  # doctest: +SKIP
    """
    # One writer at a time: a second conversion into the same destination is refused
    # while this one runs (two writers would leave a store neither of them wrote).
    with Location(os.fspath(dst), storage_options).writer_lock():
        return _convert(source, dst, row_group_size, chunk_size, codecs, workers, executor,
                        memory_budget, overwrite, progress, storage_options)


def _convert(source: str | os.PathLike[str], dst: str | os.PathLike[str], row_group_size: int,
             chunk_size: int, codecs: Codecs | None, workers: int | None, executor: Any,
             memory_budget: int | str, overwrite: bool, progress: bool | None,
             storage_options: dict[str, Any] | None) -> str:
    from scdask import parallel

    if executor is None and workers is None:
        executor = _active_client()  # a Client the user started is where work runs
    pool = None
    if executor is None:
        workers = _local_workers(source, row_group_size, chunk_size, codecs, workers,
                                 memory_budget)
        if workers > 0:  # started before this process touches Zarr (see process_pool)
            pool = parallel.process_pool(workers, initializer=_warm_worker,
                                         preload=_WORKER_MODULES)
    lossy = None
    try:
        # The plan needs only shapes; obs/var/uns are written by a task beside the partitions.
        plan = init_store(source, dst, row_group_size, chunk_size, codecs, overwrite,
                     storage_options)
        loc = Location(os.fspath(dst), storage_options)
        # A CSC matrix is read once, by column ranges, before any partition needs it.
        spills = [(os.fspath(dst), t, storage_options) for t in spill_tasks(loc, plan)]
        if spills:
            parallel.run(_convert_task, spills, workers=workers, executor=executor or pool,
                         progress=progress, desc="read CSC")
        todo: list[int | str] = [i for i in range(plan.n_groups) if not loc.exists(partition_marker(i))]
        if not loc.exists(METADATA_DONE):
            # The metadata task (anndata's import, then obs) takes about two partitions'
            # time and leaves its worker larger: started with two partitions per other
            # worker still to go, it ends with them and no partition runs after it there.
            n_other = 1 if executor is not None or not workers else max(1, workers - 1)
            todo.insert(max(0, len(todo) - 2 * n_other), METADATA_TASK)
        args = [(os.fspath(dst), t, storage_options) for t in todo]
        parallel.run(_convert_task, args, workers=workers, executor=executor or pool,
                     progress=progress, desc="convert")
    except LossyDtypeError as e:
        if not plan.codecs.narrow:
            raise
        lossy = e
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if lossy is not None:
        # Counts were expected (the values' dtype allows them) but a row group holds
        # something else: start again, storing values in the source dtype.
        import warnings

        warnings.warn(f"{lossy.args[0].split(';')[0]}: storing values in the source dtype "
                      "instead", stacklevel=2)
        return convert(source, dst, row_group_size=row_group_size, chunk_size=chunk_size,
                       codecs=dataclasses.replace(plan.codecs, narrow=False), workers=workers,
                       executor=executor, memory_budget=memory_budget, overwrite=True,
                       progress=progress, storage_options=storage_options)
    warn_dropped(plan.source, convert_metadata(dst, storage_options))
    convert_finalise(dst, storage_options)
    return os.fspath(dst)
