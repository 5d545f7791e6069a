"""What a lazy matrix is made of: stores as parts, the selected cells and genes.

A :class:`Base` is resolved to :class:`GroupSel` (the selected cells of one row group),
the unit every task of :mod:`scdask.compute` works on. :func:`select` resolves a
numpy-style index to a new base.
"""

from __future__ import annotations

import functools
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from scdask.store.reader import Store


class Part:
    """One store's matrix as a slice of the dataset's cells."""

    __slots__ = ("store", "matrix", "gene_map", "offset")

    def __init__(self, store: Store, matrix: str, gene_map: np.ndarray | None, offset: int):
        self.store = store
        self.matrix = matrix
        self.gene_map = gene_map  # dataset gene position → this store's; None: the same
        self.offset = offset

    @property
    def n_cells(self) -> int:
        return self.store.n_obs

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        gm = None if self.gene_map is None else tokenize(self.gene_map)
        return (self.store.url, self.store.attrs.get("uuid"), self.matrix, gm, self.offset)


class GroupSel:
    """The selected cells of one row group of one part."""

    __slots__ = ("part", "group", "n_rows", "local", "count", "first")

    def __init__(self, part: Part, group: int, n_rows: int, local: np.ndarray | None, first: int):
        self.part = part
        self.group = group
        self.n_rows = n_rows
        self.local = local  # sorted positions within the group; None: all of them
        self.count = n_rows if local is None else len(local)
        self.first = first  # position of its first cell in the selection


