"""Stores written by earlier scdask versions keep opening, verifying and answering the same.

Each ``tests/data/archives/v<N>/`` holds a tiny store of format N, written once by the scdask
that introduced the format (``tests/data/archives/make.py``), and the answers read from its
source with anndata (``expected.json``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import scdask
from scdask.verify import verify

ARCHIVES = Path(__file__).parent / "data" / "archives"
VERSIONS = sorted(p.name for p in ARCHIVES.glob("v*") if (p / "expected.json").exists())


def test_every_format_version_has_an_archive():
    from scdask.format import FORMAT_VERSION

    assert VERSIONS == [f"v{i}" for i in range(1, FORMAT_VERSION + 1)]


@pytest.fixture(params=VERSIONS)
def archive(request, tmp_path):
    """A copy of the archive (reading it must not need write access, but stay safe)."""
    src = ARCHIVES / request.param
    shutil.copytree(src / "store", tmp_path / "store")
    return tmp_path / "store", json.loads((src / "expected.json").read_text())


def test_archive_opens_verifies_and_answers_the_same(archive):
    path, want = archive
    assert verify(path).ok
    ds = scdask.open(path)
    X = np.array(want["X"])
    assert list(ds.X.shape) == want["shape"]
    assert [str(s) for s in ds.obs_names.values] == want["obs_names"]
    assert [str(s) for s in ds.gene.values] == want["var_names"]
    for col, values in want["obs"].items():
        assert [str(v) for v in ds[col].values] == values, col
    np.testing.assert_allclose(ds.X.sum("cell").values, X.sum(0), rtol=1e-12)
    np.testing.assert_allclose(ds.X.mean("gene").values, X.mean(1), rtol=1e-12)
    np.testing.assert_allclose(ds.X.var("cell").values, X.var(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(ds.X.max("cell").values, X.max(0))
    gene = want["var_names"][7]
    assert float(ds.X.sel(gene=gene).mean()) == pytest.approx(X[:, 7].mean(), rel=1e-12)
    np.testing.assert_array_equal(scdask.to_anndata(ds).X.toarray(), X)
    from scdask.store.reader import Store

    assert Store(path).attrs["format_version"] == want["format_version"]
