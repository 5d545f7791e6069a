"""``scdask.open``: one or many stores as a lazy xarray Dataset, and the xarray backend.

The Dataset has dimensions ``cell`` and ``gene`` (and ``raw_gene`` when raw is
present). ``X``, each layer and ``raw`` are :class:`~scdask.compute.ScdaskArray`
Dask arrays. ``gene`` is indexed by the gene names; var columns and the per-gene
statistics stored at conversion are coordinates along ``gene`` (small, read at
open). obs columns, the cell names (``obs_names``) and the per-cell statistics
are Dask-backed coordinates along ``cell``, one chunk per row group, read only
when used: opening reads no per-cell data and builds no per-cell index.
"""

from __future__ import annotations

import builtins
import difflib
import glob
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core.indexes import PandasIndex
from xarray.core.indexing import (
    BasicIndexer,
    IndexingSupport,
    LazilyIndexedArray,
    OuterIndexer,
    explicit_indexing_adapter,
)

from scdask.backend.genes import concurrently, gene_maps, gene_stats
from scdask.compute import Base, Part, ScdaskArray
from scdask.format import INDEX_COLUMN, OBS_FILE, STATS, FormatError
from scdask.store.reader import Store


class GeneIndex(PandasIndex):
    """The gene-name index: a pandas index whose misses suggest close gene names."""

    def sel(self, labels: dict[Any, Any], method: Any = None, tolerance: Any = None) -> Any:
        try:
            return super().sel(labels, method=method, tolerance=tolerance)
        except KeyError as e:
            (label,) = labels.values()
            wanted = [label] if np.ndim(label) == 0 else list(np.asarray(label).ravel())
            missing = [x for x in wanted if x not in self.index]
            if not missing:
                raise
            raise KeyError(_unknown_gene(missing[0], self.index, self.dim)) from e


class CellIndex(xr.Index):
    """The cell-name index: ``ds.sel(cell="<barcode>")``, read (once) only when used.

    It holds the lazily indexed cell names, so opening, ``isel`` and ``where(..., drop=True)``
    read nothing; the first label lookup reads the names of the selected cells. Two
    indexes over the same stores and positions are equal without reading them.
    """

    def __init__(self, array: Any, dim: str, key: Any) -> None:
        self.array = array
        self.dim = dim
        self.key = key  # (stores, positions): what the names are, without reading them
        self._index: pd.Index | None = None

    @classmethod
    def from_variables(cls, variables: Any, *, options: Any) -> CellIndex:
        ((_, var),) = variables.items()
        return cls(var._data, var.dims[0], ("variable", id(var._data)))

    def create_variables(self, variables: Any = None) -> dict[Any, xr.Variable]:
        attrs = None if not variables else next(iter(variables.values())).attrs
        return {self.dim: xr.Variable(self.dim, self.array, attrs)}

    @classmethod
    def concat(cls, indexes: Any, dim: Any, positions: Any = None) -> CellIndex:
        raise NotImplementedError(
            "scdask datasets are put together along cells by opening their stores as one: "
            "scdask.open([path1, path2, ...]) (genes aligned by name, every fast path kept); "
            "xr.concat and xr.open_mfdataset would make a generic Dask array of the matrices")

    def to_pandas_index(self) -> pd.Index:
        if self._index is None:
            self._index = pd.Index(np.asarray(self.array), name=self.dim)
        return self._index

    def isel(self, indexers: Any) -> CellIndex | None:
        k = indexers.get(self.dim)
        if k is None:
            return self
        if isinstance(k, int | np.integer) or isinstance(k, xr.Variable) and k.ndim == 0:
            return None  # a scalar selection drops the dimension
        k = k.data if isinstance(k, xr.Variable) else k
        if isinstance(k, slice):
            key: Any = BasicIndexer((k,))
        else:
            k = np.asarray(k)
            k = np.flatnonzero(k) if k.dtype == bool else k.astype(np.int64)
            key = OuterIndexer((k,))
        array = self.array[key] if isinstance(key, BasicIndexer) else self.array.oindex[key]
        return CellIndex(array, self.dim, (self.key, _token(k)))  # k: the positions picked

    def sel(self, labels: dict[Any, Any], method: Any = None, tolerance: Any = None) -> Any:
        return PandasIndex(self.to_pandas_index(), self.dim).sel(
            labels, method=method, tolerance=tolerance)

    def equals(self, other: Any, **kwargs: Any) -> bool:
        if not isinstance(other, CellIndex):
            return False
        return self.key == other.key or self.to_pandas_index().equals(other.to_pandas_index())

    def _repr_inline_(self, max_width: int) -> str:
        return "CellIndex (cell names, read when used)"


