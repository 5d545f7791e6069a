"""Compiled kernels of :mod:`scdask.tl.pca`: a row group's selected cells as dense tiles."""

from __future__ import annotations

import numpy as np

from scdask._jit import jit


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
