"""The lazy cell × gene matrix: a Dask array that knows where its values are stored.

:class:`ScdaskArray` is a real :class:`dask.array.Array` — its chunks are pydata
``sparse.COO`` blocks (one row group × up to :data:`GENE_CHUNK` genes), so any
Dask or xarray operation works on it — that also carries a description of what
it is (:class:`Base`: which stores, which cells, which genes, which cells are
masked to NaN; and an elementwise :class:`~scdask.expr.Expr`). Indexing,
elementwise operations and ``np.where`` with a per-cell condition compose that
description instead of adding graph layers, and the reductions (sum, mean, var,
std, min, max, count_nonzero and their NaN-skipping forms) are computed from it
directly: one task per row group reads only the selected genes' byte ranges and
runs a compiled kernel (:mod:`scdask.kernels`); partials merge exactly. Gene
selections therefore never depend on Dask fusing a getter with a getitem.

Anything else falls back to Dask's generic machinery on the sparse chunks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from scdask import kernels
from scdask.expr import Expr, const, ufunc
from scdask.kernels import M2, MAX, MIN, NAN, SUM, N
from scdask.store.reader import Store

#: Genes per chunk of the generic (sparse.COO) view.
GENE_CHUNK = 4096


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
    """What a lazy matrix is made of: parts, the selected cells and genes, and a cell mask.

    ``cells`` are sorted global cell positions (``None``: all); ``genes`` are dataset
    gene positions in the order selected, repeats allowed (``None``: all). A dropped
    axis was indexed with an integer. ``mask`` (numpy or Dask, one bool per selected
    cell) makes the cells where it is false NaN.
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
        mask: Any = None,
    ) -> None:
        self.parts = parts
        self.n_genes = n_genes
        self.dtype = np.dtype(dtype)
        self.cells = cells
        self.genes = genes
        self.drop_cell = drop_cell
        self.drop_gene = drop_gene
        self.mask = mask
        self.n_cells = sum(p.n_cells for p in parts)
        self.token = tokenize(
            parts, n_genes, str(self.dtype), cells, genes, drop_cell, drop_gene,
            None if mask is None else (mask.name if isinstance(mask, da.Array) else tokenize(mask)),
        )

    def replace(self, **kw: Any) -> Base:
        d = dict(parts=self.parts, n_genes=self.n_genes, dtype=self.dtype, cells=self.cells,
                 genes=self.genes, drop_cell=self.drop_cell, drop_gene=self.drop_gene,
                 mask=self.mask)
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
        """The row groups holding selected cells, in order."""
        out: list[GroupSel] = []
        first = 0
        for p in self.parts:
            st = p.store
            R = st.row_group_size
            if self.cells is None:
                for g in range(st.n_groups):
                    a, b = st.group_rows(g)
                    out.append(GroupSel(p, g, b - a, None, first))
                    first += b - a
                continue
            lo = np.searchsorted(self.cells, p.offset)
            hi = np.searchsorted(self.cells, p.offset + p.n_cells)
            local = self.cells[lo:hi] - p.offset
            if not len(local):
                continue
            gid = local // R
            bounds = np.flatnonzero(np.diff(gid)) + 1
            for chunk in np.split(local, bounds):
                g = int(chunk[0] // R)
                a, b = st.group_rows(g)
                n_rows = b - a
                sel = None if len(chunk) == n_rows else (chunk - a).astype(np.int64)
                out.append(GroupSel(p, g, n_rows, sel, first))
                first += len(chunk)
        return out

    @functools.cached_property
    def gene_index(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(unique, inverse)``: sorted unique selected genes and ``genes = unique[inverse]``.

        ``(None, None)`` when every gene is selected in order.
        """
        if self.genes is None:
            return None, None
        u, inv = np.unique(self.genes, return_inverse=True)
        return u, inv

    def mask_blocks(self) -> tuple[list[Any], list[Any]]:
        """Per group, the mask over its selected cells (a key, an array or None); dependencies."""
        groups = self.groups
        if self.mask is None:
            return [None] * len(groups), []
        counts = tuple(g.count for g in groups)
        if isinstance(self.mask, da.Array):
            m = self.mask.reshape(-1).rechunk((counts,)) if groups else self.mask
            return [(m.name, i) for i in range(len(groups))], [m]
        m = np.asarray(self.mask).reshape(-1)
        return [m[g.first : g.first + g.count] for g in groups], []


# -- reading one group -----------------------------------------------------------


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


def _group_values(
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


def _cell_weights(sel: GroupSel, mask: np.ndarray | None) -> tuple[np.ndarray, int, int]:
    """Per cell of the group: 0 not selected, 1 selected, 2 selected but masked (NaN)."""
    if sel.local is None and mask is None:
        return np.zeros(0, np.int8), sel.n_rows, 0
    w = np.zeros(sel.n_rows, np.int8)
    local = np.arange(sel.n_rows) if sel.local is None else sel.local
    w[local] = 1
    n_masked = 0
    if mask is not None:
        masked = local[~np.asarray(mask, dtype=bool)]
        w[masked] = 2
        n_masked = len(masked)
    return w, sel.count - n_masked, n_masked


def _constant_partial(value: float, count: int, n: int) -> np.ndarray:
    """The partial of ``count`` entries all equal to ``value``, for ``n`` elements."""
    p = kernels.empty_partial(n)
    if count == 0:
        return p
    if np.isnan(value):
        p[NAN] = 1.0
        return p
    p[N] = count
    p[SUM] = count * value
    p[MIN] = p[MAX] = value
    return p


def gene_partial(sel: GroupSel, unique: np.ndarray | None, n_unique: int, expr: Expr,
                 fill: float, masked_value: float, mask: np.ndarray | None) -> np.ndarray:
    """Per-gene partial statistics over the selected cells of one row group.

    Masked cells are NaN before ``expr``: each of their entries is ``masked_value``.
    """
    w, n_sel, n_masked = _cell_weights(sel, mask)
    starts, ends, vals, rows = _group_values(sel.part, sel.group, unique, expr, w.size > 0)
    out = kernels.empty_partial(n_unique)
    kernels.gene_partials(starts, ends, vals, rows, w, n_sel, fill, out)
    if n_masked:
        out = kernels.merge_partials(out, _constant_partial(masked_value, n_masked, n_unique))
    return out


def cell_partial(sel: GroupSel, unique: np.ndarray | None, inverse: np.ndarray | None,
                 expr: Expr, fill: float, masked_value: float, mask: np.ndarray | None
                 ) -> np.ndarray:
    """Per selected cell of one row group, partial statistics over the selected genes."""
    starts, ends, vals, rows = _group_values(sel.part, sel.group, unique, expr, True)
    if inverse is not None:  # genes in the order selected, repeats included
        starts, ends = starts[inverse], ends[inverse]
    out = np.empty((6, sel.n_rows), dtype=np.float64)
    kernels.cell_partials(starts, ends, vals, rows, fill, out)
    if sel.local is not None:
        out = out[:, sel.local]
    if mask is not None:
        masked = ~np.asarray(mask, dtype=bool)
        n_genes = len(starts)
        out[:, masked] = _constant_partial(masked_value, n_genes, 1)
    return out


def finalize(p: np.ndarray, op: str, skipna: bool, ddof: int, integer: bool) -> np.ndarray:
    """The statistic ``op`` from partials; NaN where numpy would give NaN."""
    n = p[N]
    with np.errstate(invalid="ignore", divide="ignore"):
        if op == "count":  # values that are not NaN
            return n.astype(np.int64)
        if op == "sum":
            r = p[SUM].copy()
        elif op == "mean":
            r = np.where(n > 0, p[SUM] / np.where(n > 0, n, 1), np.nan)
        elif op in ("var", "std"):
            dof = n - ddof
            r = np.where(dof > 0, p[M2] / np.where(dof > 0, dof, 1), np.nan)
            r = np.maximum(r, 0.0)
            if op == "std":
                r = np.sqrt(r)
        elif op == "min":
            r = np.where(n > 0, p[MIN], np.nan)
        elif op == "max":
            r = np.where(n > 0, p[MAX], np.nan)
        else:
            raise ValueError(f"unknown reduction {op!r}")
    if not skipna:
        r = np.where(p[NAN] > 0, np.nan, r)
    if integer and op == "sum":
        # Partials accumulate in float64, exact while no partial sum can reach 2**53:
        # bounded by the largest magnitude times the values counted. Beyond, say so.
        with np.errstate(invalid="ignore"):
            bound = np.maximum(np.abs(p[MIN]), np.abs(p[MAX])) * n
        if (bound >= 2.0**53).any():
            raise OverflowError(
                "an integer sum may exceed 2**53, beyond which its float64 accumulation is "
                "not exact; sum x.astype('float64') to accept a rounded result"
            )
        if not np.isnan(r).any():
            return r.astype(np.int64)
    return r


def _merge(*parts: np.ndarray) -> np.ndarray:
    out = parts[0]
    for p in parts[1:]:
        out = kernels.merge_partials(out, p)
    return out


def _finish_genes(p: np.ndarray, inverse: np.ndarray | None, scalar: bool, op: str,
                  skipna: bool, ddof: int, integer: bool) -> np.ndarray:
    if scalar:
        if inverse is not None:  # repeated genes count as often as selected
            p = p[:, inverse]
        return finalize(kernels.fold_partials(p), op, skipna, ddof, integer).reshape(())
    r = finalize(p, op, skipna, ddof, integer)
    return r if inverse is None else r[inverse]


# -- the generic (sparse.COO) view ------------------------------------------------


def read_block(sel: GroupSel, genes: np.ndarray, expr: Expr, in_dtype: np.dtype,
               dtype: np.dtype, mask: np.ndarray | None, drop_cell: bool, drop_gene: bool) -> Any:
    """One block of the matrix as ``sparse.COO``: a row group's selected cells × some genes."""
    import sparse

    unique, inverse = np.unique(genes, return_inverse=True)
    starts, ends, vals, rows = _group_values(sel.part, sel.group, unique, Expr(), True)
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


class _BlockGraph(Mapping):
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


# -- the array --------------------------------------------------------------------

_REDUCTIONS = {
    np.sum: ("sum", False), np.nansum: ("sum", True),
    np.mean: ("mean", False), np.nanmean: ("mean", True),
    np.var: ("var", False), np.nanvar: ("var", True),
    np.std: ("std", False), np.nanstd: ("std", True),
    np.min: ("min", False), np.nanmin: ("min", True), np.amin: ("min", False),
    np.max: ("max", False), np.nanmax: ("max", True), np.amax: ("max", False),
}


class ScdaskArray(da.Array):
    """A Dask array of a stored matrix that reduces and selects through its description.

    Use it as any Dask array; ``scdask.open`` puts it in an xarray Dataset.
    """

    _base: Base
    _expr: Expr

    @classmethod
    def from_base(cls, base: Base, expr: Expr | None = None) -> ScdaskArray:
        expr = expr or Expr()
        dtype = expr.dtype(base.dtype)
        name = "read-block-" + tokenize(base.token, expr)
        layer = _BlockGraph(name, base, expr, dtype)
        graph = HighLevelGraph.from_collections(name, layer, dependencies=layer.deps)
        counts = tuple(g.count for g in base.groups) or (0,)
        genes = tuple(len(c) for c in layer.gene_chunks)
        chunks = tuple(c for c, drop in ((counts, base.drop_cell), (genes, base.drop_gene))
                       if not drop)
        self = cls(graph, name, chunks, meta=_meta(dtype, len(chunks)))
        self._base = base
        self._expr = expr
        return self

    def copy(self) -> ScdaskArray:
        """Arrays are immutable: a copy is the same description (xarray deep-copies on align)."""
        return ScdaskArray.from_base(self._base, self._expr)

    def __copy__(self) -> ScdaskArray:
        return self.copy()

    def __deepcopy__(self, memo: dict[int, Any]) -> ScdaskArray:
        return self.copy()

    def __reduce__(self) -> tuple[Any, ...]:
        return (ScdaskArray.from_base, (self._base, self._expr))

    # -- elementwise: compose the expression -----------------------------------
    def _same(self, other: Any) -> bool:
        return isinstance(other, ScdaskArray) and other._base is self._base

    def _operand(self, x: Any) -> tuple[Any, ...] | None:
        if self._same(x):
            return x._expr.tree
        if isinstance(x, int | float | bool | np.number | np.bool_) or (
            isinstance(x, np.ndarray) and x.ndim == 0
        ):
            return const(x.item() if isinstance(x, np.ndarray | np.generic) else x)
        return None

    def __array_ufunc__(self, uf: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method == "__call__" and not kwargs and uf.nout == 1:
            args = [self._operand(x) for x in inputs]
            if all(a is not None for a in args):
                return ScdaskArray.from_base(self._base, Expr(ufunc(uf.__name__, tuple(args))))
        return super().__array_ufunc__(uf, method, *inputs, **kwargs)

    def astype(self, dtype: Any, **kwargs: Any) -> Any:
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        return ScdaskArray.from_base(self._base, Expr(("astype", dtype.str, self._expr.tree)))

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if func in _REDUCTIONS and args and args[0] is self:
            op, skipna = _REDUCTIONS[func]
            out = self._reduce(op, skipna, *args[1:], **kwargs)
            if out is not NotImplemented:
                return out
        elif func is np.count_nonzero and args and args[0] is self:
            return (self != 0).sum(*args[1:], **kwargs)
        elif func in (np.zeros_like, np.ones_like) and args and args[0] is self and len(args) == 1:
            value = 0 if func is np.zeros_like else 1
            dtype = kwargs.pop("dtype", None) or self.dtype
            if not kwargs:
                return ScdaskArray.from_base(
                    self._base, Expr(("astype", np.dtype(dtype).str, const(value)))
                )
        elif func is np.where and len(args) == 3 and not kwargs:
            out = self._where(*args)
            if out is not NotImplemented:
                return out
        return super().__array_function__(func, types, args, kwargs)

    def _where(self, cond: Any, x: Any, y: Any) -> Any:
        ops = [self._operand(a) for a in (cond, x, y)]
        if all(o is not None for o in ops):
            return ScdaskArray.from_base(self._base, Expr(("where", *ops)))
        # where(per-cell condition, self, NaN): mask cells, as xarray's .where(obs == ...) does
        nan = np.ndim(y) == 0 and np.asarray(y).dtype.kind == "f" and bool(np.isnan(y))
        if x is self and nan and not self._base.drop_cell:
            c = cond
            n = self._base.n_sel_cells
            ok_shapes = [(n,), (n, 1)] if self.ndim == 2 else [(n,)]
            if getattr(c, "shape", None) in ok_shapes and np.dtype(getattr(c, "dtype", object)) == np.bool_:
                c = c.reshape(-1)
                b = self._base
                m = c if b.mask is None else (b.mask & c)
                # masked cells hold NaN *before* the expression: the base becomes floating
                dtype = b.dtype if b.dtype.kind == "f" else np.result_type(b.dtype, np.float64)
                return ScdaskArray.from_base(b.replace(mask=m, dtype=dtype), self._expr)
        return NotImplemented

    def _binary(self, uf: np.ufunc, other: Any, reflected: bool = False) -> Any:
        if self._operand(other) is None:
            return NotImplemented
        return self.__array_ufunc__(uf, "__call__", *((other, self) if reflected else (self, other)))

    def __neg__(self) -> Any:
        return self.__array_ufunc__(np.negative, "__call__", self)

    def __abs__(self) -> Any:
        return self.__array_ufunc__(np.absolute, "__call__", self)

    def __invert__(self) -> Any:
        return self.__array_ufunc__(np.invert, "__call__", self)

    __hash__ = da.Array.__hash__

    # -- selection: resolved to cells and genes, then to byte ranges when read ---
    def __getitem__(self, key: Any) -> Any:
        out = self._select(key)
        return super().__getitem__(key) if out is None else out

    def _select(self, key: Any) -> ScdaskArray | None:
        b = self._base
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        if len(key) > self.ndim:
            return None
        key = key + (slice(None),) * (self.ndim - len(key))
        new: dict[str, Any] = {}
        for dim, k in zip(b.dims, key, strict=True):
            size = b.n_sel_cells if dim == "cell" else b.n_sel_genes
            pos = _positions(k, size)
            if pos is None:
                return None
            positions, scalar = pos
            if dim == "cell":
                if isinstance(k, slice) and k == slice(None):
                    continue
                cur = np.arange(b.n_cells) if b.cells is None else b.cells
                cells = cur[positions]
                if len(cells) > 1 and np.any(np.diff(cells) <= 0):
                    return None  # reordered or repeated cells: the generic path
                new["cells"] = cells
                new["drop_cell"] = scalar
                if b.mask is not None:
                    new["mask"] = b.mask[positions]
            else:
                if isinstance(k, slice) and k == slice(None):
                    continue
                cur = np.arange(b.n_genes) if b.genes is None else b.genes
                new["genes"] = cur[positions]
                new["drop_gene"] = scalar
        if not new:
            return self
        return ScdaskArray.from_base(b.replace(**new), self._expr)

    # -- reductions ------------------------------------------------------------
    def sum(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._reduce("sum", False, axis, keepdims=keepdims)

    def mean(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._reduce("mean", False, axis, keepdims=keepdims)

    def var(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, ddof: int = 0,
            **kw: Any) -> Any:
        return self._reduce("var", False, axis, keepdims=keepdims, ddof=ddof)

    def std(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, ddof: int = 0,
            **kw: Any) -> Any:
        return self._reduce("std", False, axis, keepdims=keepdims, ddof=ddof)

    def min(self, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._reduce("min", False, axis, keepdims=keepdims)

    def max(self, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._reduce("max", False, axis, keepdims=keepdims)

    def _reduce(self, op: str, skipna: bool, axis: Any = None, dtype: Any = None, out: Any = None,
                keepdims: bool = False, ddof: int = 0, **kw: Any) -> Any:
        if out is not None or kw.get("where") is not None:
            return NotImplemented
        axes = _normalize_axes(axis, self.ndim)
        b = self._base
        if not axes:
            return self
        kept = [d for i, d in enumerate(b.dims) if i not in axes]
        integer = self.dtype.kind in "biu"
        x = self
        t = self._expr.tree
        if op == "sum" and t[0] == "ufunc" and t[1] == "logical_not" and t[2][0][:2] == (
            "ufunc", "isnan"
        ):  # xarray's count(): the partials of the values already count the non-NaN ones
            x, op, integer = ScdaskArray.from_base(b, Expr(t[2][0][2][0])), "count", True
        elif op == "sum" and _is_nan_to_zero(t):
            # xarray's nansum is sum(where(isnan(v), 0, v)): the kernels skip NaN themselves
            x, skipna = ScdaskArray.from_base(b, Expr(t[3])), True
        if "cell" in kept:
            result = _cell_reduction(x, op, skipna, ddof, integer)
        else:
            result = _gene_reduction(x, op, skipna, ddof, integer, scalar=not kept)
        if keepdims:
            result = result.reshape(tuple(1 if i in axes else s for i, s in enumerate(self.shape)))
        return result


def _binary_method(name: str, uf: np.ufunc, reflected: bool = False) -> Any:
    """``ScdaskArray.<name>``: compose ``uf`` into the expression, else Dask's operator."""

    def method(self: ScdaskArray, other: Any) -> Any:
        out = self._binary(uf, other, reflected)
        return getattr(da.Array, name)(self, other) if out is NotImplemented else out

    method.__name__ = name
    return method


for _name, _uf, _reflected in (
    ("__add__", np.add, False), ("__radd__", np.add, True),
    ("__sub__", np.subtract, False), ("__rsub__", np.subtract, True),
    ("__mul__", np.multiply, False), ("__rmul__", np.multiply, True),
    ("__truediv__", np.true_divide, False), ("__pow__", np.power, False),
    ("__eq__", np.equal, False), ("__ne__", np.not_equal, False),
    ("__gt__", np.greater, False), ("__ge__", np.greater_equal, False),
    ("__lt__", np.less, False), ("__le__", np.less_equal, False),
):
    setattr(ScdaskArray, _name, _binary_method(_name, _uf, _reflected))


def _is_nan_to_zero(t: tuple[Any, ...]) -> bool:
    """Whether ``t`` is ``where(isnan(e), 0, e)`` (xarray's NaN-skipping sum)."""
    if t[0] != "where" or t[1][:2] != ("ufunc", "isnan") or t[1][2][0] != t[3]:
        return False
    zero = t[2]
    while zero[0] == "astype":
        zero = zero[2]
    return zero[0] == "c" and zero[1] == 0


def _meta(dtype: np.dtype, ndim: int) -> Any:
    try:
        import sparse

        return sparse.COO.from_numpy(np.zeros((0,) * ndim, dtype=dtype))
    except ImportError:  # pragma: no cover - sparse is a dependency
        return np.zeros((0,) * ndim, dtype=dtype)


def _normalize_axes(axis: Any, ndim: int) -> tuple[int, ...]:
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


def _positions(k: Any, size: int) -> tuple[np.ndarray, bool] | None:
    """Positions selected by one axis of an index, and whether it drops the axis."""
    if isinstance(k, slice):
        return np.arange(size)[k], False
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


def _masked_value(x: ScdaskArray) -> float:
    if x._base.mask is None:
        return float("nan")
    with np.errstate(invalid="ignore"):
        return float(x._expr.evaluate(np.array([np.nan], dtype=x._base.dtype))[0])


def _cell_reduction(x: ScdaskArray, op: str, skipna: bool, ddof: int, integer: bool) -> da.Array:
    """Per selected cell, over the selected genes: one task per row group, no combine."""
    b = x._base
    unique, inverse = b.gene_index
    fill = x._expr.fill(b.dtype)
    mval = _masked_value(x)
    shared = tokenize(b.token, x._expr)  # partials are the same whatever the statistic
    name = f"cell-{op}-" + tokenize(shared, op, skipna, ddof)
    pname = f"cell-partial-{shared}"
    masks, deps = b.mask_blocks()
    layer: dict[Any, Any] = {}
    for i, sel in enumerate(b.groups):
        part_key = (pname, i)
        layer[part_key] = (cell_partial, sel, unique, inverse, x._expr, fill, mval, masks[i])
        layer[(name, i)] = (finalize, part_key, op, skipna, ddof, integer)
    counts = tuple(g.count for g in b.groups)
    out_dtype = np.int64 if integer and op in ("sum", "count") else np.float64
    if not counts:
        layer[(name, 0)] = (np.zeros, 0, out_dtype)
        counts = (0,)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
    result = da.Array(graph, name, (counts,), dtype=out_dtype, meta=np.zeros(0, out_dtype))
    return result[0] if b.drop_cell else result


def _gene_reduction(x: ScdaskArray, op: str, skipna: bool, ddof: int, integer: bool,
                    scalar: bool) -> da.Array:
    """Per selected gene (or one number), over the selected cells: partials, a tree, a finish."""
    b = x._base
    unique, inverse = b.gene_index
    n_unique = b.n_genes if unique is None else len(unique)
    fill = x._expr.fill(b.dtype)
    mval = _masked_value(x)
    shared = tokenize(b.token, x._expr)  # partials are the same whatever the statistic
    name = f"gene-{op}-" + tokenize(shared, op, skipna, ddof, scalar)
    pname, cname = f"gene-partial-{shared}", f"gene-combine-{shared}"
    masks, deps = b.mask_blocks()
    layer: dict[Any, Any] = {}
    keys: list[Any] = []
    for i, sel in enumerate(b.groups):
        k = (pname, i)
        layer[k] = (gene_partial, sel, unique, n_unique, x._expr, fill, mval, masks[i])
        keys.append(k)
    if not keys:
        k = (pname, 0)
        layer[k] = (kernels.empty_partial, n_unique)
        keys = [k]
    level = 0
    while len(keys) > 1:  # a tree of merges, 8 at a time
        nxt = []
        for j in range(0, len(keys), 8):
            k = (cname, level, j // 8)
            layer[k] = (_merge, *keys[j : j + 8])
            nxt.append(k)
        keys, level = nxt, level + 1
    out_dtype = np.int64 if integer and op in ("sum", "count") else np.float64
    if scalar:
        layer[(name,)] = (_finish_genes, keys[0], inverse, True, op, skipna, ddof, integer)
        graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
        return da.Array(graph, name, (), dtype=out_dtype, meta=np.zeros((), out_dtype))
    layer[(name, 0)] = (_finish_genes, keys[0], inverse, False, op, skipna, ddof, integer)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
    return da.Array(graph, name, ((b.n_sel_genes,),), dtype=out_dtype,
                    meta=np.zeros(0, out_dtype))
