"""Conversion of generated plates: values, statistics, bad input, atomicity and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdask
from scdask.conversion.steps import convert_finalise, convert_init, convert_partition
from scdask.format import FORMAT_VERSION, FormatError, FormatVersionError
from scdask.store.reader import IncompleteStoreError, Store
from scdask.store.verify import verify
from scdask.testing import assert_store_matches_anndata, store_to_csr

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_generated_plate_round_trip(tiny_plate, tiny_store):
    adata = anndata.read_h5ad(tiny_plate)
    st = Store(tiny_store)
    assert st.n_groups == 3  # 3,000 cells in groups of 1,024: the last one partial
    assert_store_matches_anndata(st, adata)
    assert verify(st, against=tiny_plate).ok


def test_statistics_match_numpy(tiny_plate, tiny_store):
    X = anndata.read_h5ad(tiny_plate).X.toarray().astype(np.float64)
    st = Store(tiny_store)
    np.testing.assert_array_equal(st.stat("X", "gene", "nnz"), (X != 0).sum(0))
    np.testing.assert_allclose(st.stat("X", "gene", "sum"), X.sum(0), rtol=1e-12)
    np.testing.assert_allclose(st.stat("X", "gene", "sumsq"), (X**2).sum(0), rtol=1e-12)
    np.testing.assert_array_equal(st.stat("X", "gene", "max"), X.max(0))
    np.testing.assert_array_equal(st.stat("X", "gene", "min"), X.min(0))
    np.testing.assert_array_equal(st.stat("X", "cell", "nnz"), (X != 0).sum(1))
    np.testing.assert_allclose(st.stat("X", "cell", "sum"), X.sum(1), rtol=1e-12)
    np.testing.assert_array_equal(st.stat("X", "cell", "max"), X.max(1))
    obs = st.obs(["gene_count", "tscp_count"])
    np.testing.assert_array_equal(obs["gene_count"], st.stat("X", "cell", "nnz"))


def test_process_pool_equals_in_process(tiny_plate, tiny_store, tmp_path):
    dst = tmp_path / "pool.zarr"
    scdask.convert(tiny_plate, dst, row_group_size=1024, chunk_size=4096, workers=2)
    a, b = Store(tiny_store), Store(dst)
    assert (store_to_csr(a) != store_to_csr(b)).nnz == 0


def test_fresh_process_forks_its_workers_and_converts_the_same(tiny_plate, tiny_store, tmp_path):
    dst = tmp_path / "forked.zarr"
    code = f"""
import multiprocessing, scdask
from scdask import parallel
methods = []
real = parallel.process_pool
def spy(*a, **k):
    pool = real(*a, **k)
    methods.append(pool._mp_context.get_start_method())
    return pool
parallel.process_pool = spy
scdask.convert({str(tiny_plate)!r}, {str(dst)!r}, row_group_size=1024, chunk_size=4096,
               workers=2, progress=False)
print(methods)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['fork']"]  # no thread yet when the workers started
    assert (store_to_csr(Store(tiny_store)) != store_to_csr(Store(dst))).nnz == 0
    assert verify(Store(dst), against=tiny_plate).ok


def test_threaded_process_starts_workers_from_a_forkserver():
    import threading

    from scdask import parallel

    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        pool = parallel.process_pool(1)
        assert pool._mp_context.get_start_method() in ("forkserver", "spawn")
        assert pool.submit(sum, [1, 2]).result() == 3
        pool.shutdown()
    finally:
        stop.set()
        t.join()


