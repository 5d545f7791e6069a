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


#: Values counted in a histogram for the top values' sums: whole numbers below this.
COUNTED = 256
#: Other values (not whole numbers below :data:`COUNTED`) a cell may have for the
#: histogram to be used; more, and the top values are selected instead.
OTHERS = 64


@jit(nogil=True)
def _top_sums_counted(x, lo, hi, ns, hist, out):  # pragma: no cover - compiled
    """The sums of the ``ns`` (ascending) largest of ``x[lo:hi]`` into ``out`` when nearly
    all are whole numbers under :data:`COUNTED` (counts): a histogram of those, the few
    others sorted, then one walk down from the largest. Returns False (``out`` untouched)
    when more than :data:`OTHERS` values are not such numbers."""
    n_other = 0
    for q in range(lo, hi):  # the other values gather at the front (order kept no matter)
        v = x[q]
        if not (v >= 0 and v < COUNTED and v == np.floor(v)):
            if n_other == OTHERS:
                for q2 in range(lo, q):  # undo the counts so far
                    w = x[q2]
                    if w >= 0 and w < COUNTED and w == np.floor(w):
                        hist[np.int64(w)] -= 1
                return False
            x[q], x[lo + n_other] = x[lo + n_other], v
            n_other += 1
        else:
            hist[np.int64(v)] += 1
    others = np.sort(x[lo : lo + n_other])  # ascending: walked from its end
    o = n_other - 1
    b = COUNTED - 1
    taken = 0
    total = 0.0
    t = 0
    n_top = ns.shape[0]
    while t < n_top:
        if taken == ns[t] or (o < 0 and b < 0):
            out[t] = total
            t += 1
            continue
        while b >= 0 and hist[b] == 0:
            b -= 1
        if o >= 0 and (b < 0 or np.float64(others[o]) >= b):
            total += np.float64(others[o])
            o -= 1
            taken += 1
        else:  # as many of value b as the next n still takes
            c = min(hist[b], ns[t] - taken)
            total += c * np.float64(b)
            taken += c
            hist[b] -= c
    hist[:] = 0
    return True


@jit(nogil=True)
def _top_sums_selected(x, lo, hi, ns, out):  # pragma: no cover - compiled
    """The sums of the ``ns`` (ascending) largest of ``x[lo:hi]`` into ``out``: the largest
    n first, each a selection in place within the previous top (linear time)."""
    total = 0.0
    for q in range(lo, hi):
        total += np.float64(x[q])
    for t in range(ns.shape[0] - 1, -1, -1):
        n = ns[t]
        if hi - lo > n:
            _select(x, lo, hi, hi - n)
            lo = hi - n
            total = 0.0
            for q in range(lo, hi):
                total += np.float64(x[q])
        out[t] = total


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
    hist = np.zeros(COUNTED, dtype=np.int64)
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
        for i in range(r1 - r0):
            out = cells[3 + n_sets :, r0 + i]
            if not _top_sums_counted(by_cell, count[i], count[i + 1], ns, hist, out):
                _top_sums_selected(by_cell, count[i], count[i + 1], ns, out)
    return cells, genes
