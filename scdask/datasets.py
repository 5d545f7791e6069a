"""Synthetic Tahoe-like plates, written straight to H5AD in batches.

A generated plate has Tahoe-100M's shape per cell (62,710 genes, float32 raw
counts in CSR with int64 indptr, ~1,200–1,400 detected genes and ~2,000 UMIs per
cell, a log-normal spread of gene means), its obs columns, and a gene
``C1orf112`` with a mean near 0.04. Cells are generated and written a batch at
a time, so millions of cells need no more memory than a few thousand.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import h5py
import numba
import numpy as np

from scdask._jit import jit

N_GENES = 62710
HEADLINE_GENE = "C1orf112"
CONTROL_DRUG = "DMSO_TF"
_FIRST_GENES = ["TSPAN6", "TNMD", "DPM1", "SCYL3", HEADLINE_GENE, "FGR", "CFH", "FUCA2", "GCLC", "NFYA"]
_MITO = [f"MT-{g}" for g in ("ND1", "ND2", "CO1", "CO2", "ATP8", "ATP6", "CO3", "ND3", "ND4L", "ND4", "ND5", "ND6", "CYB")]
_SIGMA = 2.35  # log-normal spread of gene expression: gives ~1,300 detected genes per 2,000 UMIs
_UMIS = 2000.0
_HEADLINE_MEAN = 0.04
_BATCH = 4096


def gene_names(n_genes: int = N_GENES) -> np.ndarray:
    """Unique gene symbols: a few real ones first (C1orf112 at position 4), then synthetic."""
    names = list(_FIRST_GENES[: max(0, n_genes)])
    mito = _MITO[: max(0, min(len(_MITO), n_genes - len(names)))]
    rest = n_genes - len(names) - len(mito)
    names += [f"SYN{j:05d}" for j in range(rest)] + mito
    return np.array(names[:n_genes], dtype=object)


_DRUG_CAP = 16  # at most this many extra UMIs per drug-responsive gene


@jit(parallel=True)
def _sample_batch(cdfs, line_of_cell, umis, seeds, drug_genes, drug_of_cell, drug_boost):  # pragma: no cover
    """Counts of one batch of cells, as (genes, values) in per-cell slots of a flat buffer.

    A cell's UMIs are a multinomial draw over its cell line's gene CDF, made in gene order:
    sorted uniforms (exponential spacings) walked along the CDF with galloping search, so no
    sort and O(log gap) per UMI. A drug's responsive genes then get up to ``_DRUG_CAP`` extra
    UMIs each.
    """
    n = umis.shape[0]
    n_genes = cdfs.shape[1]
    n_drug = drug_genes.shape[1]
    slots = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        slots[i + 1] = slots[i] + umis[i] + n_drug
    genes_out = np.empty(slots[n], dtype=np.int32)
    vals_out = np.empty(slots[n], dtype=np.float32)
    nnz = np.zeros(n, dtype=np.int64)
    order = np.argsort(line_of_cell, kind="mergesort")  # a cell line's CDF stays in cache
    for t in numba.prange(n):
        i = order[t]
        np.random.seed(seeds[i])
        cdf = cdfs[line_of_cell[i]]
        m = umis[i]
        spacing = np.empty(m + 1)
        s = 0.0
        for k in range(m + 1):
            s += np.random.exponential()
            spacing[k] = s
        scale = cdf[n_genes - 1] / s
        bg_genes = np.empty(m, dtype=np.int64)
        bg_counts = np.empty(m, dtype=np.int64)
        nb = 0
        g = 0
        k = 0
        while k < m:
            u = spacing[k] * scale  # < cdf[-1], as spacing[k] < s
            if cdf[g] <= u:  # first g with cdf[g] > u: gallop, then bisect
                lo = g
                step = 1
                hi = lo + 1
                while hi < n_genes - 1 and cdf[hi] <= u:
                    lo = hi
                    step *= 2
                    hi = lo + step
                hi = min(hi, n_genes - 1)
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if cdf[mid] <= u:
                        lo = mid
                    else:
                        hi = mid
                g = hi
            c = 0
            while k < m and spacing[k] * scale < cdf[g]:
                c += 1
                k += 1
            bg_genes[nb] = g
            bg_counts[nb] = c
            nb += 1
        extra_genes = np.empty(n_drug, dtype=np.int64)
        extra_counts = np.zeros(n_drug, dtype=np.int64)
        ne = 0
        d = drug_of_cell[i]
        if d >= 0:
            for j in np.argsort(drug_genes[d]):
                c = min(np.random.poisson(drug_boost), _DRUG_CAP)
                gene = drug_genes[d, j]
                if c == 0 or gene >= n_genes:
                    continue
                if ne > 0 and extra_genes[ne - 1] == gene:
                    extra_counts[ne - 1] += c
                else:
                    extra_genes[ne] = gene
                    extra_counts[ne] = c
                    ne += 1
        out = slots[i]
        a = 0
        b = 0
        while a < nb or b < ne:  # merge the two gene-sorted lists
            if b >= ne or (a < nb and bg_genes[a] < extra_genes[b]):
                genes_out[out] = bg_genes[a]
                vals_out[out] = bg_counts[a]
                a += 1
            elif a >= nb or extra_genes[b] < bg_genes[a]:
                genes_out[out] = extra_genes[b]
                vals_out[out] = extra_counts[b]
                b += 1
            else:
                genes_out[out] = bg_genes[a]
                vals_out[out] = bg_counts[a] + extra_counts[b]
                a += 1
                b += 1
            out += 1
        nnz[i] = out - slots[i]
    return genes_out, vals_out, slots, nnz


def _gene_probabilities(n_genes: int, rng: np.random.Generator) -> np.ndarray:
    p = np.exp(_SIGMA * rng.standard_normal(n_genes))
    p /= p.sum()
    if n_genes > 4:
        # C1orf112 gets the expected count 0.04 per cell, the rest is rescaled around it.
        target = _HEADLINE_MEAN / _UMIS
        p[4] = 0.0
        p *= (1.0 - target) / p.sum()
        p[4] = target
    return p


def synth(
    path: str | os.PathLike[str],
    n_cells: int = 20000,
    *,
    n_genes: int = N_GENES,
    n_drugs: int = 95,
    n_cell_lines: int = 50,
    plate: int = 7,
    seed: int = 0,
    compression: str | None = "gzip",
    batch_size: int = _BATCH,
    workers: int | None = None,
) -> str:
    """Write a synthetic Tahoe-like plate to ``path`` as H5AD.

    Parameters
    ----------
    path
        File to write (overwritten).
    n_cells, n_genes
        Shape of X.
    n_drugs, n_cell_lines
        Number of drugs (one of them the ``DMSO_TF`` control) and of cell lines.
    plate
        Plate number, in the ``plate`` and ``sample`` columns.
    seed
        Random seed: the same arguments write the same file.
    compression
        ``"gzip"`` (as the real plates), ``"lzf"`` or None.
    batch_size
        Cells generated and written per batch.
    workers
        Threads that deflate X's chunks (all cores by default). Cells are sampled on all
        cores too; the file is the same whatever the number.

    Returns
    -------
    str
        ``path``.

    Examples
    --------
    >>> from scdask.datasets import synth
    >>> synth("plate.h5ad", n_cells=1000)  # doctest: +SKIP
    """
    rng = np.random.default_rng(seed)
    n_drugs = max(1, n_drugs)
    n_cell_lines = max(1, n_cell_lines)
    base = _gene_probabilities(n_genes, rng)
    line_effect = np.where(rng.random((n_cell_lines, n_genes)) < 0.05,
                           np.exp(rng.normal(0, 1.0, (n_cell_lines, n_genes))), 1.0)
    weights = base[None, :] * line_effect
    if n_genes > 4:
        weights[:, 4] = base[4]  # the headline gene does not depend on the cell line
    cdfs = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    n_drug_genes = min(10, n_genes)
    drug_genes = rng.integers(0, max(1, n_genes), size=(n_drugs, n_drug_genes)).astype(np.int32)
    if n_genes > 4:
        drug_genes[drug_genes == 4] = 5 % n_genes

    drugs = [CONTROL_DRUG] + [f"Drug_{i:03d}" for i in range(1, n_drugs)]
    lines = [f"CVCL_{1000 + i:04d}" for i in range(n_cell_lines)]
    samples = [f"smp_{plate}_{i:03d}" for i in range(n_drugs)]
    concs = [f"[('{d}', {0.05 * (1 + i % 3):.2f}, 'uM')]" for i, d in enumerate(drugs)]
    is_mito = np.array([str(g).startswith("MT-") for g in gene_names(n_genes)], dtype=bool)

    w = _H5ADWriter(os.fspath(path), n_cells, n_genes, compression, workers)
    w.categorical("plate", [f"plate{plate}"])
    w.categorical("sample", samples)
    w.strings("BARCODE")
    w.categorical("drug", drugs)
    w.categorical("drugname_drugconc", concs)
    w.categorical("cell_line", lines)
    for col in ("gene_count", "tscp_count", "mread_count"):
        w.numeric(col, np.int64)
    for col in ("pcnt_mito", "S_score", "G2M_score"):
        w.numeric(col, np.float64)
    w.categorical("phase", ["G1", "G2M", "S"])
    w.categorical("pass_filter", ["full", "minimal"])

    for start in range(0, n_cells, batch_size):
        n = min(batch_size, n_cells - start)
        line = rng.integers(0, n_cell_lines, n)
        drug = rng.integers(0, n_drugs, n)
        drug_of_cell = np.where(drug == 0, -1, drug).astype(np.int64)
        umis = np.maximum(1, rng.lognormal(np.log(_UMIS), 0.3, n)).astype(np.int64)
        seeds = rng.integers(0, 2**31 - 1, n)
        genes, vals, slots, nnz = _sample_batch(cdfs, line.astype(np.int64), umis, seeds,
                                                drug_genes, drug_of_cell, 2.0)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(nnz, out=indptr[1:])
        keep = np.repeat(slots[:-1] - indptr[:-1], nnz) + np.arange(indptr[-1])
        indices = genes[keep]
        data = vals[keep]
        totals = np.add.reduceat(data.astype(np.float64), indptr[:-1]) if len(data) else np.zeros(n)
        totals[nnz == 0] = 0
        in_mito = is_mito[indices]
        mito_sum = np.bincount(np.repeat(np.arange(n), nnz), weights=data * in_mito, minlength=n)
        s_score = rng.normal(0, 0.2, n)
        g2m = rng.normal(0, 0.2, n)
        phase = np.where((s_score < 0) & (g2m < 0), 0, np.where(g2m > s_score, 1, 2))
        cells = np.arange(start, start + n)
        w.append_rows(
            indptr, indices, data,
            index=np.array([f"p{plate}_{c:09d}" for c in cells], dtype=object),
            columns={
                "plate": np.zeros(n, np.int8),
                "sample": drug,
                "BARCODE": np.array([_barcode(c, plate) for c in cells], dtype=object),
                "drug": drug,
                "drugname_drugconc": drug,
                "cell_line": line,
                "gene_count": nnz,
                "tscp_count": totals.astype(np.int64),
                "mread_count": (totals * rng.uniform(1.2, 1.8, n)).astype(np.int64),
                "pcnt_mito": np.where(totals > 0, 100 * mito_sum / np.maximum(totals, 1), 0.0),
                "S_score": s_score,
                "G2M_score": g2m,
                "phase": phase,
                "pass_filter": (rng.random(n) < 0.1).astype(np.int8),
            },
        )
    w.finish(gene_names(n_genes))
    return os.fspath(path)


_GZIP_LEVEL = 4  # h5py's and so anndata's default


class _ChunkAppender:
    """Appends to a 1-D chunked dataset a whole chunk at a time.

    Chunks are deflated in a thread pool (zlib releases the GIL) and written with HDF5's
    direct chunk write, so writing uses every core; the partial last chunk is written,
    zero-padded as HDF5 stores edge chunks, by :meth:`finish`.
    """

    def __init__(self, ds: h5py.Dataset, pool: ThreadPoolExecutor, deflate: bool) -> None:
        self.ds, self.pool, self.deflate = ds, pool, deflate
        self.chunk = ds.chunks[0]
        self.tail = np.empty(0, ds.dtype)
        self.written = 0

    def append(self, values: np.ndarray) -> None:
        buf = np.concatenate([self.tail, values.astype(self.ds.dtype, copy=False)])
        whole = len(buf) // self.chunk * self.chunk
        self._write(buf[:whole])
        self.tail = buf[whole:].copy()

    def finish(self) -> None:
        self._write(self.tail)
        self.tail = self.tail[:0]

    def _encode(self, piece: np.ndarray) -> bytes:
        if len(piece) < self.chunk:
            piece = np.concatenate([piece, np.zeros(self.chunk - len(piece), piece.dtype)])
        raw = piece.tobytes()
        return zlib.compress(raw, _GZIP_LEVEL) if self.deflate else raw

    def _write(self, buf: np.ndarray) -> None:
        if not len(buf):
            return
        start = self.written
        self.ds.resize((start + len(buf),))
        pieces = [buf[i : i + self.chunk] for i in range(0, len(buf), self.chunk)]
        for k, blob in enumerate(self.pool.map(self._encode, pieces)):
            self.ds.id.write_direct_chunk((start + k * self.chunk,), blob)
        self.written += len(buf)


_ACGT = np.array(list("ACGT"))


def _barcode(cell: int, plate: int) -> str:
    digits = np.base_repr(cell * 2654435761 % (4**24), 4).zfill(24)
    return "".join(_ACGT[int(d)] for d in digits[:8]) + "_" + "".join(
        _ACGT[int(d)] for d in digits[8:16]) + "_" + "".join(_ACGT[int(d)] for d in digits[16:]) + f"-{plate}"


class _H5ADWriter:
    """Append-only writer of the anndata 0.8+ H5AD layout (CSR X, dataframe obs/var)."""

    def __init__(self, path: str, n_obs: int, n_vars: int, compression: str | None,
                 workers: int | None = None) -> None:
        self.f = h5py.File(path, "w")
        self.f.attrs["encoding-type"] = "anndata"
        self.f.attrs["encoding-version"] = "0.1.0"
        self.comp = ({"compression": "gzip", "compression_opts": _GZIP_LEVEL} if compression == "gzip"
                     else {"compression": compression} if compression else {})
        self.n_obs, self.n_vars = n_obs, n_vars
        self.rows = 0
        X = self.f.create_group("X")
        X.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": np.array([n_obs, n_vars])})
        chunk = (1 << 16,)
        X.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=chunk, **self.comp)
        X.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=chunk, **self.comp)
        X.create_dataset("indptr", data=np.zeros(n_obs + 1, np.int64), chunks=(min(n_obs + 1, 1 << 16),), **self.comp)
        self.entries = 0
        self.pool = ThreadPoolExecutor(workers or os.cpu_count() or 1) if compression != "lzf" else None
        self.X = {name: _ChunkAppender(X[name], self.pool, compression == "gzip") if self.pool else None
                  for name in ("data", "indices")}
        self.obs = self.f.create_group("obs")
        self.obs.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0",
                               "_index": "_index"})
        self._strings_ds(self.obs, "_index")
        self.order: list[str] = []
        self.kinds: dict[str, str] = {}
        for g in ("layers", "obsm", "obsp", "uns", "varm", "varp"):
            self.f.create_group(g).attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})

    def _strings_ds(self, group: h5py.Group, name: str) -> h5py.Dataset:
        ds = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(),
                                  chunks=(1 << 14,), **self.comp)
        ds.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        return ds

    def categorical(self, name: str, categories: list[str]) -> None:
        g = self.obs.create_group(name)
        g.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False})
        codes_dtype = np.int8 if len(categories) < 128 else np.int16
        codes = g.create_dataset("codes", shape=(0,), maxshape=(None,), dtype=codes_dtype, chunks=(1 << 16,), **self.comp)
        codes.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        cats = g.create_dataset("categories", data=np.array(categories, dtype=object), dtype=h5py.string_dtype())
        cats.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        self.order.append(name)
        self.kinds[name] = "categorical"

    def strings(self, name: str) -> None:
        self._strings_ds(self.obs, name)
        self.order.append(name)
        self.kinds[name] = "strings"

    def numeric(self, name: str, dtype: type) -> None:
        ds = self.obs.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(1 << 16,), **self.comp)
        ds.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        self.order.append(name)
        self.kinds[name] = "numeric"

    @staticmethod
    def _append(ds: h5py.Dataset, values: np.ndarray) -> None:
        n = ds.shape[0]
        ds.resize((n + len(values),))
        ds[n:] = values

    def append_rows(self, indptr, indices, data, index, columns) -> None:
        X = self.f["X"]
        offset = self.entries
        for name, values in (("data", data), ("indices", indices)):
            appender = self.X[name]
            if appender is None:
                self._append(X[name], values.astype(X[name].dtype))
            else:
                appender.append(values)
        self.entries += len(data)
        X["indptr"][self.rows + 1 : self.rows + len(indptr)] = indptr[1:] + offset
        self._append(self.obs["_index"], index)
        for name in self.order:
            target = self.obs[name]["codes"] if self.kinds[name] == "categorical" else self.obs[name]
            self._append(target, np.asarray(columns[name]).astype(target.dtype))
        self.rows += len(indptr) - 1

    def finish(self, var_names: np.ndarray) -> None:
        for appender in self.X.values():
            if appender is not None:
                appender.finish()
        if self.pool is not None:
            self.pool.shutdown()
        self.obs.attrs["column-order"] = np.array(self.order, dtype=object)
        var = self.f.create_group("var")
        var.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0",
                          "_index": "_index", "column-order": np.array(["gene_name"], dtype=object)})
        for name in ("_index", "gene_name"):
            ds = var.create_dataset(name, data=var_names, dtype=h5py.string_dtype(), **self.comp)
            ds.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        self.f.close()
