"""The lazy cell × gene matrix users see: a Dask collection that knows where its values are.

:class:`ScdaskArray` is a description — which stores, which cells, which genes
(:class:`~scdask.compute.selection.Base`), an elementwise :class:`~scdask.compute.expr.Expr`
of the stored values, and the per-cell and per-gene vectors that expression uses
(numpy or Dask arrays: ``X.sum("gene")``, an obs column, per-gene means). Selections,
elementwise operations and ``np.where`` compose the description; the reductions (sum,
mean, var, std, min, max, count_nonzero and their NaN-skipping forms) are computed from
it in compiled kernels (:mod:`scdask.compute.reductions`).

It is a Dask collection and a NEP-18 duck array, not a subclass of
:class:`dask.array.Array`: everything else goes to its generic view,
:meth:`ScdaskArray.to_dask_array`, a Dask array of ``sparse.COO`` blocks (one row group
× up to :data:`GENE_CHUNK` genes; dense blocks when the value at zero varies per cell or
gene) built with :func:`dask.array.blockwise` only — so it works the same whether or not
Dask's array query planning is on.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array import PerformanceWarning
from dask.base import tokenize
from dask.utils import format_bytes, parse_bytes

from scdask.compute.blocks import Spec, csr_block, view_block
from scdask.compute.expr import UFUNCS, Expr, const, ufunc
from scdask.compute.operands import compose
from scdask.compute.pending import FUSED, CellReduction
from scdask.compute.proxy import DaskProxy, unwrap, wrap
from scdask.compute.reductions import (
    REDUCTIONS,
    Inputs,
    cell_reduction,
    gene_reduction,
    out_dtype,
)
from scdask.compute.selection import Base, cells_in_order, normalize_axes, select

#: Genes per block of the generic view (sparse blocks; dense blocks take a sixteenth).
GENE_CHUNK = 4096
#: Largest dense array ``np.asarray``/``.values`` make, unless ``scdask.dense-limit`` is set.
DENSE_LIMIT = "1GiB"


class DenseLimitError(MemoryError):
    """A selection is too large to become a dense array."""


class ScdaskArray(DaskProxy):
    """A lazy stored matrix (or a selection or expression of it) that reduces in kernels.

    Use it as a Dask array: ``scdask.open`` puts it in an xarray Dataset; anything it does
    not compute itself goes to :meth:`to_dask_array`.
    """

    def __init__(self, base: Base, expr: Expr | None = None, cell_ops: tuple[Any, ...] = (),
                 gene_ops: tuple[Any, ...] = ()) -> None:
        self._base = base
        self._expr = expr or Expr()
        self._cell_ops = tuple(cell_ops)
        self._gene_ops = tuple(gene_ops)
        self._dtype = self._expr.dtype(base.dtype, [o.dtype for o in cell_ops],
                                       [o.dtype for o in gene_ops])

    def _new(self, expr: Expr, cell_ops: tuple[Any, ...], gene_ops: tuple[Any, ...],
             base: Base | None = None) -> ScdaskArray:
        return ScdaskArray(base or self._base, expr, cell_ops, gene_ops)

    #: ``(parent, positions)`` when this is ``parent`` at some of its cells (all genes):
    #: reductions over its cells are then pending (:mod:`scdask.compute.pending`).
    _origin: tuple[ScdaskArray, np.ndarray] | None = None

    # -- shape -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._base.shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def spec(self) -> Spec:
        return Spec(self._base, self._expr, len(self._cell_ops), len(self._gene_ops))

    def inputs(self) -> Inputs:
        """The blockwise inputs every task graph of this matrix is built from."""
        return Inputs(self.spec, self._cell_ops, self._gene_ops)

    # -- the generic view --------------------------------------------------------
    @functools.cached_property
    def _dask(self) -> da.Array:
        spec = self.spec
        inp = self.inputs()
        gene_chunk = GENE_CHUNK if spec.constant_fill is not None else GENE_CHUNK // 16
        meta = _meta(self.dtype, spec.constant_fill is not None)
        arr = da.blockwise(view_block, "ij", *inp.args(gene_chunk, "i", "j"), token="read-block",
                           adjust_chunks={"i": inp.counts}, align_arrays=False,
                           concatenate=False, dtype=self.dtype, meta=meta, spec=spec,
                           out_dtype=self.dtype)
        b = self._base
        if b.drop_cell and b.drop_gene:
            return arr[0, 0]
        if b.drop_cell:
            return arr[0]
        if b.drop_gene:
            return arr[:, 0]
        return arr

    def csr_blocks(self) -> list[Any]:
        """The selection as ``scipy.sparse.csr_matrix``, one delayed block per row group (in
        order; stack them with ``scipy.sparse.vstack``). A block whose implicit zeros the
        expression makes non-zero raises ``ValueError`` when computed. Lazy operands are
        computed first (vectors: small), so this works with or without query planning."""
        import dask

        b = self._base
        cells = [np.asarray(o) for o in dask.compute(*self._cell_ops)]
        genes = [np.asarray(o) for o in dask.compute(*self._gene_ops)]
        gpos = np.arange(b.n_sel_genes)
        bounds = np.cumsum((0, *b.counts))
        block = dask.delayed(csr_block, pure=True)
        out = []
        for i, sel in enumerate(b.groups or [None]):
            sels = np.empty(1, dtype=object)
            sels[0] = sel
            ops = [c[bounds[i] : bounds[i + 1]] for c in cells]
            out.append(block(sels, gpos, *ops, *genes, spec=self.spec, out_dtype=self.dtype))
        return out

    def to_dask_array(self) -> da.Array:
        """The generic view: a :class:`dask.array.Array` of ``sparse.COO`` (or dense) blocks."""
        return self._dask

    def __dask_tokenize__(self) -> Any:
        return (type(self).__name__, self._base.token, repr(self._expr.tree),
                tokenize(self._cell_ops, self._gene_ops))

    def __repr__(self) -> str:
        expr = "" if self._expr.is_identity else f", expr={self._expr}"
        return f"scdask.array<shape={self.shape}, dtype={self.dtype}{expr}>"

    # -- immutable: copies are the same description ------------------------------
    def copy(self) -> ScdaskArray:
        return self._new(self._expr, self._cell_ops, self._gene_ops)

    def __copy__(self) -> ScdaskArray:
        return self.copy()

    def __deepcopy__(self, memo: dict[int, Any]) -> ScdaskArray:
        return self.copy()

    def __reduce__(self) -> tuple[Any, ...]:
        return (ScdaskArray, (self._base, self._expr, self._cell_ops, self._gene_ops))

    def rechunk(self, chunks: Any = "auto", **kwargs: Any) -> Any:
        """The same array when ``chunks`` asks for its own blocks (or ``"auto"``, ``{}``)."""
        if _auto(chunks):
            return self
        try:
            wanted = da.core.normalize_chunks(chunks, self.shape, dtype=self.dtype,
                                              previous_chunks=self.chunks)
        except (NotImplementedError, ValueError):
            wanted = None
        if wanted == self.chunks:
            return self
        warnings.warn(
            f"rechunking a scdask matrix to {chunks!r} gives a plain Dask array of its sparse "
            "blocks, off scdask's fast paths (selections, expressions and reductions in "
            "compiled kernels); keep its own blocks (open without chunks=, or chunks={}) and "
            "rechunk results instead", PerformanceWarning, stacklevel=2)
        return wrap(self.to_dask_array().rechunk(chunks, **kwargs))

    # -- values out --------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.asarray(unwrap(self.todense()).compute())
        return out if dtype is None else out.astype(dtype, copy=False)

    def todense(self) -> da.Array:
        """A Dask array of dense numpy blocks, if the whole is within ``scdask.dense-limit``."""
        limit = parse_bytes(dask.config.get("scdask.dense-limit", DENSE_LIMIT))
        if self.nbytes > limit:
            raise DenseLimitError(
                f"this selection ({' × '.join(map(str, self.shape))} {self.dtype}) is "
                f"{format_bytes(self.nbytes)} as a dense array, over the limit of "
                f"{format_bytes(limit)}; select fewer cells or genes, reduce it (.mean(), "
                ".sum(), scdask.pseudobulk), take it to scanpy with scdask.to_anndata, write "
                "it with scdask.export_parquet, or raise the limit with "
                "dask.config.set({'scdask.dense-limit': '4GiB'})")
        return wrap(self.to_dask_array().map_blocks(
            _dense, dtype=self.dtype, meta=np.empty((0,) * self.ndim, self.dtype)))

    # -- elementwise: compose the expression --------------------------------------
    def _compose(self, build: Any, inputs: tuple[Any, ...]) -> ScdaskArray | None:
        """``build(*trees)`` over ``inputs`` (self-like, scalars, per-cell or per-gene vectors)."""
        out = compose(self, build, inputs)
        if out is None:
            return None
        new = self._new(*out)
        origins = [x._origin for x in inputs if isinstance(x, ScdaskArray)]
        if all(o is not None and o[0]._base is origins[0][0]._base
               and np.array_equal(o[1], origins[0][1]) for o in origins) and all(
                isinstance(x, ScdaskArray) or _scalar(x) for x in inputs):
            # the same function of the parents, at the same cells: reductions stay pending
            lifted = origins[0][0]._compose(build, tuple(
                x._origin[0] if isinstance(x, ScdaskArray) else x for x in inputs))
            if lifted is not None:
                new._origin = (lifted, origins[0][1])
        return new

    def __array_ufunc__(self, uf: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if (uf in (np.isnan, np.isinf, np.isfinite) and method == "__call__" and not kwargs
                and inputs == (self,) and self.dtype.kind in "biu"):
            # integers hold no NaN or infinity: a constant, whose reductions read nothing
            # (xarray's count is sum(~isnan(x)))
            return np.full_like(self, uf is np.isfinite, dtype=bool)
        if method == "__call__" and not kwargs and uf.nout == 1 and uf.__name__ in UFUNCS:
            out = self._compose(lambda *t: ufunc(uf.__name__, t), inputs)
            if out is not None:
                return out
        return super().__array_ufunc__(uf, method, *inputs, **kwargs)

    def astype(self, dtype: Any, **kwargs: Any) -> Any:
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        return self._new(Expr(("astype", dtype.str, self._expr.tree)), self._cell_ops,
                         self._gene_ops)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        out = NotImplemented
        if func in REDUCTIONS and args and args[0] is self:
            op, skipna = REDUCTIONS[func]
            out = self._reduce(op, skipna, *args[1:], **kwargs)
        elif func is np.count_nonzero and args and args[0] is self:
            out = (self != 0).sum(*args[1:], **kwargs)
        elif func in _LIKE and args and args[0] is self and len(args) <= _LIKE[func][0]:
            kwargs = dict(kwargs)
            if func is np.full_like:
                kwargs.setdefault("fill_value", args[1] if len(args) > 1 else None)
            dtype = np.dtype(kwargs.pop("dtype", None) or self.dtype)
            value = kwargs.pop("fill_value", _LIKE[func][1])
            if not kwargs and np.ndim(value) == 0 and value is not None:
                value = const(np.asarray(value).astype(dtype)[()])
                out = self._new(Expr(("astype", dtype.str, value)), (), ())
                if self._origin is not None:
                    parent, cells = self._origin
                    out._origin = (parent.__array_function__(func, types, (parent, *args[1:]),
                                                             kwargs), cells)
        elif func is np.where and len(args) == 3 and not kwargs:
            where = self._compose(lambda c, x, y: ("where", c, x, y), args)
            out = NotImplemented if where is None else where
        elif func is np.clip and args and args[0] is self:
            out = self._clip(*args[1:], **kwargs)
        if out is not NotImplemented:
            return out
        return super().__array_function__(func, types, args, kwargs)

    def _clip(self, lo: Any = None, hi: Any = None, **kw: Any) -> Any:
        # numpy's names: a_min/a_max, and min/max since numpy 2.1
        lo = kw.pop("a_min", kw.pop("min", lo))
        hi = kw.pop("a_max", kw.pop("max", hi))
        if kw:
            return NotImplemented
        out: Any = self
        if lo is not None:
            out = np.maximum(out, lo)
        if hi is not None:
            out = np.minimum(out, hi)
        return out

    def _binary(self, uf: np.ufunc, other: Any, reflected: bool = False) -> Any:
        inputs = (other, self) if reflected else (self, other)
        out = self._compose(lambda *t: ufunc(uf.__name__, t), inputs)
        if out is not None:
            return out
        return super()._binary(uf, other, reflected)

    # -- selection: resolved to cells and genes, then to byte ranges when read ---
    def __getitem__(self, key: Any) -> Any:
        out = self._select(key)
        return super().__getitem__(key) if out is None else out

    def _select(self, key: Any) -> Any:
        picked = select(self._base, key, self.ndim)
        if picked is None:
            from scdask.compute.order import CellOrder  # built on this module

            reorder = cells_in_order(self._base, key, self.ndim)
            inner = None if reorder is None else self._select(reorder[0])
            return None if inner is None else CellOrder(inner, reorder[1])
        base, cells, genes = picked
        if base is self._base:
            return self
        cell_ops, gene_ops = self._cell_ops, self._gene_ops
        if cells is not None:
            cell_ops = tuple(_take(o, cells) for o in cell_ops)
        if genes is not None:
            gene_ops = tuple(_take(o, genes) for o in gene_ops)
        out = self._new(self._expr, cell_ops, gene_ops, base)
        by_cells = self.ndim == 2 or (self.ndim == 1 and self._base.drop_gene)
        if cells is not None and genes is None and by_cells and not base.drop_cell:
            out._origin = (self, np.asarray(cells, np.int64))
        return out

    def transpose(self, *axes: Any) -> Any:
        order = tuple(range(self.ndim))[::-1] if axes in ((), (None,)) else tuple(np.ravel(axes))
        if order == tuple(range(self.ndim)):  # the same axes in the same order
            return self
        return wrap(self.to_dask_array().transpose(*axes))

    # -- reductions ------------------------------------------------------------
    def sum(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._reduce_or_dask("sum", axis, keepdims=keepdims, **kw)

    def mean(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._reduce_or_dask("mean", axis, keepdims=keepdims, **kw)

    def var(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, ddof: int = 0,
            **kw: Any) -> Any:
        return self._reduce_or_dask("var", axis, keepdims=keepdims, ddof=ddof, **kw)

    def std(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, ddof: int = 0,
            **kw: Any) -> Any:
        return self._reduce_or_dask("std", axis, keepdims=keepdims, ddof=ddof, **kw)

    def min(self, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._reduce_or_dask("min", axis, keepdims=keepdims, **kw)

    def max(self, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._reduce_or_dask("max", axis, keepdims=keepdims, **kw)

    def _reduce_or_dask(self, op: str, axis: Any, **kw: Any) -> Any:
        out = self._reduce(op, False, axis, **kw)
        if out is NotImplemented:
            return wrap(getattr(self.to_dask_array(), op)(axis=axis, **kw))
        return out

    def _reduce(self, op: str, skipna: bool, axis: Any = None, dtype: Any = None, out: Any = None,
                keepdims: bool = False, ddof: int = 0, **kw: Any) -> Any:
        if out is not None or kw.get("where") is not None:
            return NotImplemented
        axes = normalize_axes(axis, self.ndim)
        b = self._base
        if not axes and self.ndim:  # reducing over no axis
            return self if op in ("sum", "mean", "min", "max") else NotImplemented
        kept = [d for i, d in enumerate(b.dims) if i not in axes]
        if op in ("min", "max") and any(self.shape[i] == 0 for i in axes):
            empty = ", ".join(f"{self.shape[i]} {b.dims[i]}s" for i in axes)
            raise ValueError(f"{op} of an empty selection ({empty}): it has no identity, as "
                             f"numpy's zero-size {op}imum; check the selection (an obs value "
                             "that does not occur?)")
        integer = self.dtype.kind in "biu"
        one_gene = self.ndim == 1 and b.drop_gene  # the cells of one gene
        if (self._origin is not None and axes == (0,) and not keepdims and op in FUSED
                and (self.ndim == 2 or one_gene)):
            parent, cells = self._origin
            return CellReduction(
                parent, cells, lambda: gene_reduction(self.inputs(), op, skipna, ddof, integer,
                                                      scalar=one_gene),
                op, skipna, ddof, out_dtype(op, integer), None if one_gene else self.shape[1])
        inp = self.inputs()
        if "cell" in kept:
            result = cell_reduction(inp, op, skipna, ddof, integer)
        else:
            result = gene_reduction(inp, op, skipna, ddof, integer, scalar=not kept)
        if keepdims:
            result = result[tuple(None if i in axes else slice(None) for i in range(self.ndim))]
        return wrap(result)


#: ``np.*_like`` of the matrix: a constant expression. (arguments, default value)
_LIKE = {np.zeros_like: (1, 0), np.ones_like: (1, 1), np.full_like: (2, None)}


def _scalar(x: Any) -> bool:
    """A number (or 0-d numpy array), not an array of any kind (no Dask call made)."""
    return isinstance(x, int | float | complex | np.generic) or (
        isinstance(x, np.ndarray) and x.ndim == 0)


def _take(op: Any, positions: np.ndarray) -> Any:
    """An operand vector at ``positions`` (repeats and any order allowed), without Dask's
    fancy indexing: each block takes its own positions in one task."""
    positions = np.asarray(positions, dtype=np.int64)
    if isinstance(op, np.ndarray):
        return op[positions]
    if len(positions) and np.array_equal(positions, np.arange(positions[0], positions[-1] + 1)):
        return op[positions[0] : positions[-1] + 1]
    if len(positions) > 1 and np.any(np.diff(positions) <= 0):
        op = op.rechunk(-1)  # reordered: one block
    bounds = np.cumsum((0, *op.chunks[0]))
    block = np.searchsorted(bounds, positions, side="right") - 1
    local = np.empty(len(op.chunks[0]), dtype=object)
    local[:] = [positions[block == b] - bounds[b] for b in range(len(local))]
    if len(local) == 1:
        local[0] = positions  # any order, from the one block
    counts = tuple(len(x) for x in local)
    idx = da.from_array(local, chunks=1, asarray=False, name=f"take-{tokenize(positions)}")
    return da.blockwise(_take_block, "i", op, "i", idx, "i", adjust_chunks={"i": counts},
                        align_arrays=False, dtype=op.dtype, meta=np.empty(0, op.dtype))


def _take_block(block: np.ndarray, local: np.ndarray) -> np.ndarray:
    return np.asarray(block)[local.reshape(-1)[0]]


def _auto(chunks: Any) -> bool:
    if isinstance(chunks, str):
        return chunks == "auto"
    if isinstance(chunks, dict):
        return all(v in ("auto", None, -1) or _auto(v) for v in chunks.values()) if chunks else True
    return False


def _dense(block: Any) -> np.ndarray:
    return block.todense() if hasattr(block, "todense") else np.asarray(block)


def _meta(dtype: np.dtype, sparse_blocks: bool) -> Any:
    if sparse_blocks:
        import sparse

        return sparse.COO.from_numpy(np.zeros((0, 0), dtype=dtype))
    return np.zeros((0, 0), dtype=dtype)