def _token(positions: Any) -> Any:
    from dask.base import tokenize

    return tokenize(positions)


def _unknown_gene(label: Any, index: pd.Index, dim: str) -> str:
    names = index.astype(str)
    s = str(label)
    close = list(names[names.str.lower() == s.lower()][:3])
    if not close:
        pool = names[names.str[:2].str.lower() == s[:2].lower()] if len(s) >= 2 else names
        close = difflib.get_close_matches(s, list(pool), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"{label!r} is not a {dim} of this dataset ({len(index)} names){hint}"


def _expand(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    if isinstance(paths, str | os.PathLike):
        p = os.fspath(paths)
        if glob.has_magic(p) and "://" not in p:
            found = sorted(glob.glob(p))
            if not found:
                raise FileNotFoundError(f"{p}: no store matches this pattern")
            return found
        return [p]
    out = [os.fspath(p) for p in paths]
    if not out:
        raise ValueError("no stores given")
    return out


def _numpy_dtype(dtype: Any) -> np.dtype:
    if isinstance(dtype, np.dtype) and dtype.kind in "biufcmM":
        return dtype
    if isinstance(dtype, pd.CategoricalDtype):  # values may be missing: integers as floats
        cats = dtype.categories.dtype
        if not isinstance(cats, np.dtype) or cats.kind == "O":
            return np.dtype(object)
        return np.dtype(np.float64) if cats.kind in "iu" else _numpy_dtype(cats)
    if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype):
        return np.dtype(np.float64)  # nullable numbers: NaN for missing
    return np.dtype(object)


def _to_numpy(values: pd.Series | pd.Index, dtype: np.dtype) -> np.ndarray:
    if dtype == np.float64 and not isinstance(values.dtype, np.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.asarray(values.to_numpy(), dtype=dtype)


# One open ParquetFile per thread and file: pyarrow's readers are not thread-safe (one
# shared by the threads of a Dask worker crashed the interpreter).
_PARQUET = threading.local()
_PARQUET_FILES = 8  # per thread


def _parquet(store: Store, relpath: str) -> Any:
    import pyarrow.parquet as pq

    files: dict[tuple[Any, ...], Any] = _PARQUET.__dict__.setdefault("files", {})
    key = (store.url, store.attrs.get("uuid"), relpath)
    pf = files.pop(key, None)
    if pf is None:
        import pyarrow as pa

        loc = store.loc  # a local file read natively: fsspec's Python file holds the GIL
        src = pa.OSFile(loc.check_inside(relpath)) if loc.is_local else loc.open(relpath, "rb")
        pf = pq.ParquetFile(src, page_checksum_verification=True)
        meta = pf.metadata
        if relpath == OBS_FILE and (meta.num_row_groups != store.n_groups
                                    or meta.num_rows != store.n_obs):
            pf.close()
            raise FormatError(f"{store.url}: {OBS_FILE} has {meta.num_rows} rows in "
                              f"{meta.num_row_groups} row groups, the matrix {store.n_obs} "
                              f"in {store.n_groups}")
        while len(files) >= _PARQUET_FILES:
            files.pop(next(iter(files))).close()
    files[key] = pf  # most recently used last
    return pf


def read_obs_chunk(store: Store, group: int, column: str, dtype: np.dtype) -> np.ndarray:
    """One row group of one obs column (a task of the lazy coordinates)."""
    import pyarrow as pa

    store.check_current()
    pf = _parquet(store, OBS_FILE)  # its row groups checked against the matrix's
    try:
        s = pf.read_row_group(group, columns=[column]).column(0).to_pandas()
    except (OSError, pa.ArrowException) as e:
        raise FormatError(f"{store.url}: {OBS_FILE}: row group {group} of column {column!r} "
                          f"cannot be read: the file is damaged ({e})") from e
    return _to_numpy(s, dtype)


def read_stat_chunk(store: Store, group: int, path: str) -> np.ndarray:
    store.check_current()
    a, b = store.group_rows(group)
    return np.asarray(store.array(path)[a:b])


class CellColumn(BackendArray):
    """A per-cell column of all stores, read (by row group) only when indexed.

    xarray wraps it lazily: ``ds.drug`` costs nothing until used, then reads the
    row groups that the selection needs, so ``ds.where(ds.drug == "DMSO_TF",
    drop=True)`` works without computing anything by hand.
    """

    def __init__(self, stores: Sequence[Store], fn: Any, args: tuple[Any, ...], dtype: np.dtype):
        self.stores = list(stores)
        self.fn = fn
        self.args = args
        self.dtype = np.dtype(dtype)
        self.offsets = np.cumsum([0] + [st.n_obs for st in self.stores])
        self.shape = (int(self.offsets[-1]),)

    def __getitem__(self, key: Any) -> np.ndarray:
        return explicit_indexing_adapter(key, self.shape, IndexingSupport.BASIC, self._read)

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        (k,) = key
        if isinstance(k, int | np.integer):
            return self._range(int(k), int(k) + 1)[0]
        start, stop, step = k.indices(self.shape[0])
        if step < 0:
            return self._range(0, self.shape[0])[k]
        return self._range(start, stop)[::step]

    def _range(self, start: int, stop: int) -> np.ndarray:
        """Cells ``start:stop``, read a row group at a time (several at once) straight into
        the result: at 100M cells an object column is 0.8 GB, held once."""
        out = np.empty(max(stop - start, 0), self.dtype)
        jobs = []
        for st, off in zip(self.stores, self.offsets[:-1], strict=True):
            a, b = max(start - off, 0), min(stop - off, st.n_obs)
            if a < b:
                jobs.append((st, a, b, off))

        def fill(job: tuple[Any, ...]) -> None:  # a store's row groups, in one thread
            st, a, b, off = job
            R = st.row_group_size
            for g in range(a // R, (b - 1) // R + 1):
                lo, _ = st.group_rows(g)
                piece = self.fn(st, g, *self.args)[max(a - lo, 0) : b - lo]
                at = off + max(a, lo) - start
                out[at : at + len(piece)] = piece

        for _ in concurrently(fill, jobs, window=4):
            pass
        return out


def _lazy_cells(stores: Sequence[Store], fn: Any, args: tuple[Any, ...], dtype: np.dtype) -> Any:
    return LazilyIndexedArray(CellColumn(stores, fn, args, dtype))


def _obs_coords(stores: Sequence[Store]) -> dict[str, Any]:
    from scdask.store.metadata import frame_footer

    footers = [frame_footer(st.loc, OBS_FILE) for st in stores]
    schemas = [f.schema.to_arrow_schema() for f in footers]
    names = [n for n in schemas[0].names if all(n in s.names for s in schemas[1:])]
    empty = schemas[0].empty_table().to_pandas()
    coords: dict[str, Any] = {}
    nulls = {c for f in footers for c in _columns_with_nulls(f)}
    for col in names:
        dtype = _numpy_dtype(empty[col].dtype)
        if dtype.kind in "biu" and col in nulls:
            dtype = np.dtype(np.float64)  # integers with missing values: NaN where missing
        target = "obs_names" if col == INDEX_COLUMN else col
        coords[target] = ("cell", _lazy_cells(stores, read_obs_chunk, (col, dtype), dtype))
    return coords


def _columns_with_nulls(meta: Any) -> set[str]:
    """Columns of a Parquet footer holding a missing value somewhere (from its row groups'
    statistics; a column without statistics counts as possibly missing)."""
    out = set()
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for j in range(rg.num_columns):
            c = rg.column(j)
            stats = c.statistics
            if stats is None or not stats.has_null_count or stats.null_count > 0:
                out.add(c.path_in_schema)
    return out


def _matrix(stores: Sequence[Store], name: str, maps: list[Any], n_genes: int) -> ScdaskArray:
    dtypes = {st.dtype(name) for st in stores}
    dtype = np.result_type(*dtypes)
    parts, offset = [], 0
    for st, m in zip(stores, maps, strict=True):
        parts.append(Part(st, name, m, offset))
        offset += st.n_obs
    return ScdaskArray(Base(tuple(parts), n_genes, dtype))


def _var_coords(var: pd.DataFrame, dim: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col in var.columns:
        if col == dim:
            continue
        out[col] = (dim, _to_numpy(var[col], _numpy_dtype(var[col].dtype)))
    return out


def open(  # noqa: A001 - the name users expect: scdask.open
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    join: str = "exact",
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Open scdask stores as one lazy xarray Dataset, cells concatenated in order.

    Parameters
    ----------
    paths
        A store path or URL, a glob pattern (``"atlas/plate*.zarr"``), or a list.
    join
        ``"exact"`` (default): every store must have the same genes (in any order:
        they are aligned by name). ``"inner"``: keep the genes all stores share.
    storage_options
        fsspec options for remote stores.

    Returns
    -------
    xarray.Dataset
        Lazy: nothing per cell is read until used.

    Examples
    --------
    >>> ds = scdask.open("plate7.zarr")  # doctest: +SKIP
    >>> ds.X.sel(gene="C1orf112").mean().compute()  # doctest: +SKIP
    """
    urls = _expand(paths)
    stores = list(concurrently(lambda u: Store(u, storage_options), urls))
    names = set(stores[0].matrices)
    for st in stores[1:]:
        if set(st.matrices) != names:
            raise ValueError(f"{st.url}: has matrices {sorted(st.matrices)}, "
                             f"{stores[0].url} has {sorted(names)}")
    var, maps = gene_maps(stores, "X", join)  # var.parquet, with X or without
    index = GeneIndex(pd.Index(var.index, name="gene"), "gene")
    variables, indexes = dict(index.create_variables()), {"gene": index}
    data_vars: dict[str, Any] = {}
    extra: dict[str, Any] = dict(_var_coords(var, "gene"))
    if "X" in names:
        data_vars["X"] = (("cell", "gene"), _matrix(stores, "X", maps, len(var)))
        extra.update({k: ("gene", v) for k, v in gene_stats(stores, "X", maps, len(var)).items()})
        for stat in STATS:
            extra[f"cell_{stat}"] = ("cell", _lazy_cells(
                stores, read_stat_chunk, (f"X/cell_{stat}",),
                np.dtype(np.int64 if stat == "nnz" else np.float64)))
    for name in sorted(names - {"X", "raw/X"}):
        data_vars[name.split("/", 1)[1]] = (("cell", "gene"), _matrix(stores, name, maps, len(var)))
    if "raw/X" in names:
        rvar, rmaps = gene_maps(stores, "raw/X", join)
        rindex = GeneIndex(pd.Index(rvar.index, name="raw_gene"), "raw_gene")
        variables.update(rindex.create_variables())
        indexes["raw_gene"] = rindex
        data_vars["raw"] = (("cell", "raw_gene"), _matrix(stores, "raw/X", rmaps, len(rvar)))
        extra.update({f"raw_{k}": v for k, v in _var_coords(rvar, "raw_gene").items()})
    for name, (dims, arr) in data_vars.items():  # xarray's chunks={} / "auto" keep the blocks
        data_vars[name] = xr.Variable(dims, arr, encoding={"preferred_chunks": dict(
            zip(dims, arr.chunks, strict=True))})
    obs = _obs_coords(stores)
    for name in [k for k in obs if k in extra]:  # one namespace: a var column named like an
        extra[f"var_{name}"] = extra.pop(name)    # obs column is var_<name> (obs keeps its own)
    extra.update(obs)
    names = obs["obs_names"][1]
    cell = CellIndex(names, "cell", tuple(st.url for st in stores))
    variables.update(cell.create_variables())
    indexes["cell"] = cell
    ds = xr.Dataset(data_vars, coords=xr.Coordinates(variables, indexes))
    ds = ds.assign_coords(extra)
    ds.attrs["scdask_stores"] = [st.url for st in stores]
    return ds


class ScdaskBackendEntrypoint(BackendEntrypoint):
    """``xr.open_dataset(path, engine="scdask")``."""

    description = "Open scdask stores (chunked sparse single-cell matrices) lazily"
    url = "https://github.com/scdask/scdask"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "join", "storage_options")

    def open_dataset(self, filename_or_obj: Any, *, drop_variables: Any = None,
                     join: str = "exact", storage_options: dict[str, Any] | None = None) -> xr.Dataset:
        ds = open(filename_or_obj, join=join, storage_options=storage_options)
        if drop_variables:
            ds = ds.drop_vars(drop_variables)
        return ds

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        try:
            p = os.fspath(filename_or_obj)
        except TypeError:
            return False
        return os.path.isdir(p) and os.path.exists(os.path.join(p, "zarr.json")) and _is_scdask(p)


def _is_scdask(path: str) -> bool:
    import json

    try:
        with builtins.open(os.path.join(path, "zarr.json")) as f:
            return "scdask" in json.load(f).get("attributes", {})
    except (OSError, ValueError):
        return False
