"""Quality-control metrics with scanpy's names, from one pass: :func:`calculate_qc_metrics`.

One task per row group reads its entries once (:meth:`scdask.compute.Matrix.entries`) and
computes, in a compiled kernel (:mod:`scdask.pp.kernels`), every per-cell metric — the
non-zero count, total, totals of the ``qc_vars`` gene sets and the sums of each cell's top
values — and the per-gene totals and non-zero counts, summed over row groups in a tree.
Without ``percent_top``, a whole store's metrics are its stored per-cell and per-gene
statistics, and the gene sets' totals read only their genes.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import partial
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from scdask.compute import Matrix, as_matrix
from scdask.parallel import tree_sum
from scdask.pp.kernels import qc_row_group


def _row_group(m: Matrix, sel: Any, gene_sets: np.ndarray, ns: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    starts, ends, vals, rows = m.entries(sel)
    keep = np.zeros(sel.n_rows, dtype=np.bool_)
    keep[slice(None) if sel.local is None else sel.local] = True
    cells, genes = qc_row_group(starts, ends, vals, rows, keep, gene_sets, ns)
    return (cells if sel.local is None else cells[:, sel.local]), genes[None]


def calculate_qc_metrics(
    ds: xr.Dataset,
    *,
    expr_type: str = "counts",
    var_type: str = "genes",
    qc_vars: Collection[str] | str = (),
    percent_top: Collection[int] | None = (50, 100, 200, 500),
    layer: str | None = None,
    log1p: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quality-control metrics per cell and per gene, as ``scanpy.pp.calculate_qc_metrics``
    with ``inplace=False``.

    Parameters
    ----------
    ds
        A Dataset from :func:`scdask.open` (or a selection of it).
    expr_type, var_type
        The words in the column names (``total_counts``, ``n_genes_by_counts``).
    qc_vars
        Boolean var columns (e.g. ``"mt"``): each one's total, log1p total and percentage
        of the cell's total.
    percent_top
        Percentages of each cell's total in its top ``n`` genes.
    layer
        Use this matrix instead of ``X``.
    log1p
        Add the ``log1p_`` columns.

    Returns
    -------
    tuple of pandas.DataFrame
        ``obs`` metrics (index: cell names) and ``var`` metrics (index: gene names), the
        columns and dtypes scanpy gives.
    """
    m = as_matrix(ds, layer or "X", caller="scdask.pp.calculate_qc_metrics")
    x = m.data
    gene_dim = x.dims[1]
    qc_vars = [qc_vars] if isinstance(qc_vars, str) else list(qc_vars)
    gene_sets = np.zeros((len(qc_vars), m.base.n_sel_genes), dtype=np.bool_)
    for q, name in enumerate(qc_vars):
        gene_sets[q] = np.asarray(ds[name].values if name in ds.coords else
                                  ds[f"var_{name}"].values, dtype=bool)
    ns = np.sort(np.asarray(list(percent_top or ()), dtype=np.int64))
    if len(ns) and not (ns.max() <= m.base.n_sel_genes and ns.min() > 0):
        raise IndexError("Positions outside range of features.")
    stored = _stored(m, layer, gene_sets) if not len(ns) else None
    if stored is not None:
        cells, genes = stored
    else:
        cells, genes = _one_pass(m, gene_sets, ns)
    dtype = _sum_dtype(x.dtype)
    part = m.base.parts[0]
    obs = pd.DataFrame(index=pd.Index(np.asarray(x["cell"].values),
                                      name=part.store.index_name("obs")))
    n_genes = f"n_{var_type}_by_{expr_type}"
    obs[n_genes] = cells[0].astype(np.int32)
    if log1p:
        obs[f"log1p_{n_genes}"] = np.log1p(obs[n_genes])
    total = f"total_{expr_type}"
    obs[total] = cells[1].astype(dtype)
    if log1p:
        obs[f"log1p_{total}"] = np.log1p(obs[total])
    with np.errstate(invalid="ignore", divide="ignore"):
        for i, n in enumerate(ns):
            obs[f"pct_{expr_type}_in_top_{n}_{var_type}"] = (
                cells[3 + len(qc_vars) + i] / cells[1] * 100)
        for q, name in enumerate(qc_vars):
            obs[f"{total}_{name}"] = cells[3 + q].astype(dtype)
            if log1p:
                obs[f"log1p_{total}_{name}"] = np.log1p(obs[f"{total}_{name}"])
            obs[f"pct_{expr_type}_{name}"] = obs[f"{total}_{name}"] / obs[total] * 100
    n_cells = m.base.n_sel_cells
    var = pd.DataFrame(index=pd.Index(np.asarray(x[gene_dim].values).astype(str),
                                      name=part.store.index_name("var", part.matrix)))
    var[f"n_cells_by_{expr_type}"] = genes[1].astype(np.int64)
    var[f"mean_{expr_type}"] = genes[0] / n_cells if n_cells else np.nan
    if log1p:
        var[f"log1p_mean_{expr_type}"] = np.log1p(var[f"mean_{expr_type}"])
    var[f"pct_dropout_by_{expr_type}"] = (1 - var[f"n_cells_by_{expr_type}"] / n_cells) * 100
    var[total] = genes[0].astype(dtype)
    if log1p:
        var[f"log1p_{total}"] = np.log1p(var[total])
    return obs, var


