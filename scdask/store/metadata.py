"""obs/var as Parquet, uns as JSON: writing and reading the metadata of a store."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from scdask.format import FORMAT_VERSION, INDEX_COLUMN, FormatError
from scdask.format.tables import frame_to_dataframe

if TYPE_CHECKING:
    from scdask.store.location import Location


def write_table(loc: Location, relpath: str, tables: pa.Table | Iterable[pa.Table],
                row_group_size: int) -> None:
    """Write ``tables`` (one table, or the slices of one, in order) as Parquet at
    ``relpath``, in row groups matching the matrix (slices of a multiple of
    ``row_group_size`` rows keep them aligned)."""
    writer = None
    with loc.open(relpath, "wb") as f:
        for table in [tables] if isinstance(tables, pa.Table) else tables:
            if writer is None:
                meta = dict(table.schema.metadata or {})
                meta[b"scdask_format_version"] = str(FORMAT_VERSION).encode()
                table = table.replace_schema_metadata(meta)
                writer = pq.ParquetWriter(f, table.schema, compression="zstd",
                                          write_statistics=True, write_page_checksum=True)
            elif not table.schema.equals(writer.schema):
                table = table.cast(writer.schema)
            writer.write_table(table, row_group_size=max(1, row_group_size))
        if writer is None:
            raise ValueError(f"{loc.url}: {relpath}: no table to write")
        writer.close()


def read_table(loc: Location, relpath: str, columns: list[str] | None = None) -> pa.Table:
    """Read (some columns of) a Parquet table of the store."""
    try:
        with loc.open(relpath, "rb") as f:
            return pq.read_table(f, columns=columns, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise FormatError(f"{loc.url}: {relpath} cannot be read: it is damaged ({e})") from e


def read_frame(loc: Location, relpath: str, columns: list[str] | None = None,
               deduplicate: bool = True) -> pd.DataFrame:
    """Read a Parquet table of the store as the pandas frame AnnData had (``deduplicate``:
    see :func:`scdask.format.tables.frame_to_dataframe`)."""
    if columns is not None:
        columns = [INDEX_COLUMN, *[c for c in columns if c != INDEX_COLUMN]]
    return frame_to_dataframe(read_table(loc, relpath, columns), deduplicate)


def frame_schema(loc: Location, relpath: str) -> pa.Schema:
    """The schema of a Parquet table without reading its rows."""
    return frame_footer(loc, relpath).schema.to_arrow_schema()


def frame_footer(loc: Location, relpath: str) -> pq.FileMetaData:
    """A Parquet table's footer: its schema and its row groups' column statistics."""
    with loc.open(relpath, "rb") as f:
        return pq.ParquetFile(f).metadata


# -- uns ---------------------------------------------------------------------------
_ND = "__ndarray__"


def uns_to_json(uns: dict[str, Any], prefix: str = "uns") -> tuple[Any, list[str]]:
    """Convert ``uns`` to JSON-able values; return it and the keys that could not be kept."""
    dropped: list[str] = []

    def conv(value: Any, where: str) -> Any:
        if isinstance(value, dict) or hasattr(value, "items") and not isinstance(value, pd.DataFrame):
            out = {}
            for k, v in value.items():
                c = conv(v, f"{where}/{k}")
                if c is not _DROP:
                    out[str(k)] = c
            return out
        if isinstance(value, np.ndarray):
            if value.dtype.kind in "biufUSO":
                try:
                    lst = value.astype(str).tolist() if value.dtype.kind in "SO" else value.tolist()
                    json.dumps(lst)
                except (TypeError, ValueError):
                    pass
                else:
                    return {_ND: lst, "dtype": value.dtype.str if value.dtype.kind not in "SO" else "object", "shape": list(value.shape)}
        elif isinstance(value, np.generic):
            item = value.item()
            if not isinstance(item, bytes):  # bytes have no JSON form: named, not kept
                return item
        elif isinstance(value, str | int | float | bool) or value is None:
            return value
        elif isinstance(value, list | tuple):
            items = [conv(v, f"{where}[{i}]") for i, v in enumerate(value)]
            if all(i is not _DROP for i in items):
                return items
        dropped.append(f"{where} ({type(value).__name__})")
        return _DROP

    out = conv(uns, prefix)
    return out, dropped


_DROP = object()


def uns_from_json(value: Any) -> Any:
    """Inverse of :func:`uns_to_json`."""
    if isinstance(value, dict):
        if _ND in value:
            dtype = value["dtype"]
            arr = np.array(value[_ND], dtype=object if dtype == "object" else dtype)
            return arr.reshape(value["shape"])
        return {k: uns_from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [uns_from_json(v) for v in value]
    return value


def write_uns(loc: Location, uns: dict[str, Any]) -> list[str]:
    """Write ``uns.json``; return what could not be kept."""
    from scdask.format import UNS_FILE

    value, dropped = uns_to_json(uns)
    with loc.open(UNS_FILE, "wb") as f:
        f.write(json.dumps({"format_version": FORMAT_VERSION, "uns": value}).encode())
    return dropped


def _read_checked(loc: Location, name: str, crc32c: int | None) -> bytes | None:
    """The bytes of file ``name`` of the store (None when absent), checked against the
    CRC-32C recorded at finalise when there is one."""
    import google_crc32c

    if not loc.exists(name):
        return None
    with loc.open(name, "rb") as f:
        raw = f.read()
    if crc32c is not None and google_crc32c.value(raw) != crc32c:
        raise FormatError(f"{loc.url}: {name} is damaged (its checksum does not match the "
                          "one recorded in the store)")
    return raw


def read_uns(loc: Location, crc32c: int | None = None) -> dict[str, Any]:
    """The store's uns; with ``crc32c`` (recorded at finalise), the file is checked first."""
    from scdask.format import UNS_FILE

    raw = _read_checked(loc, UNS_FILE, crc32c)
    if raw is None:
        return {}
    try:
        return uns_from_json(json.loads(raw)["uns"])
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{loc.url}: {UNS_FILE} cannot be read ({e})") from e