@pytest.mark.parametrize("preload", [(), ("scdask.conversion.transpose",)])
def test_forkserver_workers_start_with_the_preloaded_modules(preload):
    """A notebook's conversions fork their workers from a forkserver that has imported
    scdask and numba once, instead of each worker importing them."""
    code = f"""
import threading
from scdask import parallel
stop = threading.Event()
t = threading.Thread(target=stop.wait)
t.start()
pool = parallel.process_pool(1, preload={preload!r})
print(pool._mp_context.get_start_method(),
      pool.submit(eval, "'numba' in __import__('sys').modules").result())
pool.shutdown()
stop.set()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["forkserver", str(bool(preload))]


def _write_h5ad(path, X, **kw):
    adata = anndata.AnnData(X=X, **kw)
    adata.write_h5ad(path)
    return adata


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint8])
def test_formats_and_dtypes(tmp_path, fmt, dtype):
    m = sp.random(300, 40, density=0.2, format="csr", random_state=0)
    m.data = np.ceil(m.data * 9)
    m = m.astype(dtype)
    X = {"csr": m, "csc": m.tocsc(), "dense": m.toarray()}[fmt]
    adata = _write_h5ad(tmp_path / "in.h5ad", X)
    scdask.convert(tmp_path / "in.h5ad", tmp_path / "out.zarr", row_group_size=128, workers=0)
    st = Store(tmp_path / "out.zarr")
    assert st.dtype("X") == np.dtype(dtype)
    assert_store_matches_anndata(st, adata)


def test_unsorted_indices_stored_zeros_duplicates_int64_indptr(tmp_path):
    path = tmp_path / "odd.h5ad"
    # row 0: unsorted, a stored zero, a duplicate of column 2 (summed, as scipy does)
    indptr = np.array([0, 5, 5, 7], dtype=np.int64)
    indices = np.array([4, 2, 0, 2, 1, 3, 0], dtype=np.int64)
    data = np.array([1.0, 2.0, 0.0, 3.0, 7.0, 5.0, 6.0], dtype=np.float32)
    with h5py.File(path, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        g = f.create_group("X")
        g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [3, 5]})
        g["indptr"], g["indices"], g["data"] = indptr, indices, data
    obs = anndata.AnnData(obs={"a": [1, 2, 3]}, var={"b": list(range(5))})
    from anndata.io import write_elem

    with h5py.File(path, "a") as f:
        write_elem(f, "obs", obs.obs)
        write_elem(f, "var", obs.var)
    scdask.convert(path, tmp_path / "out.zarr", workers=0)
    expected = sp.csr_matrix((data, indices, indptr), shape=(3, 5)).toarray()
    got = store_to_csr(Store(tmp_path / "out.zarr")).toarray()
    np.testing.assert_array_equal(got, expected)
    st = Store(tmp_path / "out.zarr")
    assert st.matrix("X")["nnz"] == int((expected != 0).sum())


def test_no_x_and_empty_x(tmp_path):
    adata = _write_h5ad(tmp_path / "nox.h5ad", None, obs={"a": np.arange(4)}, var={"b": np.arange(3)})
    scdask.convert(tmp_path / "nox.h5ad", tmp_path / "nox.zarr", workers=0)
    st = Store(tmp_path / "nox.zarr")
    assert "X" not in st.matrices and (st.n_obs, st.n_vars) == (4, 3)
    assert_store_matches_anndata(st, adata)
    for shape in [(0, 5), (5, 0), (0, 0)]:
        _write_h5ad(tmp_path / "e.h5ad", sp.csr_matrix(shape, dtype=np.float32))
        scdask.convert(tmp_path / "e.h5ad", tmp_path / "e.zarr", workers=0, overwrite=True)
        st = Store(tmp_path / "e.zarr")
        assert st.matrix("X")["shape"] == list(shape)
        assert store_to_csr(st).shape == shape


def test_unreadable_uns_element_is_named_in_the_warning_and_the_store(tiny_plate, tmp_path):
    import scdask.store.verify as store_verify

    src = tmp_path / "odd_uns.h5ad"
    shutil.copy(tiny_plate, src)
    with h5py.File(src, "a") as f:
        g = f.require_group("uns").create_group("from_the_future")
        g.attrs.update({"encoding-type": "quantum-array", "encoding-version": "9.9.9"})
        f["uns"].attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        f["uns/kept"] = np.arange(3)
        f["uns/kept"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    with pytest.warns(UserWarning, match=r"uns/from_the_future \(unreadable"):
        scdask.convert(src, tmp_path / "o.zarr", workers=0)
    st = Store(tmp_path / "o.zarr")
    assert any(d.startswith("uns/from_the_future (unreadable") for d in st.attrs["not_kept"])
    assert store_verify.info(st)["not_kept"] == st.attrs["not_kept"]
    np.testing.assert_array_equal(st.uns()["kept"], np.arange(3))


# -- bad input -------------------------------------------------------------------
def test_not_hdf5(tmp_path):
    p = tmp_path / "x.h5ad"
    p.write_text("hello")
    with pytest.raises(FormatError, match=r"x\.h5ad: not an HDF5 file"):
        scdask.convert(p, tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


def test_hdf5_not_anndata(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f["foo"] = np.arange(3)
    with pytest.raises(FormatError, match=r"x\.h5: obs: missing"):
        scdask.convert(p, tmp_path / "o.zarr")


def test_truncated(tiny_plate, tmp_path):
    p = tmp_path / "trunc.h5ad"
    data = open(tiny_plate, "rb").read()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="trunc.h5ad"):
        scdask.convert(p, tmp_path / "o.zarr", workers=0)
    if (tmp_path / "o.zarr").exists():  # whatever was written must not open as complete
        with pytest.raises(FormatError):
            Store(tmp_path / "o.zarr")


def test_shape_disagrees(tmp_path):
    p = tmp_path / "bad.h5ad"
    _write_h5ad(p, sp.random(10, 4, density=0.5, format="csr", dtype=np.float32))
    with h5py.File(p, "a") as f:
        f["X"].attrs["shape"] = np.array([11, 4])
    with pytest.raises(FormatError, match=r"bad\.h5ad: X/indptr: has 11 entries, expected 12"):
        scdask.convert(p, tmp_path / "o.zarr")


def test_unknown_encoding(tmp_path):
    p = tmp_path / "bad.h5ad"
    _write_h5ad(p, sp.random(10, 4, density=0.5, format="csr", dtype=np.float32))
    with h5py.File(p, "a") as f:
        f["X"].attrs["encoding-type"] = "awkward-array"
    with pytest.raises(FormatError, match=r"bad\.h5ad: X: encoding 'awkward-array'"):
        scdask.convert(p, tmp_path / "o.zarr")


def test_column_index_out_of_range(tmp_path):
    p = tmp_path / "bad.h5ad"
    _write_h5ad(p, sp.random(10, 4, density=0.5, format="csr", dtype=np.float32))
    with h5py.File(p, "a") as f:
        idx = f["X/indices"][:]
        idx[3] = 99
        f["X/indices"][:] = idx
    with pytest.raises(FormatError, match=r"bad\.h5ad: X: rows 0:10: column index 99"):
        scdask.convert(p, tmp_path / "o.zarr", workers=0)
    with pytest.raises(IncompleteStoreError):
        Store(tmp_path / "o.zarr")


def test_destination_exists(tiny_plate, tiny_store, tmp_path):
    with pytest.raises(FileExistsError, match="complete scdask store"):
        scdask.convert(tiny_plate, tiny_store)
    other = tmp_path / "other"
    other.mkdir()
    (other / "file.txt").write_text("x")
    for overwrite in (False, True):  # overwrite replaces only what scdask wrote
        with pytest.raises(FileExistsError, match="not a scdask store"):
            scdask.convert(tiny_plate, other, overwrite=overwrite)
    assert (other / "file.txt").read_text() == "x"
    earlier = tmp_path / "earlier.zarr"
    shutil.copytree(tiny_store, earlier)
    scdask.convert(tiny_plate, earlier, overwrite=True, workers=0, row_group_size=2048)
    assert Store(earlier).row_group_size == 2048


def test_newer_format_version_refused(tiny_plate, tmp_path):
    dst = tmp_path / "v.zarr"
    scdask.convert(tiny_plate, dst, workers=0)
    meta = json.loads((dst / "zarr.json").read_text())
    meta["attributes"]["scdask"]["format_version"] = FORMAT_VERSION + 1
    (dst / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(FormatVersionError, match=rf"format version {FORMAT_VERSION + 1}.*up to {FORMAT_VERSION}"):
        Store(dst)


# -- atomicity and resume ----------------------------------------------------------
def test_incomplete_store_does_not_open_and_resumes(tiny_plate, tiny_store, tmp_path):
    dst = tmp_path / "r.zarr"
    plan = convert_init(tiny_plate, dst, row_group_size=1024, chunk_size=4096)
    convert_partition(dst, 1)
    with pytest.raises(IncompleteStoreError, match="has not finished"):
        Store(dst)
    with pytest.raises(RuntimeError, match="2 of 3 partitions are not converted"):
        convert_finalise(dst)
    # rerunning the same conversion converts only what is missing
    scdask.convert(tiny_plate, dst, row_group_size=1024, chunk_size=4096, workers=0)
    assert plan.n_groups == 3
    assert (store_to_csr(Store(dst)) != store_to_csr(Store(tiny_store))).nnz == 0
    # different settings on an interrupted store are refused
    dst2 = tmp_path / "r2.zarr"
    convert_init(tiny_plate, dst2, row_group_size=1024)
    with pytest.raises(FileExistsError, match="interrupted conversion"):
        scdask.convert(tiny_plate, dst2, row_group_size=512)


def test_kill_during_conversion_then_resume(tmp_path):
    from scdask.datasets import synth

    src = synth(tmp_path / "p.h5ad", 6000, n_genes=2000, seed=3)
    dst = tmp_path / "k.zarr"
    code = (  # each partition made slow (workers are forked: they inherit it), to be killed
        "import scdask, sys, time; import scdask.conversion.run as run; part = "
        "run.convert_partition; run.convert_partition = lambda *a: (time.sleep(0.3), "
        "part(*a))[1]; scdask.convert(sys.argv[1], sys.argv[2], row_group_size=256, "
        "chunk_size=4096, workers=1, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(dst)], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = dst / "wip" / "done"
        if done.exists() and len(os.listdir(done)) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (dst / "wip" / "done").exists() or len(os.listdir(dst / "wip" / "done")) < 24
    with pytest.raises(IncompleteStoreError):
        Store(dst)
    scdask.convert(src, dst, row_group_size=256, chunk_size=4096, workers=0)
    assert verify(dst, against=src).ok


def test_counts_stored_as_uint16_and_read_back_exactly(tiny_plate, tiny_store):
    st = Store(tiny_store)
    assert st.matrix("X")["dtype"] == "<f4" and st.matrix("X")["stored_dtype"] == "<u2"
    assert st.array("X/data").dtype == np.uint16
    assert st.read_group("X", 0).data.dtype == np.float32


@pytest.mark.parametrize("value", [0.5, 70000.0, -1.0, np.nan])
def test_values_that_are_not_counts_fall_back_to_the_source_dtype(tmp_path, value):
    # The first rows look like counts, so the plan narrows; a later row group does not fit.
    rng = np.random.default_rng(3)
    X = sp.random(3000, 500, density=0.1, format="csr", dtype=np.float32, random_state=rng)
    X.data[:] = rng.integers(1, 20, X.nnz)
    X.data[-1] = value
    src = tmp_path / "mixed.h5ad"
    _write_h5ad(src, X)
    dst = tmp_path / "mixed.zarr"
    with pytest.warns(UserWarning, match="storing values in the source dtype"):
        scdask.convert(src, dst, row_group_size=1024, workers=0)
    st = Store(dst)
    assert st.matrix("X")["stored_dtype"] == "<f4"
    assert_store_matches_anndata(st, anndata.read_h5ad(src))
    # A partition run on its own (a job array) fails loudly instead of narrowing lossily.
    other = tmp_path / "jobs.zarr"
    convert_init(src, other, row_group_size=1024)
    with pytest.raises(FormatError, match=r"rows 2048:3000.*--no-narrow"):
        convert_partition(other, 2)


def test_normalised_values_are_not_narrowed(tmp_path):
    X = sp.random(100, 30, density=0.2, format="csr", dtype=np.float32, random_state=0)
    src = tmp_path / "norm.h5ad"
    _write_h5ad(src, X)
    scdask.convert(src, tmp_path / "norm.zarr", workers=0)
    assert Store(tmp_path / "norm.zarr").matrix("X")["stored_dtype"] == "<f4"


def test_gzip_chunks_inflated_here_read_as_hdf5_reads_them(tmp_path):
    from scdask.sources.h5slabs import _inflater, _read_checked

    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        x = rng.integers(0, 1000, 10_007).astype(np.float32)
        f.create_dataset("gzip", data=x, chunks=(999,), compression="gzip")
        f.create_dataset("big_endian", data=x.astype(">f4"), chunks=(999,), compression="gzip")
        f.create_dataset("shuffle", data=x, chunks=(999,), compression="gzip", shuffle=True)
        part = f.create_dataset("unwritten", shape=(10_007,), dtype="i4", chunks=(999,),
                                compression="gzip", fillvalue=7)
        part[:3000] = np.arange(3000)  # chunks beyond are never written: HDF5 fills them
        assert _inflater(f["gzip"]) is not None and _inflater(f["shuffle"]) is None
        for name in ("gzip", "big_endian", "shuffle", "unwritten"):
            d = f[name]
            for lo, hi in [(0, 10_007), (5, 998), (998, 1000), (2500, 9001), (10_006, 10_007)]:
                got, bad, _ = _read_checked(d, lo, hi, d.dtype)
                np.testing.assert_array_equal(got, d[lo:hi], err_msg=f"{name}[{lo}:{hi}]")
                narrow, bad, _ = _read_checked(d, lo, hi, np.uint16, (0, 1 << 16))
                assert bad == -1 and narrow.dtype == np.uint16
                np.testing.assert_array_equal(narrow, d[lo:hi], err_msg=f"{name}[{lo}:{hi}]")
        # the first entry out of bounds or changed by the cast, counted from lo
        assert _read_checked(f["gzip"], 2500, 9001, np.uint16, (0, 5))[1] == np.flatnonzero(
            f["gzip"][2500:9001] >= 5)[0]
        f["gzip"][7777] = 0.5
        assert _read_checked(f["gzip"], 1000, 9001, np.uint16, (0, 1 << 16))[1] == 6777


def test_corrupt_gzip_chunk_is_named(tmp_path):
    p = tmp_path / "bad.h5ad"
    _write_h5ad(p, sp.random(3000, 100, density=0.3, format="csr", dtype=np.float32,
                             random_state=0))
    with h5py.File(p, "a") as f:  # gzip chunks of 500 entries, as a writer might choose
        data = f["X/data"][:]
        del f["X/data"]
        f.create_dataset("X/data", data=data, chunks=(500,), compression="gzip")
    clean = p.read_bytes()

    def corrupt(chunk):
        with h5py.File(p, "r") as f:
            info = f["X/data"].id.get_chunk_info(chunk)
        raw = bytearray(clean)
        raw[info.byte_offset + 10 : info.byte_offset + 60] = b"\x00" * 50
        p.write_bytes(bytes(raw))

    corrupt(0)  # read while planning (a sample of the values)
    with pytest.raises(FormatError, match=r"bad\.h5ad: X/data: entries 0:\d+ could not be read"):
        scdask.convert(p, tmp_path / "o.zarr", workers=0)
    assert not (tmp_path / "o.zarr").exists()
    corrupt(179)  # the last of 180 chunks: read by the partition of rows 2816:3000
    with pytest.raises(FormatError, match=r"bad\.h5ad: X: rows 2816:3000 could not be read"):
        scdask.convert(p, tmp_path / "o.zarr", row_group_size=256, workers=0)
    with pytest.raises(IncompleteStoreError):
        Store(tmp_path / "o.zarr")


def test_scratch_reuses_its_buffers_and_grows_when_needed():
    from scdask.sources.scratch import Scratch

    s = Scratch()
    a = s.empty("rows", 1000, np.uint16)
    a[:] = 7
    size = s.nbytes
    b = s.empty("rows", 500, np.int32)  # the same bytes, another dtype and length
    assert b.dtype == np.int32 and len(b) == 500
    assert np.shares_memory(a, b) and s.nbytes == size
    c = s.empty("rows", 100_000, np.float64)  # larger: a new buffer
    assert not np.shares_memory(a, c) and c.nbytes == 800_000
    assert not np.shares_memory(c, s.empty("values", 10, np.float64))
    s.clear()
    assert s.nbytes == 0


def test_pool_workers_reuse_scratch_and_convert_the_same(tiny_plate, tiny_store, tmp_path):
    """One worker converts every row group, one after another, in its reused buffers."""
    dst = tmp_path / "one_worker.zarr"
    scdask.convert(tiny_plate, dst, row_group_size=512, chunk_size=4096, workers=1,
                   progress=False)
    assert (store_to_csr(Store(tiny_store)) != store_to_csr(Store(dst))).nnz == 0
    assert verify(Store(dst), against=tiny_plate).ok


def test_pool_worker_reuses_scratch_across_matrices_and_formats(tmp_path):
    """One worker converts X (CSR counts), a CSC and a dense layer and raw (other genes,
    floats) partition after partition, in buffers it keeps: every value as anndata reads it."""
    rng = np.random.default_rng(3)
    m = sp.random(700, 60, density=0.3, format="csr", random_state=rng)
    X = sp.csr_matrix(np.ceil(m.toarray() * 9).astype(np.float32))
    raw_X = sp.random(700, 90, density=0.5, format="csr", random_state=rng).astype(np.float64)
    adata = anndata.AnnData(X=X, layers={"csc": X.tocsc() * 2, "dense": X.toarray() + 1})
    adata.raw = anndata.AnnData(X=raw_X, var=pd.DataFrame(index=[f"r{i}" for i in range(90)]))
    src = tmp_path / "multi.h5ad"
    adata.write_h5ad(src)
    dst = tmp_path / "multi.zarr"
    scdask.convert(src, dst, row_group_size=128, chunk_size=1024, workers=1, progress=False)
    st = Store(dst)
    assert st.n_groups == 6 and np.dtype(st.matrix("X")["stored_dtype"]) == np.uint16
    assert_store_matches_anndata(st, anndata.read_h5ad(src))
    assert verify(st, against=src).ok


@pytest.mark.parametrize("sliced", [True, False])
def test_obs_converted_in_slices_equals_anndatas(tmp_path, monkeypatch, sliced):
    """obs is read and written a slice of whole row groups at a time (a plate's cell names
    and barcodes never all in memory); every column's values and dtype are anndata's, and
    the Parquet row groups still match the matrix's. A column that cannot be read in
    slices (another encoding) makes the whole frame be read at once, with the same result."""
    import anndata as ad
    import pyarrow.parquet as pq

    from scdask.conversion import metadata
    from scdask.sources import elements

    monkeypatch.setattr(metadata, "OBS_SLICE", 300)
    if not sliced:
        plain = elements.sliceable
        monkeypatch.setattr(elements, "sliceable", lambda e: plain(e) and e.name != "/obs/count")
    from scdask.sources.h5ad import H5ADSource

    reads = []
    one_slice = H5ADSource._frame_slice
    monkeypatch.setattr(H5ADSource, "_frame_slice", staticmethod(
        lambda elem, *a: reads.append((elem.name, a[-1])) or one_slice(elem, *a)))
    rng = np.random.default_rng(3)
    n = 1000
    obs = pd.DataFrame({
        "drug": pd.Categorical(rng.choice(["DMSO_TF", "a", "b"], n)),
        "barcode": [f"BC{i:07d}" for i in range(n)],
        "count": rng.integers(0, 9, n),
        "score": rng.normal(size=n),
        "maybe": pd.array(np.where(rng.random(n) < 0.2, None, rng.integers(0, 5, n)), dtype="Int64"),
        "flag": pd.array(np.where(rng.random(n) < 0.2, None, rng.random(n) < 0.5), dtype="boolean"),
        "ok": rng.random(n) < 0.5,
    }, index=pd.Index([f"cell{i}" for i in range(n)], name="cell_id"))
    X = sp.random(n, 20, density=0.1, format="csr", random_state=1, dtype=np.float32)
    path = tmp_path / "o.h5ad"
    ad.AnnData(X, obs=obs).write_h5ad(path)
    scdask.convert(path, tmp_path / "o.zarr", row_group_size=128, workers=0)
    want = ad.read_h5ad(path).obs
    got = scdask.open(tmp_path / "o.zarr").scdask.obs
    pd.testing.assert_frame_equal(got, want)
    obs_reads = [rows for name, rows in reads if name == "/obs"]
    assert obs_reads == ([slice(a, min(n, a + 256)) for a in range(0, n, 256)] if sliced
                         else [None])
    meta = pq.ParquetFile(tmp_path / "o.zarr" / "obs.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == \
        [128] * 7 + [n - 7 * 128]
