"""Issue #4's figures: 1 vs 2 worker processes, and a store on an S3 server vs local disk.

    python scripts/measure_scale.py PLATE.h5ad PLATE.zarr

Prints, on a local Dask cluster of 1 and then 2 single-threaded worker processes, the time
of every gene's mean and variance and of a conversion (speed-up = 1-worker / 2-worker);
then the one-gene query (count/max/mean of C1orf112, open included) against the same
store copied to a moto S3 server on 127.0.0.1 and on local disk (medians of 5).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import warnings

import dask

from scdask.testing import timed

warnings.simplefilter("ignore")


def main() -> None:
    import scdask

    src, store = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(store)))
    results = {}
    try:
        for n in (1, 2):
            with scdask.cluster(workers=n, dashboard_address=":0", quiet=True):
                def stats():
                    ds = scdask.open(store)
                    dask.compute(ds.X.mean("cell"), ds.X.var("cell"))

                stats()  # workers load scdask
                t_stats = timed(stats)[1]
                dst = os.path.join(tmp, f"w{n}.zarr")
                t_conv = timed(lambda dst=dst: scdask.convert(src, dst, overwrite=True,
                                                               progress=False), 1)[1]
                results[n] = (t_stats, t_conv)
                print(f"{n} worker process(es): gene mean+var {t_stats:.2f} s, "
                      f"conversion {t_conv:.1f} s")
        print(f"speed-up 1 -> 2 workers: gene mean+var {results[1][0] / results[2][0]:.2f}x, "
              f"conversion {results[1][1] / results[2][1]:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        opts = {"key": "k", "secret": "s", "client_kwargs": {
            "endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-west-2"}}
        fs = s3fs.S3FileSystem(**opts)
        fs.mkdir("bench")
        fs.put(store.rstrip("/") + "/", "bench/plate.zarr", recursive=True)

        def one_gene(url, so=None):
            g = scdask.open(url, storage_options=so).X.sel(gene="C1orf112")
            return dask.compute(g.count(), g.max(), g.mean())

        one_gene(store)
        one_gene("s3://bench/plate.zarr", opts)
        t_local = timed(lambda: one_gene(store), 5)[1]
        t_s3 = timed(lambda: one_gene("s3://bench/plate.zarr", opts), 5)[1]
        print(f"one gene, local disk: {t_local * 1e3:.0f} ms; S3 server on 127.0.0.1: "
              f"{t_s3 * 1e3:.0f} ms ({t_s3 / t_local:.1f}x)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
