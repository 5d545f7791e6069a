"""The :class:`Source` protocol: what the converter needs from an input file.

A source knows the shape of each matrix, yields rows of a matrix as a
:class:`CSRBlock`, and hands over the metadata frames. :mod:`scdask.h5ad`
implements it for H5AD; a Loom or 10x reader would add one module and reuse the
whole writer.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from scdask.scratch import Scratch


@dataclasses.dataclass
class CSRBlock:
    """Rows ``[start, start + n_rows)`` of a matrix as CSR arrays.

    ``indptr`` starts at 0. Column indices may be unsorted, and stored zeros and
    duplicates may be present: the converter canonicalises.
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    n_cols: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])


@dataclasses.dataclass(frozen=True)
class MatrixInfo:
    """A matrix found in a source."""

    name: str
    n_obs: int
    n_vars: int
    dtype: np.dtype
    format: str  # "csr", "csc" or "dense"
    var: str  # "var" or "raw/var"


class Source(Protocol):
    """What :func:`scdask.convert` reads."""

    path: str
    n_obs: int
    n_vars: int

    def matrices(self) -> list[MatrixInfo]:
        """Every cell × gene matrix, X first."""

    def row_group_nnz(self, name: str, boundaries: np.ndarray) -> np.ndarray | None:
        """Stored entries per row group, or None when it costs a scan to know."""

    def read_rows(self, name: str, start: int, stop: int, value_dtype: Any = None,
                  scratch: Scratch | None = None) -> CSRBlock:
        """Rows ``[start, stop)`` of matrix ``name``, values cast exactly to
        ``value_dtype`` when given, read into ``scratch``'s buffers when given."""

    def frame(self, name: str) -> pa.Table:
        """The ``obs``, ``var`` or ``raw/var`` table, index in column ``_index``."""

    def obsm_varm(self) -> dict[str, Any]:
        """Dense ``obsm/*`` and ``varm/*`` arrays (h5py datasets or numpy arrays)."""

    def uns(self) -> dict[str, Any]:
        """The ``uns`` mapping."""

    def dropped(self) -> list[str]:
        """Elements the source has that scdask does not keep."""

    def close(self) -> None: ...


def frame_to_dataframe(table: pa.Table) -> pd.DataFrame:
    """Arrow table written by scdask back to pandas, index restored."""
    import json

    import pandas as pd

    from scdask.format import INDEX_COLUMN

    df = table.to_pandas()
    meta = table.schema.metadata or {}
    for col, c in json.loads(meta.get(b"scdask_categoricals", b"{}")).items():
        if col in df.columns:
            cats = pd.Index(c["categories"], dtype=None if c["dtype"] == "object" else c["dtype"])
            if not len(cats):
                cats = pd.Index([], dtype=object)
            values = df[col]
            if isinstance(values.dtype, pd.CategoricalDtype) and values.cat.categories.dtype == cats.dtype:
                df[col] = values.cat.set_categories(cats, ordered=c["ordered"])
            else:
                df[col] = pd.Categorical(values, categories=cats, ordered=c["ordered"])
    index = df.pop(INDEX_COLUMN)
    df.index = index.astype(object) if index.dtype != object else index
    name = (table.schema.metadata or {}).get(b"scdask_index_name")
    df.index.name = name.decode() if name else None
    return df
