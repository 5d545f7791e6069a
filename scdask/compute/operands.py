"""Operands of an elementwise expression: the matrix itself, constants, per-cell and per-gene
vectors.

``X / X.sum("gene")`` divides every entry by its cell's total; ``(X - mean) / std`` uses
one value per gene. :func:`compose` turns the inputs of a ufunc or ``np.where`` into
expression leaves — trees of the same matrix, ``("c", value)``, ``("cell", k)`` and
``("gene", k)`` — and the vectors those leaves number, or None when an input is none of
these (then the generic Dask path computes it).
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from scdask.compute.expr import Expr, const, fold, renumber
from scdask.compute.proxy import unwrap


def compose(arr: Any, build: Any, inputs: tuple[Any, ...]
            ) -> tuple[Expr, tuple[Any, ...], tuple[Any, ...]] | None:
    """``(expr, cell_ops, gene_ops)`` of ``build(*trees)`` over ``inputs``, for matrix ``arr``."""
    trees: list[tuple[Any, ...]] = []
    cell_ops: list[Any] = []
    gene_ops: list[Any] = []
    for x in inputs:
        other = getattr(x, "_base", None) if type(x) is type(arr) else None
        if other is not None and other.token == arr._base.token:
            trees.append(renumber(x._expr.tree, len(cell_ops), len(gene_ops)))
            cell_ops += x._cell_ops
            gene_ops += x._gene_ops
            continue
        t = _vector(arr, unwrap(x), cell_ops, gene_ops)
        if t is None:
            return None
        trees.append(t)
    tree = build(*trees)
    folded = fold(tree)
    if folded != tree:  # a constant condition: keep the branch, in the result's dtype
        dtype = _dtype_of(tree, arr._base.dtype, cell_ops, gene_ops)
        if _dtype_of(folded, arr._base.dtype, cell_ops, gene_ops) != dtype:
            folded = ("astype", dtype.str, folded)
        tree = folded
    return Expr(tree), tuple(cell_ops), tuple(gene_ops)


def _vector(arr: Any, x: Any, cell_ops: list[Any], gene_ops: list[Any]) -> tuple[Any, ...] | None:
    """A scalar or a vector along the cells or the genes, as a leaf; None otherwise."""
    if isinstance(x, int | float | bool | np.number | np.bool_):
        return const(x.item() if isinstance(x, np.generic) else x)
    if not isinstance(x, np.ndarray | da.Array) or np.dtype(x.dtype).kind not in "biuf":
        return None
    if isinstance(x, da.Array) and type(getattr(x, "_meta", None)) is not np.ndarray:
        return None  # blocks of another kind (sparse): not a vector the kernels can take
    if isinstance(x, np.ndarray) and x.ndim <= arr.ndim:
        if x.size == 0:  # along an empty axis: never evaluated, but keep zeros zeros
            return const(True if x.dtype == bool else 1)
        if x.size == 1 or (x.dtype == bool and (x.all() or not x.any())):
            # one value, or a condition true (or false) everywhere: a constant
            return const(x.reshape(-1)[0].item())
    axis = _vector_axis(tuple(x.shape), arr.shape)
    if axis is None:
        return None
    flat = _along(x, axis - (arr.ndim - x.ndim))
    if flat.shape[0] != arr.shape[axis]:
        flat = da.broadcast_to(flat, (arr.shape[axis],))
    if arr._base.dims[axis] == "cell":
        cell_ops.append(flat)
        return ("cell", len(cell_ops) - 1)
    gene_ops.append(flat)
    return ("gene", len(gene_ops) - 1)


def _along(x: Any, axis: int) -> Any:
    """The 1-d vector of ``x`` along ``axis`` (its other axes have length 1), without reshape
    (which Dask's query-planned arrays do not have)."""
    if x.ndim == 1:
        return x
    if axis < 0:  # only length-1 axes: the first element, as a vector of one
        return x[(0,) * (x.ndim - 1) + (slice(None),)][:1]
    return x[tuple(slice(None) if i == axis else 0 for i in range(x.ndim))]


def _vector_axis(shape: tuple[int, ...], target: tuple[int, ...]) -> int | None:
    """The one axis of ``target`` along which an operand of ``shape`` varies under numpy's
    broadcasting: None when it broadcasts along more than one axis, or not at all."""
    if len(shape) > len(target):
        return None
    full = (1,) * (len(target) - len(shape)) + shape
    if any(s not in (1, t) for s, t in zip(full, target, strict=True)):
        return None
    moving = [i for i, s in enumerate(full) if s != 1]
    if len(moving) == 1:
        return moving[0]
    if not moving and target:  # one value: a vector along the first axis, broadcast
        return 0
    return None


def _dtype_of(tree: tuple[Any, ...], dtype: np.dtype, cell_ops: list[Any], gene_ops: list[Any]
              ) -> np.dtype:
    return Expr(tree).dtype(dtype, [o.dtype for o in cell_ops], [o.dtype for o in gene_ops])
