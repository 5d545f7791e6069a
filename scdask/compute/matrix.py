"""What the rooms built on compute see of a user's selection: :class:`Matrix`, :func:`as_matrix`."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from scdask.compute.array import ScdaskArray
from scdask.compute.blocks import batches, block_fill, entries
from scdask.compute.expr import Expr
from scdask.compute.selection import Base, GroupSel


@dataclass(frozen=True)
class Matrix:
    """A user's cell × gene selection, as the rooms built on compute see it.

    Attributes
    ----------
    data
        The DataArray (dimensions ``cell`` and a gene dimension), coordinates included.
    base
        What it selects: parts (stores), cells, genes, a cell mask.
    array
        The lazy matrix itself: its expression and the per-cell and per-gene operands.
    """

    data: Any
    base: Base
    array: ScdaskArray

    def __dask_tokenize__(self) -> Any:  # the lazy matrix's token: not the coordinates' data
        return ("scdask.Matrix", self.array.__dask_tokenize__())

    def row_groups(self) -> Any:
        """The selection's row groups (:class:`GroupSel`) as a Dask array of objects, one per
        block, chunked like the cells: ``da.map_blocks(fn, m.row_groups(), chunks=(
        m.base.counts, ...), new_axis=...)`` runs ``fn`` once per row group."""
        import dask.array as da

        groups = np.empty(max(len(self.base.groups), 1), dtype=object)
        groups[: len(self.base.groups)] = self.base.groups
        return da.from_array(groups, chunks=1, asarray=False,
                             name=f"row-groups-{self.base.token}")

    @property
    def expr(self) -> Expr:
        """The elementwise expression applied to the stored values."""
        return self.array._expr

    @property
    def has_operands(self) -> bool:
        """Whether the expression uses per-cell or per-gene vectors."""
        return bool(self.array._cell_ops or self.array._gene_ops)

    @property
    def gene_dim(self) -> str:
        return str(self.data.dims[1])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def fill(self) -> float | None:
        """What the implicit zeros become under :attr:`expr` (None: it varies by cell or gene)."""
        return self.array.spec.constant_fill

    @functools.cached_property
    def operands(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The per-cell and per-gene operands' values (lazy ones computed, once)."""
        import dask

        cells = [np.asarray(o).reshape(-1) for o in dask.compute(*self.array._cell_ops)]
        genes = [np.asarray(o).reshape(-1) for o in dask.compute(*self.array._gene_ops)]
        return cells, genes

    def entries(self, sel: GroupSel, genes: slice | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One row group's stored entries of the selected genes under the expression:
        ``starts, ends, values, rows``, ``starts[j]:ends[j]`` the entries of the selection's
        gene ``j`` (repeats included), ``rows`` local to the row group, values in the
        expression's dtype; ``genes``: only those of the selection's genes. A ValueError
        names the row group where the implicit zeros would not stay zeros (a sparse result
        cannot hold that)."""
        out, fill = self.entries_and_fill(sel, genes)
        if np.any(fill != 0):
            raise ValueError(
                f"{sel.part.store.url}: row group {sel.group}: {self.expr} makes the implicit "
                f"zeros {np.unique(fill)[:3].tolist()}, not zeros; the sparse values "
                "cannot hold that (keep zeros zero: e.g. scale with zero_center=False)")
        return out

    def entries_and_fill(self, sel: GroupSel, genes: slice | None = None
                         ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """:meth:`entries` and the value of the implicit entries of each gene (float64,
        one per gene; a ValueError when it differs from cell to cell, as with a per-cell
        operand: then no per-gene value describes the rest)."""
        spec, sel, unique, inverse, cells, gene_ops, row = self._block(sel, genes)
        return entries(spec, sel, unique, inverse, cells, gene_ops, True, native=True), row

    def batches_and_fill(self, sel: GroupSel, genes: slice | None = None
                         ) -> tuple[Any, np.ndarray]:
        """:meth:`entries_and_fill` a batch of genes at a time, as evaluated (no copy of
        the row group's entries joined): ``(j0, j1, starts, ends, values, rows)`` for
        genes ``j0:j1``, ``starts`` and ``ends`` indexing the batch's values and rows."""
        spec, sel, unique, inverse, cells, gene_ops, row = self._block(sel, genes)
        return batches(spec, sel, unique, inverse, cells, gene_ops, True, native=True), row

    def _block(self, sel: GroupSel, genes: slice | None) -> tuple[Any, ...]:
        spec = self.array.spec
        cells, gene_ops = self.operands
        cells = [c[sel.first : sel.first + sel.count] for c in cells]
        gpos = np.arange(self.base.n_sel_genes)
        if genes is not None:
            gpos = gpos[genes]
            gene_ops = [g[genes] for g in gene_ops]
        unique, inverse = spec.genes(gpos)
        fill = block_fill(spec, sel, cells, gene_ops, len(inverse))
        if fill.n_classes > 1:
            raise ValueError(
                f"{sel.part.store.url}: row group {sel.group}: {spec.expr} gives the implicit "
                "zeros values that differ from cell to cell; this needs a value per gene")
        row = np.broadcast_to(fill.table[0], (len(inverse),)).astype(np.float64)
        return spec, sel, unique, inverse, cells, gene_ops, row

    @property
    def genes(self) -> np.ndarray:
        """Dataset gene positions, in the order selected (repeats allowed)."""
        b = self.base
        return np.arange(b.n_genes) if b.genes is None else b.genes


def as_matrix(data: Any, var: str = "X", *, caller: str) -> Matrix:
    """The scdask matrix ``data`` is (or holds as ``var``), or a TypeError naming ``caller``.

    Parameters
    ----------
    data
        An ``xarray.Dataset`` from :func:`scdask.open` (or a selection of it), or one of
        its matrices as a DataArray.
    var
        The matrix to take when ``data`` is a Dataset.
    caller
        The public function asking, named in the error.
    """
    import xarray as xr

    x = data[var] if isinstance(data, xr.Dataset) else data
    arr = getattr(x, "data", None)
    if (not isinstance(x, xr.DataArray) or not isinstance(arr, ScdaskArray) or arr.ndim != 2
            or x.dims[0] != "cell"):
        import dask

        hint = ""
        if isinstance(x, xr.DataArray) and dask.is_dask_collection(arr):
            hint = (" (this one is a generic Dask array: selections that reorder or repeat "
                    "cells leave scdask's engine; select cells in increasing order, e.g. "
                    "isel(cell=np.sort(positions)))")
        raise TypeError(f"{caller} needs a cell × gene matrix opened with scdask.open{hint}")
    return Matrix(x, arr._base, arr)


def obs_column(data: Any, name: str) -> Any:
    """An obs column of a selection, as read for grouping: a categorical column as pandas'
    ``Categorical`` (its codes: one byte a cell, where its strings would take eight, and
    the categories no selected cell has left out, as anndata's subsets leave them), any
    other as a numpy array.

    Parameters
    ----------
    data
        A Dataset or DataArray from :func:`scdask.open` (or a selection of it).
    name
        The obs column (a coordinate along ``cell``).
    """
    import pandas as pd

    v = data[name]
    if isinstance(v.dtype, pd.CategoricalDtype):
        values = v.data
        if isinstance(values, pd.Categorical):
            return _without_unused(values)
    return np.asarray(v.values)


def _without_unused(values: Any, step: int = 1 << 22) -> Any:
    """pandas' ``remove_unused_categories``, a slice of codes at a time (pandas' own sorts
    every code: 25 bytes a cell)."""
    import pandas as pd

    codes, n = values.codes, len(values.categories)
    seen = np.zeros(n + 1, np.int64)
    for a in range(0, len(codes), step):
        seen += np.bincount(codes[a : a + step].astype(np.int64) + 1, minlength=n + 1)
    used = np.flatnonzero(seen[1:])
    if len(used) == n:
        return values
    lut = np.full(n + 1, -1, codes.dtype)
    lut[used + 1] = np.arange(len(used))
    new = np.empty_like(codes)
    for a in range(0, len(codes), step):
        new[a : a + step] = lut[codes[a : a + step].astype(np.int64) + 1]
    return pd.Categorical.from_codes(new, dtype=pd.CategoricalDtype(
        values.categories[used], ordered=values.ordered))
