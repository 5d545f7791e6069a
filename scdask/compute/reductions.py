"""Reductions of a lazy matrix from its description: one task per row group, exact merges.

Per row group a compiled kernel (:mod:`scdask.compute.kernels`) turns the selected
genes' values into partial statistics (count, sum, M2, min, max, NaN seen); partials
merge exactly in a tree and :func:`finalize` turns them into sum, mean, var, std,
min, max or count, NaN where numpy gives NaN.
"""

from __future__ import annotations

import warnings
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from scdask.compute import kernels
from scdask.compute.blocks import (
    CLASS_LIMIT,
    Spec,
    batches,
    block_fill,
    dense_block,
    evaluated,
    fill_plan,
    gene_chunks,
    stored_runs,
    take_runs,
    warn_dense,
)
from scdask.compute.kernels import M2, MAX, MIN, NAN, SUM, N
from scdask.format import cell_stat_array


def gene_block(sels: np.ndarray, gpos: np.ndarray, *ops: Any, spec: Spec) -> np.ndarray:
    """Per gene, partial statistics over the selected cells of one or more row groups (a
    task's batch, in order): ``(1, 6, genes)``."""
    groups = [s for s in sels.reshape(-1) if s is not None]
    if len(groups) <= 1:
        return _group_partials(groups[0] if groups else None, gpos, ops, spec)[None]
    if not spec.n_cells and all(s.local is None for s in groups):
        return _whole_groups_partials(groups, gpos, ops, spec)[None]
    part = None
    at = 0
    n_cells = spec.n_cells
    for sel in groups:  # per-cell operands hold the batch's cells, group after group
        own = tuple(o[at : at + sel.count] for o in ops[:n_cells]) + tuple(ops[n_cells:])
        at += sel.count
        p = _group_partials(sel, gpos, own, spec)
        part = p if part is None else kernels.merge_partials(part, p)
    return part[None]


#: Stored entries of several row groups reduced in one kernel call (bounds what is held).
COMBINE_ENTRIES = 1 << 21


def _whole_groups_partials(groups: list[Any], gpos: np.ndarray, ops: tuple[Any, ...],
                           spec: Spec) -> np.ndarray:
    """Per gene, partial statistics over every cell of several row groups, without per-cell
    operands: the implicit entries hold the same values in every group, so the groups'
    runs of each gene are joined and reduced together, up to :data:`COMBINE_ENTRIES`
    entries per kernel call (one gene over many row groups: one call, not one per group)."""
    unique, inverse = spec.genes(gpos)
    _, genes = spec.split(ops)
    fill = fill_plan(spec.expr, spec.base.dtype, [], genes, 0, len(inverse))
    part = None
    pending: list[tuple[np.ndarray, ...]] = []
    n_entries = n_cells = 0

    def flush() -> np.ndarray:
        starts, ends, vals = _joined(pending)
        out = np.empty((6, len(inverse)))
        empty = np.zeros(0, np.int64)
        for j0, j1, s, e, v, r in evaluated(spec, (starts, ends, vals, empty), inverse, [],
                                            genes, False, native=True):
            table = fill.table[:, j0:j1] if fill.per_gene else fill.table
            o = np.empty((6, j1 - j0))
            kernels.gene_partials(s, e, v, r, empty, np.array([n_cells], np.int64),
                                  np.ascontiguousarray(table), o)
            out[:, j0:j1] = o
        return out

    for sel in groups:
        runs = stored_runs(spec, sel, unique, False)
        if pending and n_entries + len(runs[2]) > COMBINE_ENTRIES:
            p = flush()
            part = p if part is None else kernels.merge_partials(part, p)
            pending, n_entries, n_cells = [], 0, 0
        pending.append(runs[:3])
        n_entries += len(runs[2])
        n_cells += sel.count
    p = flush()
    return p if part is None else kernels.merge_partials(part, p)


