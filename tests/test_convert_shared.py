"""Every real H5AD file of ../shared converts, and every value equals anndata's reading."""

from __future__ import annotations

import warnings

import anndata
import pytest

import scdask
from scdask.store.reader import Store
from scdask.store.verify import verify
from scdask.testing import assert_store_matches_anndata

from .conftest import shared_params


@pytest.mark.parametrize("path", shared_params())
def test_shared_file_round_trip(path, tmp_path):
    dst = tmp_path / "out.zarr"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # small row groups so files with more than 64 cells have several partitions
        scdask.convert(path, dst, row_group_size=64, chunk_size=1024, workers=0)
    dropped = "\n".join(str(w.message) for w in caught if "not kept" in str(w.message))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = anndata.read_h5ad(path)
    st = Store(dst)
    assert "unreadable" not in dropped  # anndata read every element of uns
    assert_store_matches_anndata(st, adata, dropped)
    report = verify(st, against=path)
    assert report.ok, str(report)
    _check_open(dst, adata)


def _check_open(dst, adata):
    """scdask.open's reductions equal numpy's on the same file (X, layers and raw)."""
    import numpy as np
    import scipy.sparse as sp

    ds = scdask.open(dst)
    matrices = {"X": adata.X, **{k: v for k, v in adata.layers.items() if k is not None}}
    if adata.raw is not None:
        matrices["raw"] = adata.raw.X
    for name, m in matrices.items():
        if m is None:
            assert name not in ds
            continue
        dense = (m.toarray() if sp.issparse(m) else np.asarray(m)).astype(np.float64)
        x = ds[name]
        gene_dim = x.dims[1]
        assert x.shape == dense.shape
        for op in ("sum", "mean", "max"):  # NaN-skipping, as xarray's defaults for floats
            ref = getattr(np, "nan" + op)
            for dim, axis in (("cell", 0), (gene_dim, 1)):
                if dense.shape[1 - axis]:
                    # sums of centred data cancel: compare at the scale of the values summed
                    atol = 1e-9 * float(np.nansum(np.abs(dense), axis=axis).max())
                    np.testing.assert_allclose(getattr(x, op)(dim).values, ref(dense, axis=axis),
                                               rtol=1e-6, atol=atol, equal_nan=True,
                                               err_msg=f"{name} {op}")


@pytest.mark.parametrize("path", shared_params())
def test_elements_decode_as_anndata_does(path):
    """scdask.sources.elements decodes every element it reads itself exactly as anndata does."""
    import h5py
    from anndata.io import read_elem as anndata_read_elem

    from scdask.sources.elements import _READERS, _attr, read_elem
    from scdask.testing import assert_values_equal

    seen = []

    def visit(name, elem):
        key = (isinstance(elem, h5py.Group), _attr(elem, "encoding-type"),
               _attr(elem, "encoding-version"))
        if key in _READERS:
            seen.append(name)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert_values_equal(read_elem(elem), anndata_read_elem(elem), name)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        modern = isinstance(f["obs"], h5py.Group) and f["obs"].attrs.get("encoding-version") == "0.2.0"
    if modern:  # its columns carry encodings: obs's index at least is a string-array
        assert seen, f"{path}: no element decoded by scdask.sources.elements"
