"""Every real H5AD file of ../shared converts, and every value equals anndata's reading."""

from __future__ import annotations

import warnings

import anndata
import pytest

import scdask
from scdask.store import Store
from scdask.testing import assert_store_matches_anndata
from scdask.verify import verify

from .conftest import shared_params


@pytest.mark.parametrize("path", shared_params())
def test_shared_file_round_trip(path, tmp_path):
    dst = tmp_path / "out.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # small row groups so files with more than 64 cells have several partitions
        scdask.convert(path, dst, row_group_size=64, chunk_size=1024, workers=0)
        adata = anndata.read_h5ad(path)
    st = Store(dst)
    assert_store_matches_anndata(st, adata)
    report = verify(st, against=path)
    assert report.ok, str(report)
