"""``to_anndata(open(convert(file)))`` gives what ``anndata.read_h5ad(file)`` gives (issue 17).

Every element is compared — X, layers, raw (X, var, varm), obs and var (values, dtypes,
categories and their order, index and its name), obsm, varm, obsp, varp, uns — over
every file of the shared corpus (also with anndata's own ``assert_equal``) and on subsets.
"""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdask

from .conftest import shared_params


def _same_matrix(got, want, what: str) -> list[str]:
    if got is None or want is None:
        return [] if got is None and want is None else [f"{what}: {got!r} vs {want!r}"[:200]]
    out = []
    if type(got).__name__ != type(want).__name__:
        out.append(f"{what}: class {type(got).__name__}, read_h5ad {type(want).__name__}")
    if got.dtype != want.dtype:
        out.append(f"{what}: dtype {got.dtype}, read_h5ad {want.dtype}")
    g = got.toarray() if sp.issparse(got) else np.asarray(got)
    w = want.toarray() if sp.issparse(want) else np.asarray(want)
    if g.shape != w.shape or not np.array_equal(g, w, equal_nan=True):
        out.append(f"{what}: values differ")
    return out


def _same_frame(got: pd.DataFrame, want: pd.DataFrame, what: str) -> list[str]:
    try:
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    except AssertionError as e:
        return [f"{what}: {' '.join(str(e).split())[:300]}"]
    return []


def differences(got, want) -> set[str] | list[str]:
    """The elements that differ: a set of names when only whole elements are missing,
    else a list of what differs."""
    out = _same_matrix(got.X, want.X, "X")
    for k in set(got.layers) | set(want.layers):
        out += _same_matrix(got.layers.get(k), want.layers.get(k), f"layers/{k}")
    out += _same_frame(got.obs, want.obs, "obs") + _same_frame(got.var, want.var, "var")
    if (got.raw is None) != (want.raw is None):
        out.append("raw: present in one only")
    elif want.raw is not None:
        out += _same_matrix(got.raw.X, want.raw.X, "raw/X")
        out += _same_frame(got.raw.var, want.raw.var, "raw/var")
    missing: set[str] = set()
    for axis in ("obsm", "varm", "obsp", "varp", "uns"):
        g, w = getattr(got, axis), getattr(want, axis)
        missing |= {f"{axis}/{k}" for k in set(w) - set(g)}
        out += [f"{axis}/{k}: not in the source" for k in set(g) - set(w)]
        if axis == "uns":
            continue
        for k in set(g) & set(w):
            if isinstance(w[k], pd.DataFrame):
                out += _same_frame(g[k], w[k], f"{axis}/{k}")
            else:
                out += _same_matrix(g[k], w[k], f"{axis}/{k}")
    return out or missing


