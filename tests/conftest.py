from __future__ import annotations

import glob
import os
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_H5AD = os.environ.get(
    "SCDASK_SHARED_H5AD", os.path.join(os.path.dirname(REPO), "shared", "data", "h5ad")
)
SHARED_FILES = sorted(glob.glob(os.path.join(SHARED_H5AD, "*.h5ad")))


#: Whether this run has Dask's array query planning (array-expr) on.
QUERY_PLANNING = bool(__import__("dask").config.get("array.query-planning", None))

#: Tests of Dask's own generic array path (not scdask's engine), which Dask's query-planned
#: arrays do not support yet (no reshape, __array__, __array_function__; reordering takes fail).
generic_dask = pytest.mark.skipif(
    QUERY_PLANNING, reason="Dask's generic array path under array query planning (dask-expr "
    "arrays lack reshape, __array__, __array_function__, and reordering takes fail): not "
    "scdask's engine")


def shared_params():
    if not SHARED_FILES:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"real H5AD corpus not found at {SHARED_H5AD} (clone with ../shared beside it)"))]
    return [pytest.param(p, id=os.path.basename(p).replace(".h5ad", "")) for p in SHARED_FILES]


@pytest.fixture(scope="session")
def tiny_plate(tmp_path_factory):
    """A 3,000-cell synthetic plate (1,000 genes), gzip-compressed like the real ones."""
    from scdask.datasets import synth

    path = tmp_path_factory.mktemp("plate") / "plate.h5ad"
    return synth(path, 3000, n_genes=1000, n_drugs=8, n_cell_lines=5, seed=1)


@pytest.fixture(scope="session")
def tiny_store(tiny_plate, tmp_path_factory):
    import scdask

    dst = tmp_path_factory.mktemp("store") / "plate.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdask.convert(tiny_plate, dst, row_group_size=1024, chunk_size=4096, workers=0)
    return str(dst)


@pytest.fixture(scope="module")
def ref(tiny_plate):
    """The tiny plate read by anndata, and its X as a dense float64 array."""
    import anndata
    import numpy as np

    a = anndata.read_h5ad(tiny_plate)
    return a, a.X.toarray().astype(np.float64)


@pytest.fixture(scope="module")
def ds(tiny_store):
    import scdask

    return scdask.open(tiny_store)


def close(got, want, rtol=1e-9):
    """``got`` equals ``want`` to ``rtol`` (NaN where NaN), as float64."""
    import numpy as np

    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=1e-12,
                               equal_nan=True)

