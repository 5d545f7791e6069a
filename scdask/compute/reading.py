"""Reading one row group: the selected genes' runs of values.

:func:`read_gene_runs` is what every task that touches stored values calls (reductions,
group-by, export, the loader, the generic view's blocks).
"""

from __future__ import annotations

import numpy as np

from scdask.compute.expr import Expr
from scdask.compute.selection import Part


def _local_genes(part: Part, unique: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The store's gene positions for the dataset's ``unique`` genes: sorted, and the order back."""
    if unique is None:
        if part.gene_map is None:
            return None, None
        unique = np.arange(len(part.gene_map))
    local = unique if part.gene_map is None else part.gene_map[unique]
    if part.gene_map is None:
        return local, None
    order = np.argsort(local, kind="stable")
    return local[order], order


def read_gene_runs(
    part: Part, group: int, unique: np.ndarray | None, expr: Expr, with_rows: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``starts, ends, values, rows`` of the dataset genes ``unique`` in one row group.

    Values come transformed by ``expr`` (then as float64), or as stored.
    """
    st = part.store
    local, order = _local_genes(part, unique)
    starts, ends, vals, rows = st.read_genes(part.matrix, group, local, with_rows)
    if order is not None:  # back to the dataset's gene order
        s2, e2 = np.empty_like(starts), np.empty_like(ends)
        s2[order], e2[order] = starts, ends
        starts, ends = s2, e2
    if expr.is_identity:  # the kernels take stored values as they are (uint16 counts, say)
        return starts, ends, vals, rows
    vals = expr.evaluate(vals.astype(st.dtype(part.matrix), copy=False))
    return starts, ends, np.asarray(vals, dtype=np.float64), rows
