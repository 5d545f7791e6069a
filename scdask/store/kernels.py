"""Compiled statistics of a stored row group: per gene and per cell, NaN as numpy has it."""

from __future__ import annotations

import numpy as np

from scdask._jit import jit
from scdask.format.blocks import GroupBlock
from scdask.store.stats import empty_stats


@jit(inline="always")
def _min(a, b):  # pragma: no cover - compiled; NaN propagates like numpy's minimum
    if a != a or b != b:
        return np.nan
    return a if a < b else b


@jit(inline="always")
def _max(a, b):  # pragma: no cover - compiled; NaN propagates like numpy's maximum
    if a != a or b != b:
        return np.nan
    return a if a > b else b


@jit(inline="always")
def segment_stats(values, lo, hi):  # pragma: no cover - compiled
    """Statistics of the non-zero ``values[lo:hi]``: count, sum, sum of squares, min and
    max (NaN when a value is NaN; min/max are +-inf when none is non-zero)."""
    acc = 0.0
    acc2 = 0.0
    mn = np.inf
    mx = -np.inf
    nan = False
    cnt = 0
    for k in range(lo, hi):
        v = np.float64(values[k])
        if v == 0:
            continue
        cnt += 1
        acc += v
        acc2 += v * v
        nan |= v != v
        mn = min(mn, v)
        mx = max(mx, v)
    if nan:
        return cnt, acc, acc2, np.nan, np.nan
    return cnt, acc, acc2, mn, mx


@jit(nogil=True)
def _segment_stats(ptr, values, out_nnz, out_f):  # pragma: no cover - compiled
    # out_f columns: sum, sumsq, min, max of stored values; min/max start at +-inf
    for s in range(ptr.shape[0] - 1):
        cnt, acc, acc2, mn, mx = segment_stats(values, ptr[s], ptr[s + 1])
        out_nnz[s] += cnt
        out_f[s, 0] += acc
        out_f[s, 1] += acc2
        out_f[s, 2] = _min(out_f[s, 2], mn)
        out_f[s, 3] = _max(out_f[s, 3], mx)


@jit(nogil=True)
def _index_stats(index, values, out_nnz, out_f):  # pragma: no cover - compiled
    for k in range(index.shape[0]):
        i = index[k]
        v = np.float64(values[k])
        if v == 0:
            continue
        out_nnz[i] += 1
        out_f[i, 0] += v
        out_f[i, 1] += v * v
        out_f[i, 2] = _min(out_f[i, 2], v)
        out_f[i, 3] = _max(out_f[i, 3], v)


def gene_stats(g: GroupBlock) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene statistics of the stored values of one group (zeros not folded in)."""
    nnz, f = empty_stats(len(g.colptr) - 1)
    _segment_stats(g.colptr, g.data, nnz, f)
    return nnz, f


def cell_stats(g: GroupBlock) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell statistics of the stored values of one group (zeros not folded in)."""
    nnz, f = empty_stats(g.n_rows)
    _index_stats(g.indices, g.data, nnz, f)
    return nnz, f


@jit(nogil=True)
def copy_overlaps(buf, s, a, b, starts, j0, j1, out):  # pragma: no cover - compiled
    """Copy into ``out[starts[j]:...]`` the part of range ``a[j]:b[j]`` that ``buf`` holds
    (``buf`` holds entries ``s:s + len(buf)``), for the ranges ``j0:j1``."""
    e = s + buf.shape[0]
    for j in range(j0, j1):
        lo = max(a[j], s)
        hi = min(b[j], e)
        o = starts[j] + lo - a[j]
        out[o : o + hi - lo] = buf[lo - s : hi - s]
