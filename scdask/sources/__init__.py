"""The :class:`Source` protocol: what the converter needs from an input file.

A source knows the shape of each matrix, yields rows of a matrix as a
:class:`~scdask.format.blocks.CSRBlock`, and hands over the metadata frames.
:mod:`scdask.sources.h5ad`
implements it for H5AD; a Loom or 10x reader would add one module and reuse the
whole writer.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from scdask.format.blocks import CSRBlock
    from scdask.sources.scratch import Scratch


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


