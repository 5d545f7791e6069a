"""Pure kernels on sparse blocks: the CSR → row-group CSC transpose and statistics.

These are the hot loops of conversion. They are compiled with numba (cached on
disk, so worker processes compile once per machine) because no library offers
a counting-sort transpose that also drops stored zeros, narrows cell indices to
uint16 and reports bad input in one pass.
"""

from __future__ import annotations

import dataclasses

import numba
import numpy as np

from scdask.format import STATS, FormatError
from scdask.sources import CSRBlock


@dataclasses.dataclass
class GroupBlock:
    """One row group in the stored layout: gene-major, cell indices local to the group."""

    colptr: np.ndarray  # int64, n_vars + 1, starts at 0
    indices: np.ndarray  # uint16 local cell index, sorted within each gene
    data: np.ndarray  # values, source dtype
    n_rows: int

    @property
    def nnz(self) -> int:
        return int(self.colptr[-1])


@numba.njit(cache=True, nogil=True)
def _count_columns(indptr, indices, data, n_cols, counts):  # pragma: no cover - compiled
    """Count non-zeros per column; return (first bad entry or -1, duplicate entries)."""
    last = np.full(n_cols, -1, dtype=np.int64)
    dups = 0
    for r in range(indptr.shape[0] - 1):
        for k in range(indptr[r], indptr[r + 1]):
            j = indices[k]
            if j < 0 or j >= n_cols:
                return k, dups
            if last[j] == r:
                dups += 1
            last[j] = r
            if data[k] != 0:
                counts[j] += 1
    return -1, dups


@numba.njit(cache=True, nogil=True)
def _scatter(indptr, indices, data, colptr, lo, hi, out_rows, out_data):  # pragma: no cover
    """Counting-sort scatter of the entries whose destination lies in [lo, hi)."""
    n_cols = colptr.shape[0] - 1
    nxt = colptr[:n_cols].copy()
    for r in range(indptr.shape[0] - 1):
        for k in range(indptr[r], indptr[r + 1]):
            v = data[k]
            if v == 0:
                continue
            j = indices[k]
            pos = nxt[j]
            nxt[j] = pos + 1
            if lo <= pos < hi:
                out_rows[pos - lo] = r
                out_data[pos - lo] = v


class Transposer:
    """Transpose rows of a CSR matrix into the stored row-group layout, window by window.

    Stored zeros are dropped and duplicate entries summed (as scipy does); column
    indices may be unsorted on input. The output is produced in windows of a
    given number of entries, so its memory is bounded whatever the group's size.

    Raises :class:`FormatError` on a column index outside ``[0, n_cols)``.
    """

    def __init__(self, block: CSRBlock) -> None:
        if block.n_rows > 1 << 16:
            raise ValueError(f"a row group has at most 65536 rows, got {block.n_rows}")
        if block.indices.dtype.kind not in "iu":
            raise FormatError(f"column indices have dtype {block.indices.dtype}, expected integers")
        b = _contiguous(block)
        counts = np.zeros(b.n_cols, dtype=np.int64)
        bad, dups = _count_columns(b.indptr, b.indices, b.data, b.n_cols, counts)
        if bad >= 0:
            raise FormatError(
                f"column index {int(b.indices[bad])} at entry {bad} of the slab is outside "
                f"0..{b.n_cols - 1}"
            )
        if dups:
            b = _canonical(b)
            counts = np.zeros(b.n_cols, dtype=np.int64)
            _count_columns(b.indptr, b.indices, b.data, b.n_cols, counts)
        self.block = b
        self.colptr = np.zeros(b.n_cols + 1, dtype=np.int64)
        np.cumsum(counts, out=self.colptr[1:])

    @property
    def nnz(self) -> int:
        return int(self.colptr[-1])

    def windows(self, window: int):
        """Yield ``(offset, cell_indices, values)`` covering the output in order."""
        b = self.block
        for lo in range(0, self.nnz, max(1, window)):
            hi = min(self.nnz, lo + window)
            rows = np.empty(hi - lo, dtype=np.uint16)
            vals = np.empty(hi - lo, dtype=b.data.dtype)
            _scatter(b.indptr, b.indices, b.data, self.colptr, lo, hi, rows, vals)
            yield lo, rows, vals

    def cell_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-row statistics of the stored values (zeros not folded in)."""
        nnz, f = empty_stats(self.block.n_rows)
        _segment_stats(self.block.indptr, self.block.data, nnz, f)
        return nnz, f

    def gene_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-column statistics of the stored values (zeros not folded in)."""
        nnz, f = empty_stats(self.block.n_cols)
        _index_stats(self.block.indices, self.block.data, nnz, f)
        return nnz, f


