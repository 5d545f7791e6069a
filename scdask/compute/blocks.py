"""One block of a lazy matrix, as a task sees it: one row group's selected cells × some
selected genes, the values under the expression, and what the implicit entries hold.

:class:`Spec` is the static part every task of one lazy matrix shares (the base and
the expression). A task also gets its :class:`~scdask.compute.selection.GroupSel` and
the per-cell and per-gene operands' values for its cells and genes. The value at zero
(:class:`Fill`) is cut into classes of cells (:func:`fill_plan`): cells whose per-cell
operands give the same value at zero share one row of fill values per gene — one class
for raw counts, two for ``.where(cells)`` (0 and NaN), one per distinct value for a
per-cell shift.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from scdask.compute.expr import Expr, evaluate, split_fill
from scdask.compute.kernels import gather
from scdask.compute.reading import read_gene_runs
from scdask.compute.selection import Base, GroupSel

#: Classes of cells above which a block's value at zero is computed densely.
CLASS_LIMIT = 16
#: Stored entries evaluated at a time (bounds the temporaries of an expression's evaluation).
EVAL_ENTRIES = 1 << 18
#: Elements of one dense piece of a block (the fallback of expressions without structure).
DENSE_ELEMENTS = 1 << 22


class DensePathWarning(UserWarning):
    """An expression is reduced densely per block: correct, bounded in memory, but slow."""


class Spec:
    """What every task of one lazy matrix shares: the base, the expression, the operands' count."""

    __slots__ = ("base", "expr", "n_cells", "n_genes")

    def __init__(self, base: Base, expr: Expr, n_cells: int, n_genes: int) -> None:
        self.base, self.expr, self.n_cells, self.n_genes = base, expr, n_cells, n_genes

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (self.base.token, repr(self.expr.tree), self.n_cells, self.n_genes)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Spec, (self.base, self.expr, self.n_cells, self.n_genes))

    @property
    def constant_fill(self) -> float | None:
        """The value of every implicit entry when no operand changes it, else None."""
        rest, parts = split_fill(self.expr.tree, self.base.dtype)
        if parts or Expr(rest).uses_genes:
            return None
        with np.errstate(all="ignore"):
            return float(np.asarray(evaluate(rest, None, (), ())).reshape(-1)[0])

    def genes(self, gpos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(unique, inverse)``: the sorted dataset genes of selected positions ``gpos``."""
        g = self.base.genes
        gpos = np.asarray(gpos, dtype=np.int64).reshape(-1)
        unique, inverse = np.unique(gpos if g is None else g[gpos], return_inverse=True)
        return unique, inverse.reshape(-1)

    def split(self, ops: tuple[Any, ...]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The block's per-cell and per-gene operand values, as flat arrays."""
        cells = [np.asarray(o).reshape(-1) for o in ops[: self.n_cells]]
        genes = [np.asarray(o).reshape(-1) for o in ops[self.n_cells :]]
        return cells, genes


class Fill:
    """The implicit entries of a block: cell ``p`` holds ``table[labels[p], q]`` for gene ``q``
    (``table`` has one column when no per-gene operand reaches the value at zero)."""

    __slots__ = ("labels", "table")

    def __init__(self, labels: np.ndarray, table: np.ndarray) -> None:
        self.labels, self.table = labels, table

    @property
    def n_classes(self) -> int:
        return self.table.shape[0]

    @property
    def per_gene(self) -> bool:
        return self.table.shape[1] > 1

    @property
    def constant(self) -> float | None:
        """The one value of every implicit entry, or None when it varies."""
        if self.n_classes == 1 and not self.per_gene:
            return float(self.table[0, 0])
        return None

    def cell_fill(self) -> np.ndarray:
        """Per cell of the block, its fill (when it does not depend on the gene)."""
        return self.table[self.labels, 0]

    def dense(self, q: np.ndarray) -> np.ndarray:
        """The fill of every (cell, gene ``q``) of the block, as a new float64 array."""
        t = self.table[:, q] if self.per_gene else self.table
        return np.array(np.broadcast_to(t[self.labels], (len(self.labels), len(q))),
                        dtype=np.float64)


def fill_plan(expr: Expr, dtype: np.dtype, cells: list[np.ndarray], genes: list[np.ndarray],
              n_cells: int, n_genes: int) -> Fill:
    """The value at zero of ``expr`` for a block of ``n_cells`` cells × ``n_genes`` genes."""
    rest, parts = split_fill(expr.tree, dtype)
    width = max(n_genes, 1)
    with np.errstate(all="ignore"):
        if not parts:
            value = np.asarray(evaluate(rest, None, (), genes), dtype=np.float64).reshape(-1)
            row = value if value.size > 1 else value[:1]
            return Fill(np.zeros(n_cells, np.int64), row.reshape(1, -1).copy())
        keys = [np.broadcast_to(np.asarray(evaluate(s, None, cells, ())), (n_cells,)) for s in parts]
        if not Expr(rest).uses_genes:  # one value per cell: the classes are its distinct values
            value = np.broadcast_to(np.asarray(evaluate(rest, None, (), (), keys), np.float64),
                                    (n_cells,))
            uniq, labels = np.unique(value, return_inverse=True)
            return Fill(labels.reshape(-1).astype(np.int64), uniq.reshape(-1, 1))
        if n_cells == 0:
            return Fill(np.zeros(0, np.int64), np.zeros((1, width)))
        codes = np.stack([np.unique(k, return_inverse=True)[1].reshape(-1) for k in keys], axis=1)
        _, first, labels = np.unique(codes, axis=0, return_index=True, return_inverse=True)
        rows = []
        for i in first:
            value = np.asarray(evaluate(rest, None, (), genes, [k[i] for k in keys]),
                               np.float64).reshape(-1)
            rows.append(np.broadcast_to(value, (width,)) if value.size == 1 else value)
        return Fill(labels.reshape(-1).astype(np.int64), np.array(rows, dtype=np.float64))


def block_fill(spec: Spec, sel: GroupSel | None, cells: list[np.ndarray],
               genes: list[np.ndarray], n_genes: int) -> Fill:
    n = 0 if sel is None else sel.count
    return fill_plan(spec.expr, spec.base.dtype, cells, genes, n, n_genes)


def _row_of(sel: GroupSel, missing: int = -1) -> np.ndarray:
    """Local row of the group → position among its selected cells (``missing`` if not)."""
    pos = np.full(sel.n_rows, missing, np.int64)
    pos[np.arange(sel.n_rows) if sel.local is None else sel.local] = np.arange(sel.count)
    return pos


def take_runs(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Indices of every entry of the runs ``starts[j]:ends[j]``, run after run."""
    lengths = ends - starts
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


def batches(spec: Spec, sel: GroupSel, unique: np.ndarray, inverse: np.ndarray,
            cells: list[np.ndarray], genes: list[np.ndarray], with_rows: bool,
            native: bool = False) -> Any:
    """The block's stored entries under the expression, a run of genes at a time:
    ``(j0, j1, starts, ends, values, rows)`` for the block's genes ``j0:j1``, ``starts`` and
    ``ends`` indexing ``values`` and ``rows`` (rows local to the row group).

    An identity expression gives one batch of the values as stored. Otherwise each batch
    holds about :data:`EVAL_ENTRIES` entries as float64 (in the expression's own dtype with
    ``native``), so evaluating an expression never holds more than a batch of temporaries.
    ``cells`` and ``genes`` are the operands' values for the block's cells and genes.
    """
    with_rows = with_rows or spec.expr.uses_cells
    runs = stored_runs(spec, sel, unique, with_rows)
    # each per-cell operand by local row of the group: one gather per entry, not two
    by_row = [c[_row_of(sel, 0)] for c in cells] if spec.expr.uses_cells else []
    yield from evaluated(spec, runs, inverse, by_row, genes, with_rows, native)


def stored_runs(spec: Spec, sel: GroupSel, unique: np.ndarray,
                with_rows: bool) -> tuple[np.ndarray, ...]:
    """``starts, ends, values, rows`` of the stored entries of genes ``unique`` in the row
    group, as stored; none (nothing read) when the expression does not use the values:
    every entry is then its value at zero, as implicit entries are (``count`` is
    ``sum(notnull(x))``, constant for integers)."""
    if not spec.expr.uses_values:
        none = np.zeros(len(unique), np.int64)
        return none, none.copy(), np.zeros(0, spec.base.dtype), np.zeros(0, np.int64)
    return read_gene_runs(sel.part, sel.group, unique, Expr(), with_rows)


def evaluated(spec: Spec, runs: tuple[np.ndarray, ...], inverse: np.ndarray,
              by_row: list[np.ndarray], genes: list[np.ndarray], with_rows: bool,
              native: bool = False) -> Any:
    """:func:`batches` of stored runs ``(starts, ends, values, rows)`` of the block's unique
    genes already read (``by_row``: each per-cell operand by local row)."""
    expr = spec.expr
    uses_genes = expr.uses_genes
    starts, ends, vals, rows = runs
    if not (len(inverse) == len(starts) and np.array_equal(inverse, np.arange(len(inverse)))):
        starts, ends = starts[inverse], ends[inverse]  # the block's order, repeats included
    if expr.is_identity:
        yield 0, len(starts), starts, ends, vals, rows
        return
    dtype = expr.dtype(spec.base.dtype, [b.dtype for b in by_row], [g.dtype for g in genes])
    lengths = ends - starts
    ends_cum = np.cumsum(lengths)
    contiguous = bool(np.all(starts[1:] == ends[:-1]))  # the runs follow each other
    j0, n = 0, len(starts)
    while j0 < n:
        done = int(ends_cum[j0 - 1]) if j0 else 0
        j1 = max(j0 + 1, int(np.searchsorted(ends_cum, done + EVAL_ENTRIES, side="right")))
        idx: Any = slice(starts[j0], ends[j1 - 1]) if contiguous else take_runs(
            starts[j0:j1], ends[j0:j1])
        v = vals[idx].astype(spec.base.dtype, copy=False)
        r = rows[idx] if with_rows else rows
        cell_vals = [gather(c, r) for c in by_row]  # compiled: no widened index array
        gene_vals: list[np.ndarray] = []
        if uses_genes:
            gene_vals = [np.repeat(g[j0:j1], lengths[j0:j1]) for g in genes]
        out = np.asarray(np.broadcast_to(expr.evaluate(v, cell_vals, gene_vals), v.shape),
                         dtype=dtype if native else np.float64)
        e = ends_cum[j0:j1] - done
        yield j0, j1, e - lengths[j0:j1], e, out, r
        j0 = j1


def entries(spec: Spec, sel: GroupSel, unique: np.ndarray, inverse: np.ndarray,
            cells: list[np.ndarray], genes: list[np.ndarray], with_rows: bool,
            native: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All of :func:`batches` as one ``starts, ends, values, rows``."""
    parts = list(batches(spec, sel, unique, inverse, cells, genes, with_rows, native))
    if len(parts) == 1:
        return parts[0][2:]
    offsets = np.cumsum([0] + [len(p[4]) for p in parts])
    starts = np.concatenate([p[2] + o for p, o in zip(parts, offsets, strict=False)])
    ends = np.concatenate([p[3] + o for p, o in zip(parts, offsets, strict=False)])
    with_rows = with_rows or spec.expr.uses_cells
    rows = np.concatenate([p[5] for p in parts]) if with_rows else parts[0][5]
    return starts, ends, np.concatenate([p[4] for p in parts]), rows


def coo(spec: Spec, sel: GroupSel, unique: np.ndarray, inverse: np.ndarray,
        cells: list[np.ndarray], genes: list[np.ndarray], native: bool = False
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The block's stored entries as ``(cell, gene, value)``: cell among the selected cells
    of the group, gene among the block's genes, in gene-major order."""
    return runs_to_coo(sel, *entries(spec, sel, unique, inverse, cells, genes, True, native))


def runs_to_coo(sel: GroupSel, starts: np.ndarray, ends: np.ndarray, vals: np.ndarray,
                rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of entries (:func:`entries`) as ``(cell, gene, value)``: cell among the selected
    cells of the group (unselected ones dropped), gene the run's position."""
    take = take_runs(starts, ends)
    col = np.repeat(np.arange(len(starts)), ends - starts)
    row = _row_of(sel)[rows[take].astype(np.int64)]
    keep = row >= 0
    return row[keep], col[keep], np.asarray(vals)[take][keep]


def dense_block(spec: Spec, sel: GroupSel, unique: np.ndarray, inverse: np.ndarray,
                cells: list[np.ndarray], genes: list[np.ndarray], fill: Fill,
                q: np.ndarray) -> np.ndarray:
    """The block's cells × genes ``q`` (positions in the block) as a dense float64 array."""
    sub_unique, sub_inverse = np.unique(unique[inverse[q]], return_inverse=True)
    row, col, vals = coo(spec, sel, sub_unique, sub_inverse.reshape(-1), cells,
                         [g[q] for g in genes])
    out = fill.dense(q)
    out[row, col] = vals
    return out


def csr_block(sels: np.ndarray, gpos: np.ndarray, *ops: Any, spec: Spec, out_dtype: np.dtype
              ) -> Any:
    """One row group's selected cells × genes ``gpos`` as ``scipy.sparse.csr_matrix``: the
    stored entries under the expression, every implicit entry 0 — checked against the
    operands' actual values (a per-cell divisor keeps zeros zero; a shift does not)."""
    import scipy.sparse as sp

    sel = sels.reshape(-1)[0]
    unique, inverse = spec.genes(gpos)
    cells, genes = spec.split(ops)
    shape = (0 if sel is None else sel.count, len(inverse))
    if sel is None:
        return sp.csr_matrix(shape, dtype=out_dtype)
    fill = block_fill(spec, sel, cells, genes, shape[1])
    if (fill.table != 0).any():  # NaN too
        bad = fill.table[fill.table != 0].reshape(-1)[0]
        raise ValueError(f"{spec.expr}: the implicit zeros of row group {sel.group} become "
                         f"{bad!r}: the selection is dense, not a sparse matrix")
    row, col, vals = coo(spec, sel, unique, inverse, cells, genes, native=True)
    return sp.csr_matrix((np.asarray(vals).astype(out_dtype, copy=False), (row, col)),
                         shape=shape)


def gene_chunks(n_cells: int, n_genes: int) -> list[np.ndarray]:
    """Gene positions in chunks small enough for a dense piece of ``n_cells`` cells."""
    step = max(1, DENSE_ELEMENTS // max(1, n_cells))
    return [np.arange(a, min(a + step, n_genes)) for a in range(0, n_genes, step)] or [
        np.arange(0)]


_warned: set[str] = set()


def warn_dense(expr: Expr, why: str) -> None:
    """Say once per expression that it is reduced densely per block."""
    key = repr(expr.tree)
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(f"{expr}: {why}; it is computed densely one block at a time (correct, "
                  "bounded in memory, but slow)", DensePathWarning, stacklevel=3)


def view_block(sels: np.ndarray, gpos: np.ndarray, *ops: Any, spec: Spec, out_dtype: np.dtype
               ) -> Any:
    """One block of the generic view: a row group's selected cells × genes ``gpos``, as
    ``sparse.COO`` filled with the value at zero, or dense when that value varies."""
    import sparse

    sel = sels.reshape(-1)[0]
    unique, inverse = spec.genes(gpos)
    cells, genes = spec.split(ops)
    shape = (0 if sel is None else sel.count, len(inverse))
    constant = spec.constant_fill
    if constant is None:
        if sel is None:
            return np.zeros(shape, out_dtype)
        fill = block_fill(spec, sel, cells, genes, shape[1])
        q = np.arange(shape[1])
        return dense_block(spec, sel, unique, inverse, cells, genes, fill, q).astype(out_dtype)
    if sel is None:
        row = col = np.zeros(0, np.int64)
        vals = np.zeros(0, out_dtype)
    else:
        row, col, vals = coo(spec, sel, unique, inverse, cells, genes, native=True)
    with np.errstate(invalid="ignore"):
        fill_value = np.asarray(constant).astype(out_dtype)[()]
    return sparse.COO(np.stack([row, col]), np.asarray(vals).astype(out_dtype, copy=False),
                      shape=shape, fill_value=fill_value, sorted=False, has_duplicates=False)
