"""``obsp`` / ``varp`` of a store (written by :mod:`scdask.conversion.pairwise`), read for a
selection of cells or genes: only the selected rows' entries are read, then the selected
columns kept; the result is checked as scipy checks a matrix it did not build."""

from __future__ import annotations

from typing import Any

import numpy as np

from scdask.format import FormatError
from scdask.store.reader import Store


def pairwise_keys(store: Store, axis: str) -> list[str]:
    """The ``obsp`` or ``varp`` keys the store holds (none in stores written before them)."""
    return list(store.attrs.get(axis, []))


def read_pairwise(store: Store, key: str, rows: np.ndarray | None) -> Any:
    """``store[key][rows][:, rows]`` (everything when ``rows`` is None), in the class the
    source held: ``csr_matrix``, ``csc_matrix`` or a dense array."""
    import scipy.sparse as sp

    node = store.root[key]
    if not hasattr(node, "attrs") or "format" not in node.attrs:  # dense
        arr = store.array(key)
        return np.asarray(arr[:] if rows is None else arr.get_orthogonal_selection((rows, rows)))
    fmt = node.attrs["format"]
    n = int(node.attrs["shape"][0])
    ptr = np.asarray(store.array(f"{key}/indptr")[:], dtype=np.int64)
    indices, data = store.array(f"{key}/indices"), store.array(f"{key}/data")
    if len(ptr) != n + 1 or ptr[0] != 0 or np.any(np.diff(ptr) < 0) or ptr[-1] > indices.shape[0]:
        raise FormatError(f"{store.url}: {key}/indptr is damaged")
    if rows is None:
        m = (ptr, np.asarray(indices[:], dtype=np.int64), np.asarray(data[:]))
        out = (sp.csr_matrix if fmt == "csr" else sp.csc_matrix)((m[2], m[1], m[0]), shape=(n, n))
    else:
        a, b = ptr[rows], ptr[rows + 1]
        lengths = b - a
        pos = np.repeat(a - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        sub_ptr = np.concatenate([[0], np.cumsum(lengths)])
        idx = (np.asarray(indices.get_orthogonal_selection(pos), dtype=np.int64) if len(pos)
               else np.zeros(0, np.int64))  # scipy wants indptr's dtype
        val = np.asarray(data.get_orthogonal_selection(pos)) if len(pos) else np.zeros(0, data.dtype)
        cls = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
        # the major axis selected; the minor one taken after (rows == columns: one list)
        shape = (len(rows), n) if fmt == "csr" else (n, len(rows))
        out = cls((val, idx, sub_ptr), shape=shape)
    try:  # before any indexing with its indices: scipy's kernels trust them
        out.check_format(full_check=True)
    except ValueError as e:
        raise FormatError(f"{store.url}: {key}: {e}") from None
    if rows is not None:
        out = cls(out[:, rows] if fmt == "csr" else out[rows, :])
    return out
