"""Fault injection on finished stores: damaged chunks and files, crafted metadata.

Each case damages a copy of a converted store the way disks, copies and people do and
asserts the outcome exactly: the right answer, or an error naming the store, the array
and the chunk (or file) — never a wrong number, never a crash of the interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

import scdask
from scdask.format import FormatError
from scdask.store.integrity import ChunkError
from scdask.store.location import PathOutsideError
from scdask.store.reader import ReplacedStoreError, Store
from scdask.store.verify import verify


@pytest.fixture
def store(tmp_path, tiny_store):
    dst = tmp_path / "plate.zarr"
    shutil.copytree(tiny_store, dst)
    return dst


def _queries(path) -> dict[str, np.ndarray]:
    """Every way a user reads numbers from a store, computed."""
    ds = scdask.open(path)
    x = ds.X
    out = {
        "gene_mean": x.sel(gene=ds.gene.values[:50]).mean("cell").values,
        "all_means": x.mean("cell").values,
        "cell_sums": x.sum("gene").values,  # the statistics stored at conversion
        "cell_sums_read": (x * 2).sum("gene").values,  # the values and their cells, read
        "stored_gene_sum": ds["gene_sum"].values if "gene_sum" in ds else np.zeros(0),
        "cell_nnz": ds["cell_nnz"].values if "cell_nnz" in ds else np.zeros(0),
        "obs": np.asarray(ds[[k for k, c in ds.coords.items()
                              if c.dims == ("cell",) and k != "cell"][0]].values),
    }
    return out


ARRAYS = ["X/data", "X/indices", "X/colptr", "X/cell_nnz", "X/cell_sum", "X/gene_sum",
          "X/gene_max"]


def _chunk(store, array: str) -> str:
    folder = store / array / "c"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return str(files[len(files) // 2])


def _damage(path: str, how: str) -> None:
    raw = bytearray(open(path, "rb").read())
    if how == "delete":
        os.remove(path)
        return
    if how == "flip":
        raw[len(raw) // 2] ^= 0x10
    elif how == "truncate":
        raw = raw[: len(raw) // 2]
    elif how == "empty":
        raw = bytearray()
    elif how == "swap":  # another chunk of the same array, intact: a misplaced copy
        folder = Path(path.rsplit("/c/", 1)[0]) / "c"
        others = sorted(p for p in folder.rglob("*")
                        if p.is_file() and str(p) != path and p.read_bytes() != bytes(raw))
        if not others:
            pytest.skip("the array has no other chunk with other bytes")
        raw = bytearray(others[0].read_bytes())
    with open(path, "wb") as f:
        f.write(bytes(raw))


@pytest.mark.parametrize("how", ["delete", "flip", "truncate", "empty", "swap"])
@pytest.mark.parametrize("array", ARRAYS)
def test_damaged_chunk_is_an_error_naming_it(store, array, how):
    right = _queries(store)
    chunk = _chunk(store, array)
    _damage(chunk, how)
    coords = "/".join(chunk.split("/c/")[-1].split("/"))
    try:
        got = _queries(store)
    except FormatError as e:
        assert str(store) in str(e) and array in str(e) and coords in str(e), str(e)
    else:  # only an answer that does not read the chunk may succeed, and it must be right
        for k, v in right.items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)
    report = verify(str(store))
    assert not report.ok
    assert any(array in p and coords in p for p in report.problems), report.problems


def test_chunk_copied_from_another_array_is_an_error(store):
    shutil.copy(store / "X/gene_sum/c/0", store / "X/gene_max/c/0")
    with pytest.raises(ChunkError, match="X/gene_max: chunk 0 is not the chunk written"):
        _ = scdask.open(store)["gene_max"].values
    assert any("X/gene_max: chunk 0" in p for p in verify(str(store)).problems)


def test_missing_or_damaged_position_table_is_an_error(store):
    from scdask.store.integrity import TABLE

    (store / "X/data" / TABLE).unlink()
    raw = bytearray((store / "X/indices" / TABLE).read_bytes())
    raw[-10] ^= 1
    (store / "X/indices" / TABLE).write_bytes(bytes(raw))
    with pytest.raises(ChunkError, match=rf"X/(data|indices): {TABLE} (\(the CRCs.*\) )?is (missing|damaged)"):
        _ = (scdask.open(store).X * 2).sum("gene").values
    problems = verify(str(store)).problems
    assert any(f"X/data: {TABLE} (the CRCs of its chunks by position) is missing" in p
               for p in problems), problems
    assert any(f"X/indices: {TABLE} is damaged" in p for p in problems), problems


def test_verify_reports_every_damaged_chunk(store):
    damaged = []
    for array in ["X/data", "X/indices", "X/cell_sum", "X/gene_min"]:
        chunk = _chunk(store, array)
        _damage(chunk, "flip" if array != "X/indices" else "delete")
        damaged.append((array, chunk.split("/c/")[-1]))
    report = verify(str(store))
    for array, coords in damaged:
        assert any(f"{array}: chunk {coords}" in p for p in report.problems), (array, report)


@pytest.mark.parametrize("name", ["obs.parquet", "var.parquet"])
def test_damaged_parquet_page_is_an_error(store, name):
    path = store / name
    raw = bytearray(path.read_bytes())
    # a byte inside the first data page (past the 4-byte magic and the page header)
    raw[len(raw) // 3] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises((FormatError, OSError)) as e:
        ds = scdask.open(store)
        for c in ds.coords.values():
            np.asarray(c.values)
    assert name in str(e.value) or "parquet" in str(e.value).lower()
    assert not verify(str(store)).ok


def test_obs_of_other_cells_is_an_error(store):
    """An obs table whose rows or row groups are not the matrix's: an error naming it, not
    columns of other cells."""
    import pyarrow.parquet as pq

    path = store / "obs.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 1), path, row_group_size=7)
    ds = scdask.open(store)
    with pytest.raises(FormatError, match="obs.parquet has .* rows"):
        np.asarray(ds.drug.values)


def test_damaged_uns_is_an_error(store):
    path = store / "uns.json"
    if not path.exists():
        pytest.skip("the plate has no uns")
    raw = path.read_text()
    path.write_text(raw.replace("1", "2", 1) if "1" in raw else raw + " ")
    with pytest.raises(FormatError, match="uns.json"):
        Store(store).uns()


def _root_attrs(store) -> dict:
    return json.loads((store / "zarr.json").read_text())


def _write_root_attrs(store, meta: dict) -> None:
    (store / "zarr.json").write_text(json.dumps(meta))


def test_var_path_outside_the_store_is_refused(store, tmp_path):
    secret = tmp_path / "secret.parquet"
    shutil.copy(store / "var.parquet", secret)
    meta = _root_attrs(store)
    meta["attributes"]["scdask"]["matrices"]["X"]["var"] = "../secret.parquet"
    _write_root_attrs(store, meta)
    with pytest.raises(PathOutsideError, match="outside the store"):
        scdask.open(store)
    meta["attributes"]["scdask"]["matrices"]["X"]["var"] = str(secret)
    _write_root_attrs(store, meta)
    with pytest.raises(PathOutsideError, match="outside the store"):
        scdask.open(store)


def test_symlink_leaving_the_store_is_refused(store, tmp_path):
    outside = tmp_path / "elsewhere.parquet"
    shutil.move(store / "var.parquet", outside)
    os.symlink(outside, store / "var.parquet")
    with pytest.raises(PathOutsideError, match="outside the store"):
        scdask.open(store)


def test_symlinked_chunk_leaving_the_store_is_refused(store, tmp_path):
    chunk = _chunk(store, "X/data")
    outside = tmp_path / "chunk"
    shutil.move(chunk, outside)
    os.symlink(outside, chunk)
    with pytest.raises(ChunkError, match="outside the store"):
        _ = (scdask.open(store).X * 2).sum("gene").values


def test_attributes_disagreeing_with_arrays_are_refused_before_allocating(store):
    meta = _root_attrs(store)
    meta["attributes"]["scdask"]["n_obs"] = 10**9
    meta["attributes"]["scdask"]["row_group_size"] = 1
    _write_root_attrs(store, meta)
    with pytest.raises(FormatError, match="shape|cells"):
        scdask.open(store)


def test_stat_array_larger_than_attributes_is_refused(store):
    path = store / "X" / "gene_sum" / "zarr.json"
    meta = json.loads(path.read_text())
    meta["shape"] = [10**10]
    path.write_text(json.dumps(meta))
    ds = scdask.open(store)  # per-gene statistics are read when first used, not at open
    with pytest.raises(FormatError, match="gene_sum"):
        _ = ds.gene_sum.values


def _reseal(store, array: str) -> None:
    """Record an array's chunks as they are now in its table, as a crafter would."""
    from scdask.store.integrity import TABLE, decode_table, encode_table

    table = decode_table("", array, (store / array / TABLE).read_bytes())
    for f in (store / array / "c").rglob("*"):
        if f.is_file():
            idx = tuple(int(p) for p in f.relative_to(store / array / "c").parts)
            table[idx] = np.frombuffer(f.read_bytes()[-4:], "<u4")[0]
    (store / array / TABLE).write_bytes(encode_table(table))