def _one_pass(m: Matrix, gene_sets: np.ndarray, ns: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Every metric from one read of the entries: a task per row group."""
    m.operands  # noqa: B018 - lazy operands computed once, before the tasks
    task = dask.delayed(partial(_row_group, m), pure=True, nout=2)
    outs = [task(sel, gene_sets, ns) for sel in m.base.groups]
    if not outs:
        return np.zeros((3 + len(gene_sets) + len(ns), 0)), np.zeros((2, m.base.n_sel_genes))
    # per cell: every group's, in order; per gene: a tree of sums
    parts, genes = dask.compute([c for c, _ in outs], tree_sum([g for _, g in outs]))
    return np.concatenate(parts, axis=1), genes[0]


def _stored(m: Matrix, layer: str | None, gene_sets: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray] | None:
    """The metrics from the statistics stored at conversion (``cell_sum``, ``cell_nnz``,
    ``gene_sum``, ``gene_nnz``: non-zero values, as the pass counts them) when they
    describe the matrix asked: ``X`` as stored, every gene (for the cells' metrics) and
    every cell (for the genes'); the gene sets' totals from their genes alone. None
    otherwise."""
    x, b = m.data, m.base
    gene_dim = x.dims[1]
    names = ("cell_sum", "cell_nnz", f"{gene_dim}_sum", f"{gene_dim}_nnz")
    if (layer not in (None, "X") or not m.expr.is_identity or b.genes is not None
            or b.cells is not None or not all(n in x.coords for n in names)
            or any(p.matrix != "X" for p in b.parts)):
        return None
    sets = [x.isel({gene_dim: np.flatnonzero(g)}).sum(gene_dim) for g in gene_sets if g.any()]
    c_sum, c_nnz, g_sum, g_nnz, *totals = dask.compute(*(x.coords[n].data for n in names),
                                                        *(t.data for t in sets))
    cells = np.zeros((3 + len(gene_sets), b.n_sel_cells))
    cells[0], cells[1] = c_nnz, c_sum
    for q in np.flatnonzero(gene_sets.any(axis=1)):
        cells[3 + q] = totals.pop(0)
    return cells, np.stack([np.asarray(g_sum, np.float64), np.asarray(g_nnz, np.float64)])


def _sum_dtype(dtype: Any) -> np.dtype:
    """The dtype of scanpy's sums: the matrix's (integers as int64)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.dtype(np.int64)
    if dtype.kind in "iu":
        return np.dtype(np.int64 if dtype.kind == "i" else np.uint64)
    return dtype
