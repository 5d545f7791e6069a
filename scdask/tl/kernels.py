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
def rank_sums(offsets, vals, labels, n_cells, ref_of, rest, sums, ties, stats):  # pragma: no cover
    """Per label and gene, the sum of the ranks of the label's cells, ties averaged.

    ``offsets[j]:offsets[j+1]`` are gene ``j``'s stored entries sorted by value, with their
    cells' labels; ``n_cells[l]`` the cells of label ``l`` (the cells a label has no entry
    for are zeros). ``ref_of[l]`` is the label that label ``l`` is compared with. With
    ``rest``: ranks among all cells, ties counted over all cells (in row 0 of
    ``ties``); else among the cells of each label and its reference, ties of each such pair
    in the label's row (a label that is a reference, or has none, is left out). NaN values
    are left out. Fills ``sums`` and ``ties`` ``(labels, genes)``, ``ties`` the sum of
    ``t**3 - t`` over the blocks of ``t`` tied values, and adds each label's stored
    entries, NaN, sum, sum of squares and non-zeros to ``stats[j, :, l]``.
    """
    n_labels = n_cells.shape[0]
    n_genes = offsets.shape[0] - 1
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
        less[:] = 0.0
        st = stats[j]
        for k in range(a, b):  # a NaN cell is in no run (nor among the zeros)
            lab = labels[k]
            v = np.float64(vals[k])
            nan = v != v
            w = 0.0 if nan else v
            st[0, lab] += 1.0
            st[1, lab] += nan
            st[2, lab] += w
            st[3, lab] += w * w
            st[4, lab] += w != 0
        stored[:] = st[0]
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
            if zero_done or v < 0:
                if k + 1 >= b or vals[k + 1] != v:  # one value alone: no tie (most of them)
                    lab = labels[k]
                    if rest:
                        s_g[lab] += less_all + 1.0
                        less_all += 1.0
                    else:
                        ref = ref_of[lab]
                        if ref >= 0 and ref != lab:
                            s_g[lab] += less[lab] + less[ref] + 1.0
                        less[lab] += 1.0
                    k += 1
                    continue
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
def count_labelled(starts, ends, rows, labels, counts):  # pragma: no cover - compiled
    """Add to ``counts[j]`` the entries of run ``j`` whose cell has a label (``>= 0``;
    ``labels`` per stored row of the row group)."""
    for j in range(starts.shape[0]):
        c = 0
        for k in range(starts[j], ends[j]):
            c += labels[rows[k]] >= 0
        counts[j] += c


@jit(nogil=True)
def scatter_keys32(starts, ends, vals, rows, labels, nxt, keys):  # pragma: no cover
    """Each labelled entry of run (gene) ``j`` as a 64-bit key at ``keys[nxt[j]]`` (then
    ``nxt[j]`` moves on): the float32 value's bits made to sort as the value (NaN last)
    above the label. Sorting a gene's keys orders its entries by value (``vals``: float32)."""
    bits = vals.view(np.uint32)
    for j in range(starts.shape[0]):
        p = nxt[j]
        for k in range(starts[j], ends[j]):
            lab = labels[rows[k]]
            if lab < 0:
                continue
            v = vals[k]
            b = np.uint64(bits[k])
            if v != v:
                u = np.uint64(0xFFFFFFFF)
            elif b & np.uint64(0x80000000):
                u = ~b & np.uint64(0xFFFFFFFF)
            else:
                u = b | np.uint64(0x80000000)
            keys[p] = (u << np.uint64(32)) | np.uint64(lab)
            p += 1
        nxt[j] = p


@jit(nogil=True)
def radix_sort_segments(keys, offsets):  # pragma: no cover - compiled
    """Sort each ``keys[offsets[j]:offsets[j+1]]`` by its upper 32 bits (the value; the
    order within ties is left as it comes): least significant byte first, one counting
    pass per byte, skipping the bytes every key of the segment shares. Segments fit in
    cache: ~4x faster than a comparison sort of thousands of keys."""
    n_seg = offsets.shape[0] - 1
    longest = 0
    for j in range(n_seg):
        longest = max(longest, offsets[j + 1] - offsets[j])
    tmp = np.empty(longest, dtype=np.uint64)
    hist = np.zeros((4, 256), dtype=np.int64)
    for j in range(n_seg):
        a, b = offsets[j], offsets[j + 1]
        n = b - a
        if n < 2:
            continue
        if n <= 64:
            keys[a:b].sort()  # small: the label bits order ties too, harmless
            continue
        hist[:] = 0
        for k in range(a, b):
            x = keys[k] >> np.uint64(32)
            for d in range(4):
                hist[d, (x >> np.uint64(8 * d)) & np.uint64(255)] += 1
        in_tmp = False
        for d in range(4):
            trivial = False
            for c in range(256):
                if hist[d, c] == n:
                    trivial = True
                    break
            if trivial:
                continue
            total = 0
            for c in range(256):
                h = hist[d, c]
                hist[d, c] = total
                total += h
            shift = np.uint64(32 + 8 * d)
            if in_tmp:
                for k in range(n):
                    x = tmp[k]
                    c = (x >> shift) & np.uint64(255)
                    keys[a + hist[d, c]] = x
                    hist[d, c] += 1
            else:
                for k in range(a, b):
                    x = keys[k]
                    c = (x >> shift) & np.uint64(255)
                    tmp[hist[d, c]] = x
                    hist[d, c] += 1
            in_tmp = not in_tmp
        if in_tmp:
            keys[a:b] = tmp[:n]


@jit(nogil=True)
def unpack_keys32(keys):  # pragma: no cover - compiled
    """:func:`scatter_keys32`'s keys back to float32 values and int32 labels."""
    n = keys.shape[0]
    out_bits = np.empty(n, dtype=np.uint32)
    labels = np.empty(n, dtype=np.int32)
    for k in range(n):
        u = keys[k] >> np.uint64(32)
        if u == np.uint64(0xFFFFFFFF):
            out_bits[k] = np.uint32(0x7FC00000)  # NaN
        elif u & np.uint64(0x80000000):
            out_bits[k] = np.uint32(u & np.uint64(0x7FFFFFFF))
        else:
            out_bits[k] = np.uint32(~u & np.uint64(0xFFFFFFFF))
        labels[k] = np.int32(keys[k] & np.uint64(0xFFFFFFFF))
    return out_bits.view(np.float32), labels
