"""A local Dask cluster of processes: convert, then the headline query and a pseudobulk.

    python examples/local_cluster.py [WORKDIR] [CELLS]

Open the dashboard link it prints to watch the tasks (read-block, gene-partial,
gene-mean, pseudobulk-partial, ...).
"""

import os
import sys

import dask

import scdask
from scdask.datasets import synth

workdir = sys.argv[1] if len(sys.argv) > 1 else "scdask-cluster"
cells = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
os.makedirs(workdir, exist_ok=True)

if __name__ == "__main__":
    client = scdask.cluster(workers=2)  # prints the dashboard link
    with client:
        src = synth(os.path.join(workdir, "plate.h5ad"), cells)
        dst = scdask.convert(src, os.path.join(workdir, "plate.zarr"), overwrite=True)
        ds = scdask.open(dst)
        gene = ds.X.sel(gene="C1orf112")
        count, mx, mean = dask.compute(gene.count(), gene.max(), gene.mean())
        print(f"C1orf112: count={int(count)} max={float(mx):g} mean={float(mean):.4f}")
        hvg = ds.X.var("cell").to_series().nlargest(500).index
        pb = scdask.pseudobulk(ds.sel(gene=list(hvg)), ["drug", "cell_line"]).compute()
        print(f"pseudobulk: {pb.sizes['group']} drug × cell_line groups × {pb.sizes['gene']} genes")