def _rewrite(store, array: str, fn) -> None:
    """Rewrite an array through zarr with valid checksums: a crafted, not a damaged, store."""
    import zarr

    from scdask.format.codecs import implementations

    with implementations():
        arr = zarr.open_array(store / array, mode="r+")
        values = arr[:]
        arr[:] = fn(values)
    _reseal(store, array)


def test_crafted_colptr_past_the_data_is_refused(store):
    def bad(cp):
        cp = cp.copy()
        cp[0, -1] = cp[0, -1] + 10**7
        return cp

    _rewrite(store, "X/colptr", bad)
    with pytest.raises(FormatError, match="colptr"):
        _ = scdask.open(store).X.mean("cell").values
    assert not verify(str(store)).ok


def test_crafted_cell_index_out_of_range_is_refused(store):
    import zarr

    from scdask.format.codecs import implementations

    with implementations():
        arr = zarr.open_array(store / "X" / "indices", mode="r+")
        row = arr[0, :4096]
        row[5] = 65535
        arr[0, :4096] = row
    _reseal(store, "X/indices")
    with pytest.raises(FormatError, match="cell index"):
        _ = (scdask.open(store).X * 2).sum("gene").values
    assert not verify(str(store)).ok


def test_replaced_store_is_noticed(store, tiny_plate, tmp_path):
    ds = scdask.open(store)
    before = ds.X.mean("cell").values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdask.convert(tiny_plate, store, row_group_size=1024, chunk_size=4096, workers=0,
                       overwrite=True)
    with pytest.raises(ReplacedStoreError, match="replaced"):
        _ = ds.X.mean("cell").values
    np.testing.assert_array_equal(scdask.open(store).X.mean("cell").values, before)


