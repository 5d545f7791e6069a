"""The lazy matrix: selections, elementwise expressions, reductions, group-by.

The rooms built on this one (interop, analysis, the backend) use only what this
module exports: :func:`as_matrix` to accept a user's Dataset or DataArray,
:class:`Matrix` to see what it selects, :func:`read_gene_runs` to read one row
group's values, and :class:`ScdaskArray` / :class:`Base` / :class:`Part` to build one.

Modules, in the order they build on each other:

- :mod:`~scdask.compute.expr`: elementwise expressions over stored values
- :mod:`~scdask.compute.kernels`: compiled per-row-group kernels and partial statistics
- :mod:`~scdask.compute.selection`: parts, selected cells and genes, row groups
- :mod:`~scdask.compute.reading`: one row group's gene runs; the generic sparse view
- :mod:`~scdask.compute.reductions`: sum, mean, var, ... from the description
- :mod:`~scdask.compute.array`: :class:`ScdaskArray`, the Dask array users see
- :mod:`~scdask.compute.matrix`: :func:`as_matrix`, the checked way in for other rooms
- :mod:`~scdask.compute.labels`: statistics per group of cells, one pass (:func:`grouped`)
- :mod:`~scdask.compute.pending`: reductions of cell selections that fuse when stacked
- :mod:`~scdask.compute.groupby`: pseudobulk per group of cells
"""

from __future__ import annotations

from scdask.compute.array import ScdaskArray
from scdask.compute.expr import Expr
from scdask.compute.kernels import count_cells, scatter_rows
from scdask.compute.labels import grouped, narrow
from scdask.compute.matrix import Matrix, as_matrix, obs_column
from scdask.compute.proxy import wrap
from scdask.compute.reading import read_gene_runs
from scdask.compute.selection import Base, GroupSel, Part

__all__ = ["Base", "Expr", "GroupSel", "Matrix", "Part", "ScdaskArray", "as_matrix", "obs_column",
           "count_cells", "grouped", "narrow", "read_gene_runs", "scatter_rows", "wrap"]
