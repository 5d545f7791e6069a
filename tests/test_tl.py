"""``scdask.tl.rank_genes_groups`` against scanpy's on the same data (issue 18)."""

from __future__ import annotations

import importlib
import warnings

import dask
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdask
from tests.conftest import generic_dask, shared_params
from tests.test_pp import _read

sc = pytest.importorskip("scanpy")

COLUMNS = ["scores", "logfoldchanges", "pvals", "pvals_adj", "pct_nz_group", "pct_nz_reference"]


@pytest.fixture(scope="module")
def theirs(tiny_plate):
    a = _read(tiny_plate)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    for c in ("drug", "cell_line"):
        a.obs[c] = a.obs[c].astype(str)
    return a


@pytest.fixture(scope="module")
def lognorm(ds):
    return scdask.pp.log1p(scdask.pp.normalize_total(ds, target_sum=1e4))


def _scanpy(a, groupby, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(a, groupby, use_raw=False, **kw)
    return sc.get.rank_genes_groups_df(a, group=None)


def _compare(got: pd.DataFrame, want: pd.DataFrame, rtol: float) -> None:
    """Equal per (group, gene) — the order of genes with tied scores is not defined."""
    keys = ["group", "names"] if "group" in want else ["names"]
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    both = got.merge(want, on=keys, suffixes=("", "_sc"))
    assert len(both) == len(want)
    for c in [c for c in COLUMNS if c in want]:
        np.testing.assert_allclose(both[c].to_numpy(np.float64), both[f"{c}_sc"].to_numpy(
            np.float64), rtol=rtol, atol=rtol * 1e-3, err_msg=c)
    for key, g in got.groupby(keys[:-1] or (lambda _: 0), observed=True):
        assert (np.diff(g["scores"].to_numpy()) <= 0).all(), key  # best first


@pytest.mark.parametrize("reference", ["rest", "CVCL_1001"])
@pytest.mark.parametrize("tie_correct", [False, True])
def test_wilcoxon_is_scanpys_exactly(lognorm, theirs, reference, tie_correct):
    """Exact rank sums from the stored entries: scanpy's scores and p-values to the last bit
    (normalize_total computes as scanpy does, so the values and their ties are the same)."""
    lines = sorted(theirs.obs["cell_line"].unique())
    if reference != "rest":
        assert reference in lines
    kw = dict(groups=lines[:3], reference=reference, method="wilcoxon", pts=True,
              tie_correct=tie_correct)
    got = scdask.tl.rank_genes_groups(lognorm, "cell_line", **kw)
    _compare(got, _scanpy(theirs, "cell_line", **kw), rtol=1e-12)


@pytest.mark.parametrize("method", ["wilcoxon", "t-test"])
def test_every_drug_against_control_with_scanpys_options(lognorm, theirs, method):
    """Every drug against the control, the best 20 genes by absolute score, Bonferroni's
    correction, the fractions of cells: scanpy's table (the control's fractions are not
    scanpy's columns against a reference group)."""
    kw = dict(method=method, reference="DMSO_TF", n_genes=20, rankby_abs=True,
              corr_method="bonferroni", pts=True)
    got = scdask.tl.rank_genes_groups(lognorm, "drug", **kw)
    want = _scanpy(theirs, "drug", **kw)
    assert list(got.columns) == list(want.columns)
    assert got["group"].dtype == want["group"].dtype
    assert got.groupby("group", observed=True).size().eq(20).all()
    for _, g in got.groupby("group", observed=True):
        assert (np.diff(np.abs(g["scores"].to_numpy())) <= 0).all()
    both = got.merge(want, on=["group", "names"])
    assert len(both) > 0.95 * len(want)  # the same top genes (ties at the edge may differ)
    # t-tests: scanpy squares float32 values in float32 (see below), which small p-values
    # amplify
    rtol = {"wilcoxon": 1e-12, "t-test": 1e-4}[method]
    for c in ("scores", "pvals", "pvals_adj", "pct_nz_group"):
        r = rtol if c in ("scores", "pct_nz_group") or method == "wilcoxon" else 2e-3
        np.testing.assert_allclose(both[f"{c}_x"], both[f"{c}_y"], rtol=r, err_msg=c)


@pytest.mark.parametrize("method", ["t-test", "t-test_overestim_var"])
def test_t_tests_equal_scanpys(ds, lognorm, theirs, tiny_plate, method):
    # counts: exact; log-normalized float32 values: scanpy squares them in float32 before
    # summing (its sparse mean_var), scdask in float64, so scores agree to ~1e-5
    counts = _read(tiny_plate)
    counts.obs["drug"] = counts.obs["drug"].astype(str)
    got = scdask.tl.rank_genes_groups(ds, "drug", method=method, pts=True)
    _compare(got, _scanpy(counts, "drug", method=method, pts=True), rtol=1e-9)
    kw = dict(method=method, reference="DMSO_TF", n_genes=50)
    got = scdask.tl.rank_genes_groups(lognorm, "drug", **kw)
    want = _scanpy(theirs, "drug", **kw)
    assert got.groupby("group", observed=True).size().eq(50).all()
    both = got.merge(want, on=["group", "names"])
    assert len(both) > 0.95 * len(want)  # the same top genes (ties at the edge may differ)
    np.testing.assert_allclose(both["scores_x"], both["scores_y"], rtol=1e-4)
    np.testing.assert_allclose(both["logfoldchanges_x"], both["logfoldchanges_y"], rtol=1e-6)


def test_wrong_requests_say_so(lognorm):
    with pytest.raises(ValueError, match="reference = nope"):
        scdask.tl.rank_genes_groups(lognorm, "drug", reference="nope")
    with pytest.raises(ValueError, match="logreg"):
        scdask.tl.rank_genes_groups(lognorm, "drug", method="logreg")
    with pytest.raises(ValueError, match="Specify a sequence"):
        scdask.tl.rank_genes_groups(lognorm, "drug", groups="DMSO_TF")
    drugs = lognorm.drug.values
    a, b = np.flatnonzero(drugs == drugs[0])[:1], np.flatnonzero(drugs != drugs[0])[:2]
    one = lognorm.isel(cell=np.sort(np.concatenate([a, b])))
    with pytest.raises(ValueError, match="only contain one sample"):
        scdask.tl.rank_genes_groups(one, "drug")
    centred = scdask.pp.scale(lognorm.isel(gene=slice(0, 20)))
    with pytest.raises(ValueError, match="not zeros"):
        scdask.tl.rank_genes_groups(centred, "drug", method="wilcoxon")


def _categorical(a) -> str | None:
    for c in a.obs.columns:
        s = a.obs[c]
        if isinstance(s.dtype, pd.CategoricalDtype) and 2 <= len(s.cat.categories) <= 30:
            counts = s.value_counts()
            if (counts[counts > 0] >= 2).all() and (counts > 0).sum() >= 2:
                return c
    return None


@pytest.mark.parametrize("path", shared_params())
def test_shared_files_rank_as_scanpy(path, tmp_path):
    """Every shared file with X and a categorical obs column: counts log-normalized first
    (other values as stored, negative ones too), Wilcoxon exactly as scanpy, t-test to
    float32's precision."""
    a = _read(path)
    X = a.X
    if X is None or a.n_obs < 10:
        pytest.skip("no X")
    values = X.data if sp.issparse(X) else np.asarray(X)
    col = _categorical(a)
    if col is None:
        pytest.skip("no categorical obs column with groups of two cells or more")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdask.convert(path, tmp_path / "s.zarr", workers=0)
    ds = scdask.open(tmp_path / "s.zarr")
    if values.size and (values >= 0).all() and np.all(values == np.round(values)):
        ds = scdask.pp.log1p(scdask.pp.normalize_total(ds, target_sum=1e4))
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
    a.obs[col] = a.obs[col].cat.remove_unused_categories()
    got = scdask.tl.rank_genes_groups(ds, col, method="wilcoxon", use_raw=False)
    _compare(got, _scanpy(a, col, method="wilcoxon"), rtol=1e-12)
    got = scdask.tl.rank_genes_groups(ds, col, method="t-test", use_raw=False)
    want = _scanpy(a, col, method="t-test")
    both = got.merge(want, on=[k for k in ("group", "names") if k in want])
    # scanpy's variance of a constant gene in a group (scaled data) can cancel to a tiny
    # negative number: its t is NaN, reported as score 0, p-value 1; scdask's is 0
    nan_there = (both["scores_y"] == 0) & (both["pvals_y"] == 1)
    np.testing.assert_allclose(both["pvals_x"][~nan_there], both["pvals_y"][~nan_there],
                               rtol=1e-3, atol=1e-12)


@pytest.mark.parametrize("method", ["wilcoxon", "t-test"])
def test_every_drug_against_control_within_each_cell_line(lognorm, theirs, method):
    """One pass for every (drug, cell line) against the cell line's control: each stratum
    equal to scanpy run on that cell line alone."""
    got = scdask.tl.rank_genes_groups(lognorm, "drug", reference="DMSO_TF", within="cell_line",
                                      method=method, tie_correct=True)
    assert list(got.columns[:3]) == ["group", "cell_line", "names"]
    checked = 0
    for line in sorted(theirs.obs["cell_line"].unique())[:2]:
        sub = theirs[theirs.obs["cell_line"] == line].copy()
        counts = sub.obs["drug"].value_counts()
        if counts.get("DMSO_TF", 0) < 2:
            continue
        drugs = sorted(d for d, c in counts.items() if c >= 2 and d != "DMSO_TF")[:5]
        want = _scanpy(sub, "drug", groups=drugs, reference="DMSO_TF", method=method,
                       tie_correct=True)
        mine = got[(got["cell_line"] == line) & got["group"].isin(drugs)].drop(
            columns="cell_line")
        mine = mine.assign(group=mine["group"].astype(str))
        want = want.assign(group=want["group"].astype(str))
        both = mine.merge(want, on=["group", "names"], suffixes=("", "_sc"))
        assert len(both) == len(want) == len(mine)
        rtol = 1e-12 if method == "wilcoxon" else 1e-3  # scanpy squares float32 in float32
        np.testing.assert_allclose(both["scores"], both["scores_sc"], rtol=rtol, atol=1e-6)
        np.testing.assert_allclose(both["pvals"], both["pvals_sc"], rtol=max(rtol, 1e-9) * 10,
                                   atol=1e-12)
        checked += 1
    assert checked


@pytest.mark.parametrize("products", ["sparse", "dense tiles", "dense tiles, every entry scanned"])
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("zero_center", [True, False])
def test_pca_is_scanpys(lognorm, theirs, scaled, zero_center, products, monkeypatch):
    """Explained variance to 1e-4 relative, each of the first 20 score vectors correlated
    with scanpy's at |r| >= 0.9999, the same loadings (up to sign); never densified. Both
    ways to the products: scipy's sparse ones, and BLAS on dense tiles of a few cells (in
    each gene's cells in order, or scanning every entry for each tile)."""
    pca_mod = importlib.import_module("scdask.tl.pca")
    monkeypatch.setattr(pca_mod, "SPARSE_COST", 0 if products == "sparse" else 1e9)
    monkeypatch.setattr(pca_mod, "TILE_CELLS", 97)  # tiles end inside row groups
    hv = scdask.pp.highly_variable_genes(lognorm, n_top_genes=300)
    genes = list(hv.index[hv["highly_variable"]])
    if "scanned" in products:
        monkeypatch.setattr(pca_mod.kernels, "cells_ascending", lambda *a: False)
    ours = lognorm.sel(gene=genes).isel(cell=slice(0, 2500))
    b = theirs[:2500, genes].copy()
    if scaled:
        ours = scdask.pp.scale(ours, max_value=10)
        sc.pp.scale(b, max_value=10)
    got = scdask.tl.pca(ours, n_comps=30, zero_center=zero_center)
    assert dask.is_dask_collection(got.X_pca.data)  # lazy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.pca(b, n_comps=30, zero_center=zero_center, svd_solver="arpack")
    np.testing.assert_allclose(got["variance"], b.uns["pca"]["variance"], rtol=1e-4)
    np.testing.assert_allclose(got["variance_ratio"], b.uns["pca"]["variance_ratio"], rtol=1e-4)
    X = got["X_pca"].values
    assert X.dtype == np.float32 and X.shape == (2500, 30)
    for i in range(20):
        assert abs(np.corrcoef(X[:, i], b.obsm["X_pca"][:, i])[0, 1]) >= 0.9999, i
        assert abs(got["PCs"].values[:, i] @ b.varm["PCs"][:, i]) >= 0.9999, i
    assert list(got.gene.values) == genes


def test_pca_refusals(lognorm):
    with pytest.raises(ValueError, match="n_comps"):
        scdask.tl.pca(lognorm.isel(gene=slice(0, 10)), n_comps=20)
    masked = lognorm.isel(gene=slice(0, 10))
    masked = masked.assign(X=masked.X - masked.X.mean("gene"))  # a per-cell value at zero
    with pytest.raises(ValueError, match="differ from cell to cell"):
        scdask.tl.pca(masked, n_comps=3)


@generic_dask
def test_reordered_cells_are_refused_saying_why(lognorm):
    """Reordered cells leave the engine (a generic Dask array): the refusal says so."""
    shuffled = lognorm.isel(gene=slice(0, 10), cell=[3, 1, 2])
    with pytest.raises(TypeError, match="increasing order"):
        scdask.tl.pca(shuffled, n_comps=2)


def test_analysis_on_a_cluster_of_processes(lognorm, ds):
    """QC, HVG, Wilcoxon and PCA on a local cluster of worker processes: the same answers
    as on the threaded scheduler (tasks carry the matrix's description, not its values)."""
    distributed = pytest.importorskip("distributed")
    small = lognorm.isel(gene=slice(0, 300))
    counts = ds.isel(gene=slice(0, 300))
    lines = sorted(set(np.asarray(ds.cell_line.values).astype(str)))

    def run():
        qc, _ = scdask.pp.calculate_qc_metrics(counts, percent_top=(5, 50))
        de = scdask.tl.rank_genes_groups(small, "cell_line", groups=lines[:3],
                                         reference=lines[0], method="wilcoxon")
        pcs = scdask.tl.pca(small, n_comps=5)
        return qc, de, pcs.variance.values, np.abs(pcs.X_pca.values)

    with dask.config.set(scheduler="threads"):
        want = run()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster):
        got = run()
    pd.testing.assert_frame_equal(got[0], want[0])
    pd.testing.assert_frame_equal(got[1], want[1])
    # the covariance adds float32 tiles in BLAS, whose order of addition follows its
    # threads (a worker process has one): equal to float32's rounding, not to the bit
    np.testing.assert_allclose(got[2], want[2], rtol=1e-7)
    np.testing.assert_allclose(got[3], want[3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("step", [1 << 22, 3])
def test_labels_of_groups_and_strata(step):
    from scdask.tl.rank import _labels

    rng = np.random.default_rng(8)
    codes, strata = rng.integers(-1, 4, 50), rng.integers(-1, 3, 50)
    labels, n_cells = _labels(codes.astype(np.int8), strata.astype(np.int16), 4, 3, step)
    want = np.where(strata < 0, -1, np.where(codes < 0, 4, codes) * 3 + strata)
    assert labels.dtype == np.int8
    np.testing.assert_array_equal(labels, want)
    np.testing.assert_array_equal(n_cells, np.bincount(want[want >= 0], minlength=15))
