"""scdask.open: reductions, selections, masks, group-by and materialisation against numpy."""

from __future__ import annotations

import warnings
from typing import Any

import anndata
import dask
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import xarray as xr

import scdask
from scdask.backend import CellIndex
from scdask.compute import ScdaskArray
from scdask.format import FormatError
from tests.conftest import close, generic_dask

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

OPS = ["sum", "mean", "var", "std", "min", "max"]


def test_dataset_layout(ds, ref):
    a, X = ref
    assert ds.sizes == {"cell": a.n_obs, "gene": a.n_vars}
    assert isinstance(ds.X.data, ScdaskArray)
    assert type(ds.X.data._meta).__name__ == "COO"
    assert set(ds.xindexes) == {"gene", "cell"}
    assert isinstance(ds.xindexes["cell"], CellIndex)  # lazy: no per-cell index is built
    assert (ds.gene.values == a.var_names.values).all()
    for col in a.obs.columns:
        assert col in ds.coords and ds[col].dims == ("cell",)
    assert (ds.obs_names.values == a.obs_names.values).all()
    assert (ds.drug.values == a.obs.drug.astype(str).values).all()
    close(ds.cell_sum.values, X.sum(1))
    close(ds.gene_nnz.values, (X != 0).sum(0))


def test_opening_reads_no_cell_data(tiny_store, monkeypatch):
    calls = []
    import scdask.backend as backend

    monkeypatch.setattr(backend.cells, "read_obs_chunk", lambda *a: calls.append(a))
    d = scdask.open(tiny_store)
    d.X.sel(gene="C1orf112").mean().compute()
    assert calls == []


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dim", ["cell", "gene", None])
def test_reductions_match_numpy(ds, ref, op, dim):
    _, X = ref
    axis = {"cell": 0, "gene": 1, None: None}[dim]
    got = getattr(ds.X, op)(dim).compute()
    assert isinstance(got.data, np.ndarray) and got.dtype == np.float64
    close(got.values, getattr(X, op)(axis))


def test_headline_one_gene(ds, ref):
    a, X = ref
    g = ds.X.sel(gene="C1orf112")
    j = list(a.var_names).index("C1orf112")
    assert g.count().compute().item() == a.n_obs
    close(g.max().compute().item(), X[:, j].max())
    mean = g.mean().compute()
    assert isinstance(mean.compute().item(), float)
    close(mean.compute().item(), X[:, j].mean())


def test_counts_and_nonzeros(ds, ref):
    _, X = ref
    assert ds.X.count("cell").values.tolist() == [X.shape[0]] * X.shape[1]
    assert ds.X.count().compute().item() == X.size
    assert ((ds.X != 0).sum("cell").values == (X != 0).sum(0)).all()
    assert (np.count_nonzero(ds.X.data, axis=1).compute() == (X != 0).sum(1)).all()
    assert (ds.X > 1).sum().dtype == np.int64


def test_gene_selections(ds, ref):
    a, X = ref
    names = ["TNMD", "C1orf112", "TNMD", a.var_names[-1]]
    pos = [list(a.var_names).index(n) for n in names]
    sel = ds.X.sel(gene=names)
    close(sel.mean("cell").values, X[:, pos].mean(0))
    close(sel.var("gene").values, X[:, pos].var(1))
    close(sel.sum().compute().item(), X[:, pos].sum())
    close(ds.X.isel(gene=slice(100, 300)).max("cell").values, X[:, 100:300].max(0))
    close(ds.X.isel(gene=slice(None, None, -7)).sum("gene").values, X[:, ::-7].sum(1))
    assert ds.X.isel(gene=[]).sum("cell").shape == (0,)
    close(ds.X.isel(gene=[]).sum("gene").values, np.zeros(X.shape[0]))


