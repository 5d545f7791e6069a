"""Issue #7's figures: cells/s of the PyTorch loader, and of a naive anndata-backed loader.

    python scripts/measure_loader.py PLATE.h5ad PLATE.zarr

Prints cells/s (the second of two epochs, workers already started) and peak RSS
(process tree) of an epoch, all genes, sparse CSR batches of 1,024 shuffled cells: in this
process with 1 and 2 threads (``loader``'s default), and through DataLoader worker processes
(1 and 2, the cores shared out among them); then a naive loader that reads random batches
of rows from anndata's backed mode (a time budget of about 30 s, extrapolated to cells/s).
"""

from __future__ import annotations

import subprocess
import sys
import time

from scdask.testing import peak_tree_rss

EPOCH = """
import sys, time, warnings
warnings.simplefilter("ignore")
from scdask.ml import CellDataset, loader
threads, workers = int(sys.argv[2]), int(sys.argv[3])
it = (CellDataset(sys.argv[1], batch_size=1024, seed=0, threads=threads) if workers == 0
      else loader(sys.argv[1], num_workers=workers, batch_size=1024, seed=0))
for epoch in range(2):  # the first epoch starts the workers; the second is timed
    (it if workers == 0 else it.dataset).set_epoch(epoch)
    t = time.perf_counter()
    n = 0
    for b in it:
        n += b["X"].shape[0]
print(n, n / (time.perf_counter() - t))
"""

NAIVE = """
import sys, time, warnings
import numpy as np, anndata
warnings.simplefilter("ignore")
a = anndata.read_h5ad(sys.argv[1], backed="r")
rng = np.random.default_rng(0)
order = rng.permutation(a.n_obs)
t = time.perf_counter()
n = 0
for s in range(0, a.n_obs, 1024):
    rows = np.sort(order[s : s + 1024])
    x = a.X[rows]
    n += x.shape[0]
    if time.perf_counter() - t > 30:
        break
print(n, n / (time.perf_counter() - t))
"""


def main() -> None:
    h5ad, store = sys.argv[1], sys.argv[2]
    for threads, workers in ((1, 0), (2, 0), (1, 1), (1, 2)):
        t = time.perf_counter()
        cmd = [sys.executable, "-c", EPOCH, store, str(threads), str(workers)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rc, peak = peak_tree_rss(cmd)
        n, rate = out.stdout.split()
        label = (f"in-process, {threads} thread(s)" if workers == 0
                 else f"{workers} DataLoader worker process(es)")
        print(f"scdask {label}: {int(n):,} cells, {float(rate):,.0f} cells/s, peak RSS "
              f"{peak / 1e9:.2f} GB ({time.perf_counter() - t:.0f} s)")
    out = subprocess.run([sys.executable, "-c", NAIVE, h5ad], capture_output=True, text=True,
                         check=True)
    n, rate = out.stdout.split()
    rc, peak = peak_tree_rss([sys.executable, "-c", NAIVE, h5ad])
    print(f"naive anndata backed loader (random batches): {float(rate):,.0f} cells/s over "
          f"{int(n):,} cells, peak RSS {peak / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