@pytest.mark.parametrize("path", shared_params())
def test_shared_file_comes_back_as_read_h5ad_reads_it(path, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scdask.convert(path, tmp_path / "s.zarr", workers=0)
    not_kept = [str(w.message) for w in caught if "not kept" in str(w.message)]
    assert not not_kept, not_kept  # everything anndata reads is kept
    got = scdask.to_anndata(scdask.open(tmp_path / "s.zarr"))
    want = anndata.read_h5ad(path)
    assert differences(got, want) == set()
    try:  # anndata's own comparison, every element (uns values included)
        from anndata.tests.helpers import assert_equal
    except ImportError:  # pragma: no cover - the helpers ship with anndata
        return
    assert_equal(got, want, exact=False)


def test_subset_keeps_dtypes_and_every_element(tmp_path):
    """A subset of cells and genes: every element subset alike, categories kept."""
    rng = np.random.default_rng(0)
    X = sp.random(300, 40, density=0.3, format="csr", random_state=0, dtype=np.float32)
    X.data = np.ceil(X.data * 9)
    obs = pd.DataFrame({
        "drug": pd.Categorical(rng.choice(["b", "a", "c"], 300), categories=["c", "b", "a"],
                               ordered=True),
        "dose": pd.array(rng.integers(0, 5, 300), dtype="Int64"),
        "ok": pd.array(rng.random(300) > 0.5, dtype="boolean"),
    }, index=pd.Index([f"cell{i}" for i in range(300)], name="barcode"))
    var = pd.DataFrame({"symbol": [f"S{j}" for j in range(40)]},
                       index=[f"g{j}" for j in range(40)])
    graph = sp.random(300, 300, density=0.05, format="csr", random_state=1)
    a = anndata.AnnData(X=X, obs=obs, var=var, layers={"counts": X * 2},
                        obsm={"X_pca": rng.random((300, 5))},
                        varm={"PCs": rng.random((40, 5))}, uns={"note": "hi"},
                        obsp={"distances": graph, "dense": graph.toarray()},
                        varp={"corr": sp.random(40, 40, density=0.2, format="csc",
                                                random_state=2)})
    a.raw = anndata.AnnData(X=X[:, :30] * 3, var=var.iloc[:30])
    a.write_h5ad(tmp_path / "a.h5ad")
    scdask.convert(tmp_path / "a.h5ad", tmp_path / "a.zarr", row_group_size=64, workers=0)
    ds = scdask.open(tmp_path / "a.zarr")
    cells = np.sort(rng.choice(300, 90, replace=False))
    genes = ["g3", "g17", "g5"]
    got = scdask.to_anndata(ds.isel(cell=cells).sel(gene=genes))
    want = anndata.read_h5ad(tmp_path / "a.h5ad")[cells, genes].copy()
    assert differences(got, want) == set()
    assert list(got.obs["drug"].cat.categories) == ["c", "b", "a"] and got.obs["drug"].cat.ordered
    assert got.obs.index.name == "barcode"
    assert isinstance(got.X, sp.csr_matrix)
    # statistics only when asked, over the selection
    assert "cell_sum" not in got.obs and "gene_sum" not in got.var
    s = scdask.to_anndata(ds.isel(cell=cells).sel(gene=genes), stats=True)
    np.testing.assert_allclose(s.obs["cell_sum"], np.asarray(want.X.sum(1)).ravel())
    np.testing.assert_array_equal(s.var["gene_nnz"], np.asarray((want.X != 0).sum(0)).ravel())
    # one matrix, as X
    counts = scdask.to_anndata(ds.counts.isel(cell=cells))
    np.testing.assert_array_equal(counts.X.toarray(), (X * 2)[cells].toarray())
    # another matrix as X: X becomes a layer
    swapped = scdask.to_anndata(ds.isel(cell=cells), var="counts")
    np.testing.assert_array_equal(swapped.layers["X"].toarray(), X[cells].toarray())


@pytest.mark.parametrize("bad", [-1, 300, 10**6])
def test_damaged_pairwise_index_is_an_error(tmp_path, bad):
    """An obsp whose stored index leaves the matrix is refused, never handed to scipy."""
    import zarr

    from scdask.format import FormatError

    X = sp.random(300, 10, density=0.3, format="csr", random_state=0, dtype=np.float32)
    g = sp.random(300, 300, density=0.05, format="csr", random_state=1)
    anndata.AnnData(X=X, obsp={"distances": g}).write_h5ad(tmp_path / "a.h5ad")
    with h5py_file(tmp_path / "a.h5ad") as f:
        idx = f["obsp/distances/indices"][:].astype(np.int64)
        idx[3] = bad
        del f["obsp/distances/indices"]
        f["obsp/distances"].create_dataset("indices", data=idx)
    with pytest.raises(FormatError, match=r"a\.h5ad: obsp/distances: indices\[0:\d+\] hold"):
        scdask.convert(tmp_path / "a.h5ad", tmp_path / "a.zarr", workers=0)
    # written damaged by hand (as if the store were altered): refused on reading
    anndata.AnnData(X=X, obsp={"distances": g}).write_h5ad(tmp_path / "b.h5ad")
    scdask.convert(tmp_path / "b.h5ad", tmp_path / "b.zarr", workers=0)
    from scdask.format.codecs import implementations

    with implementations():
        z = zarr.open_array(tmp_path / "b.zarr" / "obsp/distances/indices", mode="r+")
        z[3] = 299 if bad != -1 else 0
        z[4] = bad if bad >= 0 else 10**5
    ds = scdask.open(tmp_path / "b.zarr")
    with pytest.raises(FormatError, match=r"obsp/distances"):
        scdask.to_anndata(ds.isel(cell=slice(0, 100)))


def h5py_file(path):
    import h5py

    return h5py.File(path, "a")


@pytest.mark.parametrize("cats,ordered", [
    ([["a", "b"], ["b", "c"]], False),
    ([["c10", "c2"], ["c2", "c3"]], False),  # natural order: c2, c3, c10
    ([["b", "a"], ["b", "a"]], False),  # alike: kept
    ([["a"], ["b", "a"]], False),  # the first has not all: natural order
    ([["b", "a"], ["a"]], False),  # the first has all: its order
    ([["b", "a"], ["b", "a"]], True),  # alike and ordered: kept
    ([["b", "a"], ["a", "b"]], True),  # ordered, unlike: anndata gives objects
])
def test_several_plates_unite_categories(tmp_path, cats, ordered):
    """Several stores' categoricals come out as ``anndata.concat`` unites them, from
    ``to_anndata`` and as the Dataset's coordinate."""
    paths = []
    for i, c in enumerate(cats):
        X = sp.random(50, 10, density=0.3, format="csr", random_state=i, dtype=np.float32)
        drug = pd.Categorical([c[k % len(c)] for k in range(50)], categories=c, ordered=ordered)
        obs = pd.DataFrame({"drug": drug}, index=[f"p{i}c{k}" for k in range(50)])
        anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(10)])
                        ).write_h5ad(tmp_path / f"{i}.h5ad")
        scdask.convert(tmp_path / f"{i}.h5ad", tmp_path / f"{i}.zarr", workers=0)
        paths.append(tmp_path / f"{i}.zarr")
    ds = scdask.open(paths)
    got = scdask.to_anndata(ds)
    want = anndata.concat([anndata.read_h5ad(tmp_path / f"{i}.h5ad") for i in range(2)])
    assert got.obs["drug"].dtype == want.obs["drug"].dtype
    if isinstance(want.obs["drug"].dtype, pd.CategoricalDtype):
        assert ds.drug.dtype == want.obs["drug"].dtype
        assert list(ds.drug.data.categories) == list(want.obs["drug"].cat.categories)
    else:
        assert ds.drug.dtype == object
    pd.testing.assert_series_equal(got.obs["drug"], want.obs["drug"])
    np.testing.assert_array_equal(ds.drug.values.astype(str), want.obs["drug"].astype(str))
    np.testing.assert_array_equal(got.X.toarray(), want.X.toarray())