def test_obs_columns_read_from_many_threads(store):
    ds = scdask.open(store)
    cols = [k for k, c in ds.coords.items() if c.dims == ("cell",) and k != "cell"]
    want = {k: np.asarray(scdask.open(store)[k].values) for k in cols}
    errors = []

    def read():
        try:
            d = scdask.open(store)
            for _ in range(3):
                for k in cols:
                    got = np.asarray(d[k].values)
                    if not (got == want[k]).all() and got.dtype.kind != "f":
                        errors.append(k)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(e))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_partition_values_stay_inside_the_export(store, tmp_path):
    from scdask.interop.parquet import export_parquet

    ds = scdask.open(store)
    col = next(k for k, c in ds.coords.items() if c.dims == ("cell",) and ds[k].dtype == object)
    values = np.asarray(ds[col].values).astype(object)
    values[:] = "../../../../escaped"
    values[::2] = "a/b"
    ds = ds.assign_coords({col: ("cell", values)})
    out = tmp_path / "export"
    export_parquet(ds.X.isel(gene=slice(0, 20)), out, partition_by=col)
    inside = {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs}
    assert all(not p.startswith("..") for p in inside)
    assert not (tmp_path / "escaped").exists()
    import pyarrow.dataset as pads

    t = pads.dataset(out / "X", partitioning="hive").to_table()
    assert set(t.column(col).to_pylist()) == {"../../../../escaped", "a/b"}
