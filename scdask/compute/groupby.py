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
from functools import partial
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from scdask.compute import kernels
from scdask.compute.array import ScdaskArray
from scdask.compute.blocks import Spec, block_fill, entries
from scdask.compute.matrix import as_matrix
from scdask.compute.proxy import wrap

#: Bytes of one dense (groups × genes) accumulator of one statistic.
BLOCK_BYTES = 16 << 20
STATISTICS = ("sum", "mean", "count_nonzero", "var")


def _label_block(sels: np.ndarray, gpos: np.ndarray, codes: np.ndarray, *ops: Any, spec: Spec,
                 n_labels: int) -> tuple[np.ndarray, ...]:
    """Per (label, gene) sum, sum of squares and non-zero count of one row group's block.

    Cells whose every entry is NaN (masked by ``.where``) belong to no group.
    """
    sel = sels.reshape(-1)[0]
    unique, inverse = spec.genes(gpos)
    empty = np.zeros(0, np.int64)
    if sel is None:
        return empty, empty, np.zeros(0), np.zeros(0), np.zeros(0)
    cells, genes = spec.split(ops)
    fill = block_fill(spec, sel, cells, genes, len(inverse))
    masked = np.isnan(fill.table).all(axis=1)
    if np.any(fill.table[~masked] != 0):
        raise ValueError(f"pseudobulk needs zeros to stay zeros; {spec.expr} maps them to "
                         "other values (aggregate the stored values, then transform)")
    codes = np.where(masked[fill.labels], -1, np.asarray(codes, np.int64).reshape(-1))
    starts, ends, vals, rows = entries(spec, sel, unique, inverse, cells, genes, True)
    lab = np.full(sel.n_rows, -1, np.int64)
    lab[np.arange(sel.n_rows) if sel.local is None else sel.local] = codes
    return kernels.label_sums(starts, ends, vals, rows, lab, n_labels)


def _cell_counts(sels: np.ndarray, gpos: np.ndarray, codes: np.ndarray, *ops: Any, spec: Spec,
                 n_labels: int) -> np.ndarray:
    """Cells per label of one row group (masked cells left out): ``(1, labels)``."""
    sel = sels.reshape(-1)[0]
    if sel is None:
        return np.zeros((1, n_labels), np.int64)
    cells, genes = spec.split(ops)
    fill = block_fill(spec, sel, cells, genes, len(np.asarray(gpos).reshape(-1)))
    masked = np.isnan(fill.table).all(axis=1)
    c = np.asarray(codes, np.int64).reshape(-1)[~masked[fill.labels]]
    return np.bincount(c[c >= 0], minlength=n_labels).reshape(1, -1)


def _dense(parts: Any, n_labels: int, n_genes: int, axis: Any = None, keepdims: bool = False
           ) -> np.ndarray:
    """Sum partials (triples or dense ``(3, labels, genes)`` arrays) into one dense array."""
    out = np.zeros((3, n_labels, n_genes), dtype=np.float64)
    stack = [parts]
    while stack:
        p = stack.pop()
        if isinstance(p, list):
            stack.extend(p)
        elif isinstance(p, np.ndarray):
            out += p
        else:
            lab, gene, s, q, c = p
            flat = lab * n_genes + gene
            for i, v in enumerate((s, q, c)):
                out[i].reshape(-1)[:] += np.bincount(flat, weights=v,
                                                     minlength=n_labels * n_genes)
    return out


def _identity(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    return x


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
    x, b, gene_dim = m.data, m.base, m.gene_dim
    by = [by] if isinstance(by, str) else list(by)
    frame = pd.DataFrame({c: np.asarray(x[c].values) for c in by})
    grouped = frame.groupby(by, observed=True, sort=True, dropna=True)
    codes = grouped.ngroup().to_numpy().astype(np.int64)
    keys = grouped.size()
    n_labels = len(keys)
    arr = m.array
    if any(isinstance(o, da.Array) for o in arr._cell_ops):
        # lazy per-cell operands (X.sum("gene")): computed once, for the group sizes below
        # and every partial, instead of once for each
        arr = ScdaskArray(arr._base, arr._expr, dask.compute(*arr._cell_ops), arr._gene_ops)
    inp = arr.inputs()
    n_genes = b.n_sel_genes
    block = max(1, min(n_genes or 1, BLOCK_BYTES // (8 * max(1, n_labels))))
    args = inp.args(block, "i", "g")
    code_arr = da.from_array(codes, chunks=(inp.counts,))
    args[4:4] = [code_arr, "i"]
    spec = inp.spec
    partials = da.blockwise(_label_block, "ig", *args, adjust_chunks={"i": 1},
                            align_arrays=False, concatenate=True, dtype=np.float64,
                            meta=np.empty((0, 0)), spec=spec, n_labels=n_labels)
    gene_chunks = partials.chunks[1]
    totals = []
    bounds = np.cumsum((0, *gene_chunks))
    for j, width in enumerate(gene_chunks):
        col = partials[:, bounds[j] : bounds[j + 1]]
        acc = da.reduction(col, _identity, partial(_dense, n_labels=n_labels, n_genes=width),
                           combine=partial(_dense, n_labels=n_labels, n_genes=width), axis=0,
                           split_every=4, concatenate=False, dtype=np.float64,
                           meta=np.empty((0,)))
        totals.append(acc)
    cell_args = inp.args(-1, "i", "g")
    cell_args[4:4] = [code_arr, "i"]
    counts = da.blockwise(_cell_counts, "il", *cell_args, new_axes={"l": n_labels},
                          adjust_chunks={"i": 1}, align_arrays=False, concatenate=True,
                          dtype=np.int64, meta=np.empty((0, 0), np.int64), spec=spec,
                          n_labels=n_labels)
    n_cells = counts.sum(axis=0).compute()
    total = {s: da.concatenate([
        t.map_blocks(_stat, i, new_axis=0, chunks=((n_labels,), (w,)), dtype=np.float64,
                     meta=np.empty((0, 0)))
        for t, w in zip(totals, gene_chunks, strict=True)], axis=1)
        for i, s in enumerate(("sum", "sumsq", "nnz"))}
    n = n_cells[:, None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total["sum"] / np.where(n > 0, n, np.nan)
        dof = n - ddof
        m2 = total["sumsq"] - total["sum"] * mean
        variance = da.maximum(m2, 0) / np.where(dof > 0, dof, np.nan)
    dims = ("group", gene_dim)
    out = xr.Dataset(
        {"sum": (dims, wrap(total["sum"])), "mean": (dims, wrap(mean)),
         "count_nonzero": (dims, wrap(total["nnz"])), "var": (dims, wrap(variance))},
        coords={gene_dim: x[gene_dim].values, "n_cells": ("group", n_cells)},
    )
    index = keys.index.to_frame(index=False)
    for c in by:
        out = out.assign_coords({c: ("group", index[c].to_numpy())})
    return out