def test_scanpy_preprocessing_runs_on_the_result(tiny_store):
    """The installed scanpy's normalize_total, log1p, highly_variable_genes and pca take it."""
    sc = pytest.importorskip("scanpy")
    ds = scdask.open(tiny_store)
    a = scdask.to_anndata(ds.isel(cell=slice(0, 2000)))
    ref = a.copy()
    sc.pp.calculate_qc_metrics(a, inplace=True)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=100)
    sc.pp.pca(a, n_comps=10)
    assert a.obsm["X_pca"].shape == (2000, 10) and a.var["highly_variable"].sum() == 100
    np.testing.assert_allclose(a.obs["total_counts"], np.asarray(ref.X.sum(1)).ravel(),
                               rtol=1e-6)


def test_pseudobulk_as_anndata_matches_scanpy_aggregate(ds, ref):
    """Integer counts in X (what pydeseq2 takes), scanpy's layers, the groups as obs."""
    sc = pytest.importorskip("scanpy")
    a, _ = ref
    pb = scdask.to_anndata(scdask.pseudobulk(ds, ["drug", "cell_line"]))
    assert pb.X.dtype == np.int64
    # scanpy 1.12's compiled aggregation refuses int64 indptr with int32 indices
    X = a.X
    a.X = sp.csr_matrix((X.data, X.indices.astype(np.int64), X.indptr.astype(np.int64)),
                        shape=X.shape)
    theirs = sc.get.aggregate(a, by=["drug", "cell_line"], func=["sum", "mean", "var"])
    assert set(pb.obs_names) == set(theirs.obs_names)
    theirs = theirs[pb.obs_names]
    np.testing.assert_array_equal(pb.X, np.asarray(theirs.layers["sum"]))
    for f in ("sum", "mean", "var"):
        np.testing.assert_allclose(pb.layers[f], np.asarray(theirs.layers[f]), rtol=1e-9)
    np.testing.assert_array_equal(pb.obs["drug"].astype(str), theirs.obs["drug"].astype(str))
    assert isinstance(pb.obs["cell_line"].dtype, pd.CategoricalDtype)
    assert list(pb.var_names) == list(a.var_names)


