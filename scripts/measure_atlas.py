"""Issue #19's growth table: one store linked N times under different names, opened as one
dataset (N = 1, 14, 100, 500 by default: 200,000 cells each gives 100M cells at 500).

    python scripts/measure_atlas.py PLATE.zarr [N ...] [--no-where] [--no-groupby]

Each N runs in a fresh process (its peak RSS is the client's), after one untimed run that
warms the page cache. Printed per N: cells, row groups, the time to open, the one-gene
mean (the process's first query: kernel loading included), max and count, the one-gene
mean over every 7th cell, over the control cells (``ds.where(ds.drug == "DMSO_TF",
drop=True)``, then ``isel`` with that boolean mask), the one-gene mean of every drug
(``groupby("drug")``), the number of tasks of the one-gene mean's graph, and the peak RSS
of the process. Each answer is checked against numpy on the single store's column of
the gene, repeated as the links repeat it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

GENE = "C1orf112"

_CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
skip = set(sys.argv[3:])
t0 = time.perf_counter()
import dask
import scdask
pattern, gene = sys.argv[1], sys.argv[2]
t1 = time.perf_counter()
ds = scdask.open(pattern)
t2 = time.perf_counter()
g = ds.X.sel(gene=gene)
out = {"cells": ds.sizes["cell"], "import_s": t1 - t0, "open_s": t2 - t1,
       "tasks": len(dict(g.mean().data.__dask_graph__()))}
for name, fn in (("mean", lambda: g.mean()), ("max", lambda: g.max()),
                 ("count", lambda: (g != 0).sum()),
                 ("mean_every_7th", lambda: ds.X.isel(cell=slice(None, None, 7))
                  .sel(gene=gene).mean()),
                 ("mean_where_control", lambda: ds.where(ds.drug == "DMSO_TF", drop=True)
                  .X.sel(gene=gene).mean()),
                 ("mean_mask_control", lambda: ds.X.isel(cell=(ds.drug == "DMSO_TF").values)
                  .sel(gene=gene).mean()),
                 ("groupby_drug_control", lambda: g.groupby("drug").mean()
                  .sel(drug="DMSO_TF"))):
    if name in skip:
        out[name], out[name + "_s"] = float("nan"), float("nan")
        continue
    t = time.perf_counter()
    out[name] = float(fn().compute())
    out[name + "_s"] = time.perf_counter() - t
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps(out))
"""


def run(pattern: str, skip: tuple[str, ...] = ()) -> dict[str, float]:
    """The child's measurements for the stores matching ``pattern``, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", _CHILD, pattern, GENE, *skip], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from scdask.store.reader import Store

    store = os.path.abspath(sys.argv[1])
    # ds.where(..., drop=True) loads every lazy obs column of the cells it keeps (xarray
    # compares the coordinates of the Dataset and of the condition), and xarray's group-by
    # factorizes the obs column and selects each group's cells before the one pass: both
    # grow with the cells, --no-where and --no-groupby skip them
    skip = tuple(name for flag, name in (("--no-where", "mean_where_control"),
                                         ("--no-groupby", "groupby_drug_control"))
                 if flag in sys.argv)
    counts = [int(a) for a in sys.argv[2:] if not a.startswith("--")] or [1, 14, 100, 500]
    groups = Store(store).n_groups
    import scdask

    one = scdask.open(store)
    col = np.asarray(one.X.sel(gene=GENE).values, np.float64)
    control = col[(one.drug == "DMSO_TF").values].mean()
    print(f"{'links':>6} {'cells':>12} {'row groups':>10} {'open':>7} {'mean (1st)':>10} "
          f"{'max':>7} {'count':>7} {'every 7th':>9} {'where':>7} {'mask':>7} {'groupby':>7} "
          f"{'tasks':>6} {'peak RSS':>8}")
    with tempfile.TemporaryDirectory(dir=os.path.dirname(store)) as tmp:
        for n in counts:
            folder = os.path.join(tmp, f"links{n}")
            os.mkdir(folder)
            for i in range(n):
                os.symlink(store, os.path.join(folder, f"plate{i:04d}.zarr"))
            pattern = os.path.join(folder, "plate*.zarr")
            run(pattern, skip)  # warms the page cache (and the kernels' on-disk cache)
            r = run(pattern, skip)
            m = len(col)  # every 7th cell of the n copies: in copy i, from (-i*m) % 7 on
            seventh = [col[(-i * m) % 7 :: 7] for i in range(n)]
            expected = {"mean": col.mean(), "max": col.max(), "count": n * np.count_nonzero(col),
                        "mean_every_7th": sum(x.sum() for x in seventh)
                        / sum(len(x) for x in seventh), "mean_where_control": control,
                        "mean_mask_control": control, "groupby_drug_control": control}
            for key, want in expected.items():
                if key in skip:
                    continue
                if abs(r[key] - want) > 1e-6 * max(1.0, abs(want)):
                    raise AssertionError(f"{n} links: {key} {r[key]} != {want}")
            print(f"{n:>6} {r['cells']:>12,} {n * groups:>10} {r['open_s']:>6.2f}s {r['mean_s']:>9.2f}s "
                  f"{r['max_s']:>6.2f}s {r['count_s']:>6.2f}s {r['mean_every_7th_s']:>8.2f}s "
                  f"{r['mean_where_control_s']:>6.2f}s {r['mean_mask_control_s']:>6.2f}s "
                  f"{r['groupby_drug_control_s']:>6.2f}s "
                  f"{r['tasks']:>6} {r['peak_rss_gb']:>6.2f}GB", flush=True)


if __name__ == "__main__":
    main()
