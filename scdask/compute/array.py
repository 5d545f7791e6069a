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
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import DaskMethodsMixin, tokenize
from dask.utils import format_bytes, parse_bytes

from scdask.compute.blocks import Spec, view_block
from scdask.compute.expr import UFUNCS, Expr, const, ufunc
from scdask.compute.operands import compose
from scdask.compute.reductions import REDUCTIONS, Inputs, cell_reduction, gene_reduction
from scdask.compute.selection import Base, normalize_axes, select

#: Genes per block of the generic view (sparse blocks; dense blocks take a sixteenth).
GENE_CHUNK = 4096
#: Largest dense array ``np.asarray``/``.values`` make, unless ``scdask.dense-limit`` is set.
DENSE_LIMIT = "1GiB"


class DenseLimitError(MemoryError):
    """A selection is too large to become a dense array."""


class ScdaskArray(DaskMethodsMixin):
    """A lazy stored matrix (or a selection or expression of it) that reduces in kernels.

    Use it as a Dask array: ``scdask.open`` puts it in an xarray Dataset; anything it does
    not compute itself goes to :meth:`to_dask_array`.
    """

    __array_priority__ = 20

    def __init__(self, base: Base, expr: Expr | None = None, cell_ops: tuple[Any, ...] = (),
                 gene_ops: tuple[Any, ...] = ()) -> None:
        self._base = base
        self._expr = expr or Expr()
        self._cell_ops = tuple(cell_ops)
        self._gene_ops = tuple(gene_ops)
        self.dtype = self._expr.dtype(base.dtype, [o.dtype for o in cell_ops],
                                      [o.dtype for o in gene_ops])

    @classmethod
    def from_base(cls, base: Base, expr: Expr | None = None) -> ScdaskArray:
        return cls(base, expr)

    def _new(self, expr: Expr, cell_ops: tuple[Any, ...], gene_ops: tuple[Any, ...],
             base: Base | None = None) -> ScdaskArray:
        return ScdaskArray(base or self._base, expr, cell_ops, gene_ops)

    # -- shape -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._base.shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        return self.to_dask_array().chunks

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

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

    def to_dask_array(self) -> da.Array:
        """The generic view: a :class:`dask.array.Array` of ``sparse.COO`` (or dense) blocks."""
        return self._dask

    def __getattr__(self, name: str) -> Any:
        # what the description does not answer, the generic view does (rechunk, map_blocks, ...)
        if name.startswith("__") or "_base" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.to_dask_array(), name)

    def __dask_graph__(self) -> Any:
        return self._dask.__dask_graph__()

    def __dask_keys__(self) -> Any:
        return self._dask.__dask_keys__()

    def __dask_layers__(self) -> Any:
        return self._dask.__dask_layers__()

    def __dask_postcompute__(self) -> Any:
        return self._dask.__dask_postcompute__()

    def __dask_postpersist__(self) -> Any:
        return self._dask.__dask_postpersist__()

    def __dask_tokenize__(self) -> Any:
        return (type(self).__name__, self._base.token, repr(self._expr.tree),
                tokenize(self._cell_ops, self._gene_ops))

    @property
    def __dask_optimize__(self) -> Any:
        return self._dask.__dask_optimize__

    @property
    def __dask_scheduler__(self) -> Any:
        return self._dask.__dask_scheduler__

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
        return self.to_dask_array().rechunk(chunks, **kwargs)

    # -- values out --------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self.todense().compute()
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
        return self.to_dask_array().map_blocks(_dense, dtype=self.dtype,
                                               meta=np.empty((0,) * self.ndim, self.dtype))

    def __float__(self) -> float:
        return float(np.asarray(self))

    def __int__(self) -> int:
        return int(np.asarray(self))

    def __bool__(self) -> bool:
        return bool(np.asarray(self))

    def __iter__(self) -> Any:
        return iter(self.to_dask_array())

    # -- elementwise: compose the expression --------------------------------------
    def _compose(self, build: Any, inputs: tuple[Any, ...]) -> ScdaskArray | None:
        """``build(*trees)`` over ``inputs`` (self-like, scalars, per-cell or per-gene vectors)."""
        out = compose(self, build, inputs)
        return None if out is None else self._new(*out)

    def __array_ufunc__(self, uf: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method == "__call__" and not kwargs and uf.nout == 1 and uf.__name__ in UFUNCS:
            out = self._compose(lambda *t: ufunc(uf.__name__, t), inputs)
            if out is not None:
                return out
        inputs = tuple(_generic(x) for x in inputs)
        return getattr(uf, method)(*inputs, **kwargs)

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
        elif func in (np.zeros_like, np.ones_like) and args and args[0] is self and len(args) == 1:
            dtype = np.dtype(kwargs.pop("dtype", None) or self.dtype)
            if not kwargs:
                value = const(0 if func is np.zeros_like else 1)
                out = self._new(Expr(("astype", dtype.str, value)), (), ())
        elif func is np.where and len(args) == 3 and not kwargs:
            where = self._compose(lambda c, x, y: ("where", c, x, y), args)
            out = NotImplemented if where is None else where
        elif func is np.clip and args and args[0] is self:
            out = self._clip(*args[1:], **kwargs)
        if out is not NotImplemented:
            return out
        args = _tree_generic(args)
        kwargs = _tree_generic(kwargs)
        return func(*args, **kwargs)

    def _clip(self, lo: Any = None, hi: Any = None, **kw: Any) -> Any:
        lo, hi = kw.pop("a_min", lo), kw.pop("a_max", hi)
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
        a, b = (_generic(x) for x in inputs)
        return uf(a, b)

    def __neg__(self) -> Any:
        return self.__array_ufunc__(np.negative, "__call__", self)

    def __pos__(self) -> Any:
        return self

    def __abs__(self) -> Any:
        return self.__array_ufunc__(np.absolute, "__call__", self)

    def __invert__(self) -> Any:
        return self.__array_ufunc__(np.invert, "__call__", self)

    def __hash__(self) -> int:
        return hash(tokenize(self))

    # -- selection: resolved to cells and genes, then to byte ranges when read ---
    def __getitem__(self, key: Any) -> Any:
        out = self._select(key)
        return self.to_dask_array()[key] if out is None else out

    def _select(self, key: Any) -> ScdaskArray | None:
        picked = select(self._base, key, self.ndim)
        if picked is None:
            return None
        base, cells, genes = picked
        if base is self._base:
            return self
        cell_ops = self._cell_ops if cells is None else tuple(o[cells] for o in self._cell_ops)
        gene_ops = self._gene_ops if genes is None else tuple(o[genes] for o in self._gene_ops)
        return self._new(self._expr, cell_ops, gene_ops, base)

    def transpose(self, *axes: Any) -> Any:
        if axes in ((), (None,)) and self.ndim < 2 or tuple(
                np.ravel(axes)) == tuple(range(self.ndim)):
            return self
        return self.to_dask_array().transpose(*axes)

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
            return getattr(self.to_dask_array(), op)(axis=axis, **kw)
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
        integer = self.dtype.kind in "biu"
        inp = self.inputs()
        if "cell" in kept:
            result = cell_reduction(inp, op, skipna, ddof, integer)
        else:
            result = gene_reduction(inp, op, skipna, ddof, integer, scalar=not kept)
        if keepdims:
            result = result.reshape(tuple(1 if i in axes else s for i, s in enumerate(self.shape)))
        return result


def _binary_method(name: str, uf: np.ufunc, reflected: bool = False) -> Any:
    """``ScdaskArray.<name>``: compose ``uf`` into the expression, else the generic view's."""

    def method(self: ScdaskArray, other: Any) -> Any:
        return self._binary(uf, other, reflected)

    method.__name__ = name
    return method


for _name, _uf, _reflected in (
    ("__add__", np.add, False), ("__radd__", np.add, True),
    ("__sub__", np.subtract, False), ("__rsub__", np.subtract, True),
    ("__mul__", np.multiply, False), ("__rmul__", np.multiply, True),
    ("__truediv__", np.true_divide, False), ("__rtruediv__", np.true_divide, True),
    ("__floordiv__", np.floor_divide, False), ("__rfloordiv__", np.floor_divide, True),
    ("__mod__", np.remainder, False), ("__rmod__", np.remainder, True),
    ("__pow__", np.power, False), ("__rpow__", np.power, True),
    ("__eq__", np.equal, False), ("__ne__", np.not_equal, False),
    ("__gt__", np.greater, False), ("__ge__", np.greater_equal, False),
    ("__lt__", np.less, False), ("__le__", np.less_equal, False),
    ("__and__", np.logical_and, False), ("__rand__", np.logical_and, True),
    ("__or__", np.logical_or, False), ("__ror__", np.logical_or, True),
    ("__xor__", np.logical_xor, False), ("__rxor__", np.logical_xor, True),
):
    setattr(ScdaskArray, _name, _binary_method(_name, _uf, _reflected))


def _auto(chunks: Any) -> bool:
    if isinstance(chunks, str):
        return chunks == "auto"
    if isinstance(chunks, dict):
        return all(v in ("auto", None, -1) or _auto(v) for v in chunks.values()) if chunks else True
    return False


def _dense(block: Any) -> np.ndarray:
    return block.todense() if hasattr(block, "todense") else np.asarray(block)


def _generic(x: Any) -> Any:
    return x.to_dask_array() if isinstance(x, ScdaskArray) else x


def _tree_generic(x: Any) -> Any:
    if isinstance(x, ScdaskArray):
        return x.to_dask_array()
    if isinstance(x, list | tuple):
        return type(x)(_tree_generic(y) for y in x)
    if isinstance(x, dict):
        return {k: _tree_generic(v) for k, v in x.items()}
    return x


def _meta(dtype: np.dtype, sparse_blocks: bool) -> Any:
    if sparse_blocks:
        import sparse

        return sparse.COO.from_numpy(np.zeros((0, 0), dtype=dtype))
    return np.zeros((0, 0), dtype=dtype)
