"""What the rooms built on compute see of a user's selection: :class:`Matrix`, :func:`as_matrix`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scdask.compute.array import ScdaskArray
from scdask.compute.expr import Expr
from scdask.compute.selection import Base


@dataclass(frozen=True)
class Matrix:
    """A user's cell × gene selection, as the rooms built on compute see it.

    Attributes
    ----------
    data
        The DataArray (dimensions ``cell`` and a gene dimension), coordinates included.
    base
        What it selects: parts (stores), cells, genes, a cell mask.
    expr
        The elementwise expression applied to the stored values.
    """

    data: Any
    base: Base
    expr: Expr

    @property
    def gene_dim(self) -> str:
        return str(self.data.dims[1])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def fill(self) -> Any:
        """What the stored zeros become under :attr:`expr`."""
        return self.expr.fill(self.base.dtype)

    @property
    def genes(self) -> np.ndarray:
        """Dataset gene positions, in the order selected (repeats allowed)."""
        b = self.base
        return np.arange(b.n_genes) if b.genes is None else b.genes


def as_matrix(data: Any, var: str = "X", *, caller: str) -> Matrix:
    """The scdask matrix ``data`` is (or holds as ``var``), or a TypeError naming ``caller``.

    Parameters
    ----------
    data
        An ``xarray.Dataset`` from :func:`scdask.open` (or a selection of it), or one of
        its matrices as a DataArray.
    var
        The matrix to take when ``data`` is a Dataset.
    caller
        The public function asking, named in the error.
    """
    import xarray as xr

    x = data[var] if isinstance(data, xr.Dataset) else data
    arr = getattr(x, "data", None)
    if (not isinstance(x, xr.DataArray) or not isinstance(arr, ScdaskArray) or arr.ndim != 2
            or x.dims[0] != "cell"):
        raise TypeError(f"{caller} needs a cell × gene matrix opened with scdask.open")
    return Matrix(x, arr._base, arr._expr)
