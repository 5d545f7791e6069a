"""A Dask array behind the duck-array protocols xarray and numpy use: :class:`DaskProxy`.

It is the base of :class:`~scdask.compute.array.ScdaskArray` (whose Dask array, its
generic view, is built only when something needs it) and what scdask hands out for a
plain Dask result when Dask's array query planning (``array.query-planning``) is on:
those arrays do not yet implement ``__array__`` nor ``__array_function__``, so xarray
would turn them into object arrays and numpy functions would fail on them. The proxy
computes for ``__array__``, sends numpy functions to ``dask.array``'s namesakes, and is
a Dask collection itself (every ``__dask_*__`` method is its array's), so
``dask.compute``, ``persist`` and distributed work on it as on the array.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from dask.base import DaskMethodsMixin

#: Whether ``dask.array`` builds query-planned (array-expr) collections.
QUERY_PLANNING = not hasattr(da.Array, "__array__")


def wrap(x: Any) -> Any:
    """``x`` as scdask hands it out: a Dask array in a proxy when query planning is on."""
    if QUERY_PLANNING and isinstance(x, da.Array) and not isinstance(x, DaskProxy):
        return DaskProxy(x)
    if isinstance(x, tuple | list):
        return type(x)(wrap(y) for y in x)
    return x


def unwrap(x: Any) -> Any:
    """``x`` with every proxy (in lists, tuples and dicts too) replaced by its Dask array."""
    if isinstance(x, DaskProxy):
        return x.to_dask_array()
    if isinstance(x, list | tuple):
        return type(x)(unwrap(y) for y in x)
    if isinstance(x, dict):
        return {k: unwrap(v) for k, v in x.items()}
    return x


class DaskProxy(DaskMethodsMixin):
    """A Dask array that numpy and xarray take as a duck Dask array whatever Dask's mode."""

    __array_priority__ = 20

    def __init__(self, array: da.Array) -> None:
        self.__dict__["_dask"] = array

    def to_dask_array(self) -> da.Array:
        """The Dask array itself."""
        return self._dask

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._dask.shape)

    @property
    def dtype(self) -> np.dtype:
        return self._dask.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        return self.to_dask_array().chunks

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"scdask.proxy<{self.to_dask_array()!r}>"

    def __getattr__(self, name: str) -> Any:
        # anything else is the Dask array's (rechunk, map_blocks, blocks, ...)
        if name.startswith("__") or not self._ready() or not hasattr(da.Array, name):
            raise AttributeError(name)  # (without building the array: protocol checks ask)
        attr = getattr(self.to_dask_array(), name)
        if not callable(attr):
            return wrap(attr)

        def method(*args: Any, **kwargs: Any) -> Any:
            return wrap(attr(*unwrap(args), **unwrap(kwargs)))

        return method

    def _ready(self) -> bool:
        return any(k in self.__dict__ for k in ("_dask", "_base", "_pending"))

    # -- a Dask collection: its array's graph --------------------------------------
    def __dask_graph__(self) -> Any:
        return self.to_dask_array().__dask_graph__()

    def __dask_keys__(self) -> Any:
        return self.to_dask_array().__dask_keys__()

    def __dask_layers__(self) -> Any:
        return self.to_dask_array().__dask_layers__()

    def __dask_postcompute__(self) -> Any:
        return self.to_dask_array().__dask_postcompute__()

    def __dask_postpersist__(self) -> Any:
        return self.to_dask_array().__dask_postpersist__()

    def __dask_tokenize__(self) -> Any:
        return ("proxy", self.to_dask_array().name)

    @property
    def __dask_optimize__(self) -> Any:
        return self.to_dask_array().__dask_optimize__

    @property
    def __dask_scheduler__(self) -> Any:
        return self.to_dask_array().__dask_scheduler__

    # -- values out ------------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.asarray(self.to_dask_array().compute())
        return out if dtype is None else out.astype(dtype, copy=False)

    def __float__(self) -> float:
        return float(np.asarray(self))

    def __int__(self) -> int:
        return int(np.asarray(self))

    def __bool__(self) -> bool:
        return bool(np.asarray(self))

    def __iter__(self) -> Any:
        return iter(self.to_dask_array())

    # -- numpy's protocols: Dask computes ---------------------------------------------
    def __array_ufunc__(self, uf: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        plain = type(self).__array_ufunc__ is DaskProxy.__array_ufunc__
        for x in inputs if plain else ():  # the lazy matrix composes it into its expression
            if isinstance(x, DaskProxy) and type(x).__array_ufunc__ is not DaskProxy.__array_ufunc__:
                return type(x).__array_ufunc__(x, uf, method, *inputs, **kwargs)
        return wrap(getattr(uf, method)(*unwrap(inputs), **unwrap(kwargs)))

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if func in (np.result_type, np.can_cast, np.min_scalar_type):  # no graph needed
            return func(*(a.dtype if isinstance(a, DaskProxy) else a for a in args), **kwargs)
        args, kwargs = unwrap(args), unwrap(kwargs)
        try:
            return wrap(func(*args, **kwargs))
        except NotImplementedError:
            # array-expr collections do not dispatch numpy functions yet: dask.array's namesake
            same = getattr(da, func.__name__, None)
            if same is None:
                raise
            try:
                return wrap(same(*args, **kwargs))
            except NotImplementedError:
                if func is not np.reshape:
                    raise
                return wrap(_reshape(*args, **kwargs))

    def _binary(self, uf: np.ufunc, other: Any, reflected: bool = False) -> Any:
        a, b = (other, self) if reflected else (self, other)
        return self.__array_ufunc__(uf, "__call__", a, b)

    def __getitem__(self, key: Any) -> Any:
        return wrap(self.to_dask_array()[unwrap(key)])

    def astype(self, dtype: Any, **kwargs: Any) -> Any:
        return wrap(self.to_dask_array().astype(dtype, **kwargs))

    def __neg__(self) -> Any:
        return self.__array_ufunc__(np.negative, "__call__", self)

    def __pos__(self) -> Any:
        return self

    def __abs__(self) -> Any:
        return self.__array_ufunc__(np.absolute, "__call__", self)

    def __invert__(self) -> Any:
        return self.__array_ufunc__(np.invert, "__call__", self)

    def __hash__(self) -> int:
        from dask.base import tokenize

        return hash(tokenize(self))


def _reshape(x: da.Array, shape: Any, **kw: Any) -> da.Array:
    """``np.reshape`` blockwise, for array-expr collections that lack it (xarray's ``unstack``):
    the axes that keep their length up front keep their blocks, the rest become one block."""
    if kw:
        raise NotImplementedError(f"reshape with {sorted(kw)}")
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        shape = tuple(x.size // max(known, 1) if s == -1 else s for s in shape)
    k = 0
    while k < min(len(shape), x.ndim) and shape[k] == x.shape[k]:
        k += 1
    x = x.rechunk({i: -1 for i in range(k, x.ndim)})
    chunks = x.chunks[:k] + tuple((s,) for s in shape[k:])
    return x.map_blocks(lambda b: b.reshape(b.shape[:k] + shape[k:]), chunks=chunks,
                        dtype=x.dtype, meta=np.empty((0,) * len(shape), x.dtype))


def _binary_method(name: str, uf: np.ufunc, reflected: bool = False) -> Any:
    def method(self: DaskProxy, other: Any) -> Any:
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
    ("__and__", np.bitwise_and, False), ("__rand__", np.bitwise_and, True),
    ("__or__", np.bitwise_or, False), ("__ror__", np.bitwise_or, True),
    ("__xor__", np.bitwise_xor, False), ("__rxor__", np.bitwise_xor, True),
    ("__matmul__", np.matmul, False), ("__rmatmul__", np.matmul, True),
):
    setattr(DaskProxy, _name, _binary_method(_name, _uf, _reflected))
