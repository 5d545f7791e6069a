"""The matrix a scientist works with: normalized, scaled and masked expressions on the fast path,
values out of any selection, empty selections — each checked against scanpy or numpy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import dask
import numpy as np
import pytest
import xarray as xr

import scdask
from scdask.compute import ScdaskArray
from scdask.compute.array import DenseLimitError
from tests.conftest import close, generic_dask

pytestmark = pytest.mark.filterwarnings("ignore::anndata.ImplicitModificationWarning")


def normalized(ds):
    """scanpy's ``normalize_total(target_sum=1e4)`` then ``log1p``, as a lazy expression."""
    return np.log1p(ds.X / ds.X.sum("gene") * 1e4)


def scanpy_normalized(a):
    sc = pytest.importorskip("scanpy")
    b = a.copy()
    b.X = b.X.astype(np.float64)
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    return sc, b


def test_normalize_log1p_equals_scanpy(ds, ref):
    a, _ = ref
    sc, b = scanpy_normalized(a)
    Y = b.X.toarray()
    x = normalized(ds)
    assert isinstance(x.data, ScdaskArray)  # still the engine's description, not Dask's graph
    with dask.config.set(scheduler="sync"):
        close(x.mean("cell").values, Y.mean(0), rtol=1e-6)
        close(x.var("cell").values, Y.var(0), rtol=1e-6)
        close(x.std("cell", ddof=1).values, Y.std(0, ddof=1), rtol=1e-6)
        close(x.max("cell").values, Y.max(0), rtol=1e-6)
        close(x.sum("gene").values, Y.sum(1), rtol=1e-6)
        close(x.mean().values, Y.mean(), rtol=1e-6)


def test_scale_equals_scanpy(ds, ref):
    """scanpy's ``scale(max_value=10)`` of log-normalized genes: centering never densifies."""
    a, _ = ref
    sc, b = scanpy_normalized(a)
    genes = list(a.var_names[:300])
    b = b[:, genes].copy()
    sc.pp.scale(b, max_value=10)
    Y = np.asarray(b.X)
    x = normalized(ds).sel(gene=genes)
    mean = x.mean("cell")  # lazy: computed in the same pass as the statistics below
    std = x.std("cell", ddof=1).compute()
    std = std.where(std != 0, 1.0)  # scanpy leaves constant genes at zero
    z = ((x - mean) / std).clip(-10, 10)  # scanpy clips both sides when zero-centering
    assert isinstance(z.data, ScdaskArray)
    with warnings.catch_warnings():
        warnings.simplefilter("error", scdask.compute.blocks.DensePathWarning)
        close(z.mean("cell").values, Y.mean(0), rtol=1e-5)
        close(z.var("cell").values, Y.var(0), rtol=1e-5)
        close(z.min("cell").values, Y.min(0), rtol=1e-5)
        close(z.max("cell").values, Y.max(0), rtol=1e-5)
    close(z.sel(gene=genes[:3]).values, Y[:, :3], rtol=1e-5)


def test_per_cell_values_that_vary_are_reduced_densely_and_correctly(ds, ref):
    _, X = ref
    centered = ds.X - ds.X.mean("gene")  # each cell's own shift: no sparse structure left
    with pytest.warns(scdask.compute.blocks.DensePathWarning):
        got = centered.var("cell").values
    close(got, (X - X.mean(1, keepdims=True)).var(0))


def test_masks_and_clips(ds, ref):
    a, X = ref
    m = a.obs["drug"].astype(str).values == "DMSO_TF"
    clip = X.mean(0) * 3
    close(np.minimum(ds.X.data, clip).sum(0).compute(), np.minimum(X, clip).sum(0))
    clipped = np.clip(ds.X.data, min=1, max=3)  # numpy 2.1's names, composed like a_min/a_max
    assert isinstance(clipped, ScdaskArray)
    close(clipped.mean(0).compute(), np.clip(X, 1, 3).mean(0))
    masked = normalized(ds).where(ds.drug == "DMSO_TF")
    Y = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    close(masked.mean("cell").values, Y[m].mean(0))
    close(masked.count("cell").values, np.full(X.shape[1], m.sum()))


