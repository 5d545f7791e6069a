"""Reading one row group: the selected genes' runs of values, and the generic sparse view.

:func:`read_gene_runs` is what every task that touches stored values calls (reductions,
group-by, export, the loader). :func:`read_block` and :class:`BlockGraph` make the
``sparse.COO`` chunks that Dask's generic operations see.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from scdask.compute.expr import Expr
from scdask.compute.selection import Base, GroupSel, Part

#: Genes per chunk of the generic (sparse.COO) view.
GENE_CHUNK = 4096


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


# -- the generic (sparse.COO) view ------------------------------------------------


def read_block(sel: GroupSel, genes: np.ndarray, expr: Expr, in_dtype: np.dtype,
               dtype: np.dtype, mask: np.ndarray | None, drop_cell: bool, drop_gene: bool) -> Any:
    """One block of the matrix as ``sparse.COO``: a row group's selected cells × some genes."""
    import sparse

    unique, inverse = np.unique(genes, return_inverse=True)
    starts, ends, vals, rows = read_gene_runs(sel.part, sel.group, unique, Expr(), True)
    starts, ends = starts[inverse], ends[inverse]
    lengths = ends - starts
    take = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    col = np.repeat(np.arange(len(genes)), lengths)
    row = rows[take].astype(np.int64)
    v = vals[take]
    if sel.local is not None:
        pos = np.full(sel.n_rows, -1, np.int64)
        pos[sel.local] = np.arange(sel.count)
        row = pos[row]
        keep = row >= 0
        row, col, v = row[keep], col[keep], v[keep]
    v = expr.evaluate(v.astype(in_dtype)).astype(dtype, copy=False)
    fill = expr.evaluate(np.zeros(1, in_dtype))[0]
    shape = (sel.count, len(genes))
    if mask is not None and not np.asarray(mask).all():
        dense_rows = np.flatnonzero(~np.asarray(mask, dtype=bool))
        keep = ~np.isin(row, dense_rows)
        row, col, v = row[keep], col[keep], v[keep]
        rr = np.repeat(dense_rows, len(genes))
        cc = np.tile(np.arange(len(genes)), len(dense_rows))
        row, col = np.concatenate([row, rr]), np.concatenate([col, cc])
        with np.errstate(invalid="ignore"):
            masked_value = expr.evaluate(np.array([np.nan], in_dtype)).astype(dtype)[0]
        v = np.concatenate([v, np.full(len(rr), masked_value, dtype=v.dtype)])
    out = sparse.COO(np.stack([row, col]), v, shape=shape, fill_value=np.asarray(fill, dtype),
                     sorted=False, has_duplicates=False)
    if drop_cell and drop_gene:
        return out[0, 0]
    if drop_cell:
        return out[0]
    if drop_gene:
        return out[:, 0]
    return out


class BlockGraph(Mapping):
    """The tasks of the generic view, made when asked for: opening costs no graph."""

    def __init__(self, name: str, base: Base, expr: Expr, dtype: np.dtype) -> None:
        self.name = name
        self.base = base
        self.expr = expr
        self.dtype = dtype
        genes = np.arange(base.n_genes) if base.genes is None else base.genes
        self.gene_chunks = [genes[i : i + GENE_CHUNK] for i in range(0, len(genes), GENE_CHUNK)]
        if not self.gene_chunks:
            self.gene_chunks = [genes]
        self.masks, self.deps = base.mask_blocks()

    def _key(self, i: int, j: int) -> tuple[Any, ...]:
        b = self.base
        if b.drop_cell and b.drop_gene:
            return (self.name,)
        if b.drop_cell:
            return (self.name, j)
        if b.drop_gene:
            return (self.name, i)
        return (self.name, i, j)

    def _keys(self) -> list[tuple[Any, ...]]:
        return [self._key(i, j) for i in range(len(self.base.groups))
                for j in range(len(self.gene_chunks))]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self.base.groups) * len(self.gene_chunks)

    def __getitem__(self, key: Any) -> Any:
        b = self.base
        idx = list(key[1:])
        i = 0 if b.drop_cell else idx.pop(0)
        j = 0 if b.drop_gene else idx.pop(0)
        if key != self._key(i, j) or i >= len(b.groups) or j >= len(self.gene_chunks):
            raise KeyError(key)
        return (read_block, b.groups[i], self.gene_chunks[j], self.expr, b.dtype, self.dtype,
                self.masks[i], b.drop_cell, b.drop_gene)

