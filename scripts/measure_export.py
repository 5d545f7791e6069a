"""Issue #5's figures: export throughput and size, and Daft on the export beside scdask.

    python scripts/measure_export.py PLATE.zarr OUT_DIR
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings

warnings.simplefilter("ignore")


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main() -> None:
    from scdask.testing import peak_tree_rss, timed

    store, out = sys.argv[1], sys.argv[2]
    shutil.rmtree(out, ignore_errors=True)
    code = (f"import scdask, warnings; warnings.simplefilter('ignore'); "
            f"scdask.export_parquet({store!r}, {out!r}, progress=False)")
    t = time.perf_counter()
    rc, peak = peak_tree_rss([sys.executable, "-c", code])
    dt = time.perf_counter() - t
    import scdask

    ds = scdask.open(store)
    nnz = int(ds.gene_nnz.sum())
    print(f"export of {ds.sizes['cell']:,} cells ({nnz:,} non-zeros): {dt:.1f} s "
          f"({nnz / dt / 1e6:.1f} M rows/s, {ds.sizes['cell'] / dt:,.0f} cells/s), peak RSS "
          f"{peak / 1e9:.2f} GB; Parquet {du(out) / 1e6:.0f} MB vs store {du(store) / 1e6:.0f} MB "
          f"({du(out) / du(store):.2f}x)")
    import daft
    import dask

    n = ds.sizes["cell"]

    def daft_one_gene():
        var = daft.read_parquet(os.path.join(out, "var.parquet"))
        gid = var.where(daft.col("gene") == "C1orf112").to_pydict()["gene_id"][0]
        x = daft.read_parquet(os.path.join(out, "X", "*.parquet"))
        r = (x.where(daft.col("gene_id") == gid)
             .agg(daft.col("value").sum().alias("s"), daft.col("value").max().alias("m"),
                  daft.col("value").count().alias("c")).to_pydict())
        return r["s"][0] / n, max(r["m"][0], 0.0)

    def daft_gene_means():
        x = daft.read_parquet(os.path.join(out, "X", "*.parquet"))
        return x.groupby("gene_id").agg(daft.col("value").sum().alias("s")).to_pandas()

    def scdask_one_gene():
        g = scdask.open(store).X.sel(gene="C1orf112")
        return dask.compute(g.count(), g.max(), g.mean())

    def scdask_gene_means():
        return scdask.open(store).X.mean("cell").values

    for label, ours, theirs in (("one gene count/max/mean", scdask_one_gene, daft_one_gene),
                                ("every gene's mean", scdask_gene_means, daft_gene_means)):
        ours(), theirs()
        a, b = timed(ours)[1], timed(theirs)[1]
        print(f"{label}: scdask on the store {a * 1e3:.0f} ms, Daft on the export "
              f"{b * 1e3:.0f} ms ({b / a:.1f}x)")


if __name__ == "__main__":
    main()
