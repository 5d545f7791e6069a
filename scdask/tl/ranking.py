"""Compiled kernels of the exact Wilcoxon rank-sum test (:mod:`scdask.tl.wilcoxon`).

Each stored entry becomes one 64-bit key: its value as an unsigned 32-bit code that sorts
as the value (:func:`sortable32`; zero is :data:`ZERO`, NaN :data:`NAN` and last) above its
cell's label. Keys are bucketed by gene (:func:`scatter_keys`), sorted per gene by their
code (:func:`radix_sort_segments`) and walked once per gene (:func:`rank_sums`): a gene's
implicit zeros are one run of ties whose size is known from the cell counts, so no rank is
materialized per cell.
"""

from __future__ import annotations

import numpy as np

from scdask._jit import jit
from scdask.compute.kernels import add_moments

#: The code of zero (of 0.0 and -0.0 alike) and of NaN.
ZERO, NAN = 0x80000000, 0xFFFFFFFF


@jit(nogil=True)
def sortable32(vals, out):  # pragma: no cover - compiled
    """Each float32 value's code into ``out`` (uint32): its bits made to sort as the value,
    -0.0 as 0.0, every NaN as :data:`NAN`."""
    bits = vals.view(np.uint32)
    for k in range(vals.shape[0]):
        v = vals[k]
        b = bits[k]
        if v != v:
            out[k] = np.uint32(NAN)
        elif v == 0:
            out[k] = np.uint32(ZERO)
        elif b & np.uint32(ZERO):
            out[k] = ~b
        else:
            out[k] = b | np.uint32(ZERO)


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
def scatter_keys(starts, ends, vals, codes, rows, labels, nxt, keys, stats):  # pragma: no cover
    """Each labelled entry of run (gene) ``j`` as a key (its code over its label) at
    ``keys[nxt[j]]``, then ``nxt[j]`` moves on; its value adds to ``stats[j, :, label]``
    (:func:`~scdask.compute.kernels.add_moments`)."""
    for j in range(starts.shape[0]):
        p = nxt[j]
        st = stats[j]
        for k in range(starts[j], ends[j]):
            lab = labels[rows[k]]
            if lab < 0:
                continue
            keys[p] = (np.uint64(codes[k]) << np.uint64(32)) | np.uint64(lab)
            p += 1
            add_moments(st, lab, np.float64(vals[k]))
        nxt[j] = p


@jit(nogil=True)
def radix_sort_segments(keys, offsets):  # pragma: no cover - compiled
    """Sort each ``keys[offsets[j]:offsets[j+1]]`` by its upper 32 bits (the code; the
    order within ties is left as it comes): least significant byte first, one counting
    pass per byte, skipping the bytes every key of the segment shares. Segments fit in
    cache: ~6x faster than a comparison sort of thousands of keys."""
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
def rank_sums(offsets, keys, n_cells, ref_of, rest, stored, sums, ties):  # pragma: no cover
    """Per label and gene, the sum of the ranks of the label's cells, ties averaged.

    ``keys[offsets[j]:offsets[j+1]]`` are gene ``j``'s stored entries sorted by code, with
    their cells' labels; ``stored[j, l]`` how many label ``l`` has (NaN included);
    ``n_cells[l]`` the cells of label ``l`` (the cells a label has no entry for are
    zeros). ``ref_of[l]`` is the label that label ``l`` is compared with. With ``rest``:
    ranks among all cells, ties counted over all cells (in row 0 of ``ties``); else among
    the cells of each label and its reference, ties of each such pair in the label's row
    (a label that is a reference, or has none, is left out). NaN values are left out.
    Fills ``sums`` and ``ties`` ``(labels, genes)``, ``ties`` the sum of ``t**3 - t`` over
    the blocks of ``t`` tied values.
    """
    n_labels = n_cells.shape[0]
    n_genes = offsets.shape[0] - 1
    low = np.uint64(0xFFFFFFFF)
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
        while b > a and (keys[b - 1] >> np.uint64(32)) == NAN:  # NaN sorts last
            b -= 1
        zero_done = False
        less_all = 0.0
        ref_ties[:] = 0.0
        k = a
        while True:
            u = np.int64(keys[k] >> np.uint64(32)) if k < b else np.int64(NAN)
            if k >= b and zero_done:
                break
            if (zero_done or u < ZERO) and (k + 1 >= b or (keys[k + 1] >> np.uint64(32)) != u):
                lab = np.int64(keys[k] & low)  # one value alone: no tie (most of them)
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
            if not zero_done and u >= ZERO:
                at_zero = True
                zero_done = True
                if u == ZERO:
                    while k2 < b and (keys[k2] >> np.uint64(32)) == ZERO:
                        k2 += 1
            else:
                while k2 < b and np.int64(keys[k2] >> np.uint64(32)) == u:
                    k2 += 1
            t = 0
            for kk in range(k, k2):  # the run's stored entries, per label
                lab = np.int64(keys[kk] & low)
                if cnt[lab] == 0:
                    touched[t] = lab
                    t += 1
                cnt[lab] += 1.0
            if at_zero:  # the implicit zeros of every label join the run
                for lab in range(n_labels):
                    imp = n_cells[lab] - stored[j, lab]
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