def _canonical(block: CSRBlock) -> CSRBlock:
    import scipy.sparse as sp

    m = sp.csr_matrix((block.data, block.indices, block.indptr), shape=(block.n_rows, block.n_cols))
    m.sum_duplicates()
    m.eliminate_zeros()
    return _contiguous(CSRBlock(m.indptr, m.indices, m.data, block.n_cols))


def _contiguous(block: CSRBlock) -> CSRBlock:
    return CSRBlock(
        np.ascontiguousarray(block.indptr, dtype=np.int64),
        np.ascontiguousarray(block.indices),
        np.ascontiguousarray(block.data),
        block.n_cols,
    )


def csr_to_group(block: CSRBlock) -> GroupBlock:
    """Transpose rows of a CSR matrix into one in-memory :class:`GroupBlock`."""
    t = Transposer(block)
    rows = np.empty(t.nnz, dtype=np.uint16)
    vals = np.empty(t.nnz, dtype=t.block.data.dtype)
    b = t.block
    _scatter(b.indptr, b.indices, b.data, t.colptr, 0, t.nnz, rows, vals)
    return GroupBlock(t.colptr, rows, vals, block.n_rows)


@numba.njit(cache=True, inline="always")
def _min(a, b):  # pragma: no cover - compiled; NaN propagates like numpy's minimum
    if a != a or b != b:
        return np.nan
    return a if a < b else b


@numba.njit(cache=True, inline="always")
def _max(a, b):  # pragma: no cover - compiled; NaN propagates like numpy's maximum
    if a != a or b != b:
        return np.nan
    return a if a > b else b


@numba.njit(cache=True, nogil=True)
def _segment_stats(ptr, values, out_nnz, out_f):  # pragma: no cover - compiled
    # out_f columns: sum, sumsq, min, max of stored values; min/max start at +-inf
    for s in range(ptr.shape[0] - 1):
        acc = 0.0
        acc2 = 0.0
        mn = np.inf
        mx = -np.inf
        cnt = 0
        for k in range(ptr[s], ptr[s + 1]):
            v = np.float64(values[k])
            if v == 0:
                continue
            cnt += 1
            acc += v
            acc2 += v * v
            mn = _min(mn, v)
            mx = _max(mx, v)
        out_nnz[s] += cnt
        out_f[s, 0] += acc
        out_f[s, 1] += acc2
        out_f[s, 2] = _min(out_f[s, 2], mn)
        out_f[s, 3] = _max(out_f[s, 3], mx)


@numba.njit(cache=True, nogil=True)
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


def empty_stats(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Accumulators for :func:`gene_stats`/:func:`cell_stats`: nnz and (sum, sumsq, min, max)."""
    f = np.zeros((n, 4), dtype=np.float64)
    f[:, 2] = np.inf
    f[:, 3] = -np.inf
    return np.zeros(n, dtype=np.int64), f


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


def merge_stats(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Combine two partial statistics of the same genes (or cells)."""
    nnz = a[0] + b[0]
    f = a[1].copy()
    f[:, :2] += b[1][:, :2]
    f[:, 2] = np.minimum(a[1][:, 2], b[1][:, 2])  # NaN propagates, like numpy's min
    f[:, 3] = np.maximum(a[1][:, 3], b[1][:, 3])
    return nnz, f


def finish_stats(nnz: np.ndarray, f: np.ndarray, n_total: int) -> dict[str, np.ndarray]:
    """Fold the implicit zeros into min/max: statistics over all ``n_total`` entries.

    Returns arrays named as :data:`scdask.format.STATS`. min and max are NaN where
    ``n_total`` is 0.
    """
    has_zero = nnz < n_total
    mn = np.where(has_zero, np.minimum(f[:, 2], 0.0), f[:, 2])
    mx = np.where(has_zero, np.maximum(f[:, 3], 0.0), f[:, 3])
    if n_total == 0:
        mn = np.full_like(mn, np.nan)
        mx = np.full_like(mx, np.nan)
    out = dict(zip(STATS, (nnz, f[:, 0], f[:, 1], mn, mx), strict=True))
    return out
