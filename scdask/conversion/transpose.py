"""Pure kernels on sparse blocks: the CSR → row-group CSC transpose and statistics.

These are the hot loops of conversion. They are compiled with numba (cached on
disk, so worker processes compile once per machine) because no library offers
a counting-sort transpose that also drops stored zeros, narrows cell indices to
uint16 and reports bad input in one pass.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from scdask._jit import jit
from scdask.format import FormatError, LossyDtypeError
from scdask.format.blocks import CSRBlock, GroupBlock
from scdask.sources.scratch import Scratch, empty
from scdask.store.kernels import gene_stats, segment_stats
from scdask.store.stats import empty_stats

# Genes per pass of the scatter (see _scatter); 16,384 was fastest on a 2 MB-L2 machine.
_GENE_BLOCK = 16384


@jit(nogil=True)
def _survey(indptr, indices, data, n_cols, check_fits, counts, cell_nnz, cell_f):  # pragma: no cover
    """One pass over CSR rows: non-zeros per column and statistics per row.

    Returns ``(first bad entry or -1, some row unsorted, all values fit uint16)``
    (the last checked only with ``check_fits``). Only ``counts`` is accessed out of
    order, and each row's statistics are taken from its values while they are in cache
    (:func:`~scdask.store.kernels.segment_stats`).
    """
    fits = check_fits
    unsorted = False
    for r in range(indptr.shape[0] - 1):
        prev = -1
        for k in range(indptr[r], indptr[r + 1]):
            j = indices[k]
            if j < 0 or j >= n_cols:
                return k, unsorted, fits
            if j <= prev:
                unsorted = True  # perhaps duplicates: the caller canonicalises
            prev = j
            v = np.float64(data[k])
            if v == 0:
                continue
            if fits and not (0 < v <= 65535 and v == np.floor(v)):
                fits = False
            counts[j] += 1
        # the row's values again, from cache
        cnt, acc, acc2, mn, mx = segment_stats(data, indptr[r], indptr[r + 1])
        cell_nnz[r] = cnt
        cell_f[r, 0] = acc
        cell_f[r, 1] = acc2
        cell_f[r, 2] = mn
        cell_f[r, 3] = mx
    return -1, unsorted, fits


@jit(nogil=True)
def _scatter(indptr, indices, data, colptr, out_rows, out_data):  # pragma: no cover - compiled
    """Counting-sort scatter of the non-zero entries into gene-major order.

    Genes are taken in blocks (rows sorted by column make each row's entries in a
    block one run), so the writes go to a few thousand genes' places at a time and
    stay in cache.
    """
    n_cols = colptr.shape[0] - 1
    n_rows = indptr.shape[0] - 1
    nxt = colptr[:n_cols].copy()
    cur = indptr[:n_rows].copy()
    for g1 in range(_GENE_BLOCK, n_cols + _GENE_BLOCK, _GENE_BLOCK):
        for r in range(n_rows):
            k = cur[r]
            e = indptr[r + 1]
            while k < e:
                j = indices[k]
                if j >= g1:
                    break
                v = data[k]
                if v != 0:
                    pos = nxt[j]
                    nxt[j] = pos + 1
                    out_rows[pos] = r
                    out_data[pos] = v
                k += 1
            cur[r] = k


@dataclasses.dataclass
class Converted:
    """One row group transposed, with the statistics of its stored values (zeros not folded in)."""

    group: GroupBlock
    cells: tuple[np.ndarray, np.ndarray]  # per-row nnz and (sum, sumsq, min, max)
    genes: tuple[np.ndarray, np.ndarray]  # per-column nnz and (sum, sumsq, min, max)


def to_group(block: CSRBlock, dtype: np.dtype | str | None = None,
             scratch: Scratch | None = None) -> Converted:
    """Transpose rows of a CSR matrix into the stored row-group layout, with statistics.

    Two compiled passes over the entries: one counts columns and accumulates the
    per-cell statistics, one scatters; per-gene statistics then come from the
    gene-major output in one sequential pass. Stored zeros are dropped and duplicate entries summed
    (as scipy does); column indices may be unsorted on input.

    Parameters
    ----------
    block
        At most 65,536 rows of a CSR matrix.
    dtype
        Dtype of the stored values: the block's own (default), or ``uint16`` when every
        value is an integer in 1..65535, which is checked.
    scratch
        Where the transposed cell indices and values go (buffers ``rows`` and
        ``values``); new arrays by default.

    Raises
    ------
    FormatError
        On a column index outside ``[0, n_cols)``.
    LossyDtypeError
        When ``dtype`` is ``uint16`` and a value is not an integer in 1..65535.
    """
    if block.n_rows > 1 << 16:
        raise ValueError(f"a row group has at most 65536 rows, got {block.n_rows}")
    if block.indices.dtype.kind not in "iu":
        raise FormatError(f"column indices have dtype {block.indices.dtype}, expected integers")
    b = _contiguous(block)
    out_dtype = b.data.dtype if dtype is None else np.dtype(dtype)
    if out_dtype != b.data.dtype and out_dtype != np.uint16:
        raise ValueError(f"values are stored as {b.data.dtype} or uint16, not {out_dtype}")
    for attempt in range(2):
        counts = np.zeros(b.n_cols, dtype=np.int64)
        cells = empty_stats(b.n_rows)
        check = out_dtype != b.data.dtype
        bad, unsorted, fits = _survey(b.indptr, b.indices, b.data, b.n_cols, check, counts,
                                      *cells)
        if bad >= 0:
            raise FormatError(
                f"column index {int(b.indices[bad])} at entry {bad} of the slab is outside "
                f"0..{b.n_cols - 1}"
            )
        if not unsorted or attempt:
            break
        b = _canonical(b)  # sort each row and sum duplicates, as scipy does
    if out_dtype != b.data.dtype and not fits:
        raise LossyDtypeError(
            f"values are not all integers in 1..65535, so they cannot be stored as {out_dtype}"
        )
    colptr = np.zeros(b.n_cols + 1, dtype=np.int64)
    np.cumsum(counts, out=colptr[1:])
    nnz = int(colptr[-1])
    rows = empty(scratch, "rows", nnz, np.uint16)
    vals = empty(scratch, "values", nnz, out_dtype)
    _scatter(b.indptr, b.indices, b.data, colptr, rows, vals)
    group = GroupBlock(colptr, rows, vals, b.n_rows)
    return Converted(group, cells, gene_stats(group))


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
    return to_group(block).group




@jit(nogil=True)
def bucket_by_group(indptr, indices, values, first_col, R, n_groups, rows, cols, vals
                    ):  # pragma: no cover - compiled
    """Counting sort of a CSC slab's entries by row group, columns in order within each
    group: ``rows`` (cell within its group), ``cols``, ``vals`` filled; returns the groups'
    offsets (``n_groups + 1``). No sort keys or permutation are held."""
    offsets = np.zeros(n_groups + 1, np.int64)
    for k in range(indices.shape[0]):
        offsets[indices[k] // R + 1] += 1
    for g in range(n_groups):
        offsets[g + 1] += offsets[g]
    nxt = offsets[:-1].copy()
    for j in range(indptr.shape[0] - 1):
        for k in range(indptr[j], indptr[j + 1]):
            r = indices[k]
            g = r // R
            p = nxt[g]
            nxt[g] += 1
            rows[p] = r - g * R
            cols[p] = first_col + j
            vals[p] = values[k]
    return offsets


@jit(nogil=True)
def group_by_row(rows, cols, vals, n_rows, out_cols, out_vals):  # pragma: no cover - compiled
    """Counting sort of entries by row (stable: a row's columns keep their order); returns
    the CSR ``indptr``."""
    indptr = np.zeros(n_rows + 1, np.int64)
    for k in range(rows.shape[0]):
        indptr[rows[k] + 1] += 1
    for r in range(n_rows):
        indptr[r + 1] += indptr[r]
    nxt = indptr[:-1].copy()
    for k in range(rows.shape[0]):
        p = nxt[rows[k]]
        nxt[rows[k]] += 1
        out_cols[p] = cols[k]
        out_vals[p] = vals[k]
    return indptr
