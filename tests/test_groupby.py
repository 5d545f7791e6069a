"""xarray's group-by on the lazy matrix: one labelled pass over the store, equal to xarray's
own group-by of the same values held in numpy (the reference), whatever the expression."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import scdask
from scdask.compute import labels
from tests.conftest import close

pytestmark = pytest.mark.filterwarnings("ignore::anndata.ImplicitModificationWarning")


@pytest.fixture(autouse=True, params=["pairs", "dense"])
def layout(request, monkeypatch):
    """Every test with a row group's statistics as (label, gene) pairs and as dense arrays."""
    monkeypatch.setattr(labels, "DENSE_CELLS_PER_LABEL", 1e9 if request.param == "pairs" else 0)
    return request.param


def _dense(x: xr.DataArray, X: np.ndarray) -> xr.DataArray:
    """``x``'s cells and genes and obs coordinates, its values ``X`` in numpy."""
    return xr.DataArray(X, dims=x.dims, coords={k: (c.dims, np.asarray(c.values))
                                                for k, c in x.coords.items()
                                                if k in ("drug", "cell_line", "gene")})


def _passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the labelled passes built (each is one pass over the store)."""
    calls: list[int] = []
    real = labels.accumulate

    def counting(inp, codes, n_labels, **kw):
        calls.append(n_labels)
        return real(inp, codes, n_labels, **kw)

    monkeypatch.setattr(labels, "accumulate", counting)
    return calls


@pytest.mark.parametrize("op", ["sum", "mean", "var", "std", "min", "max", "count"])
def test_groupby_is_one_pass_equal_to_xarray(ds, ref, op, monkeypatch):
    a, X = ref
    calls = _passes(monkeypatch)
    ref_da = _dense(ds.X, X)
    with dask.config.set(scheduler="sync"):
        got = getattr(ds.X.groupby("drug"), op)().compute()
    want = getattr(ref_da.groupby("drug"), op)()
    assert calls == [ref_da.drug.to_series().nunique()]  # one pass, every drug a label
    assert got.dims == want.dims
    np.testing.assert_array_equal(got.drug.values, want.drug.values)
    close(got.values, want.values)


@pytest.mark.parametrize("op", ["sum", "mean", "var", "min", "max"])
def test_groupby_of_one_gene_is_one_pass(ds, ref, op, monkeypatch):
    """``ds.X.sel(gene=name).groupby("drug")``: the gene dimension dropped, a number per
    group, still one labelled pass (it was one pass per group)."""
    a, X = ref
    calls = _passes(monkeypatch)
    name = a.var_names[4]
    ref_da = _dense(ds.X, X).sel(gene=name)
    with dask.config.set(scheduler="sync"):
        got = getattr(ds.X.sel(gene=name).groupby("drug"), op)().compute()
    want = getattr(ref_da.groupby("drug"), op)()
    assert calls == [ref_da.drug.to_series().nunique()]
    assert got.dims == want.dims == ("drug",)
    np.testing.assert_array_equal(got.drug.values, want.drug.values)
    close(got.values, want.values)


def test_multi_key_groupby_of_normalized(ds, ref, monkeypatch):
    """xarray's multi-key group-by of log1p(normalize_total): one pass, xarray's layout."""
    _, X = ref
    calls = _passes(monkeypatch)
    x = np.log1p(ds.X / ds.X.sum("gene") * 1e4)
    Y = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    got = x.groupby(["drug", "cell_line"]).mean().compute()
    want = _dense(ds.X, Y).groupby(["drug", "cell_line"]).mean()
    assert len(calls) == 1
    assert got.dims == want.dims and got.shape == want.shape
    close(got.values, want.values)  # NaN where a drug × cell line has no cell


def test_groupby_of_centred_and_integer_values(ds, ref):
    """A value at zero that is not zero (centring) is accounted for analytically; integer
    sums stay integers, as numpy's."""
    _, X = ref
    centred = ds.X - ds.X.mean("cell")
    want = _dense(ds.X, X - X.mean(0))
    for op in ("sum", "var", "min", "max"):
        close(getattr(centred.groupby("drug"), op)().values,
              getattr(want.groupby("drug"), op)().values)
    # per cell: each row group's values at zero differ (a task adds up row groups of one)
    by_cell = ds.X - ds.X.mean("gene")
    want = _dense(ds.X, X - X.mean(1, keepdims=True))
    for op in ("mean", "std", "min"):
        close(getattr(by_cell.groupby("drug"), op)().values,
              getattr(want.groupby("drug"), op)().values)
    counts = ds.X.astype("int32").groupby("cell_line").sum().compute()
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(
        counts.values, _dense(ds.X, X.astype(np.int64)).groupby("cell_line").sum().values)