def test_pseudobulk_of_normalized_and_masked(ds, ref):
    a, X = ref
    Y = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    pb = scdask.pseudobulk(ds.assign(X=normalized(ds)), "drug").compute()
    drugs = a.obs["drug"].astype(str).values
    for i, d in enumerate(pb.drug.values):
        close(pb["mean"].values[i], Y[drugs == d].mean(0))
        close(pb["var"].values[i], Y[drugs == d].var(0, ddof=1))
    one = scdask.pseudobulk(ds.where(ds.drug == "DMSO_TF"), "cell_line").compute()
    lines = a.obs["cell_line"].astype(str).values
    m = drugs == "DMSO_TF"
    for i, c in enumerate(one.cell_line.values):
        close(one["sum"].values[i], X[m & (lines == c)].sum(0))
        assert one.n_cells.values[i] == (m & (lines == c)).sum()
    # centred: the implicit zeros of each group are accounted for, not refused
    centred = scdask.pseudobulk(ds.assign(X=ds.X - ds.X.mean("cell")), "drug").compute()
    C = X - X.mean(0)
    for i, d in enumerate(centred.drug.values):
        close(centred["sum"].values[i], C[drugs == d].sum(0))
        close(centred["var"].values[i], C[drugs == d].var(0, ddof=1))
        close(centred["count_nonzero"].values[i], (C[drugs == d] != 0).sum(0))


def test_values_out_of_a_selection(ds, ref):
    a, X = ref
    one = ds.X.sel(gene="C1orf112")
    j = list(a.var_names).index("C1orf112")
    for got in (one.values, one.to_numpy(), np.asarray(one), one.to_series().to_numpy(),
                one.to_dataframe()["X"].to_numpy()):
        assert isinstance(got, np.ndarray)
        close(got, X[:, j])
    assert float(ds.X.isel(cell=3, gene=j)) == X[3, j]
    close(ds.X.isel(cell=slice(0, 50)).values, X[:50])
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    counts, _, _ = one.plot.hist(bins=5)
    assert counts.sum() == X.shape[0]
    with dask.config.set({"scdask.dense-limit": "1MiB"}):
        with pytest.raises(DenseLimitError, match=r"3000 × 1000 float32.*to_anndata"):
            _ = ds.X.values
        assert ds.X.sel(gene="C1orf112").values.shape == (3000,)  # small: still fine
    assert not isinstance(ds.X.data.compute(), np.ndarray)  # .data stays the sparse Dask array


def test_empty_selections_answer_like_numpy(ds, ref, tmp_path):
    none = ds.where(ds.drug == "no such drug", drop=True)
    assert none.sizes["cell"] == 0
    assert isinstance(none.X.data, ScdaskArray)
    assert none.X.sum().values == 0
    assert (none.X.sum("cell").values == 0).all()
    with pytest.warns(RuntimeWarning, match="Mean of empty slice"):
        assert np.isnan(none.X.mean("cell", skipna=False).values).all()
    for op in ("min", "max"):
        with pytest.raises(ValueError, match=f"{op} of an empty selection"):
            getattr(none.X, op)().compute()
    ad = scdask.to_anndata(none)
    assert ad.shape == (0, ds.sizes["gene"])
    pytest.importorskip("torch")
    from scdask.ml import CellDataset

    with pytest.raises(ValueError, match="no cells"):
        CellDataset(ds, where={"drug": "no such drug"})


@pytest.mark.parametrize("empty", [slice(5, 5, -1), slice(3, 5, -1), slice(2, 2)])
def test_empty_slices_of_any_step(ds, ref, empty):
    """An empty slice of negative step selects nothing, as numpy's does, on cells and genes,
    for X, the obs columns and the per-gene statistics (xarray's own decomposition of such
    a slice fails)."""
    a, _ = ref
    assert ds.isel(cell=empty).sizes["cell"] == 0 and ds.isel(gene=empty).sizes["gene"] == 0
    assert ds.drug.isel(cell=empty).values.shape == (0,)
    assert ds.gene_sum.isel(gene=empty).values.shape == (0,)
    assert ds.X.isel(cell=empty).sum().values == 0 and ds.X.isel(gene=empty).sum().values == 0
    back = slice(9, 2, -3)  # and a non-empty one, reversed, still right
    assert list(ds.drug.isel(cell=back).values) == list(a.obs["drug"].astype(str)[back])
    close(ds.gene_sum.isel(gene=back).values, np.asarray(a.X[:, back].sum(0)).ravel())


@pytest.mark.parametrize("pick", ["reversed", "stepped back", "positions", "names"])
def test_cells_out_of_order_keep_the_fast_path(ds, ref, pick):
    """Distinct cells out of the store's order (a reversed slice, positions or names in
    another order) give their values and reductions from the fast path, in their order."""
    from scdask.compute.order import CellOrder

    a, X = ref
    rows = {"reversed": slice(None, None, -1), "stepped back": slice(2900, 100, -7),
            "positions": [2500, 5, 1999, 7, 0]}.get(pick, [9, 4, 1000])
    sub = ds.sel(cell=list(a.obs_names[rows])) if pick == "names" else ds.isel(cell=rows)
    x, Y = sub.X, X[rows]
    assert isinstance(x.data, CellOrder)
    assert list(sub.cell.values) == list(a.obs_names[rows])
    close(x.values, Y)
    for op in ("sum", "mean", "var", "std", "min", "max"):
        for dim, axis in (("cell", 0), ("gene", 1)):
            close(getattr(x, op)(dim).values, getattr(Y, op)(axis), rtol=1e-6)
        close(float(getattr(x, op)()), getattr(Y, op)(), rtol=1e-6)
    close((x != 0).sum("gene").values, (Y != 0).sum(1))
    close(np.log1p(x * 2).mean("gene").values, np.log1p(Y * 2).mean(1), rtol=1e-6)
    gene = str(a.var_names[3])
    one = x.sel(gene=gene)
    assert isinstance(one.data, CellOrder)
    close(one.values, Y[:, 3])
    close(x.isel(cell=[2, 0]).values, Y[[2, 0]])  # a selection of it, in its order


