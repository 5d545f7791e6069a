"""Compiled rank sums for the Wilcoxon rank-sum test, exact, from the stored entries only.

Counts have massive ties (zeros above all): the implicit zeros of a gene are one tie block
whose average rank is known from how many there are, so no rank is materialized per cell.
"""

from __future__ import annotations

import numpy as np

from scdask._jit import jit


@jit(nogil=True)
def sort_by_gene_value(gene, vals, labels, n_genes):  # pragma: no cover - compiled
    """Entries ordered by gene (a counting sort), then by value within each gene.
    Returns ``offsets`` (``n_genes + 1``) and the reordered values and labels."""
    offsets = np.zeros(n_genes + 1, dtype=np.int64)
    for k in range(gene.shape[0]):
        offsets[gene[k] + 1] += 1
    for j in range(n_genes):
        offsets[j + 1] += offsets[j]
    nxt = offsets[:-1].copy()
    v2 = np.empty_like(vals)
    l2 = np.empty_like(labels)
    for k in range(gene.shape[0]):
        p = nxt[gene[k]]
        v2[p] = vals[k]
        l2[p] = labels[k]
        nxt[gene[k]] += 1
    for j in range(n_genes):
        a, b = offsets[j], offsets[j + 1]
        if b - a > 1:
            order = np.argsort(v2[a:b], kind="mergesort")
            v2[a:b] = v2[a:b][order]
            l2[a:b] = l2[a:b][order]
    return offsets, v2, l2


@jit(nogil=True)
def rank_sums(offsets, vals, labels, n_cells, ref_of, rest):  # pragma: no cover - compiled
    """Per label and gene, the sum of the ranks of the label's cells, ties averaged.

    ``offsets[j]:offsets[j+1]`` are gene ``j``'s stored entries sorted by value, with their
    cells' labels; ``n_cells[l]`` the cells of label ``l`` (the cells a label has no entry
    for are zeros). ``ref_of[l]`` is the label that label ``l`` is compared with. With
    ``rest``: ranks among all cells, ties counted over all cells (in row 0 of
    ``ties``); else among the cells of each label and its reference, ties of each such pair
    in the label's row (a label that is a reference, or has none, is left out). NaN values
    are left out. Returns ``(sums, ties)``, ``ties`` the sum of ``t**3 - t`` over the blocks
    of ``t`` tied values.
    """
    n_labels = n_cells.shape[0]
    n_genes = offsets.shape[0] - 1
    sums = np.zeros((n_labels, n_genes))
    ties = np.zeros((n_labels, n_genes))
    stored = np.zeros(n_labels)
    cnt = np.zeros(n_labels)
    less = np.zeros(n_labels)
    touched = np.empty(n_labels, dtype=np.int64)
    ref_ties = np.zeros(n_labels)
    s_g = np.zeros(n_labels)  # the gene's sums and ties, written to its column at its end
    t_g = np.zeros(n_labels)  # (the column's entries are far apart in memory)
    for j in range(n_genes):
        a, b = offsets[j], offsets[j + 1]
        s_g[:] = 0.0
        t_g[:] = 0.0
        stored[:] = 0.0
        less[:] = 0.0
        for k in range(a, b):  # a NaN cell is in no run (nor among the zeros)
            stored[labels[k]] += 1.0
        while b > a and vals[b - 1] != vals[b - 1]:  # NaN sorts last
            b -= 1
        zero_done = False
        less_all = 0.0
        ref_ties[:] = 0.0
        k = a
        while True:
            if k < b:
                v = vals[k]
            else:
                v = np.inf
            if k >= b and zero_done:
                break
            at_zero = False
            k2 = k
            if not zero_done and v >= 0:
                at_zero = True
                zero_done = True
                if v == 0:
                    while k2 < b and vals[k2] == 0:
                        k2 += 1
            else:
                while k2 < b and vals[k2] == v:
                    k2 += 1
            t = 0
            for kk in range(k, k2):  # the run's stored entries, per label
                lab = labels[kk]
                if cnt[lab] == 0:
                    touched[t] = lab
                    t += 1
                cnt[lab] += 1.0
            if at_zero:  # the implicit zeros of every label join the run
                for lab in range(n_labels):
                    imp = n_cells[lab] - stored[lab]
                    if imp > 0:
                        if cnt[lab] == 0:
                            touched[t] = lab
                            t += 1
                        cnt[lab] += imp
            if rest:
                total = 0.0
                for i in range(t):
                    total += cnt[touched[i]]
                if total > 0:
                    avg = less_all + (total + 1.0) / 2.0
                    for i in range(t):
                        lab = touched[i]
                        s_g[lab] += cnt[lab] * avg
                    t_g[0] += total * total * total - total
                    less_all += total
            else:
                for i in range(t):  # every label's ties alone: those of the references count
                    c = cnt[touched[i]]
                    ref_ties[touched[i]] += c * c * c - c
                for i in range(t):
                    lab = touched[i]
                    ref = ref_of[lab]
                    if ref < 0 or ref == lab:
                        continue
                    c = cnt[lab]
                    c_ref = cnt[ref]
                    s_g[lab] += c * (less[lab] + less[ref] + (c + c_ref + 1.0) / 2.0)
                    both = c + c_ref
                    t_g[lab] += both * both * both - both - (c_ref * c_ref * c_ref - c_ref)
                for i in range(t):
                    less[touched[i]] += cnt[touched[i]]
            for i in range(t):
                cnt[touched[i]] = 0.0
            k = k2
        if not rest:
            for lab in range(n_labels):
                if ref_of[lab] >= 0 and ref_of[lab] != lab:
                    t_g[lab] += ref_ties[ref_of[lab]]
        for lab in range(n_labels):
            sums[lab, j] = s_g[lab]
            ties[lab, j] = t_g[lab]
    return sums, ties


