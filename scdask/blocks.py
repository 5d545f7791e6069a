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
def _count_columns(indices, data, n_cols, counts):  # pragma: no cover - compiled
    for k in range(indices.shape[0]):
        j = indices[k]
        if j < 0 or j >= n_cols:
            return k
        if data[k] != 0:
            counts[j] += 1
    return -1


@numba.njit(cache=True, nogil=True)
def _scatter(indptr, indices, data, colptr, out_rows, out_data):  # pragma: no cover
    n_cols = colptr.shape[0] - 1
    nxt = colptr[:n_cols].copy()
    dups = 0
    for r in range(indptr.shape[0] - 1):
        for k in range(indptr[r], indptr[r + 1]):
            v = data[k]
            if v == 0:
                continue
            j = indices[k]
            pos = nxt[j]
            if pos > colptr[j] and out_rows[pos - 1] == r:
                dups += 1
            out_rows[pos] = r
            out_data[pos] = v
            nxt[j] = pos + 1
    return dups


def csr_to_group(block: CSRBlock) -> GroupBlock:
    """Transpose rows of a CSR matrix into the stored row-group layout.

    Stored zeros are dropped, duplicate entries summed (as scipy does), column
    indices may be unsorted on input. Raises :class:`FormatError` on a column
    index outside ``[0, n_cols)``.
    """
    n_rows, n_cols = block.n_rows, block.n_cols
    if n_rows > 1 << 16:
        raise ValueError(f"a row group has at most 65536 rows, got {n_rows}")
    indices = np.ascontiguousarray(block.indices)
    data = np.ascontiguousarray(block.data)
    if indices.dtype.kind not in "iu":
        raise FormatError(f"column indices have dtype {indices.dtype}, expected integers")
    counts = np.zeros(n_cols, dtype=np.int64)
    bad = _count_columns(indices, data, n_cols, counts)
    if bad >= 0:
        raise FormatError(
            f"column index {int(indices[bad])} at entry {bad} of the slab is outside "
            f"0..{n_cols - 1}"
        )
    colptr = np.zeros(n_cols + 1, dtype=np.int64)
    np.cumsum(counts, out=colptr[1:])
    nnz = int(colptr[-1])
    out_rows = np.empty(nnz, dtype=np.uint16)
    out_data = np.empty(nnz, dtype=data.dtype)
    indptr = np.ascontiguousarray(block.indptr, dtype=np.int64)
    dups = _scatter(indptr, indices, data, colptr, out_rows, out_data)
    if dups:
        import scipy.sparse as sp

        m = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))
        m.sum_duplicates()
        m.eliminate_zeros()
        return csr_to_group(CSRBlock(m.indptr, m.indices, m.data, n_cols))
    return GroupBlock(colptr, out_rows, out_data, n_rows)


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
        for k in range(ptr[s], ptr[s + 1]):
            v = np.float64(values[k])
            acc += v
            acc2 += v * v
            mn = _min(mn, v)
            mx = _max(mx, v)
        out_nnz[s] += ptr[s + 1] - ptr[s]
        out_f[s, 0] += acc
        out_f[s, 1] += acc2
        out_f[s, 2] = _min(out_f[s, 2], mn)
        out_f[s, 3] = _max(out_f[s, 3], mx)


@numba.njit(cache=True, nogil=True)
def _index_stats(index, values, out_nnz, out_f):  # pragma: no cover - compiled
    for k in range(index.shape[0]):
        i = index[k]
        v = np.float64(values[k])
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
