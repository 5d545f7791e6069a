"""Principal component analysis with scanpy's names and results: :func:`pca`, out of core.

The matrix is never densified nor centred cell by cell. Whatever the expression gives the
implicit entries of a gene (0; ``-mean / std`` after ``pp.scale``) is a constant per gene,
and adding a constant to a gene changes no covariance: the covariance is that of the
sparse matrix ``D`` of the stored entries minus their gene's value at zero. One pass
accumulates ``DᵀD`` and ``D``'s column sums per row group (scipy's sparse products, a
``genes × genes`` float64 accumulator) and merges them in a tree; the components are the
leading eigenvectors of the covariance — the exact principal axes, as scanpy's ARPACK
solver finds them. The scores ``X_pca`` are a lazy Dask array, a second pass when computed.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import xarray as xr
from dask.base import tokenize

from scdask.compute import Matrix, as_matrix, wrap
from scdask.compute.blocks import _row_of, runs_to_coo
from scdask.compute.kernels import count_cells
from scdask.parallel import tree_sum
from scdask.tl import kernels

#: Genes above which the ``genes × genes`` accumulator would be too large (8 GiB at 32,768).
MAX_GENES = 16_384
#: Row groups whose ``genes × genes`` products are computed (and summed) together.
GRAM_BATCH = 8
#: Cells per dense tile where the genes are dense enough for BLAS (32 MB at 2,000 genes).
TILE_CELLS = 2048
#: How much slower a sparse product is than BLAS per multiply-add (scipy's, measured).
SPARSE_COST = 30


class _Block:
    """One row group's selected cells as ``D``, the stored entries minus their gene's value
    at zero: its shape, size per cell, and dense tiles of cells (never the whole of it)."""

    def __init__(self, m: Matrix, sel: Any) -> None:
        (self.starts, self.ends, self.vals, self.rows), self.fill = m.entries_and_fill(sel)
        self.sel = sel
        self.row_of = _row_of(sel)
        self.shape = (sel.count, len(self.fill))

    def sparse(self) -> sp.csr_matrix:
        cell, gene, vals = runs_to_coo(self.sel, self.starts, self.ends, self.vals, self.rows)
        d = vals.astype(np.float64) - self.fill[gene]
        return sp.csr_matrix((d, (cell, gene)), shape=self.shape)

    def dense_is_cheaper(self) -> bool:
        """Whether products are cheaper through dense tiles of cells (BLAS) than sparse (a
        cell's entries pair with each other: the sum of squared entries per cell)."""
        per_row = np.zeros(len(self.row_of), np.int64)
        count_cells(self.starts, self.ends, self.rows, per_row)
        per_cell = per_row[self.row_of >= 0].astype(np.float64)
        return bool(SPARSE_COST * (per_cell ** 2).sum() > self.shape[0] * self.shape[1] ** 2 / 2)

    def tiles(self, dtype: Any = np.float64) -> Any:
        """``(first cell, dense tile)`` of :data:`TILE_CELLS` cells at a time."""
        ascending = kernels.cells_ascending(self.starts, self.ends, self.rows, self.row_of)
        cursor = self.starts.astype(np.int64).copy()
        n, p = self.shape
        out = np.empty((min(TILE_CELLS, n), p), dtype, order="F")  # BLAS's order
        for a in range(0, n, TILE_CELLS):
            b = min(a + TILE_CELLS, n)
            tile = out[: b - a]
            kernels.dense_tile(self.starts, self.ends, self.vals, self.rows, self.row_of,
                               self.fill, a, b, cursor, ascending, tile)
            yield a, tile


def _gram(m: Matrix, sel: Any) -> np.ndarray:
    """``[DᵀD | column sums | values at zero]`` of one row group: ``(genes, genes + 2)``
    (summed over row groups, the last column is the values at zero times the groups)."""
    d = _Block(m, sel)
    p = d.shape[1]
    out = np.empty((p, p + 2))
    if d.dense_is_cheaper():  # dense among these genes: BLAS on bounded tiles of cells
        g = out[:, :-2]
        g[:] = 0.0
        sums = np.zeros(p)
        c = c64 = st = None
        for _, tile in d.tiles(np.float32):
            # float32 BLAS (twice float64's speed) on the values less the first tile's mean,
            # so the products carry the spread, not the mean (no cancellation); the sum
            # back in float64, once: Σ x xᵀ = Σ t tᵀ + (Σ t) cᵀ + c (Σ t)ᵀ + n c cᵀ
            if c is None:
                c = tile.mean(axis=0, dtype=np.float64).astype(np.float32)
                c64, st = c.astype(np.float64), np.zeros(p)
            t = tile - c  # numpy's tᵀt is BLAS's syrk, outside the GIL (scipy's holds it)
            st += t.sum(axis=0, dtype=np.float64)
            g += t.T @ t
        if c is not None:
            n_d = d.shape[0]
            g += np.outer(st, c64) + np.outer(c64, st) + n_d * np.outer(c64, c64)
            sums += st + n_d * c64
        out[:, -2] = sums
    else:
        s = d.sparse()
        out[:, :-2] = (s.T @ s).toarray()
        out[:, -2] = np.asarray(s.sum(axis=0)).reshape(-1)
    out[:, -1] = d.fill
    return out


def _scores(m: Matrix, sels: np.ndarray, *, components: np.ndarray, shift: np.ndarray,
            dtype: Any) -> np.ndarray:
    sel = sels.reshape(-1)[0]
    if sel is None:  # an empty selection's one block
        return np.zeros((0, components.shape[1]), dtype)
    d = _Block(m, sel)
    if not d.dense_is_cheaper():
        return (np.asarray(d.sparse() @ components) - shift).astype(dtype)
    out = np.empty((d.shape[0], components.shape[1]), dtype)
    for a, tile in d.tiles():
        out[a : a + len(tile)] = tile @ components - shift
    return out


def pca(
    ds: xr.Dataset,
    n_comps: int | None = None,
    *,
    zero_center: bool = True,
    layer: str | None = None,
    dtype: Any = "float32",
) -> xr.Dataset:
    """Principal components of the matrix, as ``scanpy.pp.pca`` (``scanpy.tl.pca``).

    Parameters
    ----------
    ds
        A Dataset from :func:`scdask.open`, a selection of it (e.g. the highly variable
        genes) or a transform of it from :mod:`scdask.pp` (log-normalized, scaled).
    n_comps
        Components to compute (scanpy's default: 50, or one less than the smaller side).
    zero_center
        Centre each gene first (implicitly: never densified); ``False``: scanpy's truncated
        SVD of the values as they are.
    layer
        Use this matrix instead of ``X``.
    dtype
        The dtype of ``X_pca`` (scanpy's default float32).

    Returns
    -------
    xarray.Dataset
        ``X_pca`` (cell × pc, lazy: computing it is one more pass), ``PCs`` (gene × pc),
        ``variance`` and ``variance_ratio`` (pc), named as anndata stores them
        (``obsm["X_pca"]``, ``varm["PCs"]``, ``uns["pca"]``). Components are unique up
        to sign; each is signed so that its largest loading is positive.
    """
    m = as_matrix(ds, layer or "X", caller="scdask.tl.pca")
    x = m.data
    n, p = m.base.n_sel_cells, m.base.n_sel_genes
    if p > MAX_GENES:
        raise ValueError(
            f"pca of {p:,} genes would need a {p:,} × {p:,} accumulator; select genes first "
            f"(e.g. the highly variable ones, at most {MAX_GENES:,})")
    if n_comps is None:
        n_comps = min(50, n - 1, p - 1)
    if not 0 < n_comps <= min(n, p):
        raise ValueError(f"n_comps={n_comps} for {n:,} cells × {p:,} genes")
    m.operands  # noqa: B018 - lazy operands computed once, before the tasks
    sels = m.base.groups
    gram = dask.delayed(partial(_gram, m), pure=True)
    acc = np.zeros((p, p + 2))
    for i in range(0, len(sels), GRAM_BATCH):  # a bounded number of grams alive at once,
        acc += tree_sum([gram(sel) for sel in sels[i : i + GRAM_BATCH]]).compute()  # any plate
    g, s, fill = acc[:, :-2], acc[:, -2], acc[:, -1] / len(sels)
    mean_d = s / n
    cov0 = g / n - np.outer(mean_d, mean_d)  # covariance with ddof 0 (constants drop out)
    if zero_center:
        evals, evecs = np.linalg.eigh(cov0 * (n / (n - 1)))
        order = np.argsort(evals)[::-1][:n_comps]
        components = evecs[:, order]
        variance = np.maximum(evals[order], 0.0)
        total = np.trace(cov0) * n / (n - 1)
    else:  # the values as they are: X = D + 1 fillᵀ
        gx = g + np.outer(s, fill) + np.outer(fill, s) + n * np.outer(fill, fill)
        evals, evecs = np.linalg.eigh(gx)
        order = np.argsort(evals)[::-1][:n_comps]
        components = evecs[:, order]
        variance = np.einsum("ij,ik,kj->j", components, cov0, components)
        total = np.trace(cov0)
    big = np.argmax(np.abs(components), axis=0)
    components = components * np.sign(components[big, np.arange(n_comps)])
    # scores: (X - mean) V = D V - mean(D) V; uncentred X V = D V + fillᵀ V
    shift = (mean_d @ components) if zero_center else -(fill @ components)
    x_pca = da.map_blocks(partial(_scores, m, components=components, shift=shift, dtype=dtype),
                          m.row_groups(), chunks=(m.base.counts, (n_comps,)), new_axis=1,
                          dtype=dtype, meta=np.empty((0, 0), dtype),
                          name=f"pca-scores-{tokenize(m, components, shift, dtype)}")
    gene_dim = x.dims[1]
    out = xr.Dataset(
        {"X_pca": (("cell", "pc"), wrap(x_pca)), "PCs": ((gene_dim, "pc"), components),
         "variance": ("pc", variance),
         "variance_ratio": ("pc", variance / total if total > 0 else variance * np.nan)},
        coords={"pc": np.arange(n_comps)})
    # the matrix's cell and gene coordinates, as lazy as they are there
    out = out.assign_coords({k: c for k, c in x.coords.items()
                             if c.dims and set(c.dims) <= {"cell", gene_dim}})
    out.attrs.update(zero_center=zero_center, n_comps=n_comps)
    return out
