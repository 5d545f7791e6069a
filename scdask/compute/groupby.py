"""Group-by aggregation of a lazy matrix over cells: pseudobulk per perturbation.

``scdask.pseudobulk(ds, ["drug", "cell_line"])`` gives, per group of cells and
gene, the sum, mean, count of non-zeros and variance — lazily, as Dask arrays
chunked by blocks of genes. Each task reads one row group's values of one
block of genes (a contiguous byte range) and reduces them per group label in a
compiled kernel (:func:`scdask.compute.kernels.label_sums`); the blocks of one gene
range are merged in a tree of dense ``(groups, genes)`` accumulators of bounded
size. The cell × gene matrix is never densified.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from scdask.compute import kernels
from scdask.compute.matrix import as_matrix
from scdask.compute.reading import read_gene_runs
from scdask.compute.selection import GroupSel

#: Bytes of one dense (groups × genes) accumulator of one statistic.
BLOCK_BYTES = 16 << 20
STATISTICS = ("sum", "mean", "count_nonzero", "var")


def _label_partial(sel: GroupSel, genes: np.ndarray, expr: Any, labels: np.ndarray,
                   n_labels: int) -> tuple[np.ndarray, ...]:
    """Per (label, gene) sum, sum of squares and non-zero count of one row group's block."""
    starts, ends, vals, rows = read_gene_runs(sel.part, sel.group, genes, expr, True)
    return kernels.label_sums(starts, ends, vals, rows, labels, n_labels)


def _dense(parts: Sequence[Any], n_labels: int, n_genes: int) -> np.ndarray:
    """Sum partials (triples or dense ``(3, labels, genes)`` arrays) into one dense array."""
    out = np.zeros((3, n_labels, n_genes), dtype=np.float64)
    for p in parts:
        if isinstance(p, np.ndarray):
            out += p
            continue
        lab, gene, s, q, c = p
        flat = lab * n_genes + gene
        for i, v in enumerate((s, q, c)):
            out[i].reshape(-1)[:] += np.bincount(flat, weights=v, minlength=n_labels * n_genes)
    return out


def _stat(acc: np.ndarray, i: int) -> np.ndarray:
    return acc[i]


def pseudobulk(
    data: xr.Dataset | xr.DataArray,
    by: str | Sequence[str],
    *,
    var: str = "X",
    ddof: int = 1,
) -> xr.Dataset:
    """Aggregate cells by the values of obs columns: sum, mean, count_nonzero and var per gene.

    Parameters
    ----------
    data
        A Dataset from :func:`scdask.open` (or a selection of it, e.g. some genes, or
        ``.where(...)`` some cells), or its matrix as a DataArray.
    by
        obs column(s) defining the groups; cells where any is missing are left out.
    var
        The matrix to aggregate when ``data`` is a Dataset.
    ddof
        Delta degrees of freedom of ``var`` (1, as ``scanpy.get.aggregate``).

    Returns
    -------
    xarray.Dataset
        Dimensions ``group`` and the matrix's gene dimension; variables ``sum``,
        ``mean``, ``count_nonzero`` and ``var`` as lazy Dask arrays (float64;
        zeros count as values, as in scanpy); coordinates: the ``by`` columns and
        ``n_cells`` along ``group``.

    Examples
    --------
    >>> pb = scdask.pseudobulk(scdask.open("plate7.zarr"), ["drug", "cell_line"])  # doctest: +SKIP
    >>> pb["mean"].sel(gene="C1orf112").compute()  # doctest: +SKIP
    """
    m = as_matrix(data, var, caller="pseudobulk")
    x, b, expr, gene_dim = m.data, m.base, m.expr, m.gene_dim
    by = [by] if isinstance(by, str) else list(by)
    if expr.fill(b.dtype) != 0:
        raise ValueError(f"pseudobulk needs zeros to stay zeros; {expr} maps 0 to "
                         f"{expr.fill(b.dtype)}")
    frame = pd.DataFrame({c: np.asarray(x[c].values) for c in by})
    codes = frame.groupby(by, observed=True, sort=True, dropna=True).ngroup().to_numpy()
    keys = frame.groupby(by, observed=True, sort=True, dropna=True).size()
    if b.mask is not None:
        keep = np.asarray(b.mask if not isinstance(b.mask, da.Array) else b.mask.compute(), bool)
        codes = np.where(keep.reshape(-1), codes, -1)
    n_labels = len(keys)
    n_cells = np.bincount(codes[codes >= 0], minlength=n_labels).astype(np.int64)
    genes = m.genes
    unique, inverse = np.unique(genes, return_inverse=True)
    block = max(1, min(len(unique) or 1, BLOCK_BYTES // (8 * max(1, n_labels))))
    token = tokenize(b.token, expr, by, codes)
    name = f"pseudobulk-{token}"
    layer: dict[Any, Any] = {}
    blocks = [unique[i : i + block] for i in range(0, len(unique), block)] or [unique]
    for j, g in enumerate(blocks):
        keys_j = []
        for i, sel in enumerate(b.groups):
            lab = np.full(sel.n_rows, -1, np.int64)
            local = np.arange(sel.n_rows) if sel.local is None else sel.local
            lab[local] = codes[sel.first : sel.first + sel.count]
            k = (f"pseudobulk-partial-{token}", i, j)
            layer[k] = (_label_partial, sel, g, expr, lab, n_labels)
            keys_j.append(k)
        level = 0
        while len(keys_j) > 4 or level == 0:
            nxt = []
            for t in range(0, max(1, len(keys_j)), 4):
                k = (f"pseudobulk-combine-{token}", level, t // 4, j)
                layer[k] = (_dense, keys_j[t : t + 4], n_labels, len(g))
                nxt.append(k)
            keys_j, level = nxt, level + 1
        layer[(name, j)] = (_dense, keys_j, n_labels, len(g))
    layers: dict[str, Any] = {name: layer}
    deps: dict[str, set[str]] = {name: set()}
    for i, stat in enumerate(("sum", "sumsq", "nnz")):
        layers[f"{name}-{stat}"] = {(f"{name}-{stat}", 0, j): (_stat, (name, j), i)
                                    for j in range(len(blocks))}
        deps[f"{name}-{stat}"] = {name}
    graph = HighLevelGraph(layers, deps)
    chunks = ((n_labels,), tuple(len(g) for g in blocks))
    total = {s: da.Array(graph, f"{name}-{s}", chunks, dtype=np.float64,
                         meta=np.zeros((0, 0))) for s in ("sum", "sumsq", "nnz")}
    if inverse is not None and not np.array_equal(unique, genes):
        total = {s: a[:, inverse] for s, a in total.items()}
    n = n_cells[:, None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total["sum"] / np.where(n > 0, n, np.nan)
        dof = n - ddof
        m2 = total["sumsq"] - total["sum"] * mean
        variance = da.maximum(m2, 0) / np.where(dof > 0, dof, np.nan)
    dims = ("group", gene_dim)
    out = xr.Dataset(
        {"sum": (dims, total["sum"]), "mean": (dims, mean),
         "count_nonzero": (dims, total["nnz"]), "var": (dims, variance)},
        coords={gene_dim: x[gene_dim].values, "n_cells": ("group", n_cells)},
    )
    index = keys.index.to_frame(index=False)
    for c in by:
        out = out.assign_coords({c: ("group", index[c].to_numpy())})
    return out