def test_cell_selections(ds, ref):
    _, X = ref
    close(ds.X.isel(cell=slice(500, 2100, 3)).var("cell", ddof=1).values,
          X[500:2100:3].var(0, ddof=1))
    idx = np.array([0, 1, 1023, 1024, 2999])
    close(ds.X.isel(cell=idx).mean("cell").values, X[idx].mean(0))
    close(ds.X.isel(cell=idx, gene=slice(0, 50)).max("gene").values, X[idx, :50].max(1))
    close(ds.X.isel(cell=7).sum().compute().item(), X[7].sum())  # one cell
    close(ds.X.isel(cell=7).std("gene").compute().item(), X[7].std())
    empty = ds.X.isel(cell=slice(0, 0))
    close(empty.sum("cell").values, np.zeros(X.shape[1]))
    assert np.isnan(empty.mean("cell").values).all()

@generic_dask
def test_reordered_cells_compute_as_dask_arrays(ds, ref):
    _, X = ref
    shuffled = np.array([5, 2, 9])  # computed as a Dask collection: the same numbers
    close(ds.X.isel(cell=shuffled, gene=slice(0, 20)).data.compute().todense(), X[shuffled, :20])
    repeated = np.array([5, 5, 2])  # repeated cells: Dask's generic path
    close(ds.X.isel(cell=repeated, gene=slice(0, 20)).data.compute().todense(), X[repeated, :20])


def test_where_by_obs(ds, ref):
    a, X = ref
    m = a.obs["drug"].astype(str).values == "DMSO_TF"
    assert m.any() and not m.all()
    kept = ds.where(ds.drug == "DMSO_TF", drop=True)
    assert kept.sizes["cell"] == m.sum()
    assert isinstance(kept.X.data, ScdaskArray)
    close(kept.X.mean("cell").values, X[m].mean(0))
    close(kept.X.count().compute().item(), m.sum() * X.shape[1])
    masked = ds.X.where(ds.drug == "DMSO_TF")
    Xm = np.where(m[:, None], X, np.nan)
    close(masked.mean("cell").values, np.nanmean(Xm, 0))
    close(masked.sum("gene").values, np.nansum(Xm, 1))
    close(masked.max("cell").values, np.nanmax(Xm, 0))
    close(masked.count("cell").values, (~np.isnan(Xm)).sum(0))
    close(masked.mean("cell", skipna=False).values, Xm.mean(0))
    close(masked.var("gene").values, np.nanvar(Xm, 1))


def test_elementwise_expressions(ds, ref):
    _, X = ref
    X32 = X.astype(np.float32)
    close(np.log1p(ds.X).mean("cell").values, np.log1p(X32).astype(np.float64).mean(0))
    close((ds.X * 2 + 1).sum("gene").values, (X * 2 + 1).sum(1))
    close((ds.X ** 2).sum("cell").values, ds.gene_sumsq.values)


def test_all_zero_gene(ds, ref):
    _, X = ref
    j = int(np.flatnonzero(X.sum(0) == 0)[0])
    g = ds.X.isel(gene=j)
    assert g.max().compute().item() == 0 and g.sum().compute().item() == 0 and g.var().compute().item() == 0


def test_stored_statistics_agree(ds):
    close(ds.X.sum("cell").values, ds.gene_sum.values)
    close(ds.X.sum("gene").values, ds.cell_sum.values)
    close((ds.X != 0).sum("cell").values, ds.gene_nnz.values)


def test_unknown_gene_suggests_names(ds):
    with pytest.raises(KeyError, match=r"C1orf11.*did you mean 'C1orf112'"):
        ds.sel(gene="C1orf11")
    with pytest.raises(KeyError, match="c1orf112"):
        ds.sel(gene=["TNMD", "c1orf112"])


def test_task_names(ds):
    r = ds.X.sel(gene="C1orf112").mean()
    prefixes = {dask.utils.key_split(k) for k in dict(r.data.__dask_graph__())}
    assert {"gene-mean", "gene-partial"} <= prefixes
    assert dask.utils.key_split(ds.X.data.__dask_keys__()[0][0]) == "read-block"


