"""Conversion memory stays bounded on inputs several times larger than the budget."""

from __future__ import annotations

import os
import sys

import pytest

from scdask.store import Store
from scdask.testing import peak_tree_rss, write_random_h5ad

BUDGET = 500 * 2**20


@pytest.mark.slow
def test_conversion_peak_rss_flat_and_under_budget(tmp_path):
    peaks = {}
    for n_obs in (40_000, 220_000):
        src = write_random_h5ad(tmp_path / f"in{n_obs}.h5ad", n_obs, 20_000, 1000, seed=n_obs)
        dst = tmp_path / f"out{n_obs}.zarr"
        code = (
            "import scdask, sys; scdask.convert(sys.argv[1], sys.argv[2], workers=0, "
            "row_group_size=4096, progress=False)"
        )
        rc, peaks[n_obs] = peak_tree_rss([sys.executable, "-c", code, src, str(dst)])
        assert rc == 0
        assert Store(dst).matrix("X")["nnz"] == n_obs * 1000
        os.remove(src)
    big = 220_000 * 1000 * 8
    assert big > 3 * BUDGET, "the input must be several times the budget"
    assert peaks[220_000] < BUDGET, f"peak RSS {peaks[220_000] / 2**20:.0f} MiB over budget"
    # memory does not grow with the input: 5.5x more cells, about the same peak
    assert peaks[220_000] < 1.15 * peaks[40_000] + 40 * 2**20, peaks
