"""Issue #19's plate-size figures: the headline queries on one converted plate, in a fresh
process, page cache warm (one untimed run first).

    python scripts/measure_plate.py PLATE.zarr [--h5ad PLATE.h5ad]

Printed: open; the one-gene count, max and mean (the process's first query); every gene's
mean and variance (cells/s); a pseudobulk of every gene by drug; the peak RSS of the
process. With ``--h5ad``, the one-gene answers are then checked against a single-process
h5py scan of the source's X (slow: it decompresses all of X).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

GENE = "C1orf112"

_CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import dask
import scdask
t1 = time.perf_counter()
ds = scdask.open(sys.argv[1])
t2 = time.perf_counter()
g = ds.X.sel(gene=sys.argv[2])
count, mx, mean = (float(v) for v in dask.compute((g != 0).sum(), g.max(), g.mean()))
t3 = time.perf_counter()
m, v = dask.compute(ds.X.mean("cell"), ds.X.var("cell"))
t4 = time.perf_counter()
pb = scdask.pseudobulk(ds, "drug").compute()
t5 = time.perf_counter()
print(json.dumps({
    "cells": ds.sizes["cell"], "genes": ds.sizes["gene"], "import_s": t1 - t0,
    "open_s": t2 - t1, "one_gene_s": t3 - t2, "count": count, "max": mx, "mean": mean,
    "every_gene_s": t4 - t3, "mean_sum": float(m.sum()), "var_sum": float(v.sum()),
    "pseudobulk_s": t5 - t4, "groups": pb.sizes["group"],
    "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def _h5py_gene(path: str, gene: str) -> tuple[float, float, float]:
    import h5py

    with h5py.File(path, "r") as f:
        names = f["var"]["_index"][:].astype(str)
        j = int(np.flatnonzero(names == gene)[0])
        X = f["X"]
        n = X["indptr"].shape[0] - 1
        nnz = int(X["indptr"][-1])
        count, mx, total = 0, 0.0, 0.0
        step = 1 << 24
        for a in range(0, nnz, step):
            hit = X["indices"][a : a + step] == j
            vals = X["data"][a : a + step][hit].astype(np.float64)
            count += int(np.count_nonzero(vals))
            mx = max(mx, float(vals.max(initial=0)))
            total += float(vals.sum())
    return float(count), mx, total / n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("--h5ad")
    p.add_argument("--gene", default=GENE)
    args = p.parse_args()
    run = [sys.executable, "-c", _CHILD, args.store, args.gene]
    subprocess.run(run, check=True, capture_output=True)  # warms the page cache
    out = json.loads(subprocess.run(run, check=True, capture_output=True, text=True).stdout)
    cells = out["cells"]
    print(f"{args.store}: {cells:,} cells x {out['genes']:,} genes; import {out['import_s']:.2f} s, "
          f"open {out['open_s']:.3f} s")
    print(f"one gene count/max/mean (first query): {out['one_gene_s']:.3f} s "
          f"= ({out['count']:.0f}, {out['max']:.0f}, {out['mean']:.6f})")
    print(f"every gene's mean and var: {out['every_gene_s']:.1f} s "
          f"= {cells / out['every_gene_s'] / 1e6:.2f}M cells/s")
    print(f"pseudobulk of every gene by drug ({out['groups']} groups): {out['pseudobulk_s']:.1f} s "
          f"= {cells / out['pseudobulk_s'] / 1e6:.2f}M cells/s")
    print(f"peak RSS of the process: {out['peak_rss_gb']:.2f} GB")
    if args.h5ad:
        t = time.perf_counter()
        ref = _h5py_gene(args.h5ad, args.gene)
        got = (out["count"], out["max"], out["mean"])
        ok = np.allclose(got, ref, rtol=1e-9)
        print(f"h5py scan of {args.h5ad} ({time.perf_counter() - t:.0f} s): {ref} -> "
              f"{'equal' if ok else 'DIFFERENT'}")
        if not ok:
            sys.exit(1)


if __name__ == "__main__":
    main()
