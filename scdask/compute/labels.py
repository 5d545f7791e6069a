"""Statistics per label (a group of cells) and gene, in one pass over the stored entries.

The mechanism behind :func:`scdask.pseudobulk` and xarray's ``groupby`` on the lazy
matrix. A task reads one row group's entries of one block of genes under the
expression and reduces them per label in a compiled kernel
(:func:`scdask.compute.kernels.label_partials`), as coordinate-format pairs: only the
(label, gene) pairs with a stored entry. The implicit entries are accounted for when the
pairs become a dense ``(labels, genes)`` accumulator: each cell's value at zero comes from
the expression (:class:`~scdask.compute.blocks.Fill`; cells of one label may differ), so
centred or shifted matrices group exactly, never densified cell by cell. Accumulators of
one block of genes merge in a tree; :func:`finish` gives numpy's statistic of each group.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import dask.array as da
import numpy as np

from scdask.compute import kernels
from scdask.compute.blocks import Spec, batches, block_fill
from scdask.compute.kernels import M2, MAX, MIN, NAN, SUM, N
from scdask.compute.reductions import Inputs, finalize

#: The rows of an accumulator: non-NaN values, their sum, sum of squares, min and max,
#: NaN values, non-zero values.
ACC = ("n", "sum", "sumsq", "min", "max", "nan", "nnz")
A_N, A_SUM, A_SQ, A_MIN, A_MAX, A_NAN, A_NNZ = range(7)
#: Bytes of one row of a dense ``(labels, genes)`` accumulator of one block of genes.
BLOCK_BYTES = 8 << 20
#: Row groups' pairs merged into one dense accumulator at once: with labels of a few cells
#: per row group, the accumulator is large beside a row group's pairs (about its entries),
#: so few accumulators are made; labels of many cells have about one pair per label and
#: gene, as large as an accumulator, so fewer pairs are held at once.
SPLIT_EVERY = {"few cells per label": 16, "many": 4}
#: Cells per label in a row group (on average) from which a row group's statistics are
#: dense ``(7, labels, genes)`` arrays rather than (label, gene) pairs.
DENSE_CELLS_PER_LABEL = 4
#: Cells per label (on average) of one dense task: its row groups add into one array of
#: statistics, ``7 × labels`` per gene, against ~``cells × 1,300 / 62,710`` entries per gene
#: on a Tahoe-like plate; the merges then read few such arrays.
BATCH_CELLS_PER_LABEL = 512


def label_block(sels: np.ndarray, gpos: np.ndarray, codes: np.ndarray, *ops: Any, spec: Spec,
                n_labels: int, drop_masked: bool, dense: bool = False) -> Any:
    """A task's row groups (one or more, in order) × block of genes, per label: the stored
    pairs and what the implicit entries need (cells per label and value at zero), a part
    per row group. ``codes`` are the labels of the task's selected cells (-1: in no
    group); with ``drop_masked``, cells whose every value is NaN (masked by ``.where``) are
    in no group either. ``dense``: the statistics of every (label, gene) as one
    ``(7, labels, genes)`` array, not pairs, added up over the row groups whose values at
    zero are alike (one part for them all)."""
    groups = [s for s in sels.reshape(-1) if s is not None]
    codes = np.asarray(codes, np.int64).reshape(-1)
    cells, genes = spec.split(ops)
    unique, inverse = spec.genes(gpos)
    parts: list[Any] = []
    at = 0
    for sel in groups:  # per-cell operands and codes hold the task's cells, group by group
        own = [c[at : at + sel.count] for c in cells]
        fill = block_fill(spec, sel, own, genes, len(inverse))
        lab, same, combined = _labels(sel, fill, codes[at : at + sel.count], drop_masked)
        at += sel.count
        runs = batches(spec, sel, unique, inverse, own, genes, same < 0, native=True)
        if not dense:
            parts.append(_pairs(runs, lab, same, n_labels * fill.n_classes, combined, fill))
            continue
        # [each row group's labels, classes, values at zero, statistics]
        last = parts[-1] if parts else None
        if last is None or last[1] != fill.n_classes or not np.array_equal(
                last[2], fill.table, equal_nan=True):
            last = [[], fill.n_classes, fill.table,
                    _dense_empty(n_labels * fill.n_classes, len(inverse))]
            parts.append(last)
        for j0, j1, starts, ends, vals, rows in runs:
            kernels.label_dense(starts, ends, vals, rows, lab, same, last[3][:, :, j0:j1])
        last[0].append(combined)
    if dense:
        parts = [(*_present(np.concatenate(c)), n, t, st) for c, n, t, st in parts]
    return parts or None


def _present(combined: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The labels × classes present (``>= 0``) and the cells of each."""
    return np.unique(combined[combined >= 0], return_counts=True)


