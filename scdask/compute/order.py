"""Distinct cells out of their order: :class:`CellOrder`, the fast path's selection of the
same cells in increasing order, each then put in its place.

``ds.isel(cell=slice(None, None, -1))`` or names in another order than the store's pick
distinct cells out of order; the kernels read row groups in order. A reduction over cells
does not depend on the order, and a per-cell result is put in order afterwards, so such a
selection keeps the fast path's values and reductions (repeated cells do not: they go to
the generic view).
"""

from __future__ import annotations

import functools
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from scdask.compute.array import ScdaskArray, _scalar, _take
from scdask.compute.proxy import DaskProxy, unwrap, wrap
from scdask.compute.reductions import REDUCTIONS
from scdask.compute.selection import normalize_axes, positions


def _rows(block: Any, order: np.ndarray) -> Any:
    return block[order]


class CellOrder(DaskProxy):
    """Distinct cells out of their order (``isel(cell=slice(None, None, -1))``, names in
    another order): the :class:`ScdaskArray` of those cells in increasing order, each cell
    then put in its place. Values, elementwise functions of it alone and reductions come
    from the fast path (a reduction over cells does not depend on their order; per-cell
    results are reordered); anything else is the generic view, reordered."""

    def __init__(self, inner: ScdaskArray, inverse: np.ndarray) -> None:
        self.__dict__.update(_inner=inner, _inverse=np.asarray(inverse, np.int64))

    def _ready(self) -> bool:
        return True

    @functools.cached_property
    def _dask(self) -> da.Array:
        # the cells in one block, then in their order within it: no take out of order
        # (Dask's array query planning cannot); only a fallback computes it
        view = unwrap(self._inner.to_dask_array())
        whole = view.rechunk({0: -1})
        return whole.map_blocks(_rows, self._inverse, dtype=view.dtype, meta=view._meta)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._inner.shape

    @property
    def dtype(self) -> np.dtype:
        return self._inner.dtype

    def __dask_tokenize__(self) -> Any:
        return ("cell-order", self._inner.__dask_tokenize__(), tokenize(self._inverse))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.asarray(self._inner)[self._inverse]
        return out if dtype is None else out.astype(dtype, copy=False)

    def _inner_args(self, args: Any) -> list[Any] | None:
        """``args`` with each :class:`CellOrder` of the same order replaced by its
        selection in increasing order; ``None`` if another array takes part."""
        out = []
        for a in args:
            if isinstance(a, CellOrder) and np.array_equal(a._inverse, self._inverse):
                out.append(a._inner)
            elif _scalar(a) or a is None or isinstance(a, str | np.dtype | type):
                out.append(a)
            else:
                return None
        return out

    def _reordered(self, out: Any) -> Any:
        """A result of the inner selection as this one's: a lazy matrix of the same cells in
        the same order, or anything that has no cells (a dtype); ``NotImplemented`` else."""
        if isinstance(out, ScdaskArray) and out.shape == self.shape:
            return CellOrder(out, self._inverse)
        if isinstance(out, np.dtype | type) or _scalar(out):
            return out
        return NotImplemented

    def __array_ufunc__(self, uf: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        inner = self._inner_args(inputs) if method == "__call__" else None
        if inner is not None:
            out = self._reordered(uf(*inner, **kwargs))
            if out is not NotImplemented:
                return out
        return super().__array_ufunc__(uf, method, *inputs, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if (func in REDUCTIONS or func is np.count_nonzero) and args and args[0] is self:
            axis = args[1] if len(args) > 1 else kwargs.get("axis")
            out = func(self._inner, *args[1:], **kwargs)
            return self._placed(out, axis, kwargs.get("keepdims", False))
        inner = self._inner_args(args)
        if inner is not None and self._inner_args(kwargs.values()) is not None:
            out = self._reordered(func(*inner, **{k: self._inner if v is self else v
                                                  for k, v in kwargs.items()}))
            if out is not NotImplemented:
                return out
        return super().__array_function__(func, types, args, kwargs)

    def __getitem__(self, key: Any) -> Any:
        """A selection of it: its cells are the inner selection's at ``inverse``."""
        key = key if isinstance(key, tuple) else (key,)
        if key and not any(k is None or k is Ellipsis for k in key) and len(key) <= self.ndim:
            pos = positions(key[0], self.shape[0])
            if pos is not None:
                cells = self._inverse[pos[0]]
                return self._inner[(int(cells[0]) if pos[1] else cells, *key[1:])]
        return super().__getitem__(key)

    def astype(self, dtype: Any, **kwargs: Any) -> Any:
        out = self._reordered(self._inner.astype(dtype, **kwargs))
        return super().astype(dtype, **kwargs) if out is NotImplemented else out

    def _placed(self, out: Any, axis: Any, keepdims: bool) -> Any:
        """A reduction of the cells in increasing order, its per-cell values put in place."""
        if 0 in normalize_axes(axis, self.ndim) or (keepdims and not np.ndim(out)):
            return out
        return wrap(_take(unwrap(out), self._inverse))  # reordered without Dask's take

    def _method(self, op: str, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._placed(getattr(self._inner, op)(axis=axis, keepdims=keepdims, **kw),
                            axis, keepdims)

    def sum(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._method("sum", axis, keepdims, **kw)

    def mean(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._method("mean", axis, keepdims, **kw)

    def var(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, ddof: int = 0,
            **kw: Any) -> Any:
        return self._method("var", axis, keepdims, ddof=ddof, **kw)

    def std(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, ddof: int = 0,
            **kw: Any) -> Any:
        return self._method("std", axis, keepdims, ddof=ddof, **kw)

    def min(self, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._method("min", axis, keepdims, **kw)

    def max(self, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
        return self._method("max", axis, keepdims, **kw)