def _joined(runs: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs ``(starts, ends, values)`` of the same genes in several row groups as one
    run per gene (each gene's entries group after group)."""
    if len(runs) == 1:
        return runs[0]
    vals = np.concatenate([r[2] for r in runs])
    if all(len(r[0]) == 1 and r[0][0] == 0 and r[1][0] == len(r[2]) for r in runs):
        # one gene, each group's values all of its run: joined as read
        return np.zeros(1, np.int64), np.array([len(vals)], np.int64), vals
    offsets = np.cumsum([0] + [len(r[2]) for r in runs[:-1]])
    s = np.stack([r[0] for r in runs]) + offsets[:, None]
    lengths = np.stack([r[1] - r[0] for r in runs])
    if s.shape[1] == 1:  # one gene: the groups' runs, one after another
        idx = take_runs(s[:, 0], s[:, 0] + lengths[:, 0])
    else:
        idx = take_runs(s.T.reshape(-1), (s + lengths).T.reshape(-1))
    per_gene = lengths.sum(0)
    ends = np.cumsum(per_gene)
    return ends - per_gene, ends, vals[idx]


def _group_partials(sel: Any, gpos: np.ndarray, ops: tuple[Any, ...], spec: Spec) -> np.ndarray:
    """Per gene, partial statistics over one row group's selected cells: ``(6, genes)``."""
    unique, inverse = spec.genes(gpos)
    cells, genes = spec.split(ops)
    n_genes = len(inverse)
    if sel is None:
        return kernels.empty_partial(n_genes)
    fill = block_fill(spec, sel, cells, genes, n_genes)
    if fill.n_classes > CLASS_LIMIT:
        warn_dense(spec.expr, f"its value at zero takes {fill.n_classes} values in a row group")
        return np.concatenate([
            kernels.dense_partials(dense_block(spec, sel, unique, inverse, cells, genes, fill, q), 0)
            for q in gene_chunks(sel.count, n_genes)], axis=1)
    with_rows = sel.local is not None or fill.n_classes > 1
    lab = np.zeros(0, np.int64)
    if with_rows:
        lab = np.full(sel.n_rows, -1, np.int64)
        lab[np.arange(sel.n_rows) if sel.local is None else sel.local] = fill.labels
    n_class = np.bincount(fill.labels, minlength=fill.n_classes).astype(np.int64)
    part = np.empty((6, n_genes))
    # values in the expression's own dtype: the kernel accumulates in float64 (no float64
    # copy of every batch)
    for j0, j1, starts, ends, vals, rows in batches(spec, sel, unique, inverse, cells, genes,
                                                   with_rows, native=True):
        table = fill.table[:, j0:j1] if fill.per_gene else fill.table
        out = np.empty((6, j1 - j0))
        kernels.gene_partials(starts, ends, vals, rows, lab, n_class, np.ascontiguousarray(table),
                              out)
        part[:, j0:j1] = out
    return part


def cell_block(sels: np.ndarray, gpos: np.ndarray, *ops: Any, spec: Spec,
               stored: bool = False) -> np.ndarray:
    """Per selected cell of one row group, partial statistics over the genes: ``(6, cells)``
    (with ``stored``, from the statistics stored at conversion when they serve)."""
    sel = sels.reshape(-1)[0]
    if sel is None:
        return kernels.empty_partial(0)
    part = _stored_cells(sel, len(gpos)) if stored else None
    if part is not None:
        return part
    unique, inverse = spec.genes(gpos)
    cells, genes = spec.split(ops)
    n_genes = len(inverse)
    fill = block_fill(spec, sel, cells, genes, n_genes)
    if fill.per_gene:
        warn_dense(spec.expr, "its value at zero differs per gene, reduced over genes")
        part = kernels.empty_partial(sel.count)
        for q in gene_chunks(sel.count, n_genes):
            d = dense_block(spec, sel, unique, inverse, cells, genes, fill, q)
            part = kernels.merge_partials(part, kernels.dense_partials(d, 1))
        return part
    local = np.arange(sel.n_rows) if sel.local is None else sel.local
    row_fill = np.zeros(sel.n_rows)
    row_fill[local] = fill.cell_fill()
    acc = None
    for _, _, starts, ends, vals, rows in batches(spec, sel, unique, inverse, cells, genes, True,
                                                  native=True):
        out = np.empty((6, sel.n_rows))
        kernels.cell_partials(starts, ends, vals, rows, row_fill, out)
        acc = out if acc is None else kernels.merge_partials(acc, out)
    if acc is None:  # no genes
        acc = np.empty((6, sel.n_rows))
        kernels.cell_partials(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                              np.zeros(0, np.int32), row_fill, acc)
    return acc if sel.local is None else acc[:, sel.local]


def _stored_cells(sel: Any, n_genes: int) -> np.ndarray | None:
    """Partials over every gene of a row group's selected cells, from the per-cell statistics
    stored at conversion (exact for counts); None where a NaN makes them unusable."""
    st, name = sel.part.store, sel.part.matrix
    lo, hi = st.group_rows(sel.group)
    s, ss, mn, mx = (np.asarray(st.array(f"{name}/{cell_stat_array(k)}")[lo:hi], np.float64)
                     for k in ("sum", "sumsq", "min", "max"))
    if n_genes == 0 or np.isnan(s).any() or np.isnan(mn).any():
        return None
    out = np.empty((6, len(s)))
    out[N] = n_genes
    out[SUM] = s
    out[M2] = np.maximum(ss - s * s / n_genes, 0.0)
    out[MIN], out[MAX], out[NAN] = mn, mx, 0.0
    return out if sel.local is None else out[:, sel.local]


def uses_stored_cells(spec: Spec, op: str) -> bool:
    """Whether a reduction over genes can read the per-cell statistics stored at conversion:
    the stored values of every gene of stores sharing the dataset's genes (for var and std,
    integers stored only, e.g. counts: floating-point values would lose precision to
    cancellation)."""
    b = spec.base
    return (_stored_values(spec.expr.tree) and b.genes is None
            and all(p.gene_map is None for p in b.parts)
            and (op not in ("var", "std")
                 or all(_stored_dtype(p).kind in "biu" for p in b.parts)))


def _stored_dtype(part: Any) -> np.dtype:
    m = part.store.matrix(part.matrix)
    return np.dtype(m.get("stored_dtype") or m["dtype"])


def _stored_values(t: tuple[Any, ...]) -> bool:
    """Whether ``t`` is the stored value, or it with NaN replaced by 0 (xarray's ``skipna``):
    the same values where no NaN is stored, which :func:`_stored_cells` checks."""
    if t == ("v",):
        return True
    if t[0] != "where" or t[1] != ("ufunc", "isnan", (("v",),)) or t[3] != ("v",):
        return False
    zero = t[2][2] if t[2][0] == "astype" else t[2]
    return zero[0] == "c" and zero[1] == 0


def finalize(p: np.ndarray, op: str, skipna: bool, ddof: int, integer: bool,
             warn: bool = True) -> np.ndarray:
    """The statistic ``op`` from partials; NaN where numpy would give NaN (``warn``: with
    numpy's warning where it gives one)."""
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
    counted = (p[NAN] == 0) | skipna  # no NaN made the result NaN
    if warn and op == "mean" and ((n == 0) & counted).any():
        warnings.warn("Mean of empty slice", RuntimeWarning, stacklevel=2)
    elif warn and op in ("var", "std") and ((n - ddof <= 0) & counted).any():
        warnings.warn("Degrees of freedom <= 0 for slice", RuntimeWarning, stacklevel=2)
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


def _merge(parts: Any, axis: Any = None, keepdims: bool = True) -> np.ndarray:
    """Merge a list of partials ``(1, 6, n)`` into one ``(1, 6, n)`` (or ``(6, n)``)."""
    flat: list[np.ndarray] = []

    def walk(x: Any) -> None:
        if isinstance(x, list | tuple):
            for y in x:
                walk(y)
        else:
            flat.append(x.reshape(x.shape[-2:]))

    walk(parts)
    out = flat[0]
    for p in flat[1:]:
        out = kernels.merge_partials(out, p)
    return out[None] if keepdims else out


def _chunk(x: np.ndarray, axis: Any = None, keepdims: bool = True) -> np.ndarray:
    return x


def _finish(p: np.ndarray, op: str, skipna: bool, ddof: int, integer: bool, scalar: bool
            ) -> np.ndarray:
    if scalar:
        return finalize(kernels.fold_partials(p), op, skipna, ddof, integer).reshape(())
    return finalize(p, op, skipna, ddof, integer)


#: numpy functions computed from the description: (statistic, skip NaN).
REDUCTIONS = {
    np.sum: ("sum", False), np.nansum: ("sum", True),
    np.mean: ("mean", False), np.nanmean: ("mean", True),
    np.var: ("var", False), np.nanvar: ("var", True),
    np.std: ("std", False), np.nanstd: ("std", True),
    np.min: ("min", False), np.nanmin: ("min", True), np.amin: ("min", False),
    np.max: ("max", False), np.nanmax: ("max", True), np.amax: ("max", False),
}


#: Tasks of a per-gene reduction: above, each task reads several row groups in turn (a
#: one-gene query over 100M cells is ~6,100 row groups; its graph stays this small).
MAX_TASKS = 256
#: Tasks of a per-gene reduction over a few genes (at most ``kernels.NUMPY_GENES``): a
#: row group of one gene is ~0.3 ms of work and a task ~1 ms of scheduling, so fewer,
#: longer tasks (a one-gene query over a 5.7M-cell plate: 0.30 s with 174 tasks, 0.13 s
#: with 32; its page cache warm, 2 cores).
FEW_GENE_TASKS = 32


class Inputs:
    """The blockwise inputs of a lazy matrix: its row groups (``batch`` to a block, one by
    default), its genes and the per-cell and per-gene operands, chunked alike."""

    def __init__(self, spec: Spec, cell_ops: tuple[Any, ...], gene_ops: tuple[Any, ...],
                 batch: int = 1) -> None:
        b = spec.base
        self.spec = spec
        self._ops = (cell_ops, gene_ops)
        n = max(len(b.groups), 1)  # an empty selection has one empty block (None)
        bounds = list(range(0, n, batch)) + [n]
        sizes = np.diff(bounds)
        #: cells of each block
        self.counts = tuple(int(c) for c in np.add.reduceat(np.asarray(b.counts, np.int64),
                                                            bounds[:-1])) if b.groups else b.counts
        groups = np.empty(n, dtype=object)
        groups[: len(b.groups)] = b.groups
        self.sels = da.from_array(groups, chunks=(tuple(int(x) for x in sizes),), asarray=False,
                                  name=f"row-groups-{batch}-{b.token}")
        self.cell_ops = [_aligned(o, (self.counts,)) for o in cell_ops]
        self.gene_ops = gene_ops

    def batched(self, batch: int) -> Inputs:
        """The same inputs with ``batch`` row groups to a block."""
        return self if batch <= 1 else Inputs(self.spec, *self._ops, batch=batch)

    def genes(self, chunks: Any) -> tuple[Any, list[Any]]:
        """Gene positions chunked by ``chunks``, and the per-gene operands chunked alike."""
        n = self.spec.base.n_sel_genes
        gpos = da.arange(n, chunks=chunks, dtype=np.int64)
        return gpos, [_aligned(o, gpos.chunks) for o in self.gene_ops]

    def args(self, gene_chunks: Any, cell_index: str, gene_index: str) -> list[Any]:
        """Arguments of :func:`dask.array.blockwise`: groups, genes, cell and gene operands."""
        gpos, gene_ops = self.genes(gene_chunks)
        out: list[Any] = [self.sels, cell_index, gpos, gene_index]
        for o in self.cell_ops:
            out += [o, cell_index]
        for o in gene_ops:
            out += [o, gene_index]
        return out


def _aligned(op: Any, chunks: Any) -> Any:
    if isinstance(op, np.ndarray):
        return da.from_array(op, chunks=chunks)
    return op.rechunk(chunks)


def _name(prefix: str, x: Any, *args: Any) -> str:
    return f"{prefix}-{tokenize(x, prefix, *args)}"


def out_dtype(op: str, integer: bool) -> np.dtype:
    return np.dtype(np.int64 if integer and op in ("sum", "count") else np.float64)


def cell_reduction(inp: Inputs, op: str, skipna: bool, ddof: int, integer: bool) -> Any:
    """Per selected cell, over the selected genes: one task per row group, no combine."""
    partials = da.blockwise(cell_block, "ki", *inp.args(-1, "i", "j"), new_axes={"k": 6},
                            token="cell-partial",
                            adjust_chunks={"i": inp.counts}, concatenate=True,
                            align_arrays=False, dtype=np.float64, meta=np.empty((0, 0)),
                            spec=inp.spec, stored=uses_stored_cells(inp.spec, op))
    dtype = out_dtype(op, integer)
    result = partials.map_blocks(finalize, name=_name(f"cell-{op}", partials, skipna, ddof),
                                 op=op, skipna=skipna, ddof=ddof, integer=integer,
                                 drop_axis=0, dtype=dtype, meta=np.empty(0, dtype))
    return result[0] if inp.spec.base.drop_cell else result


def gene_reduction(inp: Inputs, op: str, skipna: bool, ddof: int, integer: bool,
                   scalar: bool) -> Any:
    """Per selected gene (or one number), over the selected cells: partials (at most
    :data:`MAX_TASKS` tasks), a tree, a finish."""
    few = inp.spec.base.n_sel_genes <= kernels.NUMPY_GENES
    inp = inp.batched(-(-len(inp.spec.base.groups) // (FEW_GENE_TASKS if few else MAX_TASKS)))
    partials = da.blockwise(gene_block, "ikg", *inp.args(-1, "i", "g"), new_axes={"k": 6},
                            token="gene-partial",
                            concatenate=True, align_arrays=False, dtype=np.float64,
                            meta=np.empty((0, 0, 0)), spec=inp.spec)
    total = da.reduction(partials, _chunk, _merge, combine=_merge, axis=0, split_every=8,
                         concatenate=False, name="gene-partial", dtype=np.float64,
                         meta=np.empty((0, 0)))
    dtype = out_dtype(op, integer)
    if scalar:
        return total.map_blocks(_finish, name=_name(f"gene-{op}", total, skipna, ddof, 0),
                                op=op, skipna=skipna, ddof=ddof, integer=integer, scalar=True,
                                drop_axis=[0, 1], dtype=dtype, meta=np.empty((), dtype))
    result = total.map_blocks(_finish, name=_name(f"gene-{op}", total, skipna, ddof),
                              op=op, skipna=skipna, ddof=ddof, integer=integer, scalar=False,
                              drop_axis=0, dtype=dtype, meta=np.empty(0, dtype))
    return result[0] if inp.spec.base.drop_gene else result