def test_elements_in_anndatas_encoding_are_checked(tmp_path):
    """uns tables and table obsm go to elements.h5 (anndata's writer); damage is named."""
    from scdask.format import FormatError

    X = sp.random(40, 6, density=0.3, format="csr", random_state=0, dtype=np.float32)
    a = anndata.AnnData(X=X, uns={"table": pd.DataFrame({"x": [1, 2]}), "n": 3},
                        obsm={"meta": pd.DataFrame({"y": np.arange(40)},
                                                   index=[str(i) for i in range(40)])})
    a.obs_names = [str(i) for i in range(40)]
    a.write_h5ad(tmp_path / "a.h5ad")
    scdask.convert(tmp_path / "a.h5ad", tmp_path / "a.zarr", workers=0)
    got = scdask.to_anndata(scdask.open(tmp_path / "a.zarr").isel(cell=[3, 5, 7]))
    pd.testing.assert_frame_equal(got.uns["table"], a.uns["table"])
    pd.testing.assert_frame_equal(got.obsm["meta"], a.obsm["meta"].iloc[[3, 5, 7]])
    path = tmp_path / "a.zarr" / "elements.h5"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match=r"elements\.h5 is damaged"):
        scdask.to_anndata(scdask.open(tmp_path / "a.zarr"))


@pytest.mark.parametrize("path", shared_params())
def test_dataset_view_reaches_every_obs_and_var_column(path, tmp_path):
    """Every obs and var column is a coordinate; a var column named like an obs column
    is ``var_<name>`` (xarray's coordinates share one namespace)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdask.convert(path, tmp_path / "s.zarr", workers=0)
        want = anndata.read_h5ad(path)
    ds = scdask.open(tmp_path / "s.zarr")
    for col in want.obs.columns:
        assert ds[col].dims == ("cell",), col
        np.testing.assert_array_equal(_shown(ds[col].values), _shown(want.obs[col]))
    for col in want.var.columns:
        name = f"var_{col}" if col in want.obs.columns else col
        assert ds[name].dims == ("gene",), col
        np.testing.assert_array_equal(_shown(ds[name].values), _shown(want.var[col]))


def _shown(values) -> np.ndarray:
    """Values as text, every kind of missing (None, NaN, pd.NA) alike, numbers as floats
    (nullable integers are float coordinates, NaN where missing)."""
    s = pd.Series(np.asarray(values, dtype=object))
    text = [str(float(v)) if isinstance(v, int | float | np.number) else str(v) for v in s]
    return np.where(s.isna(), "<NA>", np.asarray(text, dtype=object))


def test_obs_and_var_frames_of_a_selection(tmp_path):
    """``ds.scdask.obs`` / ``.var``: the source's frames, dtypes kept, for the selection."""
    X = sp.random(30, 8, density=0.4, format="csr", random_state=0, dtype=np.float32)
    obs = pd.DataFrame({"drug": pd.Categorical(["a", "b", "c"] * 10, categories=["c", "a", "b"]),
                        "dose": pd.array([1, None, 3] * 10, dtype="Int64")},
                       index=pd.Index([f"c{i}" for i in range(30)], name="barcode"))
    var = pd.DataFrame({"n_counts": np.arange(8)}, index=[f"g{j}" for j in range(8)])
    obs["n_counts"] = np.arange(30.0)
    anndata.AnnData(X=X, obs=obs, var=var).write_h5ad(tmp_path / "a.h5ad")
    scdask.convert(tmp_path / "a.h5ad", tmp_path / "a.zarr", workers=0)
    ds = scdask.open(tmp_path / "a.zarr")
    sub = ds.isel(cell=[1, 4, 29]).sel(gene=["g2", "g5"])
    pd.testing.assert_frame_equal(sub.scdask.obs, obs.iloc[[1, 4, 29]])
    pd.testing.assert_frame_equal(sub.scdask.var, var.iloc[[2, 5]])
    assert sub.scdask.to_anndata().shape == (3, 2)
    # the coordinates: obs keeps its name, var's is var_<name>
    np.testing.assert_array_equal(ds.n_counts.values, obs["n_counts"].to_numpy())
    np.testing.assert_array_equal(ds.var_n_counts.values, var["n_counts"].to_numpy())


def test_generated_plate_comes_back_whole(tiny_plate, tiny_store):
    """A generated Tahoe-like plate (gzip CSR counts, categorical obs) through the public path."""
    got = scdask.to_anndata(scdask.open(tiny_store))
    want = anndata.read_h5ad(tiny_plate)
    assert differences(got, want) == set()
    from anndata.tests.helpers import assert_equal

    assert_equal(got, want, exact=False)
