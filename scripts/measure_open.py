"""Issue #3's figures in one run: one gene and all-gene statistics against the tools it replaces.

    python scripts/measure_open.py PLATE.h5ad PLATE.zarr [--raw PLATE_uncompressed.h5ad]

Prints, each timed in this process after imports (median of --repeat runs):
- count/max/mean of C1orf112 with scdask (open included), with anndata backed mode, with
  anndata's lazy reader (``anndata.experimental.read_lazy`` + Dask), and the time to read
  only that gene's stored values with zarr;
- the mean and variance of every gene with scdask, and with a plain h5py scan of the H5AD
  (slabs of data + indices, ``np.bincount`` per gene) of the gzip file and of an
  uncompressed copy (page cache warm: each is read once before timing).
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from scdask.testing import timed

warnings.simplefilter("ignore")
GENE = "C1orf112"


def scdask_one_gene(store):
    import dask

    import scdask

    g = scdask.open(store).X.sel(gene=GENE)
    c, m, mu = dask.compute(g.count(), g.max(), g.mean())
    return int(c), float(m), float(mu)


def gene_bytes(store):
    """Only the gene's stored values, row group by row group, with zarr (no statistics)."""
    from scdask.store.reader import Store

    st = Store(store)
    j = st.var().index.get_loc(GENE)
    cp = st.colptr("X", slice(None), slice(j, j + 2))
    data = st.array("X/data")
    return sum(len(data[g, int(cp[g, 0]) : int(cp[g, 1])]) for g in range(st.n_groups))


def backed_one_gene(h5ad):
    import anndata

    a = anndata.read_h5ad(h5ad, backed="r")
    col = a[:, GENE].X
    col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
    return col.size, float(col.max()), float(col.astype(np.float64).mean())


def lazy_one_gene(h5ad):
    import anndata

    a = anndata.experimental.read_lazy(h5ad)
    j = int(np.flatnonzero(a.var_names == GENE)[0])
    col = a.X[:, j : j + 1].compute()
    col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
    return col.size, float(col.max()), float(col.astype(np.float64).mean())


def scdask_all_genes(store):
    import dask

    import scdask

    ds = scdask.open(store)
    mean, var = dask.compute(ds.X.data.mean(axis=0), ds.X.data.var(axis=0))
    return mean, var


def h5py_all_genes(h5ad):
    """The plain h5py scan of the asv benchmarks (one definition for both)."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "asv_bench"))
    from benchmarks.common import h5py_gene_mean_var

    return h5py_gene_mean_var(h5ad)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("h5ad")
    p.add_argument("store")
    p.add_argument("--raw", help="an uncompressed copy of the H5AD")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-backed", action="store_true")
    args = p.parse_args()
    import scdask  # noqa: F401 - imports outside the timings

    r = args.repeat
    ours, t_ours = timed(lambda: scdask_one_gene(args.store), r)
    n_bytes, t_bytes = timed(lambda: gene_bytes(args.store), r)
    print(f"{GENE} count/max/mean, scdask (open included): {ours} {t_ours * 1e3:.1f} ms")
    print(f"  reading only its {n_bytes:,} stored values with zarr: {t_bytes * 1e3:.1f} ms "
          f"-> scdask / gene bytes = {t_ours / t_bytes:.2f}x")
    if not args.skip_backed:
        try:
            theirs, t_backed = timed(lambda: backed_one_gene(args.h5ad), 1)
            print(f"  anndata backed mode: {theirs} {t_backed:.2f} s -> {t_backed / t_ours:.0f}x "
                  "slower than scdask")
        except Exception as e:  # noqa: BLE001 - report what the baseline does
            print(f"  anndata backed mode failed: {type(e).__name__}: {e}")
    try:
        theirs, t_lazy = timed(lambda: lazy_one_gene(args.h5ad), 1)
        print(f"  anndata read_lazy + Dask: {theirs} {t_lazy:.2f} s -> {t_lazy / t_ours:.0f}x "
              "slower than scdask")
    except Exception as e:  # noqa: BLE001
        print(f"  anndata read_lazy failed: {type(e).__name__}: {e}")
    (mean, var), t_all = timed(lambda: scdask_all_genes(args.store), r)
    print(f"mean and variance of every gene, scdask: {t_all:.2f} s")
    for label, path in (("gzip", args.h5ad), ("uncompressed", args.raw)):
        if not path:
            continue
        h5py_all_genes(path)  # page cache warm
        (m2, v2), t_h = timed(lambda path=path: h5py_all_genes(path), max(1, r - 1))
        ok = np.allclose(mean, m2, rtol=1e-9) and np.allclose(var, v2, rtol=1e-6, atol=1e-9)
        print(f"  plain h5py scan of the {label} H5AD: {t_h:.2f} s -> scdask takes "
              f"{t_all / t_h:.3f}x its time (results equal: {ok})")


if __name__ == "__main__":
    main()
