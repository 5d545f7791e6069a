"""Per-cell coordinates of the lazy Dataset: obs columns, stored per-cell statistics and
the cell names, read by row group only when used.

A categorical obs column (categories recorded in ``obs.parquet``) is pandas' Categorical
once read: its codes, a byte per cell, where strings would take eight. Reads run a
store's row groups in a thread, several stores at once; a selection reads only the row
groups it touches. Each selection of a column is one object, so xarray sees two equal
selections (``where(..., drop=True)`` makes them) as the same without reading them.
"""

from __future__ import annotations

import functools
import json
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from xarray.backends import BackendArray
from xarray.core.extension_array import PandasExtensionArray
from xarray.core.indexes import PandasIndex
from xarray.core.indexing import (
    BasicIndexer,
    IndexingSupport,
    LazilyIndexedArray,
    OuterIndexer,
    explicit_indexing_adapter,
)

from scdask.backend.genes import concurrently, forward_empty
from scdask.format import INDEX_COLUMN, OBS_FILE, FormatError
from scdask.store.reader import Store


class CellIndex(xr.Index):
    """The cell-name index: ``ds.sel(cell="<barcode>")``, read (once) only when used.

    It holds the lazily indexed cell names, so opening, ``isel`` and ``where(..., drop=True)``
    read nothing; the first label lookup reads the names of the selected cells. Two
    indexes over the same stores and positions are equal without reading them.
    """

    def __init__(self, array: Any, dim: str, key: Any) -> None:
        self.array = array  # lazily indexed: one object per selection (SharedLazy)
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


def numpy_dtype(dtype: Any) -> np.dtype:
    if isinstance(dtype, np.dtype) and dtype.kind in "biufcmM":
        return dtype
    if isinstance(dtype, pd.CategoricalDtype):  # values may be missing: integers as floats
        cats = dtype.categories.dtype
        if not isinstance(cats, np.dtype) or cats.kind == "O":
            return np.dtype(object)
        return np.dtype(np.float64) if cats.kind in "iu" else numpy_dtype(cats)
    if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype):
        return np.dtype(np.float64)  # nullable numbers: NaN for missing
    return np.dtype(object)


def to_numpy(values: pd.Series | pd.Index, dtype: np.dtype) -> np.ndarray:
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


def read_obs_chunk(store: Store, group: int, column: str, dtype: Any) -> np.ndarray:
    """One row group of one obs column (a task of the lazy coordinates): its values, or for a
    categorical ``dtype`` its codes among ``dtype``'s categories (-1: missing)."""
    import pyarrow as pa

    store.check_current()
    pf = _parquet(store, OBS_FILE)  # its row groups checked against the matrix's
    where = f"{store.url}: {OBS_FILE}: row group {group} of column {column!r}"
    try:
        col = pf.read_row_group(group, columns=[column]).column(0)
        if isinstance(dtype, pd.CategoricalDtype):
            return _codes(col, dtype, where)
        s = col.to_pandas()
    except (OSError, pa.ArrowException) as e:
        raise FormatError(f"{where} cannot be read: the file is damaged ({e})") from e
    return to_numpy(s, dtype)


