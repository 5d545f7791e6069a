"""Compiled per-row-group QC statistics: per cell (non-zeros, total, totals of gene sets,
sums of the top values) and per gene (total, non-zeros), from one read of the entries."""

from __future__ import annotations

import numpy as np

from scdask._jit import jit

#: Cells whose values are gathered together at once (their values stay in cache).
CELL_BLOCK = 4096


@jit(nogil=True)
def _select(x, lo, hi, k):  # pragma: no cover - compiled
    """Reorder ``x[lo:hi]`` in place so that ``x[k]`` is where a sort would put it, smaller
    values before it and larger after (Hoare's quickselect, median-of-three pivots)."""
    while hi - lo > 1:
        mid = (lo + hi - 1) // 2
        a, b, c = x[lo], x[mid], x[hi - 1]
        pivot = max(min(a, b), min(max(a, b), c))
        i, j = lo, hi - 1
        while i <= j:
            while x[i] < pivot:
                i += 1
            while x[j] > pivot:
                j -= 1
            if i <= j:
                x[i], x[j] = x[j], x[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j + 1
        elif k >= i:
            lo = i
        else:
            return


@jit(nogil=True)
def qc_row_group(starts, ends, vals, rows, keep, gene_sets, ns):  # pragma: no cover
    """QC statistics of one row group.

    ``starts[j]:ends[j]`` delimit gene ``j``'s entries in ``vals`` / ``rows`` (local cells,
    of which those with ``keep`` are counted);
    ``gene_sets[q, j]``: gene ``j`` is in gene set ``q``; ``ns`` sorted counts of top values.
    Returns ``cells`` ``(3 + sets + len(ns), n_rows)``: non-zero values, total, sum of the
    squares (unused by scanpy, kept for checks), each gene set's total, then the sum of
    each cell's ``ns[i]`` largest values; and ``genes`` ``(2, genes)``: total, non-zeros.
    """
    n_genes = starts.shape[0]
    n_rows = keep.shape[0]
    n_sets = gene_sets.shape[0]
    n_top = ns.shape[0]
    cells = np.zeros((3 + n_sets + n_top, n_rows))
    genes = np.zeros((2, n_genes))
    for j in range(n_genes):
        for k in range(starts[j], ends[j]):
            v = vals[k]
            r = rows[k]
            if v == 0 or not keep[r]:
                continue
            cells[0, r] += 1
            cells[1, r] += v
            cells[2, r] += v * v
            for q in range(n_sets):
                if gene_sets[q, j]:
                    cells[3 + q, r] += v
            genes[0, j] += v
            genes[1, j] += 1
    if n_top == 0:
        return cells, genes
    # each cell's values together, a block of cells at a time (the block's values stay in
    # cache; cells are sorted within a gene's entries, so each gene's position only advances)
    pos = starts.copy()
    stop = np.empty_like(starts)
    count = np.zeros(CELL_BLOCK + 1, dtype=np.int64)
    nxt = np.zeros(CELL_BLOCK, dtype=np.int64)
    by_cell = np.empty(0, dtype=vals.dtype)  # values as stored: a block's stay in cache
    for r0 in range(0, n_rows, CELL_BLOCK):
        r1 = min(r0 + CELL_BLOCK, n_rows)
        count[:] = 0
        for j in range(n_genes):
            k = pos[j]
            while k < ends[j] and rows[k] < r1:
                if vals[k] != 0:
                    count[rows[k] - r0 + 1] += 1
                k += 1
            stop[j] = k
        for i in range(r1 - r0):
            count[i + 1] += count[i]
        if by_cell.shape[0] < count[r1 - r0]:
            by_cell = np.empty(2 * count[r1 - r0], dtype=vals.dtype)
        nxt[:] = count[:-1]
        for j in range(n_genes):
            for k in range(pos[j], stop[j]):
                v = vals[k]
                if v != 0:
                    i = rows[k] - r0
                    by_cell[nxt[i]] = v
                    nxt[i] += 1
            pos[j] = stop[j]
        for i in range(r1 - r0):  # the top n values' sum, largest n first: each a selection
            lo, hi = count[i], count[i + 1]  # in place within the previous top (linear time)
            total = 0.0
            for q in range(lo, hi):
                total += np.float64(by_cell[q])
            for t in range(n_top - 1, -1, -1):
                n = ns[t]
                if hi - lo > n:
                    lo = hi - n
                    _select(by_cell, count[i], hi, lo)
                    total = 0.0
                    for q in range(lo, hi):
                        total += np.float64(by_cell[q])
                cells[3 + n_sets + t, r0 + i] = total
    return cells, genes
