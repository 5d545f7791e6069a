"""Inputs shared by the benchmarks: generated plates, made once and kept between runs.

Sizes come from ``SCDASK_ASV_SIZES`` (cells, comma-separated; default ``2000,20000``; the
closing figures use ``200000``); files live in ``SCDASK_ASV_DATA`` (default: a
``scdask-asv`` folder in the temporary directory). Each size has a gzip H5AD (as real
plates are), an uncompressed copy (the page-cache floor for scans) and a scdask store.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings

import dask
import numpy as np

warnings.simplefilter("ignore")

GENE = "C1orf112"


def sizes() -> list[int]:
    return [int(s) for s in os.environ.get("SCDASK_ASV_SIZES", "2000,20000").split(",") if s]


def data_dir() -> str:
    d = os.environ.get("SCDASK_ASV_DATA", os.path.join(tempfile.gettempdir(), "scdask-asv"))
    os.makedirs(d, exist_ok=True)
    return d


def plate(n: int) -> dict[str, str]:
    """Paths of the size-``n`` inputs, generated (and converted) when missing."""
    import scdask
    from scdask.datasets import synth
    from scdask.format import FORMAT_VERSION

    d = data_dir()
    paths = {k: os.path.join(d, f"plate{n}{suffix}") for k, suffix in
             (("h5ad", ".h5ad"), ("raw", "_raw.h5ad"), ("store", f"_v{FORMAT_VERSION}.zarr"),
              ("unchecked", "_unchecked.zarr"))}
    if not os.path.exists(paths["h5ad"] + ".done"):
        synth(paths["h5ad"], n, seed=7)
        open(paths["h5ad"] + ".done", "w").close()
    if not os.path.exists(paths["raw"] + ".done"):
        synth(paths["raw"], n, seed=7, compression=None)
        open(paths["raw"] + ".done", "w").close()
    if not os.path.exists(paths["store"] + ".done"):
        scdask.convert(paths["h5ad"], paths["store"], overwrite=True, progress=False)
        open(paths["store"] + ".done", "w").close()
    if not os.path.exists(paths["unchecked"] + ".done"):
        with unchecked():
            scdask.convert(paths["h5ad"], paths["unchecked"], overwrite=True, progress=False)
        open(paths["unchecked"] + ".done", "w").close()
    with open(os.path.join(paths["unchecked"], "zarr.json")) as f:  # a baseline, not a copy
        if json.load(f)["attributes"]["scdask"]["format_version"] != 1:
            raise RuntimeError(f"{paths['unchecked']} carries checksums: not the baseline")
    return paths


@contextlib.contextmanager
def unchecked():
    """Conversions write format-1 stores, without checksums: the baseline of their cost."""
    import importlib

    convert = importlib.import_module("scdask.conversion.arrays")
    convert._CHECKSUMS = False
    try:
        yield
    finally:
        convert._CHECKSUMS = True


def warm(store: str) -> None:
    """Load scdask's compiled kernels into this process, so timings are of the work only."""
    import scdask

    ds = scdask.open(store)
    x = ds.X.isel(cell=slice(0, 2), gene=slice(0, 2))
    dask.compute(x.mean("cell"), x.sum("gene"), scheduler="sync")


def all_plates() -> dict[int, dict[str, str]]:
    return {n: plate(n) for n in sizes()}


def h5py_read(path: str, step: int = 16384) -> int:
    """The floor: a plain single-process h5py read of X in row slabs."""
    import h5py

    total = 0
    with h5py.File(path, "r") as f:
        X = f["X"]
        ip = X["indptr"]
        n = ip.shape[0] - 1
        for a in range(0, n, step):
            lo, hi = int(ip[a]), int(ip[min(n, a + step)])
            total += len(X["indices"][lo:hi]) + len(X["data"][lo:hi])
    return total


def h5py_gene_mean_var(path: str, step: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """A plain h5py scan computing every gene's mean and variance with ``np.bincount``."""
    import h5py

    with h5py.File(path, "r") as f:
        X = f["X"]
        n, m = X.attrs["shape"]
        ip = X["indptr"]
        s, q = np.zeros(m), np.zeros(m)
        for a in range(0, n, step):
            lo, hi = int(ip[a]), int(ip[min(n, a + step)])
            idx = X["indices"][lo:hi]
            v = X["data"][lo:hi].astype(np.float64)
            s += np.bincount(idx, weights=v, minlength=m)
            q += np.bincount(idx, weights=v * v, minlength=m)
    mean = s / n
    return mean, q / n - mean * mean


def h5py_cell_totals(path: str, step: int = 16384) -> np.ndarray:
    """A plain h5py scan summing each cell's counts."""
    import h5py

    with h5py.File(path, "r") as f:
        X = f["X"]
        ip = np.asarray(X["indptr"][:], dtype=np.int64)
        out = []
        for a in range(0, len(ip) - 1, step):
            b = min(len(ip) - 1, a + step)
            v = X["data"][ip[a] : ip[b]].astype(np.float64)
            rows = np.repeat(np.arange(b - a), np.diff(ip[a : b + 1]))
            out.append(np.bincount(rows, weights=v, minlength=b - a))
    return np.concatenate(out)


def h5py_pseudobulk(path: str, by: list[str], n_genes: int, step: int = 16384) -> tuple:
    """A plain h5py scan: per group of ``by`` and gene, sum, sum of squares and non-zeros
    of the first ``n_genes`` genes, with a scipy indicator-matrix product per slab."""
    import anndata
    import h5py
    import scipy.sparse as sp

    with h5py.File(path, "r") as f:
        obs = anndata.io.read_elem(f["obs"])
        codes = obs.groupby(by, observed=True).ngroup().to_numpy()
        k = int(codes.max()) + 1
        X = f["X"]
        n, m = X.attrs["shape"]
        ip = np.asarray(X["indptr"][:], dtype=np.int64)
        acc = [np.zeros((k, n_genes)) for _ in range(3)]
        for a in range(0, n, step):
            b = min(n, a + step)
            lo, hi = ip[a], ip[b]
            slab = sp.csr_matrix((X["data"][lo:hi].astype(np.float64), X["indices"][lo:hi],
                                  ip[a : b + 1] - lo), shape=(b - a, m))[:, :n_genes]
            ind = sp.csr_matrix((np.ones(b - a), (codes[a:b], np.arange(b - a))), shape=(k, b - a))
            acc[0] += (ind @ slab).toarray()
            acc[1] += (ind @ slab.multiply(slab)).toarray()
            acc[2] += (ind @ (slab != 0).astype(np.float64)).toarray()
    return tuple(acc)


class PlateBenchmark:
    """Shared by the benchmark classes: one parameter (cells), inputs generated once."""

    params = sizes()
    param_names = ["cells"]

    def setup_cache(self):
        return all_plates()
