"""Parquet export and the PyTorch loader, with naive baselines."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from . import common


class Export(common.PlateBenchmark):
    number = 1
    repeat = (1, 3, 120.0)
    timeout = 1800

    def setup(self, plates, n):
        self.tmp = tempfile.mkdtemp(dir=common.data_dir())

    def teardown(self, plates, n):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_export_parquet_long(self, plates, n):
        import scdask

        scdask.export_parquet(plates[n]["store"], os.path.join(self.tmp, "pq"), progress=False)

    def time_baseline_h5py_read(self, plates, n):
        common.h5py_read(plates[n]["h5ad"])


class Loader(common.PlateBenchmark):
    """Batches of 1,024 shuffled cells, all genes, sparse: one epoch in this process (the
    default threads: every core; and one thread)."""

    number = 1
    repeat = (1, 3, 120.0)
    timeout = 1800

    def setup(self, plates, n):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        from scdask.ml import CellDataset

        for _ in CellDataset(plates[n]["store"], batch_size=64):  # load the kernels
            break

    def time_epoch(self, plates, n):
        from scdask.ml import CellDataset

        for _ in CellDataset(plates[n]["store"], batch_size=1024, seed=0):
            pass

    def time_epoch_1_thread(self, plates, n):
        from scdask.ml import CellDataset

        for _ in CellDataset(plates[n]["store"], batch_size=1024, seed=0, threads=1):
            pass

    def time_baseline_anndata_backed_20_random_batches(self, plates, n):
        import anndata

        a = anndata.read_h5ad(plates[n]["h5ad"], backed="r")
        order = np.random.default_rng(0).permutation(a.n_obs)
        for s in range(0, min(a.n_obs, 20 * 1024), 1024):
            a.X[np.sort(order[s : s + 1024])]
        a.file.close()
