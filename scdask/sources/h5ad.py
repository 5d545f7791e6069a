"""The H5AD :class:`~scdask.sources.Source`, reading with h5py in row slabs.

X, layers and raw/X are read slab by slab straight from HDF5 (CSR, CSC or dense,
any index and value dtype), never as a whole. obs, var and uns are read by
:func:`scdask.elements.read_elem` (plain encodings) or anndata's own readers (the
rest), so every encoding anndata has written, from the pre-0.7 compound datasets
on, decodes exactly as ``anndata.read_h5ad`` decodes it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from scdask.format import FormatError, LossyDtypeError
from scdask.format.blocks import CSRBlock
from scdask.format.tables import ArrowFrameBuilder, dataframe_to_arrow
from scdask.sources import MatrixInfo
from scdask.sources.h5slabs import (
    cast,
    csc_offsets,
    narrowed,
    read_csc_rows,
    read_csr_rows,
    read_dense_rows,
)
from scdask.sources.scratch import Scratch

if TYPE_CHECKING:  # pandas and pyarrow are imported only where frames are read
    import pyarrow as pa


def _decode(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class H5ADSource:
    """An H5AD file as a conversion source.

    Parameters
    ----------
    path
        Path of the ``.h5ad`` file.

    Raises
    ------
    FormatError
        If the file is not HDF5, not AnnData, truncated, or has shapes that disagree.
    """

    kind = "h5ad"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: h5py.File | None = None
        self._legacy_adata: Any = None
        self._inspect()

    # -- pickling: partitions reopen the file in their own process -----------------
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            self._file = _open_h5(self.path)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _error(self, element: str, message: str) -> FormatError:
        return FormatError(f"{self.path}: {element}: {message}")

    # -- structure ----------------------------------------------------------------
    def _inspect(self) -> None:
        f = self.file
        for key in ("obs", "var"):
            if key not in f:
                raise self._error(
                    key, "missing; an H5AD file has obs and var (this HDF5 file is not AnnData)"
                )
        self.legacy = isinstance(f["obs"], h5py.Dataset)
        n_obs_frame = self._frame_length("obs")
        n_vars_frame = self._frame_length("var")
        self._matrices: dict[str, MatrixInfo] = {}
        if "X" in f:
            self._add_matrix("X", "var")
        self.n_obs = n_obs_frame
        self.n_vars = n_vars_frame
        if "X" in self._matrices:
            x = self._matrices["X"]
            if (x.n_obs, x.n_vars) != (n_obs_frame, n_vars_frame):
                raise self._error(
                    "X",
                    f"shape {x.n_obs} × {x.n_vars} disagrees with obs ({n_obs_frame} rows) "
                    f"and var ({n_vars_frame} rows)",
                )
        if "layers" in f:
            for name in f["layers"]:
                self._add_matrix(f"layers/{name}", "var")
        if "raw" in f and isinstance(f["raw"], h5py.Group) and "X" in f["raw"]:
            self._add_matrix("raw/X", "raw/var")
        for info in self._matrices.values():
            expected_vars = n_vars_frame if info.var == "var" else self._frame_length("raw/var")
            if (info.n_obs, info.n_vars) != (n_obs_frame, expected_vars):
                raise self._error(
                    info.name,
                    f"shape {info.n_obs} × {info.n_vars} disagrees with obs ({n_obs_frame} rows) "
                    f"and {info.var} ({expected_vars} rows)",
                )

    def _frame_length(self, key: str) -> int:
        elem = self.file.get(key)
        if elem is None:
            raise self._error(key, "missing")
        if isinstance(elem, h5py.Dataset):
            return int(elem.shape[0])
        index_key = _decode(elem.attrs.get("_index", "_index"))
        if index_key in elem:
            return int(elem[index_key].shape[0])
        for name in ("index", "_index"):
            if name in elem:
                return int(elem[name].shape[0])
        raise self._error(key, "dataframe has no index dataset (attribute _index)")

    def _add_matrix(self, name: str, var: str) -> None:
        elem = self.file[name]
        enc = _decode(elem.attrs.get("encoding-type", ""))
        if isinstance(elem, h5py.Group):
            fmt = _decode(elem.attrs.get("h5sparse_format", ""))
            if enc in ("csr_matrix", "csc_matrix"):
                fmt = enc[:3]
            if fmt not in ("csr", "csc"):
                raise self._error(
                    name,
                    f"encoding {enc or 'unknown'!r} is not a matrix scdask can read "
                    "(expected csr_matrix, csc_matrix or a dense array)",
                )
            shape_attr = elem.attrs.get("shape", elem.attrs.get("h5sparse_shape"))
            if shape_attr is None or len(shape_attr) != 2:
                raise self._error(name, "sparse matrix without a 2-d shape attribute")
            for part in ("data", "indices", "indptr"):
                if part not in elem:
                    raise self._error(f"{name}/{part}", "missing from the sparse matrix")
            n_obs, n_vars = (int(s) for s in shape_attr)
            major = n_obs if fmt == "csr" else n_vars
            if elem["indptr"].shape != (major + 1,):
                raise self._error(
                    f"{name}/indptr",
                    f"has {elem['indptr'].shape[0]} entries, expected {major + 1} for a "
                    f"{fmt.upper()} matrix of shape {n_obs} × {n_vars}",
                )
            if elem["data"].shape != elem["indices"].shape:
                raise self._error(name, "data and indices have different lengths")
            dtype = elem["data"].dtype
            nnz, index_itemsize = int(elem["data"].shape[0]), elem["indices"].dtype.itemsize
        else:
            if enc not in ("", "array"):
                raise self._error(name, f"encoding {enc!r} is not a matrix scdask can read")
            if elem.ndim != 2:
                raise self._error(name, f"dense matrix has {elem.ndim} dimensions, expected 2")
            fmt = "dense"
            n_obs, n_vars = (int(s) for s in elem.shape)
            dtype = elem.dtype
            nnz, index_itemsize = n_obs * n_vars, 8
        if dtype.kind not in "biuf":
            raise self._error(name, f"values of dtype {dtype} are not numeric")
        self._matrices[name] = MatrixInfo(name, n_obs, n_vars, np.dtype(dtype), fmt, var, nnz,
                                          index_itemsize)

    def matrices(self) -> list[MatrixInfo]:
        return list(self._matrices.values())

    # -- matrix rows --------------------------------------------------------------
    def row_group_nnz(self, name: str, boundaries: np.ndarray) -> np.ndarray | None:
        info = self._matrices[name]
        if info.format != "csr":
            return None
        indptr = self.file[name]["indptr"]
        points = np.asarray(indptr[np.asarray(boundaries, dtype=np.int64)], dtype=np.int64)
        return np.diff(points)

    def sample_values(self, name: str, n: int = 1 << 16) -> np.ndarray:
        """The first ``n`` stored values of a sparse matrix (empty for a dense one)."""
        info = self._matrices[name]
        if info.format == "dense":
            return np.zeros(0, info.dtype)
        data = self.file[name]["data"]
        try:
            return np.asarray(data[: min(n, data.shape[0])])
        except OSError as e:
            raise self._error(f"{name}/data", f"entries 0:{n} could not be read ({e})") from e

    def read_rows(
        self, name: str, start: int, stop: int, value_dtype: np.dtype | str | None = None,
        scratch: Scratch | None = None,
    ) -> CSRBlock:
        """Rows ``start:stop`` of matrix ``name`` as CSR, in its stored order.

        Column indices come as uint16 when the matrix has at most 65,536 columns.
        With ``value_dtype``, values are cast to it, checked to be exact
        (:class:`~scdask.format.LossyDtypeError` otherwise); a CSR slab is read in
        pieces and narrowed as it goes, so the wide copy never exists whole. With
        ``scratch``, a CSR slab's indices and values are read into its buffers.
        """
        info = self._matrices[name]
        elem = self.file[name]
        vd = np.dtype(value_dtype) if value_dtype is not None else None
        with self._reading(name, f"rows {start}:{stop}"):
            if info.format == "csr":
                return read_csr_rows(elem, start, stop, info.n_vars, vd, scratch)
            if info.format == "csc":
                block = read_csc_rows(elem, start, stop, info.n_vars, info.n_obs)
            else:
                block = read_dense_rows(elem, start, stop)
            indices, data = narrowed(block.indices, block.data, info.n_vars, vd,
                                      lambda v, dtype, bounds, role: cast(v, dtype, bounds))
            return CSRBlock(block.indptr, indices, data, block.n_cols)

    @contextlib.contextmanager
    def _reading(self, name: str, what: str) -> Iterator[None]:
        """Errors while reading ``what`` of matrix ``name``, named with the file."""
        try:
            yield
        except LossyDtypeError as e:
            raise LossyDtypeError(f"{self.path}: {name}: {what}: {e}") from None
        except FormatError as e:
            raise self._error(name, f"{what}: {e}") from None
        except OSError as e:
            raise self._error(name, f"{what} could not be read ({e})") from e

    def column_offsets(self, name: str) -> np.ndarray:
        """Where each column of CSC matrix ``name`` starts among its stored entries, and
        where the last ends (its ``indptr``, checked)."""
        try:
            return csc_offsets(self.file[name], self._matrices[name].n_vars)
        except FormatError as e:
            raise self._error(name, str(e)) from None
        except OSError as e:
            raise self._error(f"{name}/indptr", f"could not be read ({e})") from e

    def read_columns(self, name: str, start: int, stop: int,
                     value_dtype: np.dtype | str | None = None) -> CSRBlock:
        """Columns ``start:stop`` of CSC matrix ``name``, as the rows of its transpose
        (indices are row indices, checked within the cells; values cast and checked
        as :meth:`read_rows` does)."""
        info = self._matrices[name]
        vd = np.dtype(value_dtype) if value_dtype is not None else None
        with self._reading(name, f"columns {start}:{stop}"):
            return read_csr_rows(self.file[name], start, stop, info.n_obs, vd,
                                 index_name="row")

    # -- metadata -----------------------------------------------------------------
    def _legacy(self) -> Any:
        if self._legacy_adata is None:
            import anndata

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._legacy_adata = anndata.read_h5ad(self.path, backed="r")
        return self._legacy_adata

    def frame(self, name: str, rows: int | None = None) -> Iterator[pa.Table]:
        if self.legacy:
            adata = self._legacy()
            df = adata.raw.var if name == "raw/var" else getattr(adata, name)
            yield dataframe_to_arrow(df)
            return
        from scdask.sources.elements import read_elem, sliceable

        elem = self.file[name]
        if isinstance(elem, h5py.Dataset):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = dataframe_to_arrow(read_elem(elem))
            yield table
            return
        index_key = _decode(elem.attrs.get("_index", "_index"))
        columns = [_decode(c) for c in elem.attrs.get("column-order", [])]
        if "__categories" in elem or _decode(elem.attrs.get("encoding-version")) != "0.2.0":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = dataframe_to_arrow(read_elem(elem))
            yield table
            return
        # Column by column, so a multi-million-row obs never exists twice in pandas; in row
        # slices when every column's type follows from its encoding (the slices then share
        # one schema), so its strings are never all in memory at once.
        n = self._frame_length(name)
        step = n if rows is None else max(1, rows)
        if not all(sliceable(elem[k]) for k in (index_key, *columns)):
            step = n
        for a in range(0, max(n, 1), max(step, 1)):
            yield self._frame_slice(elem, index_key, columns,
                                    None if step >= n else slice(a, min(n, a + step)))

    @staticmethod
    def _frame_slice(elem: h5py.Group, index_key: str, columns: list[str],
                     rows: slice | None) -> pa.Table:
        import pandas as pd

        from scdask.sources.elements import read_elem

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            index = pd.Index(read_elem(elem[index_key], rows))
            index.name = None if index_key == "_index" else index_key
            builder = ArrowFrameBuilder(index)
            for col in columns:
                builder.add(col, read_elem(elem[col], rows))
        return builder.finish()

    def obsm_varm(self) -> dict[str, Any]:
        return self._collect(
            ("obsm", "varm"),
            lambda v: v if isinstance(v, np.ndarray) and v.dtype.kind in "biuf" else None,
            lambda e: e if (isinstance(e, h5py.Dataset) and e.dtype.kind in "biuf"
                            and e.ndim in (1, 2)) else None)

    def pairwise(self) -> dict[str, Any]:
        """``obsp/*`` and ``varp/*`` with numeric values: a dense array (h5py dataset or
        numpy), or ``(format, shape, indptr, indices, data)`` of a CSR/CSC matrix."""
        import scipy.sparse as sp

        def in_memory(v: Any) -> Any:
            if sp.issparse(v) and v.format in ("csr", "csc"):
                return (v.format, v.shape, v.indptr, v.indices, v.data)
            return v if isinstance(v, np.ndarray) and v.dtype.kind in "biuf" else None

        def stored(e: Any) -> Any:
            if isinstance(e, h5py.Dataset):
                return e if e.ndim == 2 and e.dtype.kind in "biuf" else None
            enc = _decode(e.attrs.get("encoding-type", ""))
            if enc in ("csr_matrix", "csc_matrix") and e["data"].dtype.kind in "biuf":
                shape = tuple(int(n) for n in e.attrs["shape"])
                return (enc[:3], shape, e["indptr"], e["indices"], e["data"])
            return None

        return self._collect(("obsp", "varp"), in_memory, stored)

    def _collect(self, axes: tuple[str, ...], in_memory: Any, stored: Any) -> dict[str, Any]:
        """The elements under ``axes`` that ``in_memory(value)`` (legacy files, read by
        anndata) or ``stored(h5py node)`` keeps (not None); the others are named as
        dropped, with their encoding."""
        out: dict[str, Any] = {}
        self._dropped: list[str] = getattr(self, "_dropped", [])
        for axis in axes:
            if self.legacy:
                items = [(k, v, type(v).__name__)
                         for k, v in getattr(self._legacy(), axis).items()]
                keep = in_memory
            else:
                group = self.file.get(axis)
                items = [(k, e, _decode(e.attrs.get("encoding-type", type(e).__name__)))
                         for k, e in group.items()] if isinstance(group, h5py.Group) else []
                keep = stored
            for key, value, kind in items:
                kept = keep(value)
                if kept is None:
                    self._dropped.append(f"{axis}/{key} ({kind})")
                else:
                    out[f"{axis}/{key}"] = kept
        return out

    def uns(self) -> dict[str, Any]:
        if self.legacy:
            return dict(self._legacy().uns)
        group = self.file.get("uns")
        if group is None:
            return {}
        from scdask.sources.elements import read_elem

        out = {}
        for key in group:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[key] = read_elem(group[key])
            except Exception as e:  # noqa: BLE001 - anything unreadable is reported, not fatal
                self._dropped = getattr(self, "_dropped", [])
                self._dropped.append(f"uns/{key} (unreadable: {e})")
        return out

    def element(self, path: str) -> Any:
        """Any element (e.g. ``obsm/df``) as anndata reads it."""
        if self.legacy:
            *holders, axis, key = path.split("/")
            obj = self._legacy()
            for h in holders:  # e.g. raw
                obj = getattr(obj, h)
            return getattr(obj, axis)[key]
        from anndata.io import read_elem

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_elem(self.file[path])

    def dropped(self) -> list[str]:
        out = list(getattr(self, "_dropped", []))
        raw = self.file.get("raw")
        if isinstance(raw, h5py.Group) and "varm" in raw:
            out.extend(f"raw/varm/{k}" for k in raw["varm"])
        return out


def _open_h5(path: str) -> h5py.File:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError:
        is_hdf5 = False
    if not is_hdf5:
        raise FormatError(f"{path}: not an HDF5 file (an H5AD file is HDF5)")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise FormatError(f"{path}: cannot be opened as HDF5, it may be truncated ({e})") from e


