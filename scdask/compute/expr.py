"""Elementwise expressions of a stored matrix's values, per-cell and per-gene vectors.

``np.log1p(X / X.sum("gene") * 1e4)``, ``(X - mean) / std``, ``np.isnan(X)``,
``X.astype("f8")``: each is a function of the value ``v`` of one entry, of
constants, and of vectors along the cells (``("cell", k)``: the k-th per-cell
operand) or the genes (``("gene", k)``). It is applied to the stored values only;
every implicit entry takes the value the expression gives for ``v = 0`` — which,
with operands, may differ per cell and per gene. :func:`split_fill` cuts that
value at zero into the parts that depend on the cells only (evaluated per cell,
then grouped into a few classes of cells) and what remains, a function of those
parts and of the genes. This is how reductions over such expressions stay sparse.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Functions of the values computed from the description (numpy ufuncs, by name).
UFUNCS = frozenset({
    "add", "subtract", "multiply", "true_divide", "divide", "floor_divide", "power",
    "float_power", "remainder", "mod", "negative", "positive", "absolute", "fabs", "sign",
    "sqrt", "square", "cbrt", "reciprocal", "exp", "exp2", "expm1", "log", "log2", "log10",
    "log1p", "sin", "cos", "tanh", "arcsinh", "floor", "ceil", "trunc", "rint",
    "minimum", "maximum", "fmin", "fmax", "clip",
    "equal", "not_equal", "greater", "greater_equal", "less", "less_equal",
    "logical_and", "logical_or", "logical_xor", "logical_not", "isnan", "isinf", "isfinite",
    "signbit", "invert", "bitwise_and", "bitwise_or", "bitwise_xor",
})


class Expr:
    """An expression tree over the value ``v``; hashable, picklable, never traversed by Dask.

    Nodes are tuples: ``("v",)``, ``("c", scalar)``, ``("cell", k)``, ``("gene", k)``,
    ``("ufunc", name, args)``, ``("where", cond, x, y)`` and ``("astype", dtype, x)``.
    """

    __slots__ = ("tree",)

    def __init__(self, tree: tuple[Any, ...] = ("v",)) -> None:
        self.tree = tree

    def __repr__(self) -> str:
        return f"Expr({_show(self.tree)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and repr(self.tree) == repr(other.tree)

    def __hash__(self) -> int:
        return hash(repr(self.tree))

    def __dask_tokenize__(self) -> str:
        return repr(self.tree)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Expr, (self.tree,))

    @property
    def is_identity(self) -> bool:
        return self.tree == ("v",)

    @property
    def uses_values(self) -> bool:
        """Whether the stored values matter (``isnull`` of integers, ``ones_like``: they do
        not, and every entry is the value at zero)."""
        return _uses(self.tree, "v")

    @property
    def uses_cells(self) -> bool:
        return _uses(self.tree, "cell")

    @property
    def uses_genes(self) -> bool:
        return _uses(self.tree, "gene")

    def evaluate(self, v: Any, cells: Any = (), genes: Any = ()) -> np.ndarray:
        """The expression of values ``v``; ``cells[k]``/``genes[k]`` broadcast against it."""
        with np.errstate(all="ignore"):
            return np.asarray(evaluate(self.tree, v, cells, genes))

    def dtype(self, dtype: np.dtype, cell_dtypes: Any = (), gene_dtypes: Any = ()) -> np.dtype:
        """Result dtype for values of ``dtype`` and operands of the given dtypes."""
        cells = [np.zeros(1, d) for d in cell_dtypes]
        genes = [np.zeros(1, d) for d in gene_dtypes]
        return self.evaluate(np.zeros(1, dtype), cells, genes).dtype


def evaluate(t: tuple[Any, ...], v: Any, cells: Any, genes: Any, keys: Any = ()) -> Any:
    """Evaluate tree ``t`` (``("key", i)`` leaves take ``keys[i]``)."""
    kind = t[0]
    if kind == "v":
        return v
    if kind == "c":
        return t[1]
    if kind == "cell":
        return cells[t[1]]
    if kind == "gene":
        return genes[t[1]]
    if kind == "key":
        return keys[t[1]]
    if kind == "ufunc":
        return getattr(np, t[1])(*(evaluate(a, v, cells, genes, keys) for a in t[2]))
    if kind == "where":
        return np.where(*(evaluate(a, v, cells, genes, keys) for a in t[1:]))
    if kind == "astype":
        return np.asarray(evaluate(t[2], v, cells, genes, keys)).astype(t[1])
    raise ValueError(f"unknown expression node {kind!r}")


def _uses(t: tuple[Any, ...], leaf: str) -> bool:
    kind = t[0]
    if kind == leaf:
        return True
    if kind == "ufunc":
        return any(_uses(a, leaf) for a in t[2])
    if kind == "where":
        return any(_uses(a, leaf) for a in t[1:])
    if kind == "astype":
        return _uses(t[2], leaf)
    return False


def at_zero(t: tuple[Any, ...], dtype: np.dtype) -> tuple[Any, ...]:
    """``t`` with the stored value replaced by a zero of ``dtype``."""
    kind = t[0]
    if kind == "v":
        return ("c", np.zeros((), dtype)[()])
    if kind == "ufunc":
        return ("ufunc", t[1], tuple(at_zero(a, dtype) for a in t[2]))
    if kind == "where":
        return ("where", *(at_zero(a, dtype) for a in t[1:]))
    if kind == "astype":
        return ("astype", t[1], at_zero(t[2], dtype))
    return t


def split_fill(t: tuple[Any, ...], dtype: np.dtype) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """The value at zero as ``(rest, parts)``: ``parts`` depend on per-cell operands only
    (and are replaced by ``("key", i)`` in ``rest``, which depends on genes at most)."""
    parts: list[tuple[Any, ...]] = []

    def cut(s: tuple[Any, ...]) -> tuple[Any, ...]:
        if _uses(s, "cell") and not _uses(s, "gene"):
            parts.append(s)
            return ("key", len(parts) - 1)
        kind = s[0]
        if kind == "ufunc":
            return ("ufunc", s[1], tuple(cut(a) for a in s[2]))
        if kind == "where":
            return ("where", *(cut(a) for a in s[1:]))
        if kind == "astype":
            return ("astype", s[1], cut(s[2]))
        return s

    return cut(at_zero(t, dtype)), parts


def renumber(t: tuple[Any, ...], cells: int, genes: int) -> tuple[Any, ...]:
    """``t`` with its operand numbers shifted by ``cells`` and ``genes``."""
    kind = t[0]
    if kind == "cell":
        return ("cell", t[1] + cells)
    if kind == "gene":
        return ("gene", t[1] + genes)
    if kind == "ufunc":
        return ("ufunc", t[1], tuple(renumber(a, cells, genes) for a in t[2]))
    if kind == "where":
        return ("where", *(renumber(a, cells, genes) for a in t[1:]))
    if kind == "astype":
        return ("astype", t[1], renumber(t[2], cells, genes))
    return t


def fold(t: tuple[Any, ...]) -> tuple[Any, ...]:
    """``t`` with every ``where`` whose condition is a constant (or a constant cast to bool)
    replaced by its chosen branch."""
    kind = t[0]
    if kind == "ufunc":
        return ("ufunc", t[1], tuple(fold(a) for a in t[2]))
    if kind == "astype":
        x = fold(t[2])
        if x[0] == "c" and np.dtype(t[1]) == np.bool_:  # a constant condition
            return ("c", np.asarray(x[1]).astype(t[1])[()])
        return ("astype", t[1], x)
    if kind == "where":
        c, x, y = (fold(a) for a in t[1:])
        if c[0] == "c":
            return x if bool(c[1]) else y
        return ("where", c, x, y)
    return t


def const(value: Any) -> tuple[Any, ...]:
    return ("c", value)


def ufunc(name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return ("ufunc", name, tuple(args))


def _show(t: tuple[Any, ...]) -> str:
    kind = t[0]
    if kind == "v":
        return "v"
    if kind == "c":
        return repr(t[1])
    if kind in ("cell", "gene", "key"):
        return f"{kind}[{t[1]}]"
    if kind == "ufunc":
        return f"{t[1]}({', '.join(_show(a) for a in t[2])})"
    if kind == "where":
        return f"where({_show(t[1])}, {_show(t[2])}, {_show(t[3])})"
    return f"{_show(t[2])}.astype({t[1]})"
