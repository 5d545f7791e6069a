"""Group-by aggregation of a lazy matrix over cells: pseudobulk per perturbation.

``scdask.pseudobulk(ds, ["drug", "cell_line"])`` gives, per group of cells and
gene, the sum, mean, count of non-zeros and variance — lazily, as Dask arrays
chunked by blocks of genes. Each task reads one row group's values of one
block of genes (a contiguous byte range) and reduces them per group label
(:mod:`scdask.compute.labels`); the blocks of one gene range are merged in a tree of
dense ``(groups, genes)`` accumulators of bounded size. The cell × gene matrix is never
densified.
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

from scdask.compute import labels
from scdask.compute.array import ScdaskArray
from scdask.compute.blocks import Spec, block_fill
from scdask.compute.matrix import as_matrix, obs_column
from scdask.compute.proxy import wrap

STATISTICS = ("sum", "mean", "count_nonzero", "var")


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
        zeros count as values, as in scanpy; ``var`` is NaN for a group of ``ddof`` cells
        or fewer, without numpy's warning for each); coordinates: the ``by`` columns and
        ``n_cells`` along ``group``.

    Examples
    --------
    >>> pb = scdask.pseudobulk(scdask.open("plate7.zarr"), ["drug", "cell_line"])  # doctest: +SKIP
    >>> pb["mean"].sel(gene="C1orf112").compute()  # doctest: +SKIP
    """
    m = as_matrix(data, var, caller="pseudobulk")
    x, gene_dim = m.data, m.gene_dim
    by = [by] if isinstance(by, str) else list(by)
    codes, index = _group_codes([obs_column(x, c) for c in by], by)
    n_labels = len(index)
    arr = m.array
    if any(isinstance(o, da.Array) for o in arr._cell_ops):
        # lazy per-cell operands (X.sum("gene")): computed once, for the group sizes below
        # and every partial, instead of once for each
        arr = ScdaskArray(arr._base, arr._expr, dask.compute(*arr._cell_ops), arr._gene_ops)
    inp = arr.inputs()
    acc = labels.accumulate(inp, codes, n_labels, drop_masked=True, minmax=False)
    cell_args = inp.args(-1, "i", "g")
    cell_args[4:4] = [da.from_array(codes, chunks=(inp.counts,)), "i"]
    counts = da.blockwise(_cell_counts, "il", *cell_args, new_axes={"l": n_labels},
                          adjust_chunks={"i": 1}, align_arrays=False, concatenate=True,
                          dtype=np.int64, meta=np.empty((0, 0), np.int64), spec=inp.spec,
                          n_labels=n_labels)
    n_cells = counts.sum(axis=0).compute()
    stat = partial(labels.statistic, acc, skipna=True, quiet=True)
    dims = ("group", gene_dim)
    out = xr.Dataset(
        {"sum": (dims, wrap(stat("sum"))), "mean": (dims, wrap(stat("mean"))),
         "count_nonzero": (dims, wrap(stat("count_nonzero"))),
         "var": (dims, wrap(stat("var", ddof=ddof)))},
        coords={gene_dim: x[gene_dim].values, "n_cells": ("group", n_cells)},
    )
    for c in by:
        out = out.assign_coords({c: ("group", index[c].to_numpy())})
    return out


#: Cells counted at once while grouping (bounds numpy's temporaries).
COUNT_CELLS = 1 << 22
#: Key combinations counted in an array; more are counted in a dict of those that occur.
DENSE_COMBINATIONS = 1 << 26


def _group_codes(columns: list[Any], by: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Each cell's group (-1: a key is missing) among the key combinations that occur,
    ordered as pandas' ``groupby(sort=True, observed=True)`` orders them (categories in
    their order, other values sorted), and those combinations. A categorical key is used
    as its codes, so the client holds about a byte a cell, not pandas' eight."""
    parts = []
    for col in columns:
        if isinstance(col, pd.Categorical):
            parts.append((np.asarray(col.codes), col.categories))
        else:
            c, uniques = pd.factorize(col, sort=True)
            parts.append((c, pd.Index(uniques)))
    sizes = [len(u) for _, u in parts]
    n = len(parts[0][0])
    total = int(np.prod(sizes, dtype=np.float64))
    if total >= 2**62:
        raise ValueError(f"pseudobulk: {total:.3g} combinations of {by} cannot be counted")

    def combination(a: int) -> np.ndarray:  # the key combination of cells a:a + COUNT_CELLS
        mixed = np.zeros(min(n, a + COUNT_CELLS) - a, np.int64)
        for (c, _), size in zip(parts, sizes, strict=True):
            piece = np.asarray(c[a : a + len(mixed)], np.int64)
            mixed = np.where((mixed < 0) | (piece < 0), -1, mixed * size + piece)
        return mixed

    counts: dict[int, int] | np.ndarray = (
        {} if total > DENSE_COMBINATIONS else np.zeros(total, np.int64))
    for a in range(0, n, COUNT_CELLS):  # a slice at a time: numpy's temporaries stay small
        present = (mixed := combination(a))[mixed >= 0]
        if isinstance(counts, np.ndarray):
            counts += np.bincount(present, minlength=total)
        else:
            for k, v in zip(*np.unique(present, return_counts=True), strict=True):
                counts[int(k)] = counts.get(int(k), 0) + int(v)
    seen = (np.flatnonzero(counts) if isinstance(counts, np.ndarray)
            else np.array(sorted(counts), np.int64))
    codes = labels.narrow(np.empty(n, np.int8), len(seen))
    for a in range(0, n, COUNT_CELLS):
        mixed = combination(a)
        codes[a : a + len(mixed)] = np.where(mixed >= 0, np.searchsorted(seen, mixed), -1)
    index = pd.DataFrame({name: uniques[pos] for name, (_, uniques), pos in zip(
        by, parts, np.unravel_index(seen, sizes) if sizes else (), strict=True)})
    return codes, index