def _labels(sel: Any, fill: Any, codes: np.ndarray, drop_masked: bool
            ) -> tuple[np.ndarray, int, np.ndarray]:
    """Each stored row's label (``same >= 0``: every cell's, rows not needed) and each
    selected cell's label × value-at-zero class (-1: none)."""
    if drop_masked:
        codes = np.where(np.isnan(fill.table).all(axis=1)[fill.labels], -1, codes)
    combined = np.where(codes >= 0, codes * fill.n_classes + fill.labels, -1)
    if sel.local is None and len(combined) and (combined == combined[0]).all():
        # every cell of the row group has one label: the cell indices need not be read
        return np.zeros(0, np.int64), int(combined[0]), combined
    lab = np.full(sel.n_rows, -1, np.int64)
    lab[np.arange(sel.n_rows) if sel.local is None else sel.local] = combined
    return lab, -1, combined


def _pairs(runs: Any, lab: np.ndarray, same: int, n_labels: int, combined: np.ndarray,
           fill: Any) -> tuple[Any, ...]:
    """One row group's part as (label, gene) pairs."""
    cl, gene, st = [], [], []
    for j0, _, starts, ends, vals, rows in runs:
        c, g, t = kernels.label_partials(starts, ends, vals, rows, lab, same, n_labels)
        cl.append(c)
        gene.append(g + j0)
        st.append(t)
    pairs = ((cl[0], gene[0], st[0]) if len(cl) == 1 else
             (np.concatenate(cl), np.concatenate(gene), np.concatenate(st, axis=1)))
    return *_present(combined), fill.n_classes, fill.table, pairs


def _dense_empty(n_labels: int, n_genes: int) -> np.ndarray:
    """:func:`kernels.label_dense`'s statistics of nothing."""
    out = dense_stats(7, n_labels, n_genes)
    out[5] = np.inf
    out[6] = -np.inf
    return out


def dense_stats(rows: int, n_labels: int, n_genes: int) -> np.ndarray:
    """A ``(rows, labels, genes)`` array of zeros laid out gene-major (labels adjacent): the
    kernels add one gene's values of every label, and accumulators of one layout add up
    contiguously."""
    return np.zeros((rows, n_genes, n_labels)).transpose(0, 2, 1)


def empty_acc(n_labels: int, n_genes: int) -> np.ndarray:
    """The accumulator of nothing: zero counts, ``min = +inf``, ``max = -inf``."""
    out = dense_stats(len(ACC), n_labels, n_genes)
    out[A_MIN] = np.inf
    out[A_MAX] = -np.inf
    return out


def _fold(out: np.ndarray, rows: np.ndarray | None, acc: np.ndarray) -> None:
    """Add accumulator rows ``acc`` (for labels ``rows``; None: all, in order) into ``out``.
    Vectorized when the rows are distinct (``ufunc.at``, for repeats, is much slower)."""
    if rows is None or len(np.unique(rows)) == len(rows):
        idx: Any = slice(None) if rows is None else rows
        for i in range(len(ACC)):
            if i == A_MIN:
                out[i][idx] = np.minimum(out[i][idx], acc[i])
            elif i == A_MAX:
                out[i][idx] = np.maximum(out[i][idx], acc[i])
            else:
                out[i][idx] += acc[i]
        return
    for i in range(len(ACC)):
        if i == A_MIN:
            np.minimum.at(out[i], rows, acc[i])
        elif i == A_MAX:
            np.maximum.at(out[i], rows, acc[i])
        else:
            np.add.at(out[i], rows, acc[i])


#: :func:`label_partials`' rows (entries, NaN, sum, sum of squares, non-zeros) and the
#: accumulator rows they add to, where zeros stay zeros
_FAST_ROWS, _FAST_DEST = np.array([1, 2, 3, 4]), np.array([A_NAN, A_SUM, A_SQ, A_NNZ])
_ZERO, _N_ROW = np.array([0]), np.array([A_N])


