"""Reductions of a lazy matrix from its description: one task per row group, exact merges.

Per row group a compiled kernel (:mod:`scdask.compute.kernels`) turns the selected
genes' values into partial statistics (count, sum, M2, min, max, NaN seen); partials
merge exactly in a tree and :func:`finalize` turns them into sum, mean, var, std,
min, max or count, NaN where numpy gives NaN.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from scdask.compute import kernels
from scdask.compute.expr import Expr
from scdask.compute.kernels import M2, MAX, MIN, NAN, SUM, N
from scdask.compute.reading import read_gene_runs
from scdask.compute.selection import Base, GroupSel


def _cell_weights(sel: GroupSel, mask: np.ndarray | None) -> tuple[np.ndarray, int, int]:
    """Per cell of the group: 0 not selected, 1 selected, 2 selected but masked (NaN)."""
    if sel.local is None and mask is None:
        return np.zeros(0, np.int8), sel.n_rows, 0
    w = np.zeros(sel.n_rows, np.int8)
    local = np.arange(sel.n_rows) if sel.local is None else sel.local
    w[local] = 1
    n_masked = 0
    if mask is not None:
        masked = local[~np.asarray(mask, dtype=bool)]
        w[masked] = 2
        n_masked = len(masked)
    return w, sel.count - n_masked, n_masked


def _constant_partial(value: float, count: int, n: int) -> np.ndarray:
    """The partial of ``count`` entries all equal to ``value``, for ``n`` elements."""
    p = kernels.empty_partial(n)
    if count == 0:
        return p
    if np.isnan(value):
        p[NAN] = 1.0
        return p
    p[N] = count
    p[SUM] = count * value
    p[MIN] = p[MAX] = value
    return p


def gene_partial(sel: GroupSel, unique: np.ndarray | None, n_unique: int, expr: Expr,
                 fill: float, masked_value: float, mask: np.ndarray | None) -> np.ndarray:
    """Per-gene partial statistics over the selected cells of one row group.

    Masked cells are NaN before ``expr``: each of their entries is ``masked_value``.
    """
    w, n_sel, n_masked = _cell_weights(sel, mask)
    starts, ends, vals, rows = read_gene_runs(sel.part, sel.group, unique, expr, w.size > 0)
    out = kernels.empty_partial(n_unique)
    kernels.gene_partials(starts, ends, vals, rows, w, n_sel, fill, out)
    if n_masked:
        out = kernels.merge_partials(out, _constant_partial(masked_value, n_masked, n_unique))
    return out


def cell_partial(sel: GroupSel, unique: np.ndarray | None, inverse: np.ndarray | None,
                 expr: Expr, fill: float, masked_value: float, mask: np.ndarray | None
                 ) -> np.ndarray:
    """Per selected cell of one row group, partial statistics over the selected genes."""
    starts, ends, vals, rows = read_gene_runs(sel.part, sel.group, unique, expr, True)
    if inverse is not None:  # genes in the order selected, repeats included
        starts, ends = starts[inverse], ends[inverse]
    out = np.empty((6, sel.n_rows), dtype=np.float64)
    kernels.cell_partials(starts, ends, vals, rows, fill, out)
    if sel.local is not None:
        out = out[:, sel.local]
    if mask is not None:
        masked = ~np.asarray(mask, dtype=bool)
        n_genes = len(starts)
        out[:, masked] = _constant_partial(masked_value, n_genes, 1)
    return out


def finalize(p: np.ndarray, op: str, skipna: bool, ddof: int, integer: bool) -> np.ndarray:
    """The statistic ``op`` from partials; NaN where numpy would give NaN."""
    n = p[N]
    with np.errstate(invalid="ignore", divide="ignore"):
        if op == "count":  # values that are not NaN
            return n.astype(np.int64)
        if op == "sum":
            r = p[SUM].copy()
        elif op == "mean":
            r = np.where(n > 0, p[SUM] / np.where(n > 0, n, 1), np.nan)
        elif op in ("var", "std"):
            dof = n - ddof
            r = np.where(dof > 0, p[M2] / np.where(dof > 0, dof, 1), np.nan)
            r = np.maximum(r, 0.0)
            if op == "std":
                r = np.sqrt(r)
        elif op == "min":
            r = np.where(n > 0, p[MIN], np.nan)
        elif op == "max":
            r = np.where(n > 0, p[MAX], np.nan)
        else:
            raise ValueError(f"unknown reduction {op!r}")
    if not skipna:
        r = np.where(p[NAN] > 0, np.nan, r)
    if integer and op == "sum":
        # Partials accumulate in float64, exact while no partial sum can reach 2**53:
        # bounded by the largest magnitude times the values counted. Beyond, say so.
        with np.errstate(invalid="ignore"):
            bound = np.maximum(np.abs(p[MIN]), np.abs(p[MAX])) * n
        if (bound >= 2.0**53).any():
            raise OverflowError(
                "an integer sum may exceed 2**53, beyond which its float64 accumulation is "
                "not exact; sum x.astype('float64') to accept a rounded result"
            )
        if not np.isnan(r).any():
            return r.astype(np.int64)
    return r


def _merge(*parts: np.ndarray) -> np.ndarray:
    out = parts[0]
    for p in parts[1:]:
        out = kernels.merge_partials(out, p)
    return out


def _finish_genes(p: np.ndarray, inverse: np.ndarray | None, scalar: bool, op: str,
                  skipna: bool, ddof: int, integer: bool) -> np.ndarray:
    if scalar:
        if inverse is not None:  # repeated genes count as often as selected
            p = p[:, inverse]
        return finalize(kernels.fold_partials(p), op, skipna, ddof, integer).reshape(())
    r = finalize(p, op, skipna, ddof, integer)
    return r if inverse is None else r[inverse]




#: numpy functions computed from the description: (statistic, skip NaN).
REDUCTIONS = {
    np.sum: ("sum", False), np.nansum: ("sum", True),
    np.mean: ("mean", False), np.nanmean: ("mean", True),
    np.var: ("var", False), np.nanvar: ("var", True),
    np.std: ("std", False), np.nanstd: ("std", True),
    np.min: ("min", False), np.nanmin: ("min", True), np.amin: ("min", False),
    np.max: ("max", False), np.nanmax: ("max", True), np.amax: ("max", False),
}


def _masked_value(b: Base, expr: Expr) -> float:
    """What ``expr`` makes of a masked cell's NaN."""
    if b.mask is None:
        return float("nan")
    with np.errstate(invalid="ignore"):
        return float(expr.evaluate(np.array([np.nan], dtype=b.dtype))[0])


