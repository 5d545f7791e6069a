"""Where work runs: one small function in front of Dask distributed and dask-jobqueue.

``scdask.cluster()`` starts a local cluster of worker processes;
``scdask.cluster("tcp://host:8786")`` connects to a running scheduler;
``scdask.cluster("slurm", jobs=4)`` (or ``pbs``, ``sge``, ``lsf``, ``htcondor``,
``moab``, ``oar``) builds a dask-jobqueue cluster from jobqueue's own configuration
(``~/.config/dask/jobqueue.yaml``, or keyword arguments), so HPC sites configure
it the way they configure any Dask deployment. Every case returns a
``distributed.Client``, which becomes Dask's default scheduler: conversion,
reductions, pseudobulk and export then run on it.
"""

from __future__ import annotations

from typing import Any

JOBQUEUE = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "htcondor": "HTCondorCluster",
    "moab": "MoabCluster",
    "oar": "OARCluster",
    "jobqueue-local": "LocalCluster",  # runs jobqueue's job scripts as local processes
}


def cluster(
    where: str = "local",
    *,
    workers: int | None = None,
    jobs: int | None = None,
    threads_per_worker: int = 1,
    quiet: bool = False,
    **kwargs: Any,
) -> Any:
    """Start or connect to a Dask cluster and return a ``distributed.Client`` for it.

    Parameters
    ----------
    where
        ``"local"`` (worker processes on this machine), a scheduler address
        (``"tcp://…"``, ``"tls://…"``, ``"host:port"``), or a dask-jobqueue system:
        ``"slurm"``, ``"pbs"``, ``"sge"``, ``"lsf"``, ``"htcondor"``, ``"moab"``,
        ``"oar"`` or ``"jobqueue-local"``.
    workers
        Local worker processes (default: one per CPU).
    jobs
        Batch jobs to submit for a jobqueue cluster (each runs the workers its
        configuration gives). Scale later with ``client.cluster.scale(jobs=…)``.
    threads_per_worker
        Threads of each local worker: 1, since scdask's tasks are compiled loops
        and zarr decoding; parallelism comes from processes, not one GIL.
    quiet
        Do not print the dashboard link.
    **kwargs
        Passed to ``distributed.LocalCluster`` or to the jobqueue cluster class
        (overriding its YAML configuration: ``cores``, ``memory``, ``queue``,
        ``account``, ``walltime``, ``job_extra_directives``, …).

    Returns
    -------
    distributed.Client
        Close it when done; a jobqueue cluster is closed with ``client.cluster.close()``.

    Examples
    --------
    >>> client = scdask.cluster()                      # doctest: +SKIP
    >>> client = scdask.cluster("slurm", jobs=8, queue="normal")  # doctest: +SKIP
    """
    from distributed import Client

    if where == "local":  # the client owns this cluster: closing it stops the workers
        kwargs.setdefault("dashboard_address", ":8787")
        client = Client(n_workers=workers, threads_per_worker=threads_per_worker,
                        processes=True, **kwargs)
    elif where in JOBQUEUE:
        try:
            import dask_jobqueue
        except ImportError as e:
            raise ImportError(
                f"cluster({where!r}) needs dask-jobqueue: pip install 'scdask[jobqueue]'"
            ) from e
        if where == "jobqueue-local":
            from dask_jobqueue.local import LocalCluster as cls
        else:
            cls = getattr(dask_jobqueue, JOBQUEUE[where])
        c = cls(**kwargs)
        if jobs:
            c.scale(jobs=jobs)
        client = Client(c)
    elif "://" in where or ":" in where:
        client = Client(where if "://" in where else f"tcp://{where}", **kwargs)
    else:
        raise ValueError(
            f"cluster: {where!r} is not 'local', a scheduler address or one of "
            f"{', '.join(sorted(JOBQUEUE))}"
        )
    if not quiet:
        print(f"scdask: Dask cluster {client.scheduler.address if client.scheduler else where}, "
              f"dashboard: {client.dashboard_link}")
    return client