def test_cells_by_name_and_gene_masks(ds, ref):
    a, X = ref
    name = str(a.obs_names[7])
    close(ds.sel(cell=name).X.values, X[7])
    sub = ds.isel(cell=slice(5, 20))
    close(sub.sel(cell=[str(a.obs_names[9]), str(a.obs_names[12])]).X.values, X[[9, 12]])
    keep = ds.gene.isin(list(a.var_names[:40]))
    x = ds.X.where(keep, drop=True)
    assert isinstance(x.data, ScdaskArray)
    close(x.mean("cell").values, X[:, :40].mean(0))


@generic_dask
def test_open_dataset_with_chunks_stays_correct(tiny_store, ref):
    _, X = ref
    d = xr.open_dataset(tiny_store, engine="scdask", chunks={})
    close(d.X.mean("cell").values, X.mean(0), rtol=1e-6)
    d = xr.open_dataset(tiny_store, engine="scdask")
    assert isinstance(d.X.data, ScdaskArray)
    assert d.X.data.rechunk({}) is d.X.data and d.X.data.rechunk("auto") is d.X.data


@generic_dask
def test_open_mfdataset_says_what_to_do(tiny_store):
    """Concatenating datasets along cells would leave the engine: refused, pointing at
    scdask.open of the stores together. (Under array query planning xarray's own merge of
    the chunked gene coordinates fails first, in dask-expr.)"""
    with pytest.raises(NotImplementedError, match=r"scdask\.open\(\[path1"):
        xr.open_mfdataset([tiny_store, tiny_store], engine="scdask", combine="nested",
                          concat_dim="cell")


SNIPPETS = """
import numpy as np, scdask
ds = scdask.open({store!r})
hv = list(ds.gene.values[:64])
a = (ds.X.sel(gene=hv) / ds.X.sum("gene")).sum("cell").compute()
b = np.minimum(ds.X.data, 2).sum(0).compute()
xd = ds.X.data[:, :32].map_blocks(lambda b: b.todense(), dtype="f4")
c = (xd.T @ xd).compute()
print(float(a.sum()), float(b.sum()), float(c.sum()))
"""


@generic_dask
def test_no_crash_whatever_the_hash_seed(tiny_store):
    """The block mapping used to crash (pop from an empty list) in about half of processes."""
    outs = set()
    for seed in range(6):
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(SNIPPETS).format(
            store=str(tiny_store))], env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        outs.add(p.stdout.strip())
    assert len(outs) == 1


def test_expressions_without_the_values_read_nothing(ds, ref, monkeypatch):
    """xarray's ``count`` is ``sum(~isnan(x))``: for integers a constant, every entry equal
    to its value at zero. Such reductions read no stored entry and still give numpy's
    answers, over cell selections and per group as well; for floats,
    which may hold NaN, the values are read."""
    from scdask.compute import blocks, reductions

    a, X = ref
    reads = []
    for module in (blocks, reductions):
        real = module.read_gene_runs if hasattr(module, "read_gene_runs") else None
        if real is not None:
            monkeypatch.setattr(module, "read_gene_runs",
                                lambda *args, real=real: reads.append(1) or real(*args))
    gene = a.var_names[4]
    counts = ds.X.astype(np.int32)  # the tiny store keeps float32 values
    with dask.config.set(scheduler="sync"):
        assert counts.sel(gene=gene).count().compute().item() == X.shape[0]
        np.testing.assert_array_equal(
            counts.isel(cell=slice(None, None, 3)).count("cell").compute().values,
            np.full(X.shape[1], len(X[::3])))
        per_drug = counts.sel(gene=gene).groupby("drug").count().compute()
    want = a.obs["drug"].value_counts()
    np.testing.assert_array_equal(per_drug.values, want.loc[per_drug.drug.values].values)
    assert reads == []
    with dask.config.set(scheduler="sync"):  # floats may hold NaN: read
        assert ds.X.sel(gene=gene).count().compute().item() == X.shape[0]
    assert reads
