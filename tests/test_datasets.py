"""The synthetic plate generator: its file is valid H5AD, its counts are a multinomial draw."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pytest

from scdask import datasets


def test_parallel_chunk_writes_equal_h5pys_own(tmp_path):
    """gzip and uncompressed X go through direct chunk writes, lzf through h5py: same file."""
    kw = dict(n_genes=700, n_drugs=4, n_cell_lines=3, seed=5, batch_size=700)
    paths = {c: datasets.synth(tmp_path / f"{c}.h5ad", 2500, compression=c, **kw)
             for c in ("gzip", None, "lzf")}
    one = datasets.synth(tmp_path / "one.h5ad", 2500, compression="gzip", workers=1, **kw)
    ref = ad.read_h5ad(paths["lzf"])
    for path in (paths["gzip"], paths[None], one):
        a = ad.read_h5ad(path)
        assert a.shape == ref.shape == (2500, 700)
        assert (a.X != ref.X).nnz == 0
        np.testing.assert_array_equal(a.X.indptr, ref.X.indptr)
        assert a.obs.equals(ref.obs) and a.var.equals(ref.var)
    with h5py.File(paths["gzip"]) as f:
        assert f["X/data"].compression == "gzip" and f["X/data"].compression_opts == 4
        assert f["X/data"].shape[0] % f["X/data"].chunks[0] != 0  # a partial last chunk


def test_rows_are_valid_and_obs_agrees(tmp_path):
    a = ad.read_h5ad(datasets.synth(tmp_path / "p.h5ad", 3000, n_genes=2000, seed=2))
    X = a.X
    X.check_format(full_check=True)
    assert X.has_sorted_indices and X.dtype == np.float32 and X.indptr.dtype == np.int64
    rows = np.repeat(np.arange(a.n_obs), np.diff(X.indptr))
    assert not (np.diff(X.indices) == 0)[np.diff(rows) == 0].any()  # no duplicate genes in a row
    assert (X.data > 0).all() and (X.data == np.round(X.data)).all()
    np.testing.assert_array_equal(a.obs["gene_count"].to_numpy(), np.diff(X.indptr))
    np.testing.assert_array_equal(a.obs["tscp_count"].to_numpy(), np.asarray(X.sum(axis=1)).ravel())
    mito = a.var_names.str.startswith("MT-")
    share = 100 * np.asarray(X[:, mito].sum(axis=1)).ravel() / a.obs["tscp_count"].to_numpy()
    np.testing.assert_allclose(a.obs["pcnt_mito"].to_numpy(), share, rtol=1e-6)
    assert a.var_names[4] == datasets.HEADLINE_GENE


def test_sampler_is_a_multinomial_draw():
    """Gene totals over many cells match umis × p (one cell line, no drug)."""
    rng = np.random.default_rng(0)
    p = np.exp(rng.normal(0, 1.5, 40))
    p[7] = 0.0  # a gene that can never be drawn
    p /= p.sum()
    cdfs = np.cumsum(p)[None, :]
    n = 4000
    umis = rng.integers(50, 300, n).astype(np.int64)
    genes, vals, slots, nnz = datasets._sample_batch(
        cdfs, np.zeros(n, np.int64), umis, rng.integers(0, 2**31 - 1, n),
        np.zeros((1, 3), np.int32), np.full(n, -1, np.int64), 2.0)
    totals = np.zeros(40)
    for i in range(n):
        g = genes[slots[i]:slots[i] + nnz[i]]
        v = vals[slots[i]:slots[i] + nnz[i]]
        assert (np.diff(g) > 0).all() and v.sum() == umis[i]
        totals[g] += v
    expected = p * umis.sum()
    assert totals[7] == 0
    z = (totals - expected)[p > 0] / np.sqrt(expected[p > 0] * (1 - p[p > 0]))
    assert np.abs(z).max() < 5, z


@pytest.mark.parametrize("n_genes", [1, 3])
def test_tiny_gene_counts(tmp_path, n_genes):
    a = ad.read_h5ad(datasets.synth(tmp_path / "t.h5ad", 50, n_genes=n_genes, n_drugs=3, seed=0))
    assert a.shape == (50, n_genes)
    assert a.X.has_sorted_indices and (a.X.indices < n_genes).all()
