"""``obsp`` and ``varp`` (cell × cell and gene × gene matrices, e.g. neighbour graphs) written
to the store: a sparse one as a group of 1-D ``indptr``, ``indices``, ``data`` arrays (its
format and shape in the group's attributes), a dense one as a 2-D array. Copied a slab
at a time, never whole; read back by :mod:`scdask.store.pairwise`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from scdask.conversion.arrays import EVERY_CHUNK, compressors
from scdask.format import FormatError, Plan

#: Entries per chunk of a sparse pairwise matrix's arrays (and per slab copied).
CHUNK = 1 << 20


def write_pairwise(root: zarr.Group, plan: Plan, key: str, element: Any) -> None:
    """Write ``element`` (see :meth:`scdask.sources.Source.pairwise`) as ``root[key]``."""
    n = plan.n_obs if key.startswith("obsp/") else plan.n_vars
    if not isinstance(element, tuple):  # dense
        if tuple(element.shape) != (n, n):
            raise FormatError(f"{key}: shape {tuple(element.shape)}, expected {(n, n)}")
        rows = max(1, min(n, CHUNK // max(1, n)))
        z = root.create_array(key, shape=(n, n), chunks=(rows, max(1, n)), dtype=element.dtype,
                              compressors=compressors(plan.codecs, "shuffle"),
                              config=EVERY_CHUNK)
        for a in range(0, n, rows):
            z[a : a + rows] = np.asarray(element[a : a + rows])
        return
    fmt, shape, indptr, indices, data = element
    if tuple(shape) != (n, n):
        raise FormatError(f"{key}: shape {tuple(shape)}, expected {(n, n)}")
    ptr = np.asarray(indptr[:], dtype=np.int64)
    nnz = int(ptr[-1]) if len(ptr) else 0
    if (len(ptr) != n + 1 or ptr[0] != 0 or np.any(np.diff(ptr) < 0)
            or nnz > min(len(indices), len(data))):
        raise FormatError(f"{key}: indptr is not {n + 1} offsets rising from 0 within the "
                          "stored entries")
    group = root.create_group(key, attributes={"format": fmt, "shape": [n, n]})
    index_dtype = np.int32 if n < 2**31 else np.int64
    opts = {"compressors": compressors(plan.codecs, "shuffle"), "config": EVERY_CHUNK}
    group.create_array("indptr", data=ptr, chunks=(max(1, min(len(ptr), CHUNK)),), **opts)
    zi = group.create_array("indices", shape=(nnz,), dtype=index_dtype,
                            chunks=(max(1, min(nnz, CHUNK)),), **opts)
    zd = group.create_array("data", shape=(nnz,), dtype=data.dtype,
                            chunks=(max(1, min(nnz, CHUNK)),), **opts)
    for a in range(0, nnz, CHUNK):
        b = min(nnz, a + CHUNK)
        idx = np.asarray(indices[a:b])
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise FormatError(f"{key}: indices[{a}:{b}] hold an index outside 0..{n - 1}")
        zi[a:b] = idx.astype(index_dtype)
        zd[a:b] = np.asarray(data[a:b])