class Base:
    """What a lazy matrix is made of: parts, the selected cells and genes.

    ``cells`` are sorted global cell positions (``None``: all); ``genes`` are dataset
    gene positions in the order selected, repeats allowed (``None``: all). A dropped
    axis was indexed with an integer.
    """

    def __init__(
        self,
        parts: tuple[Part, ...],
        n_genes: int,
        dtype: np.dtype,
        cells: np.ndarray | None = None,
        genes: np.ndarray | None = None,
        drop_cell: bool = False,
        drop_gene: bool = False,
    ) -> None:
        self.parts = parts
        self.n_genes = n_genes
        self.dtype = np.dtype(dtype)
        self.cells = cells
        self.genes = genes
        self.drop_cell = drop_cell
        self.drop_gene = drop_gene
        self.n_cells = sum(p.n_cells for p in parts)
        self.token = tokenize(parts, n_genes, str(self.dtype), cells, genes, drop_cell, drop_gene)

    def __dask_tokenize__(self) -> str:
        return self.token

    def replace(self, **kw: Any) -> Base:
        d = dict(parts=self.parts, n_genes=self.n_genes, dtype=self.dtype, cells=self.cells,
                 genes=self.genes, drop_cell=self.drop_cell, drop_gene=self.drop_gene)
        d.update(kw)
        return Base(**d)

    @property
    def n_sel_cells(self) -> int:
        return self.n_cells if self.cells is None else len(self.cells)

    @property
    def n_sel_genes(self) -> int:
        return self.n_genes if self.genes is None else len(self.genes)

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(d for d, drop in (("cell", self.drop_cell), ("gene", self.drop_gene)) if not drop)

    @property
    def shape(self) -> tuple[int, ...]:
        sizes = {"cell": self.n_sel_cells, "gene": self.n_sel_genes}
        return tuple(sizes[d] for d in self.dims)

    @functools.cached_property
    def groups(self) -> list[GroupSel]:
        """The row groups holding selected cells, in order (``first``: the position of each
        one's first cell in the selection)."""
        out: list[GroupSel] = []
        if self.cells is None:
            first = 0
            for p in self.parts:
                for g in range(p.store.n_groups):
                    a, b = p.store.group_rows(g)
                    out.append(GroupSel(p, g, b - a, None, first))
                    first += b - a
            return out
        for p in self.parts:
            lo = np.searchsorted(self.cells, p.offset)
            hi = np.searchsorted(self.cells, p.offset + p.n_cells)
            local = self.cells[lo:hi] - p.offset
            R = p.store.row_group_size
            bounds = np.flatnonzero(np.diff(local // R)) + 1
            for start, chunk in zip(np.r_[0, bounds], np.split(local, bounds), strict=True):
                if not len(chunk):
                    continue
                g = int(chunk[0] // R)
                a, b = p.store.group_rows(g)
                sel = None if len(chunk) == b - a else (chunk - a).astype(np.int64)
                out.append(GroupSel(p, g, b - a, sel, int(lo + start)))
        return out

    @functools.cached_property
    def counts(self) -> tuple[int, ...]:
        """Selected cells per row group: the chunks along the cells."""
        return tuple(g.count for g in self.groups) or (0,)


def normalize_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int | np.integer):
        axis = (axis,)
    out = []
    for a in axis:
        a = int(a)
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(a, ndim)
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def positions(k: Any, size: int) -> tuple[np.ndarray, bool] | None:
    """Positions selected by one axis of an index, and whether it drops the axis."""
    if isinstance(k, slice):  # only the selected positions (not all 100M, then a view)
        return np.arange(*k.indices(size), dtype=np.int64), False
    if isinstance(k, int | np.integer):
        i = int(k)
        if not -size <= i < size:
            raise IndexError(f"index {i} is out of bounds for an axis of size {size}")
        return np.array([i % size]), True
    if isinstance(k, list | np.ndarray) and not isinstance(k, da.Array):
        a = np.asarray(k)
        if a.ndim != 1:
            return None
        if a.dtype == bool:
            if len(a) != size:
                raise IndexError(f"boolean index of length {len(a)} for an axis of size {size}")
            return np.flatnonzero(a), False
        if a.dtype.kind not in "iu" and len(a):
            return None
        a = a.astype(np.int64)
        if len(a) and (a.min() < -size or a.max() >= size):
            raise IndexError(f"index out of bounds for an axis of size {size}")
        return a % size if len(a) else a, False
    return None


def cells_in_order(b: Base, key: Any, ndim: int) -> tuple[tuple[Any, ...], np.ndarray] | None:
    """For a key picking distinct cells out of their order (a reversed slice, names in
    another order): the same key with those cells in increasing order, and each picked
    cell's place among them (the selection is ``sorted[inverse]`` along the cells);
    ``None`` for any other key (repeated cells among them)."""
    if not isinstance(key, tuple):
        key = (key,)
    if (not b.dims or b.dims[0] != "cell" or len(key) > ndim
            or any(k is None or k is Ellipsis for k in key)):
        return None
    key = key + (slice(None),) * (ndim - len(key))
    pos = positions(key[0], b.n_sel_cells)
    if pos is None or pos[1] or len(pos[0]) < 2:
        return None
    order = np.argsort(pos[0], kind="stable")
    ranked = pos[0][order]
    if not np.all(np.diff(ranked) > 0):  # repeats
        return None
    return (ranked, *key[1:]), np.argsort(order)


def select(b: Base, key: Any, ndim: int
           ) -> tuple[Base, np.ndarray | None, np.ndarray | None] | None:
    """The base a numpy-style ``key`` selects, and the positions it picked along the
    selected cells and genes (None: all); None when the key needs the generic path."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    if len(key) > ndim or any(k is None for k in key):
        return None
    key = key + (slice(None),) * (ndim - len(key))
    new: dict[str, Any] = {}
    picked_axes: dict[str, np.ndarray] = {}
    for dim, k in zip(b.dims, key, strict=True):
        if isinstance(k, slice) and k == slice(None):
            continue
        pos = positions(k, b.n_sel_cells if dim == "cell" else b.n_sel_genes)
        if pos is None:
            return None
        picked, scalar = pos
        if dim == "cell":
            cells = picked if b.cells is None else b.cells[picked]
            if len(cells) > 1 and np.any(np.diff(cells) <= 0):
                return None  # reordered or repeated cells: the generic path
            new["cells"], new["drop_cell"] = cells, scalar
        else:
            new["genes"] = picked if b.genes is None else b.genes[picked]
            new["drop_gene"] = scalar
        picked_axes[dim] = picked
    if not new:
        return b, None, None
    return b.replace(**new), picked_axes.get("cell"), picked_axes.get("gene")
