"""Reading a scdask store: checked metadata and row-group blocks of a matrix.

This is the one place that knows how a matrix is laid out on disk for reading;
the xarray backend, ``verify``, ``info``, export and the ML loader all read
through :class:`Store`.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from typing import Any

import numpy as np
import pandas as pd
import zarr

from scdask.blocks import GroupBlock
from scdask.format import (
    COLPTR,
    DATA,
    INDICES,
    OBS_FILE,
    ROOT_ATTR,
    VAR_FILE,
    WIP_ATTR,
    FormatError,
    check_version,
)
from scdask.metadata import read_frame, read_uns
from scdask.storage import Location


class IncompleteStoreError(FormatError):
    """The store is a conversion that has not finished."""


class Store:
    """A complete scdask store, opened for reading.

    Parameters
    ----------
    url
        Path or fsspec URL of the store.
    storage_options
        fsspec options for ``url``.

    Raises
    ------
    IncompleteStoreError
        If the store is an unfinished conversion.
    FormatVersionError
        If the store has a newer format version than this scdask reads.
    """

    def __init__(self, url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None):
        self.loc = Location(os.fspath(url), storage_options)
        self.url = self.loc.url
        self.storage_options = storage_options
        if not self.loc.exists():
            raise FileNotFoundError(f"{self.url}: does not exist")
        if not self.loc.exists("zarr.json"):
            raise FormatError(f"{self.url}: is not a Zarr v3 store (no zarr.json), not a scdask store")
        try:
            self.root = self.loc.open_group("r")
            attrs = self.root.attrs.asdict()
        except Exception as e:
            raise FormatError(f"{self.url}: zarr.json cannot be read ({e})") from e
        if ROOT_ATTR not in attrs:
            if WIP_ATTR in attrs:
                raise IncompleteStoreError(
                    f"{self.url}: the conversion into this store has not finished; rerun "
                    "`scdask convert` with the same arguments to resume it"
                )
            raise FormatError(f"{self.url}: not a scdask store (no '{ROOT_ATTR}' attribute)")
        self.attrs: dict[str, Any] = attrs[ROOT_ATTR]
        check_version(self.attrs.get("format_version"), self.url)
        self.n_obs: int = int(self.attrs["n_obs"])
        self.n_vars: int = int(self.attrs["n_vars"])
        self.row_group_size: int = int(self.attrs["row_group_size"])
        self.matrices: dict[str, dict[str, Any]] = self.attrs["matrices"]

    def __reduce__(self) -> tuple[Any, ...]:
        # Tasks on other processes reopen the store once per process (see open_store).
        return (open_store, (self.url, _options_key(self.storage_options), self.attrs.get("uuid")))

    def __repr__(self) -> str:
        return f"<scdask.Store {self.url}: {self.n_obs} cells × {self.n_vars} genes>"

    @property
    def n_groups(self) -> int:
        return -(-self.n_obs // self.row_group_size) if self.row_group_size else 0

    def group_rows(self, group: int) -> tuple[int, int]:
        start = group * self.row_group_size
        return start, min(start + self.row_group_size, self.n_obs)

    def matrix(self, name: str = "X") -> dict[str, Any]:
        """The recorded metadata of matrix ``name``."""
        try:
            return self.matrices[name]
        except KeyError:
            raise KeyError(
                f"{self.url}: no matrix {name!r}; it has {sorted(self.matrices)}"
            ) from None

    @functools.cache  # noqa: B019 - a Store lives as long as its arrays
    def array(self, path: str) -> zarr.Array:
        """A Zarr array of the store, e.g. ``X/data``."""
        from scdask.codecs import implementations

        try:
            with implementations():
                return self.root[path]
        except KeyError:
            raise FormatError(f"{self.url}: array {path} is missing") from None

    def colptr(self, name: str, groups: slice | np.ndarray, genes: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Offsets of each gene within each row group: ``colptr[groups, genes]``."""
        arr = self.array(f"{name}/{COLPTR}")
        return arr.get_orthogonal_selection((groups, genes))

    def read_group(self, name: str, group: int, with_indices: bool = True) -> GroupBlock:
        """Row group ``group`` of matrix ``name``, every gene."""
        cp = np.asarray(self.array(f"{name}/{COLPTR}")[group], dtype=np.int64)
        nnz = int(cp[-1])
        dtype = self.dtype(name)
        data = self.array(f"{name}/{DATA}")[group, :nnz] if nnz else np.zeros(0, dtype)
        data = data.astype(dtype, copy=False)  # values may be stored narrower (uint16 counts)
        if with_indices and nnz:
            indices = self.array(f"{name}/{INDICES}")[group, :nnz]
        else:
            indices = np.zeros(0 if with_indices else nnz, np.uint16)
        start, stop = self.group_rows(group)
        return GroupBlock(cp, indices, data, stop - start)

    def colptr_row(self, name: str, group: int, cols: np.ndarray | None = None) -> np.ndarray:
        """``colptr[group, cols]`` (all columns by default), through a per-process chunk cache.

        The tasks of one query read rows of the same colptr chunks (64 row groups ×
        1,024 genes); each chunk is decoded once per process, not once per row group.
        """
        arr = self.array(f"{name}/{COLPTR}")
        rc, cc = arr.chunks
        r = group // rc
        n = arr.shape[1]
        wanted = range(-(-n // cc)) if cols is None else np.unique(np.asarray(cols) // cc)
        key = (self.url, self.attrs.get("uuid"), name)
        parts = {int(c): _colptr_chunk(key, arr, r, int(c), self.loc)[group - r * rc]
                 for c in wanted}
        if cols is None:
            return np.concatenate([parts[c] for c in sorted(parts)])
        cols = np.asarray(cols, dtype=np.int64)
        out = np.empty(len(cols), dtype=np.int64)
        for c, row in parts.items():
            m = cols // cc == c
            out[m] = row[cols[m] - c * cc]
        return out

    def read_genes(
        self, name: str, group: int, genes: np.ndarray | None = None, with_indices: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The stored entries of some genes in one row group, reading only their bytes.

        Parameters
        ----------
        name
            Matrix, e.g. ``X``.
        group
            Row group.
        genes
            Sorted, unique gene positions; ``None`` for every gene.
        with_indices
            Also read the cell indices (not needed for per-gene statistics over all cells).

        Returns
        -------
        starts, ends, values, cells
            Gene ``genes[j]``'s entries are ``values[starts[j]:ends[j]]`` (stored dtype)
            in cells ``cells[starts[j]:ends[j]]`` (uint16, local to the group; empty
            when ``with_indices`` is false). A contiguous run of genes is one read;
            other selections read each gene's range of the chunks that hold it.
        """
        data, idx = self.array(f"{name}/{DATA}"), self.array(f"{name}/{INDICES}")
        if genes is None:
            cp = self.colptr_row(name, group)
            a, b = cp[:-1], cp[1:]
        else:
            genes = np.asarray(genes, dtype=np.int64)
            cols = np.union1d(genes, genes + 1)
            cp = self.colptr_row(name, group, cols)
            a, b = cp[np.searchsorted(cols, genes)], cp[np.searchsorted(cols, genes + 1)]
        lengths = b - a
        total = int(lengths.sum())
        ends = np.cumsum(lengths)
        starts = ends - lengths
        empty_rows = np.zeros(0, np.uint16)
        if total == 0:
            return starts, ends, np.zeros(0, data.dtype), empty_rows
        lo, hi = int(a[0]), int(b[-1])
        if hi - lo == total:  # one contiguous byte range (a gene range, or all genes)
            vals = data[group, lo:hi]
            rows = idx[group, lo:hi] if with_indices else empty_rows
        else:
            keep = lengths > 0
            pos = np.repeat(a[keep] - starts[keep], lengths[keep]) + np.arange(total)
            vals = data.get_orthogonal_selection((group, pos))
            rows = idx.get_orthogonal_selection((group, pos)) if with_indices else empty_rows
        if not vals.all():  # stored values are never 0: a 0 is a chunk zarr could not find
            raise FormatError(
                f"{self.url}: {name}/{DATA}: row group {group} reads zeros where stored values "
                "must be non-zero; a chunk is missing or corrupt (run `scdask verify`)"
            )
        return starts, ends, vals, rows

    def dtype(self, name: str = "X") -> np.dtype:
        return np.dtype(self.matrix(name)["dtype"])

    def stat(self, name: str, axis: str, stat: str) -> np.ndarray:
        """A statistic stored at conversion: ``axis`` is ``cell`` or ``gene``."""
        return self.array(f"{name}/{axis}_{stat}")[:]

    def obs(self, columns: list[str] | None = None) -> pd.DataFrame:
        return read_frame(self.loc, OBS_FILE, columns)

    def var(self, name: str = "X") -> pd.DataFrame:
        rel = self.matrix(name)["var"] if name in self.matrices else VAR_FILE
        return read_frame(self.loc, rel)

    def uns(self) -> dict[str, Any]:
        """The source's ``uns``, as far as JSON could keep it (the rest was named at conversion)."""
        return read_uns(self.loc)


_COLPTR_CACHE: dict[tuple[Any, ...], np.ndarray] = {}
_COLPTR_CACHE_CHUNKS = 192  # at most 96 MB of decoded (64 × 1024) int64 chunks per process
_COLPTR_LOCK = threading.Lock()


def _colptr_chunk(key: tuple[Any, ...], arr: zarr.Array, r: int, c: int, loc: Location
                  ) -> np.ndarray:
    k = (*key, r, c)
    with _COLPTR_LOCK:
        hit = _COLPTR_CACHE.pop(k, None)
        if hit is not None:
            _COLPTR_CACHE[k] = hit  # most recently used last
            return hit
    name = key[2]
    chunk = f"{name}/{COLPTR}/c/{r}/{c}"
    if not loc.exists(chunk):  # every colptr chunk is written, zeros included (FORMAT.md)
        raise FormatError(f"{loc.url}: chunk {chunk} is missing; the store is damaged")
    rc, cc = arr.chunks
    block = np.asarray(arr[r * rc : (r + 1) * rc, c * cc : (c + 1) * cc], dtype=np.int64)
    with _COLPTR_LOCK:
        _COLPTR_CACHE[k] = block
        while len(_COLPTR_CACHE) > _COLPTR_CACHE_CHUNKS:
            _COLPTR_CACHE.pop(next(iter(_COLPTR_CACHE)))
    return block


@functools.lru_cache(maxsize=64)
def _cached_store(url: str, options: str, uuid: str | None) -> Store:
    store = Store(url, json.loads(options))
    if uuid is not None and store.attrs.get("uuid") != uuid:
        raise FormatError(
            f"{url}: the store was replaced after it was opened (uuid {store.attrs.get('uuid')} "
            f"instead of {uuid}); open it again"
        )
    return store


def _options_key(options: dict[str, Any] | None) -> str:
    return json.dumps(options, sort_keys=True, default=str)


def open_store(url: str, options: str = "null", uuid: str | None = None) -> Store:
    """A :class:`Store` shared by the tasks of one process, checked to be the one opened."""
    return _cached_store(os.fspath(url), options, uuid)
