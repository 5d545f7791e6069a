"""Parquet export: values and metadata equal the source, on any selection; engines agree."""

from __future__ import annotations

import os

import anndata
import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

import scdask

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def ref(tiny_plate):
    a = anndata.read_h5ad(tiny_plate)
    return a, a.X.toarray()


@pytest.fixture(scope="module")
def exported(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("pq") / "plate"
    scdask.export_parquet(tiny_store, out)
    return str(out)


def _matrix(out, shape):
    t = pq.ParquetDataset(os.path.join(out, "X")).read()
    m = sp.csr_matrix((t["value"].to_numpy(), (t["cell_id"].to_numpy(), t["gene_id"].to_numpy())),
                      shape=shape)
    return m.toarray(), t


def test_long_layout_equals_source(exported, ref):
    a, X = ref
    got, t = _matrix(exported, X.shape)
    np.testing.assert_array_equal(got, X)
    assert t["value"].type == "float" and t["gene_id"].type == "int32"
    assert os.path.exists(os.path.join(exported, "_SUCCESS"))
    obs = pq.read_table(os.path.join(exported, "obs.parquet"))
    assert obs["cell_id"].to_pylist() == list(range(a.n_obs))
    assert obs["obs_names"].to_pylist() == list(a.obs_names)
    assert str(obs.schema.field("drug").type).startswith("dictionary")
    assert obs["drug"].to_pylist() == list(a.obs["drug"].astype(str))
    var = pq.read_table(os.path.join(exported, "var.parquet"))
    assert var["gene"].to_pylist() == list(a.var_names)
    # sorted by gene within each file, so one-gene filters prune row groups
    for f in sorted(os.listdir(os.path.join(exported, "X"))):
        g = pq.read_table(os.path.join(exported, "X", f))["gene_id"].to_numpy()
        assert (np.diff(g) >= 0).all()


def test_selection_export(tiny_store, ref, tmp_path):
    a, X = ref
    ds = scdask.open(tiny_store)
    genes = ["C1orf112", "TNMD", "MT-CYB"]
    sub = ds.where(ds.drug == "DMSO_TF", drop=True).sel(gene=genes)
    out = scdask.export_parquet(sub, tmp_path / "sub")
    m = (a.obs["drug"].astype(str) == "DMSO_TF").to_numpy()
    t = pq.ParquetDataset(os.path.join(out, "X")).read()
    var = pq.read_table(os.path.join(out, "var.parquet")).to_pandas()
    names = dict(zip(var.gene_id, var.gene, strict=True))
    got = np.zeros((m.sum(), len(genes)), np.float32)
    for c, g, v in zip(t["cell_id"].to_numpy(), t["gene_id"].to_numpy(), t["value"].to_numpy(),
                       strict=True):
        got[c, genes.index(names[g])] = v
    pos = [list(a.var_names).index(g) for g in genes]
    np.testing.assert_array_equal(got, X[m][:, pos])
    obs = pq.read_table(os.path.join(out, "obs.parquet"))
    assert obs["obs_names"].to_pylist() == list(a.obs_names[m])


def test_wide_layout_and_its_limit(tiny_store, ref, tmp_path):
    a, X = ref
    ds = scdask.open(tiny_store)
    genes = ["MT-CYB", "C1orf112", "TNMD"]
    out = scdask.export_parquet(ds.sel(gene=genes), tmp_path / "wide", layout="wide")
    t = pq.ParquetDataset(os.path.join(out, "X")).read().to_pandas().sort_values("cell_id")
    pos = [list(a.var_names).index(g) for g in genes]
    np.testing.assert_array_equal(t[genes].to_numpy(), X[:, pos])
    with pytest.raises(ValueError, match="1,000 gene columns is refused.*long layout"):
        scdask.export_parquet(ds, tmp_path / "too_wide", layout="wide", max_wide_columns=500)
    assert not os.path.exists(tmp_path / "too_wide")


def test_partitioned_by_drug(tiny_store, ref, tmp_path):
    a, X = ref
    out = scdask.export_parquet(tiny_store, tmp_path / "bydrug", partition_by="drug")
    dirs = sorted(os.listdir(os.path.join(out, "X")))
    assert dirs == sorted(f"drug={d}" for d in a.obs["drug"].astype(str).unique())
    got, _ = _matrix(out, X.shape)
    np.testing.assert_array_equal(got, X)


def test_bad_destinations_and_no_half_written_dataset(tiny_store, tmp_path, monkeypatch):
    out = tmp_path / "x"
    scdask.export_parquet(tiny_store, out)
    with pytest.raises(FileExistsError, match="overwrite"):
        scdask.export_parquet(tiny_store, out)
    import scdask.interop.parquet as export

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_write_part", boom)
    with pytest.raises(OSError, match="disk full"):
        scdask.export_parquet(tiny_store, tmp_path / "failed")
    assert sorted(os.listdir(tmp_path)) == ["x"]  # nothing half-written, no leftovers
    with pytest.raises(KeyError, match="did you mean"):
        scdask.open(tiny_store).sel(gene="C1orf11")


def test_daft_answers_equal_scdask(exported, tiny_store):
    daft = pytest.importorskip("daft")
    ds = scdask.open(tiny_store)
    g = ds.X.sel(gene="C1orf112")
    n = ds.sizes["cell"]
    var = daft.read_parquet(os.path.join(exported, "var.parquet"))
    gid = var.where(daft.col("gene") == "C1orf112").to_pydict()["gene_id"][0]
    x = daft.read_parquet(os.path.join(exported, "X", "*.parquet"))
    row = (x.where(daft.col("gene_id") == gid)
           .agg(daft.col("value").sum().alias("s"), daft.col("value").max().alias("m"),
                daft.col("value").count().alias("nnz")).to_pydict())
    assert row["s"][0] / n == pytest.approx(g.mean().compute().item(), rel=1e-9)
    assert max(row["m"][0], 0.0) == g.max().compute().item()
    assert row["nnz"][0] == (g != 0).sum().compute().item()
    means = (x.groupby("gene_id").agg(daft.col("value").sum().alias("s")).to_pandas()
             .set_index("gene_id")["s"] / n)
    ours = ds.X.mean("cell").values
    np.testing.assert_allclose(means.to_numpy(), ours[means.index.to_numpy()], rtol=1e-6)


def test_duckdb_answers_equal_scdask(exported, tiny_store):
    duckdb = pytest.importorskip("duckdb")
    ds = scdask.open(tiny_store)
    n = ds.sizes["cell"]
    q = f"""
        SELECT sum(value) / {n} AS mean, max(value) AS max FROM read_parquet('{exported}/X/*.parquet')
        WHERE gene_id = (SELECT gene_id FROM read_parquet('{exported}/var.parquet')
                         WHERE gene = 'C1orf112')
    """
    mean, mx = duckdb.sql(q).fetchall()[0]
    g = ds.X.sel(gene="C1orf112")
    assert mean == pytest.approx(g.mean().compute().item(), rel=1e-9)
    assert mx == g.max().compute().item()


def test_cli_export(tiny_store, tmp_path):
    from click.testing import CliRunner

    from scdask.cli import main

    r = CliRunner().invoke(main, ["export-parquet", tiny_store, str(tmp_path / "cli"),
                                  "--gene", "C1orf112", "--obs", "drug=DMSO_TF", "--no-progress"])
    assert r.exit_code == 0, r.output
    t = pq.ParquetDataset(str(tmp_path / "cli" / "X")).read()
    assert set(t["gene_id"].to_pylist()) <= {4}
    r = CliRunner().invoke(main, ["export-parquet", tiny_store, str(tmp_path / "cli")])
    assert r.exit_code == 1 and "exists" in r.output
