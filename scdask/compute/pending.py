"""Reductions over the cells of a cell selection, kept pending until used: :class:`CellReduction`.

xarray's ``groupby(...).mean()`` (and anyone reducing group after group) selects each
group's cells, reduces them, and stacks the results with ``np.stack``. Alone, each such
reduction would read every row group its cells fall in, once per group. Pending, a
:class:`CellReduction` is the ordinary per-gene reduction when used by itself; stacked
with reductions of other disjoint cell selections of the same matrix, the stack is one
labelled pass over the store (:mod:`scdask.compute.labels`), whatever the number of groups.
"""

from __future__ import annotations

import functools
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from scdask.compute import labels
from scdask.compute.proxy import DaskProxy, unwrap, wrap

#: Reductions a labelled pass gives (min and max too: the accumulators keep them).
FUSED = ("sum", "mean", "var", "std", "min", "max")


class CellReduction(DaskProxy):
    """``op`` over the cells of ``parent[cells]``, per gene (1-D; 0-D for a matrix of one
    gene whose gene dimension is dropped), not built until needed."""

    def __init__(self, parent: Any, cells: np.ndarray, build: Any, op: str, skipna: bool,
                 ddof: int, dtype: np.dtype, n_genes: int | None) -> None:
        self.__dict__.update(_pending=(parent, np.asarray(cells, np.int64), op, skipna, ddof),
                             _build=build, _dtype=np.dtype(dtype), _n_genes=n_genes)

    @functools.cached_property
    def _dask(self) -> da.Array:
        return unwrap(self._build())

    @property
    def shape(self) -> tuple[int, ...]:
        return () if self._n_genes is None else (self._n_genes,)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        return tuple((n,) for n in self.shape)  # the per-gene reduction's one block

    @property
    def real(self) -> Any:  # a real array's own (xarray's duck-array check asks, often)
        return self if self._dtype.kind != "c" else wrap(self._dask.real)

    @property
    def imag(self) -> Any:
        if self._dtype.kind == "c":
            return wrap(self._dask.imag)
        return np.broadcast_to(np.zeros((), self._dtype), self.shape)

    def __repr__(self) -> str:
        return f"scdask.pending<{self._pending[2]} over {len(self._pending[1])} cells>"

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if func is np.stack and args:
            out = _fuse(*args, **kwargs)
            if out is not None:
                return out
        return super().__array_function__(func, types, args, kwargs)


def _fuse(arrays: Any, axis: int = 0, out: Any = None, **kw: Any) -> Any:
    """``np.stack`` of pending reductions of disjoint cells of one matrix: one pass, or None."""
    arrays = list(arrays)
    if axis != 0 or out is not None or kw or len(arrays) < 2:
        return None
    if not all(isinstance(a, CellReduction) for a in arrays):
        return None
    parent, _, op, skipna, ddof = arrays[0]._pending
    if op not in FUSED or any(a._pending[2:] != (op, skipna, ddof) for a in arrays):
        return None
    token = tokenize(parent)
    if any(a._pending[0] is not parent and tokenize(a._pending[0]) != token for a in arrays):
        return None  # reductions of different matrices
    codes = labels.narrow(np.full(parent.shape[0], -1, np.int8), len(arrays))
    for k, a in enumerate(arrays):
        cells = a._pending[1]
        if (codes[cells] != -1).any() or len(np.unique(cells)) != len(cells):
            return None  # overlapping selections are not groups
        codes[cells] = k
    integer = parent.dtype.kind in "biu"  # (an integer sum's exactness check needs min/max)
    acc = labels.accumulate(parent.inputs(), codes, len(arrays),
                            minmax=op in ("min", "max") or integer)
    stat = labels.statistic(acc, op, skipna=skipna, ddof=ddof, integer=integer)
    if arrays[0].shape == ():  # one gene, its dimension dropped: a number per group
        stat = stat[:, 0]
    return wrap(stat.astype(arrays[0].dtype, copy=False))
