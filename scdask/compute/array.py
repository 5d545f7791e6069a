"""The lazy cell × gene matrix: a Dask array that knows where its values are stored.

:class:`ScdaskArray` is a real :class:`dask.array.Array` — its chunks are pydata
``sparse.COO`` blocks (one row group × up to ``GENE_CHUNK`` genes), so any Dask or
xarray operation works on it — that also carries a description of what it is (a
:class:`~scdask.compute.selection.Base`: which stores, which cells, which genes,
which cells are masked to NaN; and an elementwise :class:`~scdask.compute.expr.Expr`).
Indexing, elementwise operations and ``np.where`` with a per-cell condition compose
that description instead of adding graph layers, and the reductions (sum, mean, var,
std, min, max, count_nonzero and their NaN-skipping forms) are computed from it
directly (:mod:`scdask.compute.reductions`). Gene selections therefore never depend
on Dask fusing a getter with a getitem.

Anything else falls back to Dask's generic machinery on the sparse chunks.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from scdask.compute.expr import Expr, const, ufunc
from scdask.compute.reading import BlockGraph
from scdask.compute.reductions import REDUCTIONS, cell_reduction, gene_reduction
from scdask.compute.selection import Base, normalize_axes, positions


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
        layer = BlockGraph(name, base, expr, dtype)
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
        if func in REDUCTIONS and args and args[0] is self:
            op, skipna = REDUCTIONS[func]
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
            pos = positions(k, size)
            if pos is None:
                return None
            picked, scalar = pos
            if dim == "cell":
                if isinstance(k, slice) and k == slice(None):
                    continue
                cur = np.arange(b.n_cells) if b.cells is None else b.cells
                cells = cur[picked]
                if len(cells) > 1 and np.any(np.diff(cells) <= 0):
                    return None  # reordered or repeated cells: the generic path
                new["cells"] = cells
                new["drop_cell"] = scalar
                if b.mask is not None:
                    new["mask"] = b.mask[picked]
            else:
                if isinstance(k, slice) and k == slice(None):
                    continue
                cur = np.arange(b.n_genes) if b.genes is None else b.genes
                new["genes"] = cur[picked]
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
        out = self._reduce("var", False, axis, keepdims=keepdims, ddof=ddof)
        if out is NotImplemented:
            return da.Array.var(self, axis=axis, keepdims=keepdims, ddof=ddof)
        return out

    def std(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, ddof: int = 0,
            **kw: Any) -> Any:
        out = self._reduce("std", False, axis, keepdims=keepdims, ddof=ddof)
        if out is NotImplemented:
            return da.Array.std(self, axis=axis, keepdims=keepdims, ddof=ddof)
        return out

    def min(self, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._reduce("min", False, axis, keepdims=keepdims)

    def max(self, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._reduce("max", False, axis, keepdims=keepdims)

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
            result = cell_reduction(x._base, x._expr, op, skipna, ddof, integer)
        else:
            result = gene_reduction(x._base, x._expr, op, skipna, ddof, integer, scalar=not kept)
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
