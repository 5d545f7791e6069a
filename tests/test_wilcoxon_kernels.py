"""The Wilcoxon kernels against scipy on random data: the key sort, and rank sums, ties and
moments from a gene's stored entries with its implicit zeros (ties, negatives, stored
zeros, NaN, labels with and without a reference, float32 values and others)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

from scdask.tl import ranking
from scdask.tl.wilcoxon import ranked

VALUES = st.sampled_from([-2.5, -1.0, 0.0, -0.0, 0.5, 1.0, 1.0, 2.0, 3.0, 3.0, 7.25,
                          float("nan")])


def _batches(dense, stored, labels, dtype, cuts):
    """The matrix's stored entries as the kernels take them: one row group in batches of
    genes (``cuts``), gene-major, rows in cell order."""
    n_genes = dense.shape[1]
    bounds = sorted({0, n_genes, *[min(c, n_genes) for c in cuts]})
    out = []
    counts = np.zeros(n_genes, np.int64)
    lab = labels.astype(np.int32)
    for j0, j1 in zip(bounds[:-1], bounds[1:], strict=True):
        rows = [np.flatnonzero(stored[:, j]) for j in range(j0, j1)]
        lengths = np.array([len(r) for r in rows], np.int64)
        ends = np.cumsum(lengths)
        r = np.concatenate(rows).astype(np.uint16) if rows else np.zeros(0, np.uint16)
        vals = np.concatenate([dense[rr, j0 + i] for i, rr in enumerate(rows)]).astype(dtype)
        ranking.count_labelled(ends - lengths, ends, r, lab, counts[j0:j1])
        out.append((j0, j1, ends - lengths, ends, vals, r, lab))
    return out, counts


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n_genes=st.integers(1, 4), n_labels=st.integers(2, 5),
       rest=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       cuts=st.lists(st.integers(0, 4), max_size=2))
def test_rank_sums_equal_scipys_ranks(data, n_genes, n_labels, rest, dtype, cuts):
    n_cells = np.array(data.draw(st.lists(st.integers(1, 12), min_size=n_labels,
                                          max_size=n_labels)), np.float64)
    cells = np.repeat(np.arange(n_labels), n_cells.astype(int))
    dense = np.zeros((len(cells), n_genes))
    stored = np.zeros_like(dense, dtype=bool)
    for j in range(n_genes):  # each cell stores a value or not (a stored zero is stored)
        mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(cells),
                                           max_size=len(cells))))
        vals = data.draw(st.lists(VALUES, min_size=len(cells), max_size=len(cells)))
        dense[mask, j] = np.array(vals)[mask]
        stored[:, j] = mask
    ref = data.draw(st.integers(0, n_labels - 1))
    ref_of = np.full(n_labels, -1 if rest else ref, np.int64)
    if not rest and n_labels > 2:
        ref_of[data.draw(st.integers(0, n_labels - 1))] = -1  # a label tested against none
    batches, counts = _batches(dense, stored, cells, dtype, cuts)
    sums, ties, stats = ranked(batches, counts, n_cells, ref_of, rest)
    for j in range(n_genes):
        x = dense[:, j]
        ok = ~np.isnan(x)
        for lab in range(n_labels):
            mine = cells == lab
            np.testing.assert_array_equal(stats[0, lab, j], stored[mine, j].sum())
            np.testing.assert_array_equal(stats[1, lab, j], np.isnan(x[mine]).sum())
            np.testing.assert_allclose(stats[2, lab, j], np.nansum(x[mine]))
            np.testing.assert_allclose(stats[3, lab, j], np.nansum(x[mine] ** 2))
            np.testing.assert_array_equal(stats[4, lab, j], (x[mine & ok] != 0).sum())
            if rest:
                pool = ok
            elif ref_of[lab] < 0 or ref_of[lab] == lab:
                continue
            else:
                pool = ok & ((cells == lab) | (cells == ref_of[lab]))
            r = rankdata(x[pool])
            np.testing.assert_allclose(sums[lab, j], r[(cells[pool] == lab)].sum(),
                                       err_msg=f"gene {j} label {lab}")
            _, t = np.unique(x[pool], return_counts=True)
            if not rest:
                np.testing.assert_allclose(ties[lab, j], (t ** 3 - t).sum())
        if rest:
            _, t = np.unique(x[ok], return_counts=True)
            np.testing.assert_allclose(ties[0, j], (t ** 3 - t).sum())


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.one_of(st.floats(allow_nan=True, width=32), st.just(-0.0)),
                       min_size=60, max_size=400),
       cuts=st.lists(st.integers(0, 400), max_size=3), seed=st.integers(0, 2**32 - 1))
def test_keys_sort_as_their_values(values, cuts, seed):
    """Keys of float32 values sort as the values (NaN last), segment by segment, whatever
    the segment's length (small ones by comparison, others by radix), with values drawn
    by hypothesis and counts-like ones (many ties, some bytes shared)."""
    rng = np.random.default_rng(seed)
    counts = np.log1p(rng.integers(1, 40, 3000) / rng.integers(100, 1000, 3000) * 1e4)
    v = np.concatenate([np.array(values, np.float32), counts.astype(np.float32)])
    bounds = sorted({0, len(v), len(values), *[min(c, len(v)) for c in cuts]})
    offsets = np.array(bounds, np.int64)
    labels = np.arange(len(v), dtype=np.int32)  # the entry's position, to follow it
    rows = np.arange(len(v), dtype=np.int64)
    keys = np.empty(len(v), np.uint64)
    codes = np.empty(len(v), np.uint32)
    ranking.sortable32(v, codes)
    ranking.scatter_keys(offsets[:-1], offsets[1:], v, codes, rows, labels, offsets[:-1].copy(),
                         keys, np.zeros((len(bounds) - 1, 5, len(v))))
    ranking.radix_sort_segments(keys, offsets)
    lab = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        np.testing.assert_array_equal(v[lab[a:b]], np.sort(v[a:b]))  # NaN last
        np.testing.assert_array_equal(np.sort(lab[a:b]), np.arange(a, b))  # each entry once
