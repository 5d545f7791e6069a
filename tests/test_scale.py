"""Scale-out: stores on a real S3-compatible server, Dask clusters of processes, workers
killed mid-task, and dask-jobqueue clusters that run their job scripts."""

from __future__ import annotations

import os
import socket
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdask
from scdask.store.reader import IncompleteStoreError
from scdask.store.verify import verify

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

distributed = pytest.importorskip("distributed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (real HTTP), with an empty bucket."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is in the test extras")
    s3fs = pytest.importorskip("s3fs")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    opts = {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}",
                              "region_name": "us-west-2"}}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("scdask-test")
    yield opts
    server.stop()


@pytest.fixture(scope="module")
def ref(tiny_plate):
    a = anndata.read_h5ad(tiny_plate)
    return a, a.X.toarray().astype(np.float64)


def close(got, want):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=1e-9, atol=1e-12)


def test_convert_to_and_open_from_s3(tiny_plate, ref, s3):
    a, X = ref
    url = "s3://scdask-test/plate.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdask.convert(tiny_plate, url, row_group_size=1024, chunk_size=4096, workers=2,
                       storage_options=s3)
    assert verify(scdask.store.Store(url, s3), against=tiny_plate).ok
    ds = scdask.open(url, storage_options=s3)
    close(ds.X.mean("cell").values, X.mean(0))
    close(ds.X.sel(gene="C1orf112").max().compute().item(), X[:, 4].max())
    sub = ds.where(ds.drug == "DMSO_TF", drop=True)
    m = a.obs["drug"].astype(str).values == "DMSO_TF"
    close(sub.X.sum("gene").values, X[m].sum(1))


def test_csc_source_to_s3(tmp_path, s3, monkeypatch):
    """A CSC source's column pass writes and reads its scratch files on object storage."""
    from scdask.conversion import spill

    monkeypatch.setattr(spill, "ENTRIES", 500)  # several column ranges
    m = sp.random(600, 40, density=0.2, format="csc", random_state=5, dtype=np.float32)
    m.data = np.ceil(m.data * 9)
    a = anndata.AnnData(X=m, obs=pd.DataFrame(index=[f"c{i}" for i in range(600)]),
                        var=pd.DataFrame(index=[f"g{j}" for j in range(40)]))
    a.write_h5ad(tmp_path / "csc.h5ad")
    url = "s3://scdask-test/csc.zarr"
    scdask.convert(tmp_path / "csc.h5ad", url, row_group_size=100, workers=0,
                   storage_options=s3)
    assert verify(scdask.store.Store(url, s3), against=str(tmp_path / "csc.h5ad")).ok
    close(scdask.open(url, storage_options=s3).X.sum("cell").values, m.toarray().sum(0))


def test_interrupted_conversion_on_s3_does_not_open_and_resumes(tiny_plate, ref, s3):
    from scdask.conversion.steps import convert_init, convert_partition

    _, X = ref
    url = "s3://scdask-test/half.zarr"
    convert_init(tiny_plate, url, row_group_size=1024, storage_options=s3)
    convert_partition(url, 0, storage_options=s3)
    with pytest.raises(IncompleteStoreError):
        scdask.open(url, storage_options=s3)
    scdask.convert(tiny_plate, url, row_group_size=1024, workers=0, storage_options=s3)
    close(scdask.open(url, storage_options=s3).X.sum("gene").values, X.sum(1))


def test_s3_store_on_a_cluster_of_processes(tiny_plate, ref, s3):
    _, X = ref
    url = "s3://scdask-test/cluster.zarr"
    with scdask.cluster(workers=2, dashboard_address=":0", quiet=True) as client:
        scdask.convert(tiny_plate, url, row_group_size=512, chunk_size=4096,
                       storage_options=s3)  # on the active client
        assert len(client.scheduler_info()["workers"]) == 2
        ds = scdask.open(url, storage_options=s3)
        close(ds.X.var("cell").values, X.var(0))
    assert scdask.store.Store(url, s3).row_group_size == 512


class KillOnce(distributed.WorkerPlugin):
    """Worker plugin: the first worker to start a task whose key begins with ``prefix`` dies."""

    def __init__(self, prefix: str, marker: str) -> None:
        self.prefix = prefix
        self.marker = marker

    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        name = key[0] if isinstance(key, tuple) else key
        if finish == "executing" and str(name).startswith(self.prefix):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return
            os.close(fd)
            os._exit(1)  # a hard crash mid-task, like the OOM killer


def test_worker_killed_during_aggregation(tiny_store, ref, tmp_path):
    _, X = ref
    marker = tmp_path / "killed"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as c, \
            distributed.Client(c) as client:
        client.register_plugin(KillOnce("gene-partial", str(marker)))
        ds = scdask.open(tiny_store)
        got = ds.X.mean("cell").compute()
        assert marker.exists()  # a worker did die
        close(got.values, X.mean(0))
        assert len(client.scheduler_info()["workers"]) >= 1


def test_worker_killed_during_conversion(tiny_plate, tmp_path):
    marker = tmp_path / "killed"
    dst = tmp_path / "out.zarr"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as c, \
            distributed.Client(c) as client:
        client.register_plugin(KillOnce("_convert_task", str(marker)))
        scdask.convert(tiny_plate, dst, row_group_size=512, chunk_size=4096, executor=client)
    assert marker.exists()
    assert verify(dst, against=tiny_plate).ok


def test_jobqueue_cluster_runs_its_job_scripts(tiny_store, ref):
    pytest.importorskip("dask_jobqueue")
    _, X = ref
    client = scdask.cluster("jobqueue-local", jobs=2, cores=1, processes=1, memory="2GB",
                            quiet=True)
    with client.cluster, client:
        client.wait_for_workers(2, timeout=120)
        ds = scdask.open(tiny_store)
        close(ds.X.sum("gene").values, X.sum(1))
        script = client.cluster.job_script()
        assert "distributed.cli.dask_worker" in script or "dask worker" in script


def test_slurm_job_script():
    dask_jobqueue = pytest.importorskip("dask_jobqueue")
    with dask_jobqueue.SLURMCluster(cores=2, processes=2, memory="16GB", queue="normal",
                                    account="lab", walltime="02:00:00",
                                    job_extra_directives=["--constraint=avx2"]) as cluster:
        script = cluster.job_script()
    assert "#SBATCH -p normal" in script and "#SBATCH -A lab" in script
    assert "#SBATCH -t 02:00:00" in script and "#SBATCH --constraint=avx2" in script
    assert "--nworkers 2" in script and "--nthreads 1" in script


def test_cluster_rejects_unknown_places():
    with pytest.raises(ValueError, match="slurm"):
        scdask.cluster("moon")
