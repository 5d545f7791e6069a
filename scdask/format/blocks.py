"""The two block shapes data flows in: rows of a source (CSR) and a stored row group (CSC)."""

from __future__ import annotations

import dataclasses

import numpy as np


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


@dataclasses.dataclass
class GroupBlock:
    """One row group in the stored layout: gene-major, cell indices local to the group."""

    colptr: np.ndarray  # int64, n_vars + 1, starts at 0
    indices: np.ndarray  # uint16 local cell index, sorted within each gene
    data: np.ndarray  # values, source dtype
    n_rows: int

    @property
    def nnz(self) -> int:
        return int(self.colptr[-1])
