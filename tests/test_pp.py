"""``scdask.pp`` against scanpy's own functions on the same data (issue 18)."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import scdask
from scdask.compute import ScdaskArray, as_matrix

sc = pytest.importorskip("scanpy")


@pytest.fixture(scope="module")
def theirs(tiny_plate):
    a = _read(tiny_plate)
    counts = a.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return counts, a


@pytest.fixture(scope="module")
def lognorm(ds):
    return scdask.pp.log1p(scdask.pp.normalize_total(ds, target_sum=1e4))


def _read(path):
    """``read_h5ad``, with X's indptr and indices of one dtype: scanpy 1.12's compiled
    kernels refuse the int64 indptr with int32 indices that anndata writes for large X."""
    a = anndata.read_h5ad(path)
    if sp.issparse(a.X) and a.X.indptr.dtype != a.X.indices.dtype:
        a.X = type(a.X)((a.X.data, a.X.indices.astype(np.int64), a.X.indptr.astype(np.int64)),
                        shape=a.X.shape)
    return a


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


@pytest.mark.parametrize("target_sum", [1e4, None])
def test_normalize_total_and_log1p_are_lazy_and_equal_scanpys(ds, tiny_plate, target_sum):
    ours = scdask.pp.log1p(scdask.pp.normalize_total(ds, target_sum=target_sum))
    assert isinstance(ours.X.data, ScdaskArray)  # an expression: nothing computed
    a = _read(tiny_plate)
    sc.pp.normalize_total(a, target_sum=target_sum)
    sc.pp.log1p(a)
    got = ours.X.isel(cell=slice(0, 700)).values
    np.testing.assert_allclose(got, _dense(a.X[:700]), rtol=1e-6, atol=1e-6)
    # to scanpy and back: zeros a per-cell divisor keeps zero stay implicit
    back = scdask.to_anndata(ours.isel(cell=slice(0, 700)))
    assert sp.issparse(back.X) and back.X.nnz == a.X[:700].nnz
    np.testing.assert_allclose(back.X.toarray(), _dense(a.X[:700]), rtol=1e-6, atol=1e-6)
    assert set(ours.coords) == set(ds.coords)


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.float64])
def test_normalize_total_of_other_dtypes_as_scanpy(tmp_path, dtype):
    """Integer counts become float32 (scanpy's), float64 stays float64: never truncated."""
    X = sp.random(200, 50, density=0.3, format="csr", random_state=3, dtype=np.float64)
    X.data = np.ceil(X.data * 30)
    X = X.astype(dtype)
    anndata.AnnData(X=X).write_h5ad(tmp_path / "a.h5ad")
    scdask.convert(tmp_path / "a.h5ad", tmp_path / "a.zarr", workers=0)
    ours = scdask.pp.normalize_total(scdask.open(tmp_path / "a.zarr"), target_sum=1e4)
    a = anndata.read_h5ad(tmp_path / "a.h5ad")
    sc.pp.normalize_total(a, target_sum=1e4)
    assert ours.X.dtype == a.X.dtype
    np.testing.assert_allclose(ours.X.values, _dense(a.X), rtol=1e-6)


def test_to_anndata_refuses_zeros_made_nonzero(ds):
    shifted = ds.assign(X=ds.X - ds.X.mean("gene"))
    with pytest.raises(ValueError, match="implicit zeros of row group 0 become"):
        scdask.to_anndata(shifted.isel(cell=slice(0, 100)))


@pytest.mark.parametrize("flavor", ["seurat", "cell_ranger"])
@pytest.mark.parametrize("n_top_genes", [None, 150])
def test_highly_variable_genes_selects_scanpys_genes(lognorm, theirs, flavor, n_top_genes):
    _, a = theirs
    want = sc.pp.highly_variable_genes(a.copy(), flavor=flavor, n_top_genes=n_top_genes,
                                       inplace=False)
    got = scdask.pp.highly_variable_genes(lognorm, flavor=flavor, n_top_genes=n_top_genes)
    assert list(got.index) == list(a.var_names)
    # scanpy computes from float32 values, scdask from the stored counts in float64: the
    # statistics agree to float32 precision (dispersions_norm absolutely: it is a difference)
    for col in ("means", "dispersions"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-5, atol=1e-6, err_msg=col)
    np.testing.assert_allclose(got["dispersions_norm"], want["dispersions_norm"], atol=1e-5)
    assert got["highly_variable"].sum() > 10
    np.testing.assert_array_equal(got["highly_variable"], want["highly_variable"])


def test_scale_of_hvgs_equals_scanpys(lognorm, theirs):
    _, a = theirs
    hvg = scdask.pp.highly_variable_genes(lognorm, n_top_genes=100)
    genes = hvg.index[hvg["highly_variable"]]
    ours = scdask.pp.scale(lognorm.sel(gene=genes), max_value=10)
    assert isinstance(ours.X.data, ScdaskArray)
    b = a[:, genes].copy()
    sc.pp.scale(b, max_value=10)
    np.testing.assert_allclose(ours.X.mean("cell").values, b.X.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.X.var("cell").values, b.X.var(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.X.isel(cell=slice(0, 50)).values, b.X[:50],
                               rtol=1e-5, atol=1e-5)


def test_unavailable_options_say_so(lognorm):
    with pytest.raises(NotImplementedError, match="batch_key"):
        scdask.pp.highly_variable_genes(lognorm, batch_key="drug")
    with pytest.raises(ValueError, match="flavor"):
        scdask.pp.highly_variable_genes(lognorm, flavor="pearson")


#: scanpy >= 1.12 aggregates batches' means and variances of float32 counts in float32
#: (sc.get.aggregate) and reports QC means in X's dtype; 1.11 (and scdask) use float64
SCANPY_112 = tuple(int(v) for v in sc.__version__.split(".")[:2]) >= (1, 12)


def _seurat_v3_equal(got, want, batches=False):
    assert list(got.columns) == list(want.columns)
    loose = batches and SCANPY_112  # a gene or two swap at the edge of the selection
    differ = (got["highly_variable"] != want["highly_variable"]).mean()
    assert differ <= (0.01 if loose else 0.0), differ
    # the 1e-6: sums of squares less squared sums cancel, and the order in which
    # row groups' sums add up (not scanpy's) moves the last digits of large variances
    rtol = 3e-3 if loose else 1e-6
    for c in ("means", "variances", "variances_norm"):
        np.testing.assert_allclose(got[c], want[c], rtol=rtol, err_msg=c)
    if not loose:
        np.testing.assert_array_equal(got["highly_variable_rank"],
                                      want["highly_variable_rank"])


@pytest.mark.parametrize("batch_key", [None, "phase"])
@pytest.mark.parametrize("flavor", ["seurat_v3", "seurat_v3_paper"])
def test_seurat_v3_is_scanpys(ds, tiny_plate, batch_key, flavor):
    """scanpy's loess (scikit-misc) on the counts' per-batch means and variances, the
    clipped variances from one pass per batch: the same values, ranks and genes."""
    pytest.importorskip("skmisc")
    a = _read(tiny_plate)
    want = sc.pp.highly_variable_genes(a, flavor=flavor, n_top_genes=200, batch_key=batch_key,
                                       inplace=False)
    got = scdask.pp.highly_variable_genes(ds, flavor=flavor, n_top_genes=200,
                                          batch_key=batch_key)
    _seurat_v3_equal(got, want, batches=batch_key is not None)
    if batch_key:  # (scanpy 1.12's float32 aggregates move genes at a batch's edge)
        differ = (got["highly_variable_nbatches"] != want["highly_variable_nbatches"]).mean()
        assert differ <= (0.01 if SCANPY_112 else 0.0), differ


@pytest.mark.parametrize("path", __import__("tests.conftest", fromlist=["x"]).shared_params())
def test_shared_counts_give_scanpys_highly_variable_genes(path, tmp_path):
    """Every shared file whose X holds counts: normalize_total, log1p, HVG as scanpy."""
    import warnings

    a = _read(path)
    X = a.X
    if X is None or a.n_vars < 30 or a.n_obs < 10:
        pytest.skip("no X large enough to bin")
    values = X.data if sp.issparse(X) else np.asarray(X)
    if values.size == 0 or (values < 0).any() or not np.all(values == np.round(values)):
        pytest.skip("X does not hold counts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdask.convert(path, tmp_path / "s.zarr", workers=0)
    ds = scdask.open(tmp_path / "s.zarr")
    lognorm = scdask.pp.log1p(scdask.pp.normalize_total(ds, target_sum=1e4))
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    for flavor in ("seurat", "cell_ranger"):
        try:
            want = sc.pp.highly_variable_genes(a.copy(), flavor=flavor, inplace=False)
        except ValueError as e:  # e.g. cell_ranger's bins on mostly unexpressed genes
            with pytest.raises(ValueError, match=str(e).split(":")[0]):
                scdask.pp.highly_variable_genes(lognorm, flavor=flavor)
            continue
        got = scdask.pp.highly_variable_genes(lognorm, flavor=flavor)
        np.testing.assert_allclose(got["means"], want["means"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got["highly_variable"], want["highly_variable"])
    # seurat_v3 ranks the counts themselves
    if __import__("importlib").util.find_spec("skmisc") is None or a.n_vars < 50:
        return
    counts = _read(path)
    n_top = a.n_vars // 4
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = sc.pp.highly_variable_genes(counts, flavor="seurat_v3", n_top_genes=n_top,
                                               inplace=False)
    except (ValueError, ZeroDivisionError) as e:  # a loess that cannot be fitted
        pytest.skip(f"scanpy's loess fails here: {e}")
    _seurat_v3_equal(scdask.pp.highly_variable_genes(ds, flavor="seurat_v3", n_top_genes=n_top),
                     want)


def _qc_pair(ds, a, qc_vars, percent_top):
    want = sc.pp.calculate_qc_metrics(a, qc_vars=qc_vars, percent_top=percent_top,
                                      inplace=False)
    got = scdask.pp.calculate_qc_metrics(ds, qc_vars=qc_vars, percent_top=percent_top)
    return got, want


def test_qc_metrics_are_scanpys(ds, tiny_plate, monkeypatch):
    """obs and var metrics equal to scanpy's, columns and dtypes too, from one pass."""
    import pandas as pd

    a = _read(tiny_plate)
    a.var["mt"] = a.var["gene_name"].astype(str).str.startswith("MT-").to_numpy()
    a.var["odd"] = np.arange(a.n_vars) % 2 == 1
    mt = ds.assign_coords(mt=("gene", a.var["mt"].to_numpy()),
                          odd=("gene", a.var["odd"].to_numpy()))
    assert a.var["mt"].sum() > 0
    for percent_top in [(50, 100, 200, 500), (1, 7), None]:
        (go, gv), (wo, wv) = _qc_pair(mt, a, ["mt", "odd"], percent_top)
        pd.testing.assert_frame_equal(go, wo, check_exact=False, rtol=1e-6)
        pd.testing.assert_frame_equal(gv, wv, check_exact=False, rtol=1e-6,
                                      check_dtype=not SCANPY_112)
    with pytest.raises(IndexError, match="outside range"):
        scdask.pp.calculate_qc_metrics(ds, percent_top=[a.n_vars + 1])
    # without percent_top the stored statistics answer: the same as a pass over the entries
    from scdask.pp import qc

    stored = scdask.pp.calculate_qc_metrics(mt, qc_vars=["mt", "odd"], percent_top=None)
    assert qc._stored(as_matrix(mt, "X", caller="t"), None, np.ones((1, a.n_vars), bool))
    monkeypatch.setattr(qc, "_stored", lambda *args: None)
    passed = scdask.pp.calculate_qc_metrics(mt, qc_vars=["mt", "odd"], percent_top=None)
    for got, want in zip(stored, passed, strict=True):
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)
    monkeypatch.undo()
    # a selection: some cells, some genes
    sub = mt.isel(cell=slice(100, 900), gene=slice(0, 600))
    (go, gv), (wo, wv) = _qc_pair(sub, a[100:900, :600].copy(), ["mt"], (5, 50))
    pd.testing.assert_frame_equal(go, wo, check_exact=False, rtol=1e-6)
    pd.testing.assert_frame_equal(gv, wv, check_exact=False, rtol=1e-6,
                                  check_dtype=not SCANPY_112)


@pytest.mark.parametrize("path", __import__("tests.conftest", fromlist=["x"]).shared_params())
def test_shared_files_qc_metrics_are_scanpys(path, tmp_path):
    import warnings

    import pandas as pd

    a = _read(path)
    if a.X is None or a.n_vars < 2 or a.n_obs < 1:
        pytest.skip("no X")
    values = a.X.data if sp.issparse(a.X) else np.asarray(a.X)
    if values.size and (values < 0).any():
        pytest.skip("negative values: QC metrics describe counts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdask.convert(path, tmp_path / "s.zarr", workers=0)
    ds = scdask.open(tmp_path / "s.zarr")
    top = [n for n in (1, 5, 50) if n <= a.n_vars]
    (go, gv), (wo, wv) = _qc_pair(ds, a, [], top)
    pd.testing.assert_frame_equal(go, wo, check_exact=False, rtol=1e-5, check_dtype=False,
                                  check_index_type=False)
    pd.testing.assert_frame_equal(gv, wv, check_exact=False, rtol=1e-5, check_dtype=False,
                                  check_index_type=False)


@settings(max_examples=150, deadline=None)
@given(counts=st.lists(st.one_of(st.integers(1, 4), st.integers(1, 300)), max_size=400),
       others=st.lists(st.floats(0.0625, 1e4, width=32), max_size=100),
       ns=st.lists(st.integers(1, 120), min_size=1, max_size=4, unique=True))
def test_top_sums_are_numpys(counts, others, ns):
    """Each cell's sums of its largest values: counted (whole numbers under 256 in a
    histogram, few others) or selected, both numpy's sums of the sorted values."""
    from scdask.pp import kernels

    x = np.array(counts + others, np.float32)
    np.random.default_rng(len(x)).shuffle(x)
    ns_ = np.sort(np.array(ns, np.int64))
    want = [np.sort(x.astype(np.float64))[::-1][:n].sum() for n in ns_]
    hist = np.zeros(kernels.COUNTED, np.int64)
    got = np.full(len(ns_), np.nan)
    counted = kernels._top_sums_counted(x.copy(), 0, len(x), ns_, hist, got)
    assert counted == (sum(not (v < 256 and v == int(v)) for v in x) <= kernels.OTHERS)
    assert not hist.any()  # left empty for the next cell
    if counted:
        np.testing.assert_allclose(got, want, rtol=1e-12)
    got = np.full(len(ns_), np.nan)
    kernels._top_sums_selected(x.copy(), 0, len(x), ns_, got)
    np.testing.assert_allclose(got, want, rtol=1e-12)
