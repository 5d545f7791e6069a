"""Elementwise expressions of a stored matrix's values.

``np.log1p(X / 2)``, ``np.isnan(X)``, ``X > 0``, ``X.astype("f8")``: each is a
function of the value ``v`` of one entry, and so is applied to the stored
values only, with every implicit entry taking the value the expression gives
for 0 (:meth:`Expr.fill`). This is how reductions over such expressions stay
sparse, and how xarray's NaN-skipping reductions (``isnan``, ``where``,
``logical_not``) reach scdask's kernels instead of densifying.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Expr:
    """An expression tree over the value ``v``; hashable, picklable, never traversed by Dask.

    Nodes are tuples: ``("v",)``, ``("c", scalar)``, ``("ufunc", name, args)``,
    ``("where", cond, x, y)`` and ``("astype", dtype, x)``.
    """

    __slots__ = ("tree",)

    def __init__(self, tree: tuple[Any, ...] = ("v",)) -> None:
        self.tree = tree

    def __repr__(self) -> str:
        return f"Expr({_show(self.tree)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and self.tree == other.tree

    def __hash__(self) -> int:
        return hash(repr(self.tree))

    def __dask_tokenize__(self) -> str:
        return repr(self.tree)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Expr, (self.tree,))

    @property
    def is_identity(self) -> bool:
        return self.tree == ("v",)

    def evaluate(self, v: np.ndarray) -> np.ndarray:
        """The expression applied to an array of values."""
        return np.asarray(_eval(self.tree, v))

    def dtype(self, dtype: np.dtype) -> np.dtype:
        """Result dtype for values of ``dtype``."""
        return self.evaluate(np.zeros(1, dtype)).dtype

    def fill(self, dtype: np.dtype) -> float:
        """The value of every implicit (zero) entry, as a float."""
        return float(self.evaluate(np.zeros(1, dtype))[0])


def const(value: Any) -> tuple[Any, ...]:
    return ("c", value)


def ufunc(name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return ("ufunc", name, tuple(args))


def _eval(t: tuple[Any, ...], v: np.ndarray) -> Any:
    kind = t[0]
    if kind == "v":
        return v
    if kind == "c":
        return t[1]
    if kind == "ufunc":
        return getattr(np, t[1])(*(_eval(a, v) for a in t[2]))
    if kind == "where":
        return np.where(_eval(t[1], v), _eval(t[2], v), _eval(t[3], v))
    if kind == "astype":
        return np.asarray(_eval(t[2], v)).astype(t[1])
    raise ValueError(f"unknown expression node {kind!r}")


def _show(t: tuple[Any, ...]) -> str:
    kind = t[0]
    if kind == "v":
        return "v"
    if kind == "c":
        return repr(t[1])
    if kind == "ufunc":
        return f"{t[1]}({', '.join(_show(a) for a in t[2])})"
    if kind == "where":
        return f"where({_show(t[1])}, {_show(t[2])}, {_show(t[3])})"
    return f"{_show(t[2])}.astype({t[1]})"
