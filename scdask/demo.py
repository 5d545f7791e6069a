"""``scdask demo``: the main job end to end on a generated Tahoe-like plate.

Generates a plate, converts it, verifies it against the source, then answers the
headline one-gene query (``scdask.open(...).X.sel(gene="C1orf112")``), the
per-gene mean and variance of every gene, and a drug × cell-line pseudobulk of
the most variable genes on a local Dask cluster of processes, printing results
and timings.
"""

from __future__ import annotations

import os
import time

from scdask.datasets import CONTROL_DRUG, HEADLINE_GENE


def run(workdir: str = "scdask-demo", n_cells: int = 20000, workers: int = 2) -> None:
    """Generate, convert, verify and query a plate, printing results and timings."""
    import dask
    import xarray as xr

    import scdask
    from scdask.datasets import synth
    from scdask.store.verify import info, verify

    os.makedirs(workdir, exist_ok=True)
    src = os.path.join(workdir, "plate.h5ad")
    dst = os.path.join(workdir, "plate.zarr")
    t = time.perf_counter()
    synth(src, n_cells)
    print(f"generated {n_cells:,}-cell Tahoe-like plate {src} "
          f"({os.path.getsize(src) / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    scdask.convert(src, dst, overwrite=True, workers=workers, progress=False)
    d = info(dst)
    print(f"converted to {dst} ({d['size_bytes'] / 1e6:.1f} MB, "
          f"{d['matrices']['X']['nnz']:,} non-zeros) in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    report = verify(dst, against=src)
    print(f"verified every value and obs/var column against the source: "
          f"{'OK' if report.ok else report} ({time.perf_counter() - t:.1f} s)")

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        print(f"local Dask cluster of {workers} processes, dashboard: {client.dashboard_link}")
        times = []
        for _ in range(2):  # the first run also loads scdask's kernels into the workers
            t = time.perf_counter()
            ds = scdask.open(dst)
            g = ds.X.sel(gene=HEADLINE_GENE)
            count, mx, mean = dask.compute(g.count(), g.max(), g.mean())
            times.append(time.perf_counter() - t)
        print(f'scdask.open("{dst}").X.sel(gene="{HEADLINE_GENE}"): count={int(count):,} '
              f"max={float(mx):g} mean={float(mean):.5f} ({times[1]:.3f} s with open; "
              f"{times[0]:.2f} s the first time, workers loading scdask)")
        t = time.perf_counter()
        stats = xr.Dataset({"mean": ds.X.mean("cell"), "var": ds.X.var("cell", ddof=1)}).compute()
        top = stats["var"].to_series().nlargest(2000).index
        print(f"per-gene mean and variance of all {ds.sizes['gene']:,} genes over "
              f"{ds.sizes['cell']:,} cells ({time.perf_counter() - t:.2f} s); most variable: "
              f"{', '.join(top[:5])}")
        t = time.perf_counter()
        pb = scdask.pseudobulk(ds.sel(gene=list(top)), ["drug", "cell_line"]).compute()
        ctrl = pb.where(pb.drug == CONTROL_DRUG, drop=True)
        print(f"pseudobulk by drug × cell_line of the 2,000 most variable genes: "
              f"{pb.sizes['group']:,} groups ({time.perf_counter() - t:.2f} s); "
              f"{CONTROL_DRUG} groups: {ctrl.sizes['group']}, their cells: "
              f"{int(ctrl.n_cells.sum()):,}, mean of {top[0]} in the first: "
              f"{float(ctrl['mean'].isel(group=0).sel(gene=top[0])):.3f}")