def _codes(col: Any, dtype: pd.CategoricalDtype, where: str) -> np.ndarray:
    """A Parquet column's codes among ``dtype``'s categories, from its dictionaries: a value
    outside the categories the table records is damage, not a new category."""
    import pyarrow as pa

    out = []
    for chunk in col.chunks:
        if not isinstance(chunk, pa.DictionaryArray):
            chunk = chunk.dictionary_encode()
        lut = dtype.categories.get_indexer(pd.Index(chunk.dictionary.to_pandas()))
        idx = chunk.indices.fill_null(-1).to_numpy().astype(np.int64)
        codes = np.where(idx >= 0, lut[np.maximum(idx, 0)] if len(lut) else -1, -1)
        if (codes[idx >= 0] < 0).any():
            bad = chunk.dictionary[int(idx[(idx >= 0) & (codes < 0)][0])]
            raise FormatError(f"{where} holds {bad}, not one of the categories its table "
                              f"records: the file is damaged")
        out.append(codes)
    return np.concatenate(out) if out else np.empty(0, np.int64)


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
        self.dtype = dtype if isinstance(dtype, pd.CategoricalDtype) else np.dtype(dtype)
        self.offsets = np.cumsum([0] + [st.n_obs for st in self.stores])
        self.shape = (int(self.offsets[-1]),)

    def __deepcopy__(self, memo: Any) -> CellColumn:  # read-only: a copy is itself
        return self

    def __getitem__(self, key: Any) -> Any:
        return explicit_indexing_adapter(forward_empty(key, self.shape), self.shape,
                                         IndexingSupport.OUTER, self._read)

    def _read(self, key: tuple[Any, ...]) -> Any:
        (k,) = key
        if isinstance(k, int | np.integer):
            return np.asarray(self._range(int(k), int(k) + 1))[0]
        if isinstance(k, np.ndarray):  # positions: only the row groups holding them
            return self._take(k)
        cells = range(*k.indices(self.shape[0]))
        return self._fill(cells) if cells.step > 0 else self._fill(cells[::-1])[::-1]

    def _range(self, start: int, stop: int) -> Any:
        """Cells ``start:stop``."""
        return self._fill(range(start, max(start, stop)))

    def _take(self, positions: np.ndarray) -> Any:
        """The cells at ``positions`` (any order, repeats allowed)."""
        u, inverse = np.unique(positions, return_inverse=True)
        out = self._fill(u)
        return out if len(u) == len(positions) and (u == positions).all() else out[inverse]

    def _fill(self, cells: range | np.ndarray) -> Any:
        """Sorted distinct ``cells``, read a row group at a time (a store's in one thread,
        several stores at once) straight into the result: at 100M cells an object column
        is 0.8 GB, held once; a categorical one is its codes (int8 up to 127 categories)."""
        cat = self.dtype if isinstance(self.dtype, pd.CategoricalDtype) else None
        out = np.empty(len(cells), self.dtype if cat is None else _code_type(cat))
        if isinstance(cells, range):  # where positions would fall, without making them

            def find(at: np.ndarray) -> np.ndarray:  # the first cell at or after ``at``
                return np.clip(-((cells.start - at) // cells.step), 0, len(cells))
        else:

            def find(at: np.ndarray) -> np.ndarray:
                return np.searchsorted(cells, at)

        bounds = find(self.offsets)
        jobs = [(st, off, a, b) for st, off, a, b in zip(
            self.stores, self.offsets[:-1], bounds[:-1], bounds[1:], strict=True) if a < b]

        def fill(job: tuple[Any, ...]) -> None:  # one store's row groups
            st, off, a, b = job
            R = st.row_group_size
            first = np.arange((cells[a] - off) // R, (cells[b - 1] - off) // R + 2)
            cuts = np.clip(find(off + first * R), a, b)
            for g, i, j in zip(first[:-1], cuts[:-1], cuts[1:], strict=True):
                if i == j:
                    continue
                lo, _ = st.group_rows(int(g))
                piece = self.fn(st, int(g), *self.args)
                want = cells[i:j]
                w0, w1 = want[0] - off - lo, want[-1] - off - lo
                out[i:j] = (piece[w0 : w1 + 1] if w1 - w0 == j - i - 1
                            else piece[np.asarray(want) - off - lo])

        for _ in concurrently(fill, jobs, window=4):
            pass
        if cat is None:
            return out
        return PandasExtensionArray(pd.Categorical.from_codes(out, dtype=cat))


def _code_type(dtype: pd.CategoricalDtype) -> np.dtype:
    n = len(dtype.categories)
    return np.dtype(np.int8 if n < 2**7 else np.int16 if n < 2**15 else np.int32)


class SharedLazy(LazilyIndexedArray):
    """xarray's lazily indexed array, made once per array and selection.

    xarray checks that two coordinates agree (``where(..., drop=True)``, arithmetic
    between selections) as ``a._data is b._data`` before it reads both: equal selections
    of a column, made separately, are then the same object, and nothing is read.
    """

    _made: weakref.WeakValueDictionary[Any, SharedLazy] = weakref.WeakValueDictionary()
    _lock = threading.Lock()

    def __deepcopy__(self, memo: Any) -> SharedLazy:  # read-only: a copy is itself
        return self

    def _oindex_get(self, indexer: Any) -> SharedLazy:
        return self._shared(self._updated_key(indexer))

    def __getitem__(self, indexer: Any) -> SharedLazy:
        self._check_and_raise_if_non_basic_indexer(indexer)
        return self._shared(self._updated_key(indexer))

    def _shared(self, key: Any) -> SharedLazy:
        from dask.base import tokenize

        token = (id(self.array), type(key).__name__, tokenize(key.tuple))
        with self._lock:
            made = self._made.get(token)
            if made is None or made.array is not self.array:
                made = self._made[token] = type(self)(self.array, key)
        return made


def lazy_cells(stores: Sequence[Store], fn: Any, args: tuple[Any, ...], dtype: Any) -> Any:
    """A per-cell column of ``stores`` (``fn(store, group, *args)`` reads a row group's),
    lazily indexed."""
    return SharedLazy(CellColumn(stores, fn, args, dtype))


def obs_coords(stores: Sequence[Store], *, categorical: bool = True) -> dict[str, Any]:
    """The obs columns of ``stores`` as lazy coordinates along ``cell`` (``obs_names``: the
    index); categorical ones as pandas' Categorical, or with ``categorical=False`` as
    their values (objects)."""
    from scdask.store.metadata import frame_footer

    footers = [frame_footer(st.loc, OBS_FILE) for st in stores]
    schemas = [f.schema.to_arrow_schema() for f in footers]
    names = [n for n in schemas[0].names if all(n in s.names for s in schemas[1:])]
    empties = [sch.empty_table().to_pandas() for sch in schemas]
    coords: dict[str, Any] = {}
    nulls = {c for f in footers for c in _columns_with_nulls(f)}
    categoricals = [json.loads((f.metadata or {}).get(b"scdask_categoricals", b"{}"))
                    for f in footers]
    for col in names:
        dtype: Any = _categories(col, categoricals) if categorical else None
        if dtype is None:
            dtype = _common({numpy_dtype(e[col].dtype) for e in empties})
            if dtype.kind in "biu" and col in nulls:
                dtype = np.dtype(np.float64)  # integers with missing values: NaN where missing
        target = "obs_names" if col == INDEX_COLUMN else col
        coords[target] = ("cell", lazy_cells(stores, read_obs_chunk, (col, dtype), dtype))
    return coords


def _common(dtypes: set[np.dtype]) -> np.dtype:
    """One dtype for a column the stores hold as ``dtypes``: theirs if they agree, float64
    for numbers, else objects (never one store's values cast to another's type)."""
    if len(dtypes) == 1:
        return next(iter(dtypes))
    return np.dtype(np.float64 if all(d.kind in "iuf" for d in dtypes) else object)


def _categories(col: str, recorded: list[dict[str, Any]]) -> pd.CategoricalDtype | None:
    """The dtype of an obs column every store records as a categorical of strings: one
    store's categories, several stores' as ``anndata.concat`` unites them
    (:func:`union_categories`). ``None`` (read as values, as numpy) when a store does not
    record them, for numbers and booleans, which numpy's arithmetic and masks need as
    values, and for ordered categories that differ between stores."""
    if not all(col in r for r in recorded):
        return None
    if any(r[col]["dtype"] != "object" or not all(isinstance(c, str) for c in r[col]["categories"])
           for r in recorded):
        return None
    return union_categories([pd.CategoricalDtype(pd.Index(r[col]["categories"], dtype=object),
                                                 ordered=bool(r[col]["ordered"]))
                             for r in recorded])


def union_categories(dtypes: list[pd.CategoricalDtype]) -> pd.CategoricalDtype | None:
    """The categorical dtype ``anndata.concat`` gives a column of several AnnData objects
    (its ``try_unifying_dtype``, then pandas' ``astype`` and ``concat``): one's own; none
    ordered: the first's categories when they are all of them, else the union in natural
    order (``natsort``), unordered; all ordered and alike: theirs; else ``None`` (the
    values as objects)."""
    if len(dtypes) == 1:
        return dtypes[0]
    cats = functools.reduce(lambda a, b: a.union(b), (d.categories for d in dtypes))
    if not any(d.ordered for d in dtypes):
        if len(dtypes[0].categories) == len(cats):  # pandas keeps a dtype equal to the target
            return dtypes[0]
        from natsort import natsorted

        return pd.CategoricalDtype(pd.Index(natsorted(cats), dtype=object), ordered=False)
    some = [d for d in dtypes if len(d.categories)]
    if some and all(len(d.categories) == len(cats) and d.ordered
                    and bool(np.all(cats == d.categories)) for d in some):
        return some[0]
    return None


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
