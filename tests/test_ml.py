"""The PyTorch loader: exact batches, each cell once per epoch across workers and ranks, seeds."""

from __future__ import annotations

import anndata
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scdask.ml import CellDataset, loader  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def ref(tiny_plate):
    a = anndata.read_h5ad(tiny_plate)
    return a, a.X.toarray()


def _rows(batch):
    X = batch["X"]
    return (X.to_dense() if X.layout == torch.sparse_csr else X).numpy()


@pytest.mark.parametrize("threads", [1, 3])
def test_batches_equal_source_rows(tiny_store, ref, threads):
    a, X = ref
    ds = CellDataset(tiny_store, batch_size=256, obs=["drug", "gene_count"], seed=3,
                     threads=threads)
    seen = []
    for batch in ds:
        cells = batch["cell"].numpy()
        np.testing.assert_array_equal(_rows(batch), X[cells])
        drug = np.asarray(ds.categories["drug"], dtype=object)[batch["drug"].numpy()]
        assert (drug == a.obs["drug"].astype(str).to_numpy()[cells]).all()
        np.testing.assert_array_equal(batch["gene_count"].numpy(), a.obs["gene_count"].to_numpy()[cells])
        assert len(cells) <= 256
        seen.append(cells)
    seen = np.concatenate(seen)
    assert sorted(seen.tolist()) == list(range(a.n_obs))  # every cell exactly once
    assert not (np.diff(seen) == 1).all()  # shuffled


def test_seed_reproduces_and_epoch_changes_order(tiny_store):
    def order(seed, epoch, threads=None):
        ds = CellDataset(tiny_store, batch_size=500, seed=seed, threads=threads)
        ds.set_epoch(epoch)
        return np.concatenate([b["cell"].numpy() for b in ds])

    assert (order(1, 0) == order(1, 0)).all()
    assert (order(1, 0, threads=1) == order(1, 0, threads=4)).all()  # threads change nothing
    assert not (order(1, 0) == order(1, 1)).all()
    assert not (order(1, 0) == order(2, 0)).all()


def test_ranks_and_workers_cover_each_cell_once(tiny_store, ref):
    a, X = ref
    seen = []
    for rank in range(2):
        dl = loader(tiny_store, num_workers=2, batch_size=200, seed=5, rank=rank, world_size=2,
                    buffer_groups=1)
        for batch in dl:
            cells = batch["cell"].numpy()
            np.testing.assert_array_equal(_rows(batch), X[cells])
            seen.append(cells)
    seen = np.concatenate(seen)
    assert len(seen) == a.n_obs and len(np.unique(seen)) == a.n_obs


@pytest.mark.parametrize("threads", [1, 2])
def test_gene_subset_filter_normalise_dense(tiny_store, ref, threads):
    a, X = ref
    genes = ["MT-CYB", "C1orf112", "TNMD", "C1orf112"]  # a repeat, as in any selection
    ds = CellDataset(tiny_store, genes=genes, where={"phase": ["S", "G2M"]}, normalize=1e4,
                     log1p=True, sparse=False, batch_size=128, threads=threads)
    keep = np.flatnonzero(a.obs["phase"].astype(str).isin(["S", "G2M"]).to_numpy())
    pos = [list(a.var_names).index(g) for g in genes]
    totals = X.sum(1, dtype=np.float64)
    seen = []
    for batch in ds:
        cells = keep[batch["cell"].numpy()]  # positions in the filtered selection
        want = np.log1p(X[cells][:, pos] * (1e4 / totals[cells])[:, None]).astype(np.float32)
        np.testing.assert_allclose(batch["X"].numpy(), want, rtol=1e-5)
        seen.append(cells)
    assert sorted(np.concatenate(seen).tolist()) == keep.tolist()


@pytest.mark.parametrize("missing", [np.nan, None])
def test_filter_selects_missing_categorical_values(tiny_store, ref, missing):
    """``where={col: NaN}`` selects the cells whose categorical value is missing (as it does
    in a column of objects), beside the categories asked for."""
    import pandas as pd

    import scdask

    a, X = ref
    phase = a.obs["phase"].astype(str).to_numpy().astype(object)
    phase[::5] = None
    ds = scdask.open(tiny_store).assign_coords(grp=("cell", pd.Categorical(phase)))
    keep = np.flatnonzero(pd.isna(phase) | (phase == "S"))
    loader = CellDataset(ds, where={"grp": [missing, "S"]}, batch_size=256)
    seen = np.sort(np.concatenate([b["cell"].numpy() for b in loader]))
    np.testing.assert_array_equal(seen, np.arange(len(keep)))
    assert loader.base.n_sel_cells == len(keep)
    for batch in loader:
        np.testing.assert_array_equal(_rows(batch), X[keep[batch["cell"].numpy()]])


def test_expressions_stream_as_computed(tiny_store, ref):
    """scdask.pp's expressions (any per-cell / per-gene operands) stream through the loader,
    equal to scanpy's arithmetic in numpy; one whose zeros become non-zero is refused,
    naming the row group."""
    import scdask
    from scdask import pp

    a, X = ref
    genes = ["MT-CYB", "C1orf112", "TNMD", "C1orf112"]
    ds = pp.log1p(pp.normalize_total(scdask.open(tiny_store), target_sum=1e4))
    sub = ds.sel(gene=genes).where(ds.phase == "S", drop=True)
    sub = sub.assign(X=np.minimum(sub.X, sub.X.mean("cell") * 3))  # a per-gene clip
    keep = np.flatnonzero(a.obs["phase"].astype(str).to_numpy() == "S")
    pos = [list(a.var_names).index(g) for g in genes]
    Y = np.log1p(X / X.sum(1, keepdims=True, dtype=np.float64) * 1e4)[keep][:, pos]
    Y = np.minimum(Y, Y.mean(0) * 3)
    seen = []
    for batch in CellDataset(sub, batch_size=100, threads=2):
        cells = batch["cell"].numpy()
        np.testing.assert_allclose(_rows(batch), Y[cells], rtol=1e-5, atol=1e-6)
        seen.append(cells)
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(keep)))
    with pytest.raises(ValueError, match="already an expression"):
        CellDataset(ds, normalize=1e4)
    centred = pp.scale(ds.sel(gene=genes))
    with pytest.raises(ValueError, match="row group 0.*not zeros"):
        next(iter(CellDataset(centred, shuffle=False)))