# -- elements in anndata's own encoding ----------------------------------------------
def write_elements(loc: Location, elements: dict[str, Any]) -> list[str]:
    """Write ``elements`` (``"uns/key"``, ``"obsm/key"``, ... → value) to
    :data:`~scdask.format.ELEMENTS_FILE` with anndata's writer; return what anndata
    could not write either (named, never dropped silently)."""
    import io
    import warnings

    import h5py
    from anndata.io import write_elem

    from scdask.format import ELEMENTS_FILE

    failed: list[str] = []
    buf = io.BytesIO()
    written = 0
    with h5py.File(buf, "w") as f:
        for path, value in elements.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    parent, key = path.rsplit("/", 1)  # anndata >= 0.13: no "/" in a key
                    write_elem(f.require_group(parent), key, value)
                written += 1
            except Exception as e:  # noqa: BLE001 - named in the conversion's warning
                if path in f:
                    del f[path]
                failed.append(f"{path} (anndata cannot write it: {type(e).__name__})")
    if written:
        with loc.open(ELEMENTS_FILE, "wb") as out:
            out.write(buf.getvalue())
    return failed


def read_elements(loc: Location, crc32c: int | None = None) -> dict[str, Any]:
    """The elements of :func:`write_elements`, as ``{"uns/key": value, ...}``; the file is
    checked against ``crc32c`` (recorded at finalise) first."""
    import io

    import h5py
    from anndata.io import read_elem

    from scdask.format import ELEMENTS_FILE

    raw = _read_checked(loc, ELEMENTS_FILE, crc32c)
    if raw is None:
        return {}
    out: dict[str, Any] = {}

    def walk(group: Any, prefix: str) -> None:
        for key, node in group.items():
            if "encoding-type" in node.attrs or not isinstance(node, h5py.Group):
                out[prefix + key] = read_elem(node)
            else:  # a holder anndata's writer made on the way (uns, obsm, raw/varm)
                walk(node, f"{prefix}{key}/")

    try:
        with h5py.File(io.BytesIO(raw), "r") as f:
            walk(f, "")
    except (OSError, ValueError, KeyError) as e:
        raise FormatError(f"{loc.url}: {ELEMENTS_FILE} cannot be read ({e})") from e
    return out
