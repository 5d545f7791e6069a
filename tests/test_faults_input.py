"""Fault injection on conversion: bad input and interrupted finalise (issue: trust).

Every case asserts the exact outcome: the right store (checked against anndata), or
an error naming the file and element — never a store with wrong numbers.
"""

from __future__ import annotations

import importlib
import warnings

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdask
from scdask.format import FormatError
from scdask.store.reader import IncompleteStoreError, Store
from scdask.store.verify import verify
from scdask.testing import assert_store_matches_anndata

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
conv = importlib.import_module("scdask.conversion.steps")  # the module (scdask.convert is the function)


def _write(path, X) -> anndata.AnnData:
    n, m = X.shape
    adata = anndata.AnnData(
        X=X, obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(m)]),
    )
    adata.write_h5ad(path)
    return adata


def _csc(tmp_path):
    m = sp.random(200, 30, density=0.2, format="csc", random_state=1, dtype=np.float32)
    m.data = np.ceil(m.data * 9)
    p = tmp_path / "csc.h5ad"
    _write(p, m)
    return p, m


@pytest.mark.parametrize("bad", [-1, 200, 10**6])
def test_csc_row_index_out_of_range_is_refused(tmp_path, bad):
    p, _ = _csc(tmp_path)
    with h5py.File(p, "a") as f:
        idx = f["X/indices"][:].astype(np.int64)
        idx[7] = bad
        del f["X/indices"]
        f["X"].create_dataset("indices", data=idx)
    with pytest.raises(FormatError, match=r"csc\.h5ad: X: columns .*row index .* outside"):
        scdask.convert(p, tmp_path / "o.zarr", row_group_size=64, workers=0)
    with pytest.raises(IncompleteStoreError):
        Store(tmp_path / "o.zarr")


@pytest.mark.parametrize("how", ["decreasing", "short", "past_end", "not_from_zero"])
def test_csc_bad_indptr_is_refused(tmp_path, how):
    p, _ = _csc(tmp_path)
    with h5py.File(p, "a") as f:
        ip = f["X/indptr"][:].astype(np.int64)
        if how == "decreasing":
            ip[5], ip[6] = ip[6], ip[5] - 1
        elif how == "short":
            ip = ip[:-3]
        elif how == "past_end":
            ip[-1] += 5
        else:
            ip[0] = 1
        del f["X/indptr"]
        f["X"].create_dataset("indptr", data=ip)
    with pytest.raises(FormatError, match=r"csc\.h5ad: X(: |/).*indptr|csc\.h5ad: X/indptr"):
        scdask.convert(p, tmp_path / "o.zarr", row_group_size=64, workers=0)


def test_csc_converts_exactly(tmp_path):
    p, m = _csc(tmp_path)
    scdask.convert(p, tmp_path / "o.zarr", row_group_size=64, workers=0)
    assert_store_matches_anndata(Store(tmp_path / "o.zarr"), anndata.read_h5ad(p))


@pytest.mark.parametrize("dtype", [np.float16, np.complex64])
def test_unsupported_value_dtype_is_named(tmp_path, dtype):
    m = sp.random(50, 10, density=0.3, format="csr", random_state=0, dtype=np.float32)
    p = tmp_path / "x.h5ad"
    _write(p, m)
    with h5py.File(p, "a") as f:  # scipy refuses float16 matrices; anndata reads them
        values = f["X/data"][:].astype(dtype)
        del f["X/data"]
        f["X"].create_dataset("data", data=values)
    with pytest.raises(FormatError, match=rf"x\.h5ad: X.*dtype {np.dtype(dtype)}"):
        scdask.convert(p, tmp_path / "o.zarr", workers=0)
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize(
    "dtype, big", [(np.uint64, np.iinfo(np.uint64).max), (np.int64, 2**53 + 1)]
)
def test_integer_sums_beyond_float64_say_so(tmp_path, dtype, big):
    m = sp.csr_matrix(np.array([[big, 0], [1, 2], [0, 3]], dtype=dtype))
    p = tmp_path / "x.h5ad"
    _write(p, m)
    scdask.convert(p, tmp_path / "o.zarr", workers=0)
    X = scdask.open(tmp_path / "o.zarr").X
    with pytest.raises(OverflowError, match="2\\*\\*53"):
        X.sum("cell").compute()
    assert X.sel(gene="g1").sum().compute().item() == 5  # a gene far from the bound stays exact


def test_integer_sums_are_exact_integers(tmp_path):
    rng = np.random.default_rng(0)
    dense = rng.integers(0, 2**31 - 1, size=(300, 7), dtype=np.int64)
    dense[rng.random(dense.shape) < 0.6] = 0
    p = tmp_path / "x.h5ad"
    _write(p, sp.csr_matrix(dense))
    scdask.convert(p, tmp_path / "o.zarr", row_group_size=64, workers=0)
    ds = scdask.open(tmp_path / "o.zarr")
    got = ds.X.sum("cell").compute().values
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, dense.sum(0))
    np.testing.assert_array_equal(ds.X.sum("gene").compute().values, dense.sum(1))


