"""Convert and query on a SLURM cluster through dask-jobqueue. Copy and adapt.

    pip install 'scdask[jobqueue]'
    python examples/hpc_slurm.py plate7.h5ad /scratch/$USER/plate7.zarr

Site settings (queue, account, memory, walltime, interface, ...) belong in
``~/.config/dask/jobqueue.yaml`` (see the dask-jobqueue docs); the keyword arguments
below override it. The driver only plans: every partition and every reduction runs in
the batch jobs, and a conversion interrupted by a preempted job resumes when rerun.
"""

import sys

import dask

import scdask

# Passed to dask_jobqueue.SLURMCluster (overriding jobqueue.yaml).
CLUSTER = dict(
    cores=8, processes=8,         # per batch job: 8 single-threaded worker processes
    memory="32GB",
    walltime="02:00:00",
    # queue="normal", account="mylab", job_extra_directives=["--constraint=avx2"],
)

if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    client = scdask.cluster("slurm", jobs=8, **CLUSTER)
    print(client.cluster.job_script())
    with client.cluster, client:
        scdask.convert(src, dst, executor=client)
        ds = scdask.open(dst)
        gene = ds.X.sel(gene="C1orf112")
        print(dask.compute(gene.count(), gene.max(), gene.mean()))
        pb = scdask.pseudobulk(ds, ["drug", "cell_line"])
        pb.to_zarr(dst.rstrip("/") + ".pseudobulk.zarr", mode="w")
