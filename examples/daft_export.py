"""Export a store to Parquet and query it with Daft (no Ray needed), beside scdask.

    python examples/daft_export.py STORE.zarr OUT_DIR

Prints count, max and mean of C1orf112 and the first per-gene means, from Daft on the
export and from scdask on the store: the same numbers.
"""

import os
import sys

import daft
import dask

import scdask

store, out = sys.argv[1], sys.argv[2]
scdask.export_parquet(store, out, overwrite=True, progress=False)
n_cells = daft.read_parquet(os.path.join(out, "obs.parquet")).count_rows()

var = daft.read_parquet(os.path.join(out, "var.parquet"))
gene_id = var.where(daft.col("gene") == "C1orf112").to_pydict()["gene_id"][0]
X = daft.read_parquet(os.path.join(out, "X", "*.parquet"))  # cell_id, gene_id, value
r = (X.where(daft.col("gene_id") == gene_id)
     .agg(daft.col("value").sum().alias("sum"), daft.col("value").max().alias("max"))
     .to_pydict())
# implicit zeros: the export stores non-zeros only, so max is at least 0
print(f"Daft   C1orf112: count={n_cells} max={max(r['max'][0], 0.0):g} "
      f"mean={r['sum'][0] / n_cells:.6f}")
g = scdask.open(store).X.sel(gene="C1orf112")
count, mx, mean = dask.compute(g.count(), g.max(), g.mean())
print(f"scdask C1orf112: count={int(count)} max={float(mx):g} mean={float(mean):.6f}")

means = (X.groupby("gene_id").agg(daft.col("value").sum().alias("sum")).sort("gene_id")
         .to_pandas().set_index("gene_id")["sum"] / n_cells)
ours = scdask.open(store).X.mean("cell").values
print("Daft   per-gene means:", [round(float(m), 6) for m in means.iloc[:5]])
print("scdask per-gene means:", [round(float(ours[i]), 6) for i in means.index[:5]])
