"""A CSC source is read once, by column ranges bucketed by row group (conversion.spill).

Each test checks the finished store against anndata, and the one-pass claim by counting
what the source is asked for.
"""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scdask
from scdask.conversion import spill, steps
from scdask.format import FormatError, LossyDtypeError
from scdask.sources.h5ad import H5ADSource
from scdask.store.reader import IncompleteStoreError, Store
from scdask.testing import assert_store_matches_anndata

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _csc_h5ad(path, n=1000, m=120, density=0.1, seed=0, dtype=np.float32, layers=False):
    X = sp.random(n, m, density=density, format="csr", random_state=seed, dtype=np.float64)
    X.data = np.ceil(X.data * 20)
    X = X.astype(dtype)
    extra = {"counts": X.tocsc() * 3} if layers else {}
    adata = anndata.AnnData(
        X=X.tocsc(), layers=extra,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(m)]),
    )
    adata.write_h5ad(path, compression="gzip")
    return adata


@pytest.fixture
def small_ranges(monkeypatch):
    """Ranges of about 700 entries: a 1000 × 120 matrix at 10% is ~17 ranges."""
    monkeypatch.setattr(spill, "ENTRIES", 700)


def _count_reads(monkeypatch):
    seen = {"columns": [], "rows": 0}
    read_columns, read_rows = H5ADSource.read_columns, H5ADSource.read_rows

    def columns(self, name, start, stop, *a, **k):
        seen["columns"].append((name, start, stop))
        return read_columns(self, name, start, stop, *a, **k)

    def rows(self, name, *a, **k):
        if self._matrices[name].format == "csc":
            seen["rows"] += 1
        return read_rows(self, name, *a, **k)

    monkeypatch.setattr(H5ADSource, "read_columns", columns)
    monkeypatch.setattr(H5ADSource, "read_rows", rows)
    return seen


def test_each_column_is_read_once(tmp_path, monkeypatch, small_ranges):
    adata = _csc_h5ad(tmp_path / "in.h5ad", layers=True)
    seen = _count_reads(monkeypatch)
    scdask.convert(tmp_path / "in.h5ad", tmp_path / "o.zarr", row_group_size=64, workers=0)
    assert seen["rows"] == 0  # never by rows: that would scan every entry per row group
    for name in ("X", "layers/counts"):
        spans = sorted((a, b) for n, a, b in seen["columns"] if n == name)
        assert len(spans) > 10  # several ranges
        assert spans[0][0] == 0 and spans[-1][1] == 120
        assert all(b0 == a1 for (_, b0), (a1, _) in zip(spans, spans[1:], strict=False))
    st = Store(tmp_path / "o.zarr")
    assert st.n_groups == 16
    assert_store_matches_anndata(st, adata)
    assert not (tmp_path / "o.zarr" / "wip").exists()  # the scratch files are gone


def test_worker_processes(tmp_path):
    adata = _csc_h5ad(tmp_path / "in.h5ad", n=3000, m=50, seed=3)
    scdask.convert(tmp_path / "in.h5ad", tmp_path / "o.zarr", row_group_size=256, workers=2)
    assert_store_matches_anndata(Store(tmp_path / "o.zarr"), adata)


def test_column_ranges_cover_every_column_within_the_limit():
    rng = np.random.default_rng(0)
    per_col = rng.integers(0, 50, 300)
    per_col[17] = 500  # a column larger than a range is a range alone
    offsets = np.concatenate([[0], np.cumsum(per_col)])
    bounds = spill.column_ranges(offsets, entries=100)
    assert bounds[0] == 0 and bounds[-1] == 300 and np.all(np.diff(bounds) >= 1)
    sizes = np.diff(offsets[bounds])
    assert np.all((sizes <= 100) | (np.diff(bounds) == 1))
    assert list(spill.column_ranges(np.zeros(1, np.int64))) == [0]  # no columns
    # never more than MAX_RANGES ranges, however large the matrix
    huge = np.arange(0, 10**7 + 1, 10**4)
    assert len(spill.column_ranges(huge, entries=1)) - 1 <= spill.MAX_RANGES