@pytest.mark.parametrize("scheduler", ["threads", "processes", "sync"])
def test_schedulers(ds, ref, scheduler):
    _, X = ref
    with dask.config.set(scheduler=scheduler):
        close(ds.X.isel(gene=slice(0, 64)).var("cell").values, X[:, :64].var(0))
        close(ds.X.isel(gene=slice(0, 64)).mean("gene").values, X[:, :64].mean(1))


def test_distributed_cluster(ds, ref):
    distributed = pytest.importorskip("distributed")
    _, X = ref
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster):
        close(ds.X.mean("cell").values, X.mean(0))
        close(ds.X.sel(gene="C1orf112").max().compute().item(), X[:, 4].max())


def test_pushdown_reads_only_the_genes_chunks(tiny_store, monkeypatch):
    """A one-gene statistic reads exactly the inner chunks holding that gene, each as a byte
    range of its shard (never a whole shard); no cell indices."""
    from scdask.store.entries import ChunkFiles, Entries
    from scdask.store.reader import Store

    reads: list[tuple[str, object]] = []
    pieces: set[tuple[str, int, int]] = set()
    orig_read, orig_pieces = ChunkFiles._read, Entries._pieces

    def read(self, key, span):
        reads.append((key, span))
        return orig_read(self, key, span)

    def recorded(self, group, wanted):
        for k, buf in orig_pieces(self, group, wanted):
            pieces.add((self.path, group, k))
            yield k, buf

    st = Store(tiny_store)
    j = 4
    cp = np.stack([st.colptr_row("X", g) for g in range(st.n_groups)])
    e = st.entries("X", "data")
    inner = e.codec.inner
    wanted = {("X/data", g, k) for g in range(st.n_groups)
              for k in range(cp[g, j] // inner, (cp[g, j + 1] - 1) // inner + 1)
              if cp[g, j + 1] > cp[g, j]}
    d = scdask.open(tiny_store)
    monkeypatch.setattr(ChunkFiles, "_read", read)
    monkeypatch.setattr(Entries, "_pieces", recorded)
    with dask.config.set(scheduler="sync"):
        d.X.sel(gene="C1orf112").mean().compute()
    assert pieces == wanted
    assert all(span is not None for key, span in reads if key.startswith("X/data/c/"))
    assert not [k for k, _ in reads if k.startswith("X/indices/c/")]
    n_inner = sum(-(-int(cp[g, -1]) // inner) for g in range(st.n_groups))
    assert len(pieces) <= 2 * st.n_groups < n_inner / 3
    # and a per-cell statistic of a contiguous gene range reads only that range's chunks
    pieces.clear()
    with dask.config.set(scheduler="sync"):
        d.X.isel(gene=slice(0, 10)).sum("gene").compute()
    got = {(g, k) for path, g, k in pieces if path == "X/indices"}
    assert got == {(g, k) for g in range(st.n_groups)
                   for k in range(0, (cp[g, 10] - 1) // inner + 1)}


def _plate(path, X, var_names, obs=None):
    n = X.shape[0]
    obs = obs if obs is not None else pd.DataFrame(
        {"drug": pd.Categorical(np.array(["A", "B", "C"])[np.arange(n) % 3])},
        index=[f"{path.stem}_{i}" for i in range(n)])
    anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=var_names)).write_h5ad(path)
    dst = path.with_suffix(".zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdask.convert(path, dst, row_group_size=64, chunk_size=1024, workers=0)
    return str(dst)


def test_several_plates_as_one(tmp_path):
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(40)]
    X1 = sp.random(150, 40, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    X2 = sp.random(90, 40, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    order = rng.permutation(40)
    s1 = _plate(tmp_path / "p1.h5ad", X1, genes)
    s2 = _plate(tmp_path / "p2.h5ad", X2[:, order], [genes[i] for i in order])  # other gene order
    both = scdask.open([s1, s2])
    X = sp.vstack([X1, X2]).toarray().astype(np.float64)
    assert both.sizes == {"cell": 240, "gene": 40}
    close(both.X.mean("cell").values, X.mean(0))
    close(both.X.sum("gene").values, X.sum(1))
    close(both.X.sel(gene=["g3", "g0"]).max("cell").values, X[:, [3, 0]].max(0))
    close(both.X.isel(cell=slice(140, 160)).var("cell").values, X[140:160].var(0))
    close(both.gene_sum.values, X.sum(0))
    assert list(both.obs_names.values[148:152]) == ["p1_148", "p1_149", "p2_0", "p2_1"]
    close(both.where(both.drug == "B", drop=True).X.sum("cell").values,
          X[np.r_[np.arange(150) % 3, np.arange(90) % 3] == 1].sum(0))
    close(scdask.open(str(tmp_path / "p*.zarr")).X.sum().compute().item(), X.sum())  # a glob
    s3 = _plate(tmp_path / "q3.h5ad", X2[:, :30], genes[:30])
    with pytest.raises(ValueError, match="join='inner'"):
        scdask.open([s1, s3])
    inner = scdask.open([s1, s3], join="inner")
    assert list(inner.gene.values) == genes[:30]
    close(inner.X.sum("cell").values, X[:, :30].sum(0))


def test_one_store_linked_many_times_answers_as_the_store_repeated(tiny_store, ref, tmp_path):
    """An atlas of 24 plates (the same store under 24 names, as scripts/measure_atlas.py
    builds 100M cells): every answer is numpy's on the store's matrix repeated 24 times."""
    a, X = ref
    n = 24
    for i in range(n):
        (tmp_path / f"plate{i:02d}.zarr").symlink_to(tiny_store)
    atlas = scdask.open(str(tmp_path / "plate*.zarr"))
    big = np.tile(X, (n, 1))
    assert atlas.sizes == {"cell": n * X.shape[0], "gene": X.shape[1]}
    j = 17
    gene = atlas.gene.values[j]
    g = atlas.X.sel(gene=gene)
    close(g.mean().values, big[:, j].mean())
    close(g.max().values, big[:, j].max())
    close((g != 0).sum().values, np.count_nonzero(big[:, j]))
    close(atlas.X.isel(cell=slice(None, None, 7)).sel(gene=gene).mean().values, big[::7, j].mean())
    close(atlas.X.mean("cell").values, big.mean(0))
    close(atlas.X.var("cell").values, big.var(0))
    drug = np.tile(a.obs["drug"].astype(str).values, n)
    first = drug[0]
    close(atlas.where(atlas.drug == first, drop=True).X.sel(gene=gene).mean().values,
          big[drug == first, j].mean())
    mask = np.zeros(len(big), bool)
    mask[::13] = True
    close(atlas.X.isel(cell=mask).sum("cell").values, big[mask].sum(0))
    pb = scdask.pseudobulk(atlas, ["drug"]).compute()
    for i, d in enumerate(pb.drug.values):
        close(pb["mean"].values[i], big[drug == d].mean(0))


def test_duplicated_gene_names(tmp_path):
    X = sp.random(100, 6, density=0.5, format="csr", dtype=np.float32, random_state=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = _plate(tmp_path / "dup.h5ad", X, ["a", "b", "a", "c", "d", "e"])
    d = scdask.open(s)
    got = d.X.sel(gene="a").sum("cell")
    assert got.sizes["gene"] == 2
    close(got.values, X.toarray().astype(np.float64)[:, [0, 2]].sum(0))


def test_pseudobulk_matches_numpy(ds, ref):
    import warnings

    a, X = ref
    with warnings.catch_warnings():  # groups of one cell: their var NaN, no warning
        warnings.simplefilter("error", RuntimeWarning)
        few = scdask.pseudobulk(ds.isel(cell=slice(0, 30)), ["drug", "cell_line"]).compute()
    one = few.n_cells.values == 1
    assert one.any() and np.isnan(few["var"].values[one]).all()
    assert not np.isnan(few["var"].values[~one]).any()
    pb = scdask.pseudobulk(ds, ["drug", "cell_line"]).compute()
    obs = a.obs.astype(str)
    groups = obs.groupby(["drug", "cell_line"]).indices
    assert len(pb.group) == len(groups)
    for i in range(len(pb.group)):
        rows = groups[(pb.drug.values[i], pb.cell_line.values[i])]
        assert pb.n_cells.values[i] == len(rows)
        close(pb["sum"].values[i], X[rows].sum(0))
        close(pb["mean"].values[i], X[rows].mean(0))
        close(pb["count_nonzero"].values[i], (X[rows] != 0).sum(0))
        var = X[rows].var(0, ddof=1) if len(rows) > 1 else np.full(X.shape[1], np.nan)
        close(pb["var"].values[i], var)


def test_pseudobulk_of_a_selection(ds, ref):
    a, X = ref
    sub = ds.where(ds.phase != "G1", drop=True).sel(gene=["C1orf112", "TNMD", "C1orf112"])
    pb = scdask.pseudobulk(sub, "drug").compute()
    keep = a.obs["phase"].astype(str).values != "G1"
    pos = [list(a.var_names).index(n) for n in ["C1orf112", "TNMD", "C1orf112"]]
    for i, d in enumerate(pb.drug.values):
        rows = keep & (a.obs["drug"].astype(str).values == d)
        close(pb["sum"].values[i], X[rows][:, pos].sum(0))


def test_pseudobulk_matches_scanpy(ds, ref):
    sc = pytest.importorskip("scanpy")
    a, _ = ref
    a = a.copy()  # scanpy 1.12 with scipy 1.18 wants one index dtype (the file has two)
    a.X = sp.csr_matrix((a.X.data, a.X.indices.astype(np.int64), a.X.indptr), shape=a.shape)
    ours = scdask.pseudobulk(ds, "drug").compute()
    theirs = sc.get.aggregate(a, by="drug", func=["sum", "mean", "count_nonzero", "var"])
    for i, d in enumerate(ours.drug.values):
        j = list(theirs.obs_names).index(d)
        for f in ("sum", "mean", "count_nonzero", "var"):
            close(ours[f].values[i], np.asarray(theirs.layers[f][j]).ravel())


def test_to_anndata(ds, ref):
    a, X = ref
    sub = ds.isel(cell=slice(100, 400)).sel(gene=["C1orf112", "TNMD"])
    ad = scdask.to_anndata(sub)
    assert sp.issparse(ad.X) and ad.X.dtype == np.float32
    np.testing.assert_array_equal(ad.X.toarray(), a[100:400, ["C1orf112", "TNMD"]].X.toarray())
    assert list(ad.obs_names) == list(a.obs_names[100:400])
    assert list(ad.var_names) == ["C1orf112", "TNMD"]
    assert (ad.obs["drug"].values == a.obs["drug"].astype(str).values[100:400]).all()


def test_xarray_backend(tiny_store):
    d = xr.open_dataset(tiny_store, engine="scdask")
    assert isinstance(d.X.data, ScdaskArray)
    assert d.sizes["gene"] == 1000


def test_bad_stores(tiny_plate, tmp_path):
    with pytest.raises(FileNotFoundError):
        scdask.open(tmp_path / "nope.zarr")
    with pytest.raises(FileNotFoundError, match="no store matches"):
        scdask.open(str(tmp_path / "none*.zarr"))
    from scdask.conversion.steps import convert_init

    convert_init(tiny_plate, tmp_path / "half.zarr", row_group_size=1024)
    with pytest.raises(FormatError, match="has not finished"):
        scdask.open(tmp_path / "half.zarr")


@pytest.mark.parametrize("chunk", ["X/data/c/1/0", "X/colptr/c/0/0"])
def test_missing_chunk_is_an_error_not_zeros(tiny_store, tmp_path, chunk):
    import os
    import shutil

    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(tiny_store, damaged)
    os.remove(damaged / chunk)
    d = scdask.open(damaged)
    with pytest.raises(FormatError, match=r"damaged\.zarr.*(missing|corrupt)"):
        d.X.mean("cell").compute(scheduler="sync")


def test_a_scripts_first_answer_loads_only_what_it_uses(tiny_store, ref):
    """Issue #19, item 7: a fresh process that opens a store and asks one gene's count, max
    and mean imports neither Zarr nor the converter, and loads no compiled kernel (numba's
    first kernel costs ~0.3 s of start-up); the answers are still numpy's."""
    import json
    import subprocess
    import sys

    adata, dense = ref
    gene = adata.var_names[4]
    code = f"""
import json, sys, dask, scdask
g = scdask.open({str(tiny_store)!r}).X.sel(gene={gene!r})
count, mx, mean = dask.compute((g != 0).sum(), g.max(), g.mean())
from scdask.compute import kernels
print(json.dumps({{"answers": [float(count), float(mx), float(mean)],
                  "loaded": sorted(m for m in ("zarr", "scdask.conversion", "h5py")
                                   if m in sys.modules),
                  "compiled": len(kernels._gene_partials.signatures)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    col = dense[:, 4]
    np.testing.assert_allclose(got["answers"], [np.count_nonzero(col), col.max(), col.mean()],
                               rtol=1e-12)
    assert got["loaded"] == [] and got["compiled"] == 0, got


def test_categorical_obs_columns_are_codes(tmp_path):
    """A categorical obs column of strings is pandas' Categorical (a byte a cell): the
    categories as recorded, several stores' united as anndata.concat unites them,
    values as anndata's; numbers and booleans stay numpy values (arithmetic, masks)."""
    rng = np.random.default_rng(1)
    X = sp.random(200, 10, density=0.3, format="csr", dtype=np.float32, random_state=rng)
    genes = [f"g{i}" for i in range(10)]
    one = pd.Categorical(rng.choice(["ctrl", "b", "a"], 200), categories=["ctrl", "b", "a"])
    two = pd.Categorical(rng.choice(["z", "a", None], 200), categories=["z", "a"])
    flag = pd.Categorical(rng.random(200) < 0.5)
    s1 = _plate(tmp_path / "c1.h5ad", X, genes, pd.DataFrame(
        {"drug": one, "flag": flag}, index=[f"c1_{i}" for i in range(200)]))
    s2 = _plate(tmp_path / "c2.h5ad", X, genes, pd.DataFrame(
        {"drug": two, "flag": flag}, index=[f"c2_{i}" for i in range(200)]))
    ds = scdask.open([s1, s2])
    assert list(ds.drug.dtype.categories) == ["a", "b", "ctrl", "z"]
    assert ds.where(ds.flag, drop=True).sizes["cell"] == 2 * int(np.asarray(flag, bool).sum())  # a mask
    assert scdask.open(s1, categorical=False).drug.dtype == object
    assert isinstance(ds.drug.data, pd.Categorical) and ds.drug.data.codes.dtype == np.int8
    want = np.concatenate([np.asarray(one, object), np.asarray(two, object)])
    got = np.asarray(ds.drug.values, object)
    assert (pd.isna(got) == pd.isna(want)).all()
    assert (got[~pd.isna(want)] == want[~pd.isna(want)]).all()
    for sel in (slice(150, 260, 7), slice(None, None, -5), np.array([399, 3, 3, 250])):
        picked = ds.drug.isel(cell=sel).values  # (reordering X is the generic path)
        assert [str(v) for v in picked] == [str(v) for v in want[sel]]
    Xd = sp.vstack([X, X]).toarray().astype(np.float64)
    a = want == "a"
    close(ds.where(ds.drug == "a", drop=True).X.sum("cell").values, Xd[a].sum(0))
    pb = scdask.pseudobulk(ds, "drug")
    assert list(pb.drug.values) == ["a", "b", "ctrl", "z"]  # categories' order, as anndata
    close(pb["sum"].sel(group=0).values, Xd[a].sum(0))
    assert list(scdask.pseudobulk(scdask.open(s1), "drug").drug.values) == ["ctrl", "b", "a"]
    assert scdask.open(s1).drug.dtype == one.dtype  # one store: its dtype exactly


def test_a_value_outside_the_recorded_categories_is_damage(tmp_path):
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2)
    X = sp.random(100, 5, density=0.3, format="csr", dtype=np.float32, random_state=rng)
    s = _plate(tmp_path / "d.h5ad", X, [f"g{i}" for i in range(5)])
    path = f"{s}/obs.parquet"
    pf = pq.ParquetFile(path)
    table = pf.read()
    meta = dict(table.schema.metadata)
    meta[b"scdask_categoricals"] = meta[b"scdask_categoricals"].replace(b'"B", ', b"")
    pq.write_table(table.replace_schema_metadata(meta), path,
                   row_group_size=pf.metadata.row_group(0).num_rows)
    try:
        ds = scdask.open(s)
    except FormatError as e:  # a store that checks its obs file's bytes: refused at open
        assert "obs.parquet" in str(e)
        return
    with pytest.raises(FormatError, match=r"obs\.parquet: row group \d+ of column 'drug' "
                                          r"holds B, not one of the categories"):
        ds.drug.load()


def test_where_reads_the_condition_only_and_isel_the_row_groups_it_needs(
        tiny_store, ref, monkeypatch):
    """``where(..., drop=True)`` reads the condition's column once (xarray's checks that
    the coordinates agree compare one object, unread); a selection of cells reads only
    the row groups holding them."""
    import scdask.backend.cells as cells

    a, X = ref
    reads: list[tuple[Any, ...]] = []
    real = cells.read_obs_chunk
    monkeypatch.setattr(cells, "read_obs_chunk",
                        lambda st, g, col, dt: reads.append((g, col)) or real(st, g, col, dt))
    ds = scdask.open(tiny_store)
    m = a.obs["drug"].astype(str).values == "DMSO_TF"
    kept = ds.where(ds.drug == "DMSO_TF", drop=True)
    assert {c for _, c in reads} == {"drug"}
    n_groups = -(-a.n_obs // 1024)
    assert len(reads) == n_groups
    close(kept.X.mean("cell").values, X[m].mean(0))
    reads.clear()
    picked = np.array([5, 7, 2100])  # row groups 0 and 2
    assert list(ds.isel(cell=picked).cell_line.values) == list(
        a.obs.cell_line.astype(str).values[picked])
    assert sorted(reads) == [(0, "cell_line"), (2, "cell_line")]


def test_an_obs_column_of_other_types_in_each_store_is_objects(tmp_path):
    """A column of booleans in one store and strings in another is read as objects: no
    store's values cast to the other's type (strings would become True by truthiness)."""
    X = sp.random(6, 4, density=0.5, format="csr", dtype=np.float32,
                  random_state=np.random.default_rng(3))
    genes = [f"g{i}" for i in range(4)]
    s1 = _plate(tmp_path / "t1.h5ad", X[:3], genes, pd.DataFrame(
        {"flag": pd.Categorical([True, False, True]), "n": [1, 2, 3]},
        index=[f"t1_{i}" for i in range(3)]))
    s2 = _plate(tmp_path / "t2.h5ad", X[3:], genes, pd.DataFrame(
        {"flag": pd.Categorical(["no", "", "yes"]), "n": [0.5, 1.5, 2.5]},
        index=[f"t2_{i}" for i in range(3)]))
    ds = scdask.open([s1, s2])
    assert list(ds.flag.values) == [True, False, True, "no", "", "yes"]
    assert ds.n.dtype == np.float64 and list(ds.n.values) == [1, 2, 3, 0.5, 1.5, 2.5]
