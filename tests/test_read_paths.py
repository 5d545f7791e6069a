"""Short cuts of reading: per-cell reductions from the stored statistics, scattered genes
read by chunk spans. Each is checked against scipy on the same data, and against the
path it short-cuts."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import xarray as xr

import scdask
from scdask.store import entries
from scdask.store.reader import Store


def _h5ad(path, dtype=np.float32, nan=False, seed=0, n=700, m=90):
    X = sp.random(n, m, density=0.15, format="csr", random_state=seed, dtype=np.float64)
    X.data = np.ceil(X.data * 30)
    if nan:
        X.data[5] = np.nan  # cell 0 or so: a NaN stored
    X = X.astype(dtype)
    anndata.AnnData(X=X, obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
                    var=pd.DataFrame(index=[f"g{j}" for j in range(m)])).write_h5ad(path)
    return X.toarray().astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_cell_reductions_from_stored_statistics(tmp_path, dtype, monkeypatch):
    dense = _h5ad(tmp_path / "a.h5ad", dtype)
    scdask.convert(tmp_path / "a.h5ad", tmp_path / "a.zarr", row_group_size=128, workers=0)
    ds = scdask.open(tmp_path / "a.zarr")
    cells = np.sort(np.random.default_rng(1).choice(700, 300, replace=False))
    # the same numbers when the values are read (an expression that changes nothing)
    computed = {op: getattr(ds.X * 1, op)("gene").values for op in ("sum", "mean", "var", "max")}
    real_read = Store.read_genes
    monkeypatch.setattr(Store, "read_genes", _refuse)
    for op in ("sum", "mean", "min", "max", "var", "std"):
        want = getattr(dense, op)(1)
        np.testing.assert_allclose(getattr(ds.X, op)("gene").values, want, rtol=1e-12)
        np.testing.assert_allclose(getattr(ds.X.isel(cell=cells), op)("gene").values,
                                   want[cells], rtol=1e-12)
        if op in computed:
            np.testing.assert_allclose(computed[op], want, rtol=1e-12)
    # xarray's skipna (NaN replaced by 0) and numpy's forms
    np.testing.assert_allclose(ds.X.sum("gene", skipna=True).values, dense.sum(1))
    np.testing.assert_allclose(np.sum(ds.X.data, axis=1).compute(), dense.sum(1))
    # normalize_total's per-cell operand comes from them too: one pass over the values
    calls = []
    monkeypatch.setattr(Store, "read_genes",
                        lambda *a, **k: calls.append(1) or real_read(*a, **k))
    lognorm = np.log1p(ds.X / ds.X.sum("gene") * 1e4).mean("gene").values
    assert len(calls) == Store(tmp_path / "a.zarr").n_groups
    ref = np.log1p(dense / dense.sum(1, keepdims=True) * 1e4).mean(1)
    np.testing.assert_allclose(lognorm, ref, rtol=1e-6)


def _refuse(*a, **k):
    raise AssertionError("the stored values were read")


def test_stored_nan_reads_the_values(tmp_path):
    dense = _h5ad(tmp_path / "a.h5ad", nan=True)
    scdask.convert(tmp_path / "a.h5ad", tmp_path / "a.zarr", row_group_size=128, workers=0)
    ds = scdask.open(tmp_path / "a.zarr")
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(ds.X.sum("gene", skipna=False).values, dense.sum(1))
        np.testing.assert_allclose(ds.X.sum("gene").values, np.nansum(dense, 1))  # xarray's
        np.testing.assert_allclose(ds.X.data.sum(1).compute(), dense.sum(1))  # numpy's
        np.testing.assert_allclose(ds.X.max("gene", skipna=True).values, np.nanmax(dense, 1))


def test_float_variance_and_other_gene_spaces_read_the_values(tmp_path, monkeypatch):
    """var/std of floating-point values, and plates with other genes, are computed."""
    dense = _h5ad(tmp_path / "a.h5ad")
    dense[:, 0] += 0.5
    a = anndata.read_h5ad(tmp_path / "a.h5ad")
    a.X = sp.csr_matrix(dense.astype(np.float32))
    a.write_h5ad(tmp_path / "f.h5ad")
    scdask.convert(tmp_path / "f.h5ad", tmp_path / "f.zarr", row_group_size=128, workers=0)
    calls = []
    real = Store.read_genes
    monkeypatch.setattr(Store, "read_genes", lambda *a, **k: calls.append(1) or real(*a, **k))
    ds = scdask.open(tmp_path / "f.zarr")
    np.testing.assert_allclose(ds.X.var("gene").values, dense.var(1), rtol=1e-9)
    assert calls
    b = a[:, 10:].copy()
    b.write_h5ad(tmp_path / "g.h5ad")
    scdask.convert(tmp_path / "g.h5ad", tmp_path / "g.zarr", row_group_size=128, workers=0)
    calls.clear()
    both = scdask.open([tmp_path / "f.zarr", tmp_path / "g.zarr"], join="inner")
    got = both.X.sum("gene").values  # the first plate's stored sums count 10 genes more
    assert calls
    np.testing.assert_allclose(got, np.concatenate([dense[:, 10:], dense[:, 10:]]).sum(1),
                               rtol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_scattered_genes_read_by_chunk_spans(tmp_path, seed, monkeypatch):
    dense = _h5ad(tmp_path / "a.h5ad", seed=seed, n=1000, m=400)
    scdask.convert(tmp_path / "a.h5ad", tmp_path / "a.zarr", row_group_size=512,
                   chunk_size=1024, workers=0)
    st = Store(tmp_path / "a.zarr")
    assert st.array("X/data").shape[1] > 20 * 1024  # many chunks per row group
    rng = np.random.default_rng(seed)
    monkeypatch.setattr(entries, "WHOLE_SHARD", [0, 1, 4, 100][seed])  # ranges, or whole shards
    for g in range(st.n_groups):
        lo, hi = st.group_rows(g)
        for k in (1, 7, 60, 250):
            genes = np.sort(rng.choice(400, k, replace=False))
            starts, ends, vals, rows = st.read_genes("X", g, genes)
            block = dense[lo:hi, genes]
            for j in range(k):
                col = np.zeros(hi - lo)
                col[rows[starts[j]:ends[j]]] = vals[starts[j]:ends[j]]
                np.testing.assert_array_equal(col, block[:, j])
    ds = scdask.open(tmp_path / "a.zarr")
    genes = np.sort(rng.choice(400, 123, replace=False))
    np.testing.assert_allclose(ds.X.isel(gene=genes).var("cell").values,
                               dense[:, genes].var(0), rtol=1e-6)
    assert isinstance(ds.X.isel(gene=genes).sum("cell"), xr.DataArray)
