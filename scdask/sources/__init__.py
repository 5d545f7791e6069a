"""The :class:`Source` protocol: what the converter needs from an input file.

A source knows the shape of each matrix, yields rows of a matrix as a
:class:`~scdask.format.blocks.CSRBlock`, and hands over the metadata frames.
:mod:`scdask.sources.h5ad` implements it for H5AD. Another input format (Parquet
with ragged gene lists, Loom, 10x) is one module here and one line in
:data:`SOURCES`; conversion reaches sources only through :func:`open_source`, and
the plan records the kind, so every step reopens the same reader.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

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
    nnz: int = 0  # stored entries (every entry of a dense matrix)
    index_itemsize: int = 8  # bytes of one stored index (sparse), 8 otherwise


class Source(Protocol):
    """What :func:`scdask.convert` reads."""

    kind: ClassVar[str]  # the key of this reader in SOURCES, recorded in the plan
    path: str
    n_obs: int
    n_vars: int

    def matrices(self) -> list[MatrixInfo]:
        """Every cell × gene matrix, X first."""

    def row_group_nnz(self, name: str, boundaries: np.ndarray) -> np.ndarray | None:
        """Stored entries per row group, or None when it costs a scan to know."""

    def sample_values(self, name: str, n: int = 1 << 16) -> np.ndarray:
        """Some stored values of matrix ``name`` (the first ``n``; empty when dense)."""

    def read_rows(self, name: str, start: int, stop: int, value_dtype: Any = None,
                  scratch: Scratch | None = None) -> CSRBlock:
        """Rows ``[start, stop)`` of matrix ``name``, values cast exactly to
        ``value_dtype`` when given, read into ``scratch``'s buffers when given."""

    def column_offsets(self, name: str) -> np.ndarray:
        """A CSC matrix's offsets: where each column's stored entries start, then the
        total (called only for matrices whose ``format`` is ``"csc"``)."""

    def read_columns(self, name: str, start: int, stop: int,
                     value_dtype: Any = None) -> CSRBlock:
        """Columns ``[start, stop)`` of CSC matrix ``name`` as rows of its transpose (a
        conversion reads a CSC matrix this way, once, rather than by rows)."""

    def frame(self, name: str, rows: int | None = None) -> Iterator[pa.Table]:
        """The ``obs``, ``var`` or ``raw/var`` table, index in column ``_index``, in slices
        of ``rows`` rows (all slices of one schema; one slice where the source cannot
        slice the table, or without ``rows``)."""

    def obsm_varm(self) -> dict[str, Any]:
        """Dense ``obsm/*`` and ``varm/*`` arrays (h5py datasets or numpy arrays)."""

    def pairwise(self) -> dict[str, Any]:
        """Numeric ``obsp/*`` and ``varp/*``: a dense array, or ``(format, shape, indptr,
        indices, data)`` of a CSR or CSC matrix (arrays sliceable: h5py or numpy)."""

    def uns(self) -> dict[str, Any]:
        """The ``uns`` mapping."""

    def element(self, path: str) -> Any:
        """Any element (``obsm/<key>``, ...) as anndata reads it (for what scdask's own
        encodings do not hold, kept in anndata's)."""

    def dropped(self) -> list[str]:
        """Elements the source has that scdask does not keep."""

    def close(self) -> None: ...


#: Source kinds: the class implementing each, as ``module:Class`` (imported when used).
SOURCES = {"h5ad": "scdask.sources.h5ad:H5ADSource"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def source_kind(path: str | os.PathLike[str]) -> str:
    """The kind of source ``path`` is, from its content (HDF5: ``h5ad``).

    Raises
    ------
    FormatError
        If no source kind reads it.
    """
    from scdask.format import FormatError

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except IsADirectoryError:
        raise FormatError(f"{path}: is a folder, not an input file scdask converts") from None
    # HDF5's superblock sits at 0, 512, 1024, ... (a user block may precede it)
    if any(head[i : i + 8] == _HDF5_MAGIC for i in range(0, max(1, len(head) - 7), 512)):
        return "h5ad"
    if path.endswith(".h5ad"):
        return "h5ad"  # let its reader say what is wrong with it
    raise FormatError(
        f"{path}: not a file scdask converts (known: {', '.join(sorted(SOURCES))})")


def open_source(path: str | os.PathLike[str], kind: str | None = None) -> Source:
    """Open ``path`` with the reader of ``kind`` (default: found from the file's content)."""
    kind = kind or source_kind(path)
    if kind not in SOURCES:
        raise ValueError(f"unknown source kind {kind!r}; known: {', '.join(sorted(SOURCES))}")
    module, cls = SOURCES[kind].split(":")
    return getattr(importlib.import_module(module), cls)(path)