def test_groupby_of_masked_cells_and_selections(ds, ref):
    """Masked cells (``where``) and gene selections give xarray's answer (NaN skipped)."""
    a, X = ref
    drugs = a.obs["drug"].astype(str).values
    masked = ds.X.where(ds.drug != "DMSO_TF")
    Xm = np.where((drugs != "DMSO_TF")[:, None], X, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a group with no value: NaN
        close(masked.groupby("cell_line").mean().values,
              _dense(ds.X, Xm).groupby("cell_line").mean().values)
    genes = list(a.var_names[[5, 1, 5, 40]])
    sub = ds.X.sel(gene=genes)
    close(sub.groupby("drug").max().values,
          _dense(ds.X, X).sel(gene=genes).groupby("drug").max().values)


def test_stacked_reductions_of_other_matrices_are_not_fused(ds, ref):
    """np.stack of reductions that are not disjoint groups of one matrix computes each."""
    _, X = ref
    one = ds.X.data[:10].sum(0)
    two = (ds.X.data * 2)[5:20].sum(0)
    close(np.stack([one, two]).compute(), np.stack([X[:10].sum(0), (X * 2)[5:20].sum(0)]))
    overlapping = np.stack([ds.X.data[:10].mean(0), ds.X.data[5:20].mean(0)])
    close(np.asarray(overlapping), np.stack([X[:10].mean(0), X[5:20].mean(0)]))


def test_pseudobulk_and_groupby_agree(ds):
    pb = scdask.pseudobulk(ds, "drug")
    by = ds.X.groupby("drug")
    np.testing.assert_array_equal(pb.drug.values, by.mean().drug.values)
    close(pb["mean"].values, by.mean().values)
    close(pb["var"].values, by.var(ddof=1).values)


@pytest.mark.parametrize("slices", [1 << 22, 7])
@pytest.mark.parametrize("dense", [True, False])
def test_group_codes_are_pandas_groupby(monkeypatch, slices, dense):
    """pseudobulk's groups from codes (categoricals as their codes, a slice of cells at a
    time) are pandas' ``groupby(sort=True, observed=True, dropna=True)``: same groups, same
    order, same cells."""
    from scdask.compute import groupby as gb

    monkeypatch.setattr(gb, "COUNT_CELLS", slices)
    monkeypatch.setattr(gb, "DENSE_COMBINATIONS", 1 << 26 if dense else 0)
    rng = np.random.default_rng(5)
    n = 101
    cat = pd.Categorical(rng.choice(["z", "a", "m", None], n), categories=["z", "m", "a", "u"])
    num = np.where(rng.random(n) < 0.1, np.nan, rng.integers(0, 4, n).astype(float))
    word = rng.choice(["x", "w"], n).astype(object)
    frame = pd.DataFrame({"cat": cat, "num": num, "word": word})
    for by in (["cat"], ["num"], ["cat", "num", "word"], ["word", "cat"]):
        codes, index = gb._group_codes([c if isinstance(c := frame[k].array, pd.Categorical)
                                        else frame[k].to_numpy() for k in by], by)
        grouped = frame.groupby(by, observed=True, sort=True, dropna=True)
        assert codes.dtype == np.int8
        np.testing.assert_array_equal(codes, grouped.ngroup().fillna(-1).to_numpy())
        want = grouped.size().index.to_frame(index=False)
        for k in by:
            assert list(index[k]) == list(want[k]), (by, k)


@pytest.mark.parametrize("step", [1 << 22, 3])
def test_unused_categories_dropped_as_pandas_drops_them(step):
    from scdask.compute.matrix import _without_unused

    rng = np.random.default_rng(6)
    for cats, values in ((list("dcba"), rng.choice(["a", "c", None], 50)),
                         (list("ab"), rng.choice(["a", "b"], 9)), (list("ab"), [])):
        c = pd.Categorical(values, categories=cats, ordered=bool(len(values) % 2))
        got, want = _without_unused(c, step), c.remove_unused_categories()
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.codes, want.codes)