def test_hpc_steps(tmp_path, small_ranges):
    """convert-init finishes the column pass, so partitions can run anywhere, in any order."""
    adata = _csc_h5ad(tmp_path / "in.h5ad")
    dst = tmp_path / "o.zarr"
    plan = steps.convert_init(tmp_path / "in.h5ad", dst, row_group_size=100)
    for p in reversed(range(plan.n_groups)):
        steps.convert_partition(dst, p)
    steps.convert_finalise(dst)
    assert_store_matches_anndata(Store(dst), adata)


def test_partition_before_the_column_pass_is_refused(tmp_path, small_ranges):
    _csc_h5ad(tmp_path / "in.h5ad")
    dst = tmp_path / "o.zarr"
    steps.init_store(tmp_path / "in.h5ad", dst, 100, 1 << 20, None, False, None)
    with pytest.raises(RuntimeError, match=r"X: column range 0 of \d+ is not read yet"):
        steps.convert_partition(dst, 0)


def test_interrupted_column_pass_resumes(tmp_path, monkeypatch, small_ranges):
    adata = _csc_h5ad(tmp_path / "in.h5ad")
    real, calls = spill.spill, []

    def dies_at_third(loc, src, plan, name, k):
        calls.append(k)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(loc, src, plan, name, k)

    monkeypatch.setattr(spill, "spill", dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        scdask.convert(tmp_path / "in.h5ad", tmp_path / "o.zarr", row_group_size=64,
                       workers=0)
    with pytest.raises(IncompleteStoreError):
        Store(tmp_path / "o.zarr")
    calls.clear()
    monkeypatch.setattr(spill, "spill", lambda *a: calls.append(a[-1]) or real(*a))
    scdask.convert(tmp_path / "in.h5ad", tmp_path / "o.zarr", row_group_size=64, workers=0)
    assert 0 not in calls and 2 in calls  # only the ranges not done are read again
    assert_store_matches_anndata(Store(tmp_path / "o.zarr"), adata)


def test_truncated_scratch_file_is_named_and_read_again(tmp_path, small_ranges):
    adata = _csc_h5ad(tmp_path / "in.h5ad")
    dst = tmp_path / "o.zarr"
    steps.convert_init(tmp_path / "in.h5ad", dst, row_group_size=100)
    vals = dst / "wip" / "spill" / "X" / "1.vals"
    vals.write_bytes(vals.read_bytes()[:-4])
    with pytest.raises(FormatError, match=r"wip/spill/X/1\.vals: scratch file is shorter"):
        for p in range(10):
            steps.convert_partition(dst, p)
    scdask.convert(tmp_path / "in.h5ad", dst, row_group_size=100, workers=0)  # resumes
    assert_store_matches_anndata(Store(dst), adata)


def test_values_that_do_not_fit_counts_fall_back(tmp_path, small_ranges):
    """A value found not to be a count while bucketing: stored in the source dtype."""
    adata = _csc_h5ad(tmp_path / "in.h5ad", n=3000, m=250)  # more than the plan's sample
    adata.X = adata.X.tocsc()
    adata.X.data[-1] = 0.5  # the last column: not among the values the plan samples
    adata.write_h5ad(tmp_path / "in.h5ad")
    with pytest.warns(UserWarning, match="storing values in the source dtype"):
        scdask.convert(tmp_path / "in.h5ad", tmp_path / "o.zarr", row_group_size=64,
                       workers=0)
    st = Store(tmp_path / "o.zarr")
    assert st.dtype("X") == np.float32
    assert_store_matches_anndata(st, adata)
    with pytest.raises(LossyDtypeError, match=r"in\.h5ad: X: columns \d+:\d+: value 0\.5"):
        steps.convert_init(tmp_path / "in.h5ad", tmp_path / "p.zarr", row_group_size=64)