def _add_block(out: np.ndarray, part: Any, minmax: bool = True) -> None:
    present, counts, n_classes, table, stats = part
    width = out.shape[2]
    dense = isinstance(stats, np.ndarray)
    zeros_stay = not minmax and not np.any(table[present % n_classes])
    if dense and zeros_stay:  # every (label, gene) at once; classes of a label add up
        by_label = stats if n_classes == 1 else stats.reshape(7, -1, n_classes, width).sum(2)
        for i, row in zip(_FAST_DEST, _FAST_ROWS, strict=True):
            out[i] += by_label[row]
        out[A_N] -= by_label[1]  # a stored NaN is no value
        out[A_N] += np.bincount(present // n_classes, weights=counts.astype(np.float64),
                                minlength=out.shape[1])[:, None]
        return
    if not dense and zeros_stay:
        cl, gene, st = stats
        # zeros stay zeros (the usual case): only the stored pairs and the cell counts move
        kernels.add_pairs(out, cl // n_classes, gene, st, _FAST_ROWS, _FAST_DEST)
        st_nan = st[1]
        if st_nan.any():  # a stored NaN is no value
            kernels.add_pairs(out, cl // n_classes, gene, -st_nan[None], _ZERO, _N_ROW)
        out[A_N] += np.bincount(present // n_classes, weights=counts.astype(np.float64),
                                minlength=out.shape[1])[:, None]
        return
    acc = empty_acc(len(present), width)
    rows = ((A_NAN, 1), (A_SUM, 2), (A_SQ, 3), (A_NNZ, 4), (A_MIN, 5), (A_MAX, 6))
    if dense:
        d = stats[:, present]
        stored = d[0]
        for i, row in rows:
            acc[i] = d[row]
    else:
        cl, gene, st = stats
        stored = np.zeros((len(present), width))
        p = np.searchsorted(present, cl)
        stored[p, gene] = st[0]
        for i, row in rows:
            acc[i][p, gene] = st[row]
    fill = table[present % n_classes]
    implicit = counts[:, None] - stored
    isnan = np.isnan(fill)
    f = np.where(isnan, 0.0, fill)
    acc[A_N] = stored - acc[A_NAN] + implicit * ~isnan
    acc[A_SUM] += implicit * f
    acc[A_SQ] += implicit * f * f
    acc[A_NNZ] += implicit * (f != 0)
    acc[A_NAN] += implicit * isnan
    some = (implicit > 0) & ~isnan
    acc[A_MIN] = np.where(some, np.minimum(acc[A_MIN], f), acc[A_MIN])
    acc[A_MAX] = np.where(some, np.maximum(acc[A_MAX], f), acc[A_MAX])
    _fold(out, present // n_classes, acc)


def merge(parts: Any, n_labels: int, n_genes: int, axis: Any = None, keepdims: bool = False,
          minmax: bool = True, **kw: Any) -> np.ndarray:
    """Merge task outputs and accumulators into one dense accumulator (Dask's metadata
    probes pass empty arrays: they are no accumulator)."""
    if kw.get("computing_meta"):
        return np.empty((0,))
    out = empty_acc(n_labels, n_genes)
    stack = [parts]
    while stack:
        p = stack.pop()
        if isinstance(p, list):
            stack.extend(p)
        elif isinstance(p, np.ndarray):
            if p.ndim == 3:
                _fold(out, None, p)
        elif p is not None:
            _add_block(out, p, minmax)
    return out


def _identity(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    return x


def narrow(codes: np.ndarray, n_labels: int) -> np.ndarray:
    """Labels (-1: none) in the smallest signed integer type that holds them: the client
    holds one per selected cell (a byte for up to 127 labels, not eight)."""
    dtype = next(t for t in (np.int8, np.int16, np.int32, np.int64)
                 if n_labels <= np.iinfo(t).max)
    return np.asarray(codes).astype(dtype, copy=False)


def accumulate(inp: Inputs, codes: np.ndarray, n_labels: int, *, drop_masked: bool = False,
               minmax: bool = True) -> da.Array:
    """The dense accumulators of a lazy matrix's cells by label: ``(7, labels, genes)``,
    chunked by blocks of genes (one tree of merges each). ``codes`` label the selected
    cells (-1: in no group); without ``minmax`` the min and max rows are not kept (their
    implicit zeros would need every pair: the other rows need only the stored ones)."""
    n_genes = inp.spec.base.n_sel_genes
    block = max(1, min(n_genes or 1, BLOCK_BYTES // (8 * max(1, n_labels))))
    per_group = max(1.0, float(np.mean(inp.counts)) if len(inp.counts) else 1.0)
    many = DENSE_CELLS_PER_LABEL * n_labels <= per_group
    if many:  # a task's statistics as large as its entries: several row groups to a task
        inp = inp.batched(int(np.ceil(BATCH_CELLS_PER_LABEL * n_labels / per_group)))
    args = inp.args(block, "i", "g")
    args[4:4] = [da.from_array(narrow(codes, n_labels), chunks=(inp.counts,)), "i"]
    split = SPLIT_EVERY["many" if many else "few cells per label"]
    pairs = da.blockwise(label_block, "ig", *args, adjust_chunks={"i": 1}, align_arrays=False,
                         concatenate=True, dtype=np.float64, meta=np.empty((0, 0)),
                         spec=inp.spec, n_labels=n_labels, drop_masked=drop_masked, dense=many)
    bounds = np.cumsum((0, *pairs.chunks[1]))
    out = []
    for j, width in enumerate(pairs.chunks[1]):
        fn = partial(merge, n_labels=n_labels, n_genes=width, minmax=minmax)
        acc = da.reduction(pairs[:, bounds[j] : bounds[j + 1]], _identity, fn, combine=fn,
                           axis=0, split_every=split, concatenate=False, dtype=np.float64,
                           meta=np.empty((0,)))
        out.append(acc.map_blocks(_identity, new_axis=[0, 1], chunks=((len(ACC),), (n_labels,),
                                                                       (width,)),
                                  dtype=np.float64, meta=np.empty((0, 0, 0))))
    if not out:
        return da.from_array(empty_acc(n_labels, 0))
    return da.concatenate(out, axis=2)


def finish(acc: np.ndarray, op: str, skipna: bool, ddof: int, integer: bool,
           quiet: bool = False) -> np.ndarray:
    """numpy's ``op`` over each label's cells, per gene, from an accumulator (``quiet``:
    without numpy's warnings for labels of too few cells; not by filtering warnings, which
    is not thread-safe)."""
    if op == "count_nonzero":
        return acc[A_NNZ].astype(np.int64)
    p = np.empty((6, *acc.shape[1:]))
    n = acc[A_N]
    p[N], p[SUM], p[MIN], p[MAX], p[NAN] = n, acc[A_SUM], acc[A_MIN], acc[A_MAX], acc[A_NAN]
    with np.errstate(invalid="ignore", divide="ignore"):
        p[M2] = np.maximum(acc[A_SQ] - acc[A_SUM] ** 2 / np.where(n > 0, n, 1), 0.0)
    return finalize(p, op, skipna, ddof, integer, warn=not quiet)


def statistic(acc: da.Array, op: str, *, skipna: bool = False, ddof: int = 0,
              integer: bool = False, quiet: bool = False) -> da.Array:
    """``op`` per label and gene from :func:`accumulate`'s accumulators: ``(labels, genes)``
    (``quiet``: see :func:`finish`)."""
    dtype = np.dtype(np.int64 if op == "count_nonzero" or (integer and op in ("sum", "count"))
                     else np.float64)
    return acc.map_blocks(finish, op=op, skipna=skipna, ddof=ddof, integer=integer,
                          quiet=quiet, drop_axis=0, dtype=dtype, meta=np.empty((0, 0), dtype))


def grouped(array: Any, codes: np.ndarray, n_labels: int, stats: Any) -> list[da.Array]:
    """Statistics of a lazy matrix's cells by label, from one pass: ``stats`` are
    ``(op, ddof)`` pairs (``op`` a :func:`finish` statistic, NaN skipped), each result a
    lazy ``(labels, genes)`` float64 array. ``codes`` label the selected cells (-1: none)."""
    minmax = any(op in ("min", "max") for op, _ in stats)
    acc = accumulate(array.inputs(), codes, n_labels, minmax=minmax)
    return [statistic(acc, op, skipna=True, ddof=ddof) for op, ddof in stats]