@pytest.mark.parametrize("after", ["colptr", "gene_sum", "gene_max", "root_attrs"])
def test_finalise_interrupted_anywhere_resumes(tiny_plate, tmp_path, monkeypatch, after):
    dst = tmp_path / "f.zarr"

    class Interrupt(BaseException):  # as KeyboardInterrupt would: nothing catches it
        pass

    import zarr

    real = zarr.Group.create_array

    def create_array(self, name, *a, **k):
        out = real(self, name, *a, **k)
        if name == after:
            raise Interrupt
        return out

    if after == "root_attrs":
        monkeypatch.setattr(conv, "file_checksums", lambda loc: (_ for _ in ()).throw(Interrupt()))
    else:
        monkeypatch.setattr(zarr.Group, "create_array", create_array)
    with pytest.raises(Interrupt):
        scdask.convert(tiny_plate, dst, row_group_size=1024, chunk_size=4096, workers=0)
    monkeypatch.undo()
    with pytest.raises(IncompleteStoreError):
        Store(dst)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdask.convert(tiny_plate, dst, row_group_size=1024, chunk_size=4096, workers=0)
    assert verify(dst, against=tiny_plate).ok
    assert not (dst / "wip").exists()


def test_finalise_cleanup_interrupted_is_finished_on_rerun(tiny_plate, tmp_path):
    dst = tmp_path / "c.zarr"
    scdask.convert(tiny_plate, dst, row_group_size=1024, chunk_size=4096, workers=0)
    (dst / "wip" / "done").mkdir(parents=True)  # what a kill during the clean-up leaves
    conv.convert_finalise(dst)
    assert not (dst / "wip").exists()
    assert verify(dst).ok


def test_pool_workers_exit_when_the_driver_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from scdask.datasets import synth

    src = synth(tmp_path / "p.h5ad", 6000, n_genes=2000, seed=3)
    code = (
        "import scdask, sys; scdask.convert(sys.argv[1], sys.argv[2], row_group_size=128, "
        "chunk_size=4096, workers=2, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(tmp_path / "k.zarr")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def children() -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    deadline = time.time() + 60
    while time.time() < deadline and len(children()) < 2:
        time.sleep(0.05)
    workers = children()
    assert workers, "the driver started no workers"
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as the OOM killer does
    proc.wait()
    deadline = time.time() + 20
    alive = workers
    while time.time() < deadline and alive:
        alive = [p for p in workers if os.path.exists(f"/proc/{p}")
                 and open(f"/proc/{p}/stat").read().split()[2] != "Z"]
        time.sleep(0.1)
    assert not alive, f"pool workers {alive} outlived their driver"
    proc.stdout.read()  # the pipes close: no worker holds them
    proc.stderr.read()


def test_second_writer_is_refused_while_the_first_runs(tmp_path):
    import subprocess
    import sys
    import time

    from scdask.datasets import synth

    a = synth(tmp_path / "a.h5ad", 6000, n_genes=2000, seed=3)
    b = synth(tmp_path / "b.h5ad", 3000, n_genes=2000, seed=4)
    dst = tmp_path / "same.zarr"
    code = ("import scdask, sys, time; scdask.convert(sys.argv[1], sys.argv[2], "
            "row_group_size=256, chunk_size=4096, workers=1, overwrite=True, progress=False); "
            "print(time.time())")
    first = subprocess.Popen([sys.executable, "-c", code, str(a), str(dst)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (dst / "wip").exists():
        time.sleep(0.02)
    second = subprocess.run([sys.executable, "-m", "scdask", "convert", str(b), str(dst),
                             "--overwrite"], capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    if second.returncode == 0:  # it ran after the first had finished: the store is b's
        assert Store(dst).attrs["source"] == "b.h5ad"
    else:
        assert "another scdask process" in second.stderr and "Traceback" not in second.stderr
        assert Store(dst).attrs["source"] == "a.h5ad"
        assert verify(dst, against=a).ok
    assert not (tmp_path / ".same.zarr.scdask-lock").exists()


def test_writer_lock_is_released_when_its_holder_is_killed(tmp_path):
    import subprocess
    import sys
    import time

    from scdask.store.location import Location

    dst = tmp_path / "held.zarr"
    code = ("import sys, time; from scdask.store.location import Location\n"
            "with Location(sys.argv[1]).writer_lock():\n"
            "    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(dst)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    from scdask.store.location import WriterBusyError

    with pytest.raises(WriterBusyError, match=r"another scdask process \(pid"):
        with Location(str(dst)).writer_lock(wait=0.5):
            pass
    holder.kill()
    holder.wait()
    time.sleep(0.1)
    with Location(str(dst)).writer_lock():  # the kernel released the dead holder's lock
        pass


def test_verify_against_does_not_trust_scdasks_reader(tmp_path, monkeypatch):
    """A reader bug that converts a value wrongly is caught: the reference is anndata + scipy."""
    p, m = _csc(tmp_path)
    _write(p, m.tocsr())
    from scdask.sources.h5ad import H5ADSource

    read_rows = H5ADSource.read_rows

    def wrong(self, *args, **kwargs):
        block = read_rows(self, *args, **kwargs)
        block.data[:1] += 1  # the kind of slip a reader can make
        return block

    monkeypatch.setattr(H5ADSource, "read_rows", wrong)
    scdask.convert(p, tmp_path / "o.zarr", row_group_size=64, workers=0)
    assert verify(str(tmp_path / "o.zarr")).ok  # self-consistent: its statistics agree
    report = verify(str(tmp_path / "o.zarr"), against=p)  # the wrong reader still in place
    assert not report.ok
    assert any("data differs from the source" in q for q in report.problems), report.problems
