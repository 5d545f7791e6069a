"""Measure conversion against a plain single-process h5py read of the same X, in one run.

    python scripts/measure_convert.py PLATE.h5ad [--chunk-size N ...] [--row-group-size R ...]
    python scripts/measure_convert.py PLATE.h5ad --keep PLATE.zarr   # a plate: one run, kept

Prints, per setting: seconds of the ``scdask.convert`` call and its ratio to the h5py read
(both timed inside their process, imports excluded), peak RSS of the whole process tree (of
a second conversion: sampling it costs CPU), and the store size as a fraction of the input.
With ``--keep``, the default settings are converted once into that path, timed while the
tree's RSS is sampled every 0.25 s (a plate-size conversion is too long to run twice).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from scdask.testing import peak_tree_rss

READ = """
import h5py, sys, time
t = time.perf_counter()
with h5py.File(sys.argv[1], "r") as f:
    X = f["X"]; n = X["indptr"].shape[0] - 1; ip = X["indptr"]
    step = 16384
    for a in range(0, n, step):
        lo, hi = int(ip[a]), int(ip[min(n, a + step)])
        X["indices"][lo:hi]; X["data"][lo:hi]
print(time.perf_counter() - t)
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("src")
    p.add_argument("--chunk-size", type=int, nargs="*", default=[1 << 20])
    p.add_argument("--row-group-size", type=int, nargs="*", default=[16384])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--keep", help="convert once with the default settings into this path")
    args = p.parse_args()
    size = os.path.getsize(args.src)
    read = float(subprocess.run([sys.executable, "-c", READ, args.src], capture_output=True,
                                text=True, check=True).stdout)
    print(f"{args.src}: {size / 1e6:.0f} MB; single-process h5py read of X: {read:.2f} s",
          flush=True)
    if args.keep:
        _once(args.src, args.keep, args.workers, read, size)
        return
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(args.src)))
    try:
        for R in args.row_group_size:
            for C in args.chunk_size:
                dst = os.path.join(tmp, f"R{R}_C{C}.zarr")
                timing = dst + ".seconds"
                code = (f"import time, scdask; t = time.perf_counter(); "
                        f"scdask.convert({args.src!r}, {dst!r}, row_group_size={R}, "
                        f"chunk_size={C}, workers={args.workers}, progress=False); "
                        f"open({timing!r}, 'w').write(str(time.perf_counter() - t))")
                t = time.perf_counter()  # timed alone: the RSS sampler below costs CPU
                subprocess.run([sys.executable, "-c", code], check=True)
                wall = time.perf_counter() - t
                dt = float(open(timing).read())  # the call, as the read is timed: no imports
                rc, peak = peak_tree_rss([sys.executable, "-c", code.replace(
                    "progress=False", "progress=False, overwrite=True")])
                du = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(dst) for f in fs)
                print(f"R={R} C={C}: convert {dt:.2f} s = {dt / read:.2f}x the read ({wall:.2f} s "
                      f"with Python's start and imports), peak RSS {peak / 1e9:.2f} GB, store "
                      f"{du / 1e6:.0f} MB = {du / size:.3f}x the input (rc={rc})")
                shutil.rmtree(dst, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _once(src: str, dst: str, workers: int, read: float, size: int) -> None:
    timing = dst + ".seconds"
    code = (f"import time, scdask; t = time.perf_counter(); "
            f"scdask.convert({src!r}, {dst!r}, workers={workers}, progress=False); "
            f"open({timing!r}, 'w').write(str(time.perf_counter() - t))")
    t = time.perf_counter()
    rc, peak = peak_tree_rss([sys.executable, "-c", code], interval=0.25, timeout=6 * 3600)
    wall = time.perf_counter() - t
    dt = float(open(timing).read())
    du = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(dst) for f in fs)
    print(f"{dst}: convert {dt:.1f} s = {dt / read:.2f}x the read ({wall:.1f} s with Python's "
          f"start and imports), peak RSS of the process tree {peak / 1e9:.2f} GB, store "
          f"{du / 1e9:.2f} GB = {du / size:.3f}x the input (rc={rc})")


if __name__ == "__main__":
    main()