@jit(nogil=True)
def cells_ascending(starts, ends, rows, row_of):  # pragma: no cover - compiled
    """Whether each gene's entries come in ascending order of selected cell."""
    for j in range(starts.shape[0]):
        last = -1
        for k in range(starts[j], ends[j]):
            c = row_of[rows[k]]
            if c < 0:
                continue
            if c < last:
                return False
            last = c
    return True


@jit(nogil=True)
def dense_tile(starts, ends, vals, rows, row_of, fill, lo, hi, cursor, ascending, out):
    """Selected cells ``lo:hi`` of a row group as a dense ``(hi - lo, genes)`` float64 tile
    of ``value - fill[gene]`` (0 where nothing is stored). With ``ascending`` (see
    :func:`cells_ascending`) each gene's scan resumes at ``cursor[j]`` and stops at the
    tile's end, so tiles taken in order read every entry once."""
    out[:] = 0.0
    for j in range(starts.shape[0]):
        k = cursor[j] if ascending else starts[j]
        e = ends[j]
        f = fill[j]
        while k < e:
            c = row_of[rows[k]]
            if ascending and c >= hi:
                break
            if c >= lo and c < hi:
                out[c - lo, j] += np.float64(vals[k]) - f
            k += 1
        if ascending:
            cursor[j] = k


@jit(nogil=True)
def sort_by_gene_value32(gene, vals, labels, n_genes):  # pragma: no cover - compiled
    """:func:`sort_by_gene_value` for float32 values and labels under 2**32: each entry a
    64-bit key (the value's bits made to sort as the value, NaN last; the label below),
    sorted in place per gene — no index array, no gathers."""
    n = gene.shape[0]
    offsets = np.zeros(n_genes + 1, dtype=np.int64)
    for k in range(n):
        offsets[gene[k] + 1] += 1
    for j in range(n_genes):
        offsets[j + 1] += offsets[j]
    nxt = offsets[:-1].copy()
    bits = vals.view(np.uint32)
    keys = np.empty(n, dtype=np.uint64)
    for k in range(n):
        b = np.uint64(bits[k])
        if vals[k] != vals[k]:
            u = np.uint64(0xFFFFFFFF)
        elif b & np.uint64(0x80000000):
            u = ~b & np.uint64(0xFFFFFFFF)
        else:
            u = b | np.uint64(0x80000000)
        p = nxt[gene[k]]
        keys[p] = (u << np.uint64(32)) | np.uint64(labels[k])
        nxt[gene[k]] += 1
    for j in range(n_genes):
        if offsets[j + 1] - offsets[j] > 1:
            keys[offsets[j] : offsets[j + 1]].sort()
    out_bits = np.empty(n, dtype=np.uint32)
    l2 = np.empty_like(labels)
    for k in range(n):
        u = keys[k] >> np.uint64(32)
        if u == np.uint64(0xFFFFFFFF):
            out_bits[k] = np.uint32(0x7FC00000)  # NaN
        elif u & np.uint64(0x80000000):
            out_bits[k] = np.uint32(u & np.uint64(0x7FFFFFFF))
        else:
            out_bits[k] = np.uint32(~u & np.uint64(0xFFFFFFFF))
        l2[k] = labels.dtype.type(keys[k] & np.uint64(0xFFFFFFFF))
    return offsets, out_bits.view(np.float32), l2
