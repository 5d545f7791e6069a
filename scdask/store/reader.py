"""Reading a scdask store: checked metadata and row-group blocks of a matrix.

This is the one place that knows how a matrix is laid out on disk for reading;
the xarray backend, ``verify``, ``info``, export and the ML loader all read
through :class:`Store`.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

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
from scdask.format.blocks import GroupBlock
from scdask.store.entries import Chunks, Entries
from scdask.store.location import Location
from scdask.store.metadata import frame_schema, read_frame, read_uns

if TYPE_CHECKING:  # Zarr is imported when an array is read through it
    import zarr


class IncompleteStoreError(FormatError):
    """The store is a conversion that has not finished."""


class ReplacedStoreError(FormatError):
    """The store was replaced (or removed) after it was opened."""


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
        self._root_json = self.loc.path("zarr.json")
        if not self.loc.exists():
            raise FileNotFoundError(f"{self.url}: does not exist")
        if not self.loc.exists("zarr.json"):
            raise FormatError(f"{self.url}: is not a Zarr v3 store (no zarr.json), not a scdask store")
        try:  # read here, not through Zarr: opening 500 stores' groups in Zarr cost ~1 s
            meta = json.loads(self.loc.fs.cat_file(self.loc.check_inside("zarr.json")))
            if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
                raise ValueError("it does not describe a Zarr v3 group")
            attrs = meta.get("attributes", {})
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
        self.format_version: int = self.attrs["format_version"]
        if self.format_version < 2:
            _warn_unchecked(self.url)
        self.n_obs: int = int(self.attrs["n_obs"])
        self.n_vars: int = int(self.attrs["n_vars"])
        self.row_group_size: int = int(self.attrs["row_group_size"])
        self.matrices: dict[str, dict[str, Any]] = self.attrs["matrices"]
        self._checked: tuple[int, int, int] | None = None  # zarr.json as last found current
        self._check_attrs()

    @functools.cached_property
    def root(self) -> zarr.Group:
        """The root group in Zarr, every chunk read through it checked (scdask.integrity):
        for what scdask does not read itself (obsm, varm, statistics, earlier formats)."""
        root = self.loc.open_checked(checksums=False)
        checked = root.store
        if self.format_version >= 2:
            checked.checksums = checked.positions = True
        else:
            checked.optional = _v1_optional
        return root

    def _check_attrs(self) -> None:
        """Refuse attributes that disagree with each other or with the arrays on disk.

        Nothing is sized from the attributes alone: each matrix's ``colptr`` array,
        whose shape is fixed by its own metadata, must have one row per row group.
        """
        where = f"{self.url}: the store's attributes"
        if not (self.n_obs >= 0 and self.n_vars >= 0 and 1 <= self.row_group_size <= 1 << 16):
            raise FormatError(f"{where} give an impossible shape or row group size")
        if not isinstance(self.matrices, dict):
            raise FormatError(f"{where} hold no mapping of matrices")
        for name, m in self.matrices.items():
            shape = m.get("shape") if isinstance(m, dict) else None
            if (not isinstance(shape, list) or len(shape) != 2 or shape[0] != self.n_obs
                    or not isinstance(shape[1], int) or shape[1] < 0
                    or m.get("n_groups") != self.n_groups):
                raise FormatError(f"{where} give matrix {name!r} a shape that disagrees "
                                  f"with the store's {self.n_obs} cells")
            self.chunks(f"{name}/{COLPTR}")  # shape checked against the attributes

    def check_current(self) -> None:
        """Raise :class:`ReplacedStoreError` if the store was replaced since it was opened.

        Every read path calls it before reading, so that arrays opened from the old
        store's metadata never read another conversion's chunks.
        """
        sig = None
        if self.loc.is_local:  # unchanged since last checked: the same file, not rewritten
            try:
                st = os.stat(self._root_json)
                sig = (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError:
                sig = None
            if sig is not None and sig == self._checked:
                return
        try:
            raw = self.loc.fs.cat_file(self.loc.path("zarr.json"))
            now = json.loads(raw).get("attributes", {}).get(ROOT_ATTR, {}).get("uuid")
        except (OSError, ValueError, AttributeError):
            now = None
        if now == self.attrs.get("uuid"):
            self._checked = sig
        else:
            raise ReplacedStoreError(
                f"{self.url}: the store was replaced or removed after it was opened (uuid "
                f"{now} instead of {self.attrs.get('uuid')}); open it again"
            )

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
        import zarr

        from scdask.format.codecs import implementations

        try:
            with implementations():
                arr = self.root[path]
        except KeyError:
            raise FormatError(f"{self.url}: array {path} is missing") from None
        want = self._expected_shape(path)
        if not isinstance(arr, zarr.Array) or (want is not None and arr.shape != want):
            got = arr.shape if isinstance(arr, zarr.Array) else "a group"
            raise FormatError(f"{self.url}: array {path} has shape {got}, its attributes "
                              f"say {want}; the store is damaged or not a scdask store")
        return arr

    @functools.cache  # noqa: B019 - a Store lives as long as its arrays
    def chunks(self, path: str) -> Chunks:
        """The reader of whole chunks of array ``path`` (``X/colptr``)."""
        return Chunks(self, path)

    @functools.cache  # noqa: B019 - a Store lives as long as its arrays
    def entries(self, name: str, leaf: str) -> Entries:
        """The reader of ranges of matrix ``name``'s ``data`` or ``indices``."""
        return Entries(self, f"{name}/{leaf}")

    def _expected_shape(self, path: str) -> tuple[int, ...] | None:
        """The shape the root and matrix attributes give array ``path``."""
        name, _, leaf = path.rpartition("/")
        if name not in self.matrices:
            return None
        n_vars = int(self.matrix(name)["shape"][1])
        if leaf in (DATA, INDICES):
            return (self.n_groups, max(1, self.row_group_size * n_vars))
        if leaf == COLPTR:
            return (self.n_groups, n_vars + 1)
        if leaf.startswith("cell_"):
            return (self.n_obs,)
        if leaf.startswith("gene_"):
            return (n_vars,)
        return None

    def colptr(self, name: str, groups: slice | np.ndarray, genes: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Offsets of each gene within each row group: ``colptr[groups, genes]``."""
        arr = self.array(f"{name}/{COLPTR}")
        return arr.get_orthogonal_selection((groups, genes))

    def read_group(self, name: str, group: int, with_indices: bool = True) -> GroupBlock:
        """Row group ``group`` of matrix ``name``, every gene."""
        self.check_current()
        cp = self.colptr_row(name, group)
        self._check_ranges(name, group, cp[:-1], cp[1:], whole=True)
        nnz = int(cp[-1])
        dtype = self.dtype(name)
        whole = (np.zeros(1, np.int64), np.full(1, nnz, np.int64), np.zeros(1, np.int64), nnz)
        data = self.entries(name, DATA).ranges(group, *whole) if nnz else np.zeros(0, dtype)
        data = data.astype(dtype, copy=False)  # values may be stored narrower (uint16 counts)
        if with_indices and nnz:
            indices = self.entries(name, INDICES).ranges(group, *whole)
        else:
            indices = np.zeros(0 if with_indices else nnz, np.uint16)
        start, stop = self.group_rows(group)
        self._check_cells(name, group, indices, stop - start)
        return GroupBlock(cp, indices, data, stop - start)

    def _check_ranges(self, name: str, group: int, a: np.ndarray, b: np.ndarray,
                      whole: bool = False) -> None:
        """Refuse colptr ranges ``a[j]:b[j]`` that are reversed or leave the group's row."""
        cap = self.entries(name, DATA).width
        if len(a) and (a.min() < 0 or b.max() > cap or (b < a).any() or (whole and a[0])):
            raise FormatError(
                f"{self.url}: {name}/{COLPTR}: row group {group} holds offsets that are not "
                f"non-decreasing from 0 within the {cap} entries of a row; the store is damaged"
            )

    def _check_cells(self, name: str, group: int, cells: np.ndarray, n_rows: int) -> None:
        """Refuse cell indices outside the group's ``n_rows`` cells (kernels index with them)."""
        if len(cells) and int(cells.max()) >= n_rows:
            raise FormatError(
                f"{self.url}: {name}/{INDICES}: row group {group} holds a cell index >= its "
                f"{n_rows} cells; the store is damaged"
            )

    def colptr_row(self, name: str, group: int, cols: np.ndarray | None = None) -> np.ndarray:
        """``colptr[group, cols]`` (all columns by default), through a per-process chunk cache.

        The tasks of one query read rows of the same colptr chunks (64 row groups ×
        1,024 genes); each chunk is decoded once per process, not once per row group.
        """
        chunks = self.chunks(f"{name}/{COLPTR}")
        rc, cc = chunks.chunk_shape
        r = group // rc
        n = chunks.shape[1]
        wanted = range(-(-n // cc)) if cols is None else sorted(set((np.asarray(cols) // cc).tolist()))
        parts = {int(c): chunks.cached((r, int(c)))[group - r * rc] for c in wanted}
        if cols is None:
            return np.concatenate([parts[c] for c in sorted(parts)])[:n]
        cols = np.asarray(cols, dtype=np.int64)
        out = np.empty(len(cols), dtype=np.int64)
        for c, row in parts.items():
            m = cols // cc == c
            out[m] = row[cols[m] - c * cc]
        return out

    def _colptr_pair(self, name: str, group: int, col: int) -> tuple[int, int]:
        """``colptr[group, col:col + 2]``, through the chunk cache of :meth:`colptr_row`."""
        chunks = self.chunks(f"{name}/{COLPTR}")
        rc, cc = chunks.chunk_shape
        r, c = divmod(group, rc)
        k, i = divmod(col, cc)
        row = chunks.cached((r, k))[c]
        if i + 1 < cc:
            return int(row[i]), int(row[i + 1])
        return int(row[i]), int(chunks.cached((r, k + 1))[c, 0])

    def _read_gene(self, name: str, group: int, j: int, with_indices: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`read_genes` of one gene, in plain integers (a row group's Python costs
        count when one gene is read over thousands of row groups)."""
        data = self.entries(name, DATA)
        lo, hi = self._colptr_pair(name, group, j)
        if not 0 <= lo <= hi <= data.width:
            self._check_ranges(name, group, np.array([lo]), np.array([hi]))
        n = hi - lo
        starts, ends = np.zeros(1, np.int64), np.array([n], np.int64)
        rows = np.zeros(0, np.uint16)
        if n == 0:
            return starts, ends, np.zeros(0, data.dtype), rows
        vals = data.range(group, lo, hi)
        if with_indices:
            rows = self.entries(name, INDICES).range(group, lo, hi)
            start, stop = self.group_rows(group)
            self._check_cells(name, group, rows, stop - start)
        if np.count_nonzero(vals) != len(vals):
            self._zero_values(name, group)
        return starts, ends, vals, rows

    def _zero_values(self, name: str, group: int) -> None:
        raise FormatError(
            f"{self.url}: {name}/{DATA}: row group {group} reads zeros where stored values "
            "must be non-zero; a chunk is missing or corrupt (run `scdask verify`)"
        )

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
        self.check_current()
        data, idx = self.entries(name, DATA), self.entries(name, INDICES)
        if genes is not None and len(genes) == 1:  # one gene: no array arithmetic
            return self._read_gene(name, group, int(genes[0]), with_indices)
        if genes is None:
            cp = self.colptr_row(name, group)
            a, b = cp[:-1], cp[1:]
        else:
            genes = np.asarray(genes, dtype=np.int64)
            cols = np.union1d(genes, genes + 1)
            cp = self.colptr_row(name, group, cols)
            a, b = cp[np.searchsorted(cols, genes)], cp[np.searchsorted(cols, genes + 1)]
        self._check_ranges(name, group, a, b, whole=genes is None)
        lengths = b - a
        total = int(lengths.sum())
        ends = np.cumsum(lengths)
        starts = ends - lengths
        empty_rows = np.zeros(0, np.uint16)
        if total == 0:
            return starts, ends, np.zeros(0, data.dtype), empty_rows
        lo, hi = int(a[0]), int(b[-1])
        if hi - lo == total:  # one contiguous range (a gene range, or all genes)
            a, b, first = a[:1], b[-1:], starts[:1]
        else:
            keep = lengths > 0
            a, b, first = a[keep], b[keep], starts[keep]
        vals = data.ranges(group, a, b, first, total)
        rows = idx.ranges(group, a, b, first, total) if with_indices else empty_rows
        if with_indices:
            start, stop = self.group_rows(group)
            self._check_cells(name, group, rows, stop - start)
        if np.count_nonzero(vals) != len(vals):  # stored values are never 0: a 0 is a chunk zarr could not find
            self._zero_values(name, group)
        return starts, ends, vals, rows

    def dtype(self, name: str = "X") -> np.dtype:
        return np.dtype(self.matrix(name)["dtype"])

    def gene_stat(self, name: str, stat: str, genes: np.ndarray | None = None) -> np.ndarray:
        """Statistic ``gene_<stat>`` of matrix ``name`` stored at conversion, for gene
        positions ``genes`` (all by default), reading only the chunks holding them."""
        chunks = self.chunks(f"{name}/gene_{stat}")
        c = chunks.chunk_shape[0]
        n = chunks.shape[0]
        if genes is None:
            parts = [chunks.chunk((k,)) for k in range(-(-n // c))]
            return np.concatenate(parts)[:n] if parts else np.zeros(0, chunks.dtype)
        genes = np.asarray(genes, dtype=np.int64)
        out = np.empty(len(genes), chunks.dtype)
        for k in np.unique(genes // c).tolist():
            m = genes // c == k
            out[m] = chunks.chunk((k,))[genes[m] - k * c]
        return out

    def stat(self, name: str, axis: str, stat: str) -> np.ndarray:
        """A statistic stored at conversion: ``axis`` is ``cell`` or ``gene``."""
        self.check_current()
        return self.array(f"{name}/{axis}_{stat}")[:]

    def obs(self, columns: list[str] | None = None) -> pd.DataFrame:
        return read_frame(self.loc, OBS_FILE, columns)

    def var(self, name: str = "X", columns: list[str] | None = None) -> pd.DataFrame:
        """Matrix ``name``'s var (only ``columns`` beside the index, when given)."""
        rel = self.matrix(name)["var"] if name in self.matrices else VAR_FILE
        var = read_frame(self.loc, rel, columns, deduplicate=False)  # names mostly unique
        n = self.matrix(name)["shape"][1] if name in self.matrices else self.n_vars
        if len(var) != n:
            raise FormatError(f"{self.url}: {rel} has {len(var)} rows, the matrix {name} "
                              f"{n} genes")
        return var

    def index_name(self, frame: str = "obs", name: str = "X") -> str | None:
        """The name of the obs index (``frame="obs"``) or of matrix ``name``'s var index, from
        the table's footer (no row read)."""
        rel = OBS_FILE if frame == "obs" else (
            self.matrix(name)["var"] if name in self.matrices else VAR_FILE)
        value = (frame_schema(self.loc, rel).metadata or {}).get(b"scdask_index_name")
        return value.decode() if value else None

    def uns(self) -> dict[str, Any]:
        """The source's ``uns``, as far as JSON could keep it (the rest was named at conversion)."""
        uns = read_uns(self.loc, self.attrs.get("uns_crc32c"))
        uns.update({k[4:]: v for k, v in self.elements().items() if k.startswith("uns/")})
        return uns

    def elements(self) -> dict[str, Any]:
        """Elements kept in anndata's own encoding (``"uns/key"``, ``"obsm/key"``, ...)."""
        from scdask.store.metadata import read_elements

        return read_elements(self.loc, self.attrs.get("elements_crc32c"))


def _v1_optional(array: str) -> bool:
    """Arrays of a format-1 store whose all-zero chunks were not written."""
    return array.rsplit("/", 1)[-1].startswith("gene_") or array.startswith(("obsm/", "varm/"))


_WARNED: set[str] = set()


def _warn_unchecked(url: str) -> None:
    if url not in _WARNED:
        _WARNED.add(url)
        warnings.warn(
            f"{url}: this store has scdask format 1, whose chunks carry no checksums, so "
            "damage to it may go unnoticed; convert its source again to get a checked store",
            UncheckedStoreWarning, stacklevel=3,
        )


class UncheckedStoreWarning(UserWarning):
    """A store was written before chunks carried checksums (format 1)."""


@functools.lru_cache(maxsize=64)
def _cached_store(url: str, options: str, uuid: str | None) -> Store:
    store = Store(url, json.loads(options))
    if uuid is not None and store.attrs.get("uuid") != uuid:
        raise ReplacedStoreError(
            f"{url}: the store was replaced after it was opened (uuid {store.attrs.get('uuid')} "
            f"instead of {uuid}); open it again"
        )
    return store


def _options_key(options: dict[str, Any] | None) -> str:
    return json.dumps(options, sort_keys=True, default=str)


def open_store(url: str, options: str = "null", uuid: str | None = None) -> Store:
    """A :class:`Store` shared by the tasks of one process, checked to be the one opened."""
    return _cached_store(os.fspath(url), options, uuid)