def cell_reduction(b: Base, expr: Expr, op: str, skipna: bool, ddof: int, integer: bool
                   ) -> da.Array:
    """Per selected cell, over the selected genes: one task per row group, no combine."""
    unique, inverse = b.gene_index
    fill = expr.fill(b.dtype)
    mval = _masked_value(b, expr)
    shared = tokenize(b.token, expr)  # partials are the same whatever the statistic
    name = f"cell-{op}-" + tokenize(shared, op, skipna, ddof)
    pname = f"cell-partial-{shared}"
    masks, deps = b.mask_blocks()
    layer: dict[Any, Any] = {}
    for i, sel in enumerate(b.groups):
        part_key = (pname, i)
        layer[part_key] = (cell_partial, sel, unique, inverse, expr, fill, mval, masks[i])
        layer[(name, i)] = (finalize, part_key, op, skipna, ddof, integer)
    counts = tuple(g.count for g in b.groups)
    out_dtype = np.int64 if integer and op in ("sum", "count") else np.float64
    if not counts:
        layer[(name, 0)] = (np.zeros, 0, out_dtype)
        counts = (0,)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
    result = da.Array(graph, name, (counts,), dtype=out_dtype, meta=np.zeros(0, out_dtype))
    return result[0] if b.drop_cell else result


def gene_reduction(b: Base, expr: Expr, op: str, skipna: bool, ddof: int, integer: bool,
                   scalar: bool) -> da.Array:
    """Per selected gene (or one number), over the selected cells: partials, a tree, a finish."""
    unique, inverse = b.gene_index
    n_unique = b.n_genes if unique is None else len(unique)
    fill = expr.fill(b.dtype)
    mval = _masked_value(b, expr)
    shared = tokenize(b.token, expr)  # partials are the same whatever the statistic
    name = f"gene-{op}-" + tokenize(shared, op, skipna, ddof, scalar)
    pname, cname = f"gene-partial-{shared}", f"gene-combine-{shared}"
    masks, deps = b.mask_blocks()
    layer: dict[Any, Any] = {}
    keys: list[Any] = []
    for i, sel in enumerate(b.groups):
        k = (pname, i)
        layer[k] = (gene_partial, sel, unique, n_unique, expr, fill, mval, masks[i])
        keys.append(k)
    if not keys:
        k = (pname, 0)
        layer[k] = (kernels.empty_partial, n_unique)
        keys = [k]
    level = 0
    while len(keys) > 1:  # a tree of merges, 8 at a time
        nxt = []
        for j in range(0, len(keys), 8):
            k = (cname, level, j // 8)
            layer[k] = (_merge, *keys[j : j + 8])
            nxt.append(k)
        keys, level = nxt, level + 1
    out_dtype = np.int64 if integer and op in ("sum", "count") else np.float64
    if scalar:
        layer[(name,)] = (_finish_genes, keys[0], inverse, True, op, skipna, ddof, integer)
        graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
        return da.Array(graph, name, (), dtype=out_dtype, meta=np.zeros((), out_dtype))
    layer[(name, 0)] = (_finish_genes, keys[0], inverse, False, op, skipna, ddof, integer)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
    return da.Array(graph, name, ((b.n_sel_genes,),), dtype=out_dtype,
                    meta=np.zeros(0, out_dtype))
