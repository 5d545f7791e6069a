"""Every chunk read from a store is there and intact, or an error names it.

Zarr reads a missing chunk as its fill value and leaves checksums to the codecs,
whose errors do not say which chunk failed. :class:`CheckedStore` wraps the Zarr
store a :class:`scdask.store.Store` reads through: a chunk key that is absent, or
whose trailing CRC-32C (Zarr v3's ``crc32c`` codec, the last codec of every array
of a format-2 store) does not match its bytes, raises :class:`ChunkError` naming
the store, the array and the chunk.

A CRC binds a chunk's bytes, not its place: a chunk copied over another of the same
array passes it. So each array of a format-2 store also keeps a table of its chunks'
CRCs by position (:data:`TABLE`, written once at the end of a conversion from what
:class:`RecordingStore` saw written), and a chunk read at a position whose recorded
CRC differs is refused too.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import google_crc32c
import numpy as np
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import WrapperStore

from scdask.format import FormatError

#: Beside each array's ``zarr.json``: the CRC-32C of each chunk by position, as a
#: ``.npy`` uint32 array shaped like the chunk grid (0 where no chunk was written),
#: followed by the CRC-32C of those bytes (little-endian uint32).
TABLE = "chunks.crc32c"


class ChunkError(FormatError):
    """A chunk of a store is missing, truncated, fails its checksum or is misplaced."""


def split_chunk_key(key: str) -> tuple[str, str] | None:
    """``("X/data", "3/0")`` for the chunk key ``X/data/c/3/0``; ``None`` for other keys."""
    i = key.rfind("/c/")
    if i < 0:
        return None
    coords = key[i + 3 :]
    if not all(p.isdigit() for p in coords.split("/")):
        return None
    return key[:i], coords


def check_crc(url: str, key: str, raw: bytes | memoryview | np.ndarray, n_index: int = 0) -> None:
    """Raise :class:`ChunkError` unless ``raw`` ends with the CRC-32C of the rest (of its
    last ``n_index`` bytes, for a shard: its index)."""
    b = np.frombuffer(raw, dtype=np.uint8)
    body = b[len(b) - n_index : -4] if n_index else b[:-4]
    if (len(b) < max(4, n_index) or np.uint32(google_crc32c.value(body.tobytes())).tobytes()
            != b[-4:].tobytes()):
        array, coords = split_chunk_key(key) or (key, "?")
        raise ChunkError(f"{url}: {array}: chunk {coords} is damaged (its checksum does not "
                         "match its bytes); run `scdask verify` for every damaged chunk")


def _crc(raw: bytes | memoryview | np.ndarray) -> int:
    """The trailing CRC-32C a chunk carries."""
    return int(np.frombuffer(raw, dtype="<u4", count=1, offset=len(raw) - 4)[0])


def encode_table(table: np.ndarray) -> bytes:
    """The bytes of a :data:`TABLE` file."""
    f = io.BytesIO()
    np.save(f, np.ascontiguousarray(table, dtype="<u4"), allow_pickle=False)
    raw = f.getvalue()
    return raw + np.uint32(google_crc32c.value(raw)).astype("<u4").tobytes()


def decode_table(url: str, array: str, raw: bytes | None) -> np.ndarray:
    """The table of ``array`` from its file's bytes; :class:`ChunkError` if absent or damaged."""
    if raw is None:
        raise ChunkError(f"{url}: {array}: {TABLE} (the CRCs of its chunks by position) is "
                         "missing; the store is damaged")
    if len(raw) < 4 or _crc(raw) != google_crc32c.value(bytes(raw[:-4])):
        raise ChunkError(f"{url}: {array}: {TABLE} is damaged (its checksum does not match)")
    body = bytes(raw[:-4])
    m = _NPY_HEADER.match(body)  # the header encode_table writes, parsed without numpy's
    if m is not None:              # literal_eval (100 µs a table; 1,000 stores open 2 each)
        shape = tuple(int(x) for x in m.group(2).replace(b" ", b"").split(b",") if x)
        start = 10 + int.from_bytes(body[8:10], "little")
        if m.group(1) == b"<u4" and len(body) - start == 4 * int(np.prod(shape, dtype=np.int64)):
            return np.frombuffer(body, dtype="<u4", offset=start).reshape(shape).copy()
    return np.load(io.BytesIO(body), allow_pickle=False)


_NPY_HEADER = re.compile(rb"\x93NUMPY\x01\x00..\{'descr': '([<>|a-z0-9]+)', 'fortran_order': "
                         rb"False, 'shape': \(([0-9, ]*)\), \}", re.S)


def check_position(url: str, array: str, coords: str, table: np.ndarray,
                   raw: bytes | memoryview | np.ndarray) -> None:
    """Raise :class:`ChunkError` unless chunk ``coords`` of ``array`` is the one written there."""
    idx = tuple(int(c) for c in coords.split("/"))
    if len(idx) != table.ndim or any(i >= n for i, n in zip(idx, table.shape, strict=False)):
        raise ChunkError(f"{url}: {array}: chunk {coords} lies outside the array's chunk grid")
    if int(table[idx]) != _crc(raw):
        raise ChunkError(f"{url}: {array}: chunk {coords} is not the chunk written at this "
                         "position (its checksum is another chunk's); the store is damaged")


class RecordingStore(WrapperStore[Any]):
    """A Zarr store that notes the trailing CRC-32C of every chunk written through it.

    ``crcs`` maps each chunk key written (and not deleted since) to its CRC, for
    :func:`write_tables`.
    """

    def __init__(self, store: Any, crcs: dict[str, int] | None = None) -> None:
        super().__init__(store)
        self.crcs: dict[str, int] = {} if crcs is None else crcs

    def _with_store(self, store: Any) -> RecordingStore:
        return RecordingStore(store, self.crcs)

    async def set(self, key: str, value: Buffer) -> None:
        await self._store.set(key, value)
        if split_chunk_key(key) is not None:
            self.crcs[key] = _crc(value.as_numpy_array())

    async def delete(self, key: str) -> None:
        await self._store.delete(key)
        self.crcs.pop(key, None)


def write_tables(loc: Any, root: Any, crcs: dict[str, int], skip: str) -> None:
    """Write the :data:`TABLE` of every array under ``root`` but those under ``skip``.

    Parameters
    ----------
    loc
        The store's :class:`scdask.storage.Location`.
    root
        Its root group.
    crcs
        The CRC of every chunk written, by chunk key (:attr:`RecordingStore.crcs`).
    skip
        A folder whose arrays are not part of the finished store.
    """
    by_array: dict[str, list[tuple[tuple[int, ...], int]]] = {}
    for key, crc in crcs.items():
        array, coords = split_chunk_key(key)  # type: ignore[misc]
        by_array.setdefault(array, []).append((tuple(map(int, coords.split("/"))), crc))
    for path, node in _arrays(root):
        if path == skip or path.startswith(skip + "/"):
            continue
        table = np.zeros(chunk_grid(node), dtype="<u4")
        for idx, crc in by_array.get(path, ()):
            table[idx] = crc
        with loc.open(f"{path}/{TABLE}", "wb") as f:
            f.write(encode_table(table))


class CheckedStore(WrapperStore[Any]):
    """A read-only Zarr store whose chunk reads are checked.

    Parameters
    ----------
    store
        The store to read.
    url
        The scdask store's location, for messages.
    checksums
        Check each chunk's trailing CRC-32C (format 2 and later).
    optional
        Arrays whose missing chunks read as fill values (format-1 stores, which did
        not write all-zero chunks of some arrays); every other array's missing chunk
        is an error.
    root
        The folder of a local store: no key may be a link leading out of it.
    positions
        Check each chunk against its array's :data:`TABLE` (finished format-2 stores).
    """

    def __init__(self, store: Any, url: str = "", checksums: bool = False,
                 optional: Callable[[str], bool] | None = None, root: str | None = None,
                 positions: bool = False, tables: dict[str, np.ndarray] | None = None,
                 index_sizes: dict[str, int] | None = None) -> None:
        super().__init__(store)
        self.url = url
        self.checksums = checksums
        self.optional = optional
        self.root = os.path.realpath(root) if root is not None else None
        self.positions = positions
        self._tables: dict[str, np.ndarray] = {} if tables is None else tables
        self._index_sizes: dict[str, int] = {} if index_sizes is None else index_sizes

    def _with_store(self, store: Any) -> CheckedStore:
        return CheckedStore(store, self.url, self.checksums, self.optional, self.root,
                            self.positions, self._tables, self._index_sizes)

    async def _index_nbytes(self, array: str) -> int:
        """Bytes of the shard index ending each chunk file of ``array`` (0: not sharded)."""
        n = self._index_sizes.get(array)
        if n is None:
            import json
            import math

            buf = await self._store.get(f"{array}/zarr.json", default_buffer_prototype())
            codecs = json.loads(buf.to_bytes()).get("codecs", []) if buf is not None else []
            n = 0
            if codecs and isinstance(codecs[0], dict) and codecs[0].get("name") == "sharding_indexed":
                meta = json.loads(buf.to_bytes())  # type: ignore[union-attr]
                outer = meta["chunk_grid"]["configuration"]["chunk_shape"]
                inner = codecs[0]["configuration"]["chunk_shape"]
                n = 16 * math.prod(o // i for o, i in zip(outer, inner, strict=True)) + 4
            self._index_sizes[array] = n
        return n

    async def _table(self, array: str) -> np.ndarray:
        table = self._tables.get(array)
        if table is None:
            key = f"{array}/{TABLE}"
            if self.root is not None:
                self._check_inside(key)
            buf = await self._store.get(key, default_buffer_prototype())
            table = decode_table(self.url, array, None if buf is None else buf.to_bytes())
            self._tables[array] = table
        return table

    def _check_inside(self, key: str) -> None:
        """Refuse a key that is a link leaving a local store's folder."""
        assert self.root is not None
        real = os.path.realpath(os.path.join(self.root, key))
        if not real.startswith(self.root + os.sep):
            raise ChunkError(f"{self.url}: {key} is a link to {real}, outside the store")

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if self.root is not None:
            self._check_inside(key)
        buf = await self._store.get(key, prototype, byte_range)
        parts = split_chunk_key(key)
        if parts is None:
            return buf
        if buf is None:
            if self.optional is not None and self.optional(parts[0]):
                return None
            raise ChunkError(f"{self.url}: {parts[0]}: chunk {parts[1]} is missing; the store "
                             "is damaged (run `scdask verify` for every damaged chunk)")
        if self.checksums and byte_range is None:
            raw = buf.as_numpy_array()
            check_crc(self.url, key, raw, await self._index_nbytes(parts[0]))
            if self.positions:
                check_position(self.url, *parts, await self._table(parts[0]), raw)
        return buf

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]
                                 ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        return [await self.get(k, prototype, r) for k, r in key_ranges]


def damaged_chunks(root: Any, loc: Any, checksums: bool,
                   extents: Callable[[str], np.ndarray | None]) -> list[str]:
    """Every missing, damaged or misplaced chunk of every array under ``root``, one message each.

    Parameters
    ----------
    root
        The store's root group.
    loc
        Its :class:`scdask.storage.Location` (chunk files are listed and read raw).
    checksums
        Check each chunk's trailing CRC-32C, and its place against the array's :data:`TABLE`.
    extents
        For an array of a matrix (``X/data``), the number of chunks each row must
        have (its stored entries); ``None`` for arrays whose every chunk is written.
    """
    problems = []
    for path, node in _arrays(root):
        problems += _array_problems(path, node, loc, checksums, extents)
    return problems


def _array_problems(path: str, arr: Any, loc: Any, checksums: bool,
                    extents: Callable[[str], np.ndarray | None]) -> list[str]:
    prefix = loc.path(f"{path}/c")
    present = set()
    if loc.exists(f"{path}/c"):
        for f in loc.fs.find(prefix):
            present.add(f[len(prefix) + 1 :])
    grid = chunk_grid(arr)
    rows = extents(path)
    if rows is None:
        expected = {"/".join(map(str, i)) for i in np.ndindex(*grid)}
    else:
        expected = {f"{g}/{c}" for g, n in enumerate(rows) for c in range(int(n))}
    problems = [f"{loc.url}: {path}: chunk {k} is missing"
                for k in sorted(expected - present, key=_order)]
    if not checksums:
        return problems
    table = None
    try:
        raw = loc.fs.cat_file(loc.path(f"{path}/{TABLE}")) if loc.exists(f"{path}/{TABLE}") else None
        table = decode_table(loc.url, path, raw)
    except ChunkError as e:
        problems.append(str(e).split(";")[0])
    from scdask.format.shards import ShardError, check_shard, index_nbytes

    n_index = index_nbytes(arr)
    for k in sorted(present, key=_order):
        try:
            raw = loc.fs.cat_file(f"{prefix}/{k}")
            check_crc(loc.url, f"{path}/c/{k}", raw, n_index)
            if n_index:
                check_shard(raw, n_index, f"{loc.url}: {path}: chunk {k}")
            if table is not None and k in expected:  # chunks past a row's entries are unused
                check_position(loc.url, path, k, table, raw)
        except (ChunkError, ShardError) as e:
            problems.append(str(e).split(";")[0])
    return problems


def chunk_grid(arr: Any) -> tuple[int, ...]:
    """The shape of an array's grid of chunk files (of shards, for a sharded array)."""
    outer = arr.shards or arr.chunks
    return tuple(-(-s // c) for s, c in zip(arr.shape, outer, strict=True))


def _arrays(root: Any) -> list[tuple[str, Any]]:
    """Every array below ``root``, by path; the store's Parquet and JSON files are not Zarr's."""
    from scdask.format.codecs import implementations

    with warnings.catch_warnings(), implementations():
        warnings.filterwarnings("ignore", message="Object at .* is not recognized")
        return [(p, n) for p, n in root.members(max_depth=None) if hasattr(n, "cdata_shape")]


def _order(key: str) -> tuple[int, ...]:
    return tuple(int(p) for p in key.split("/") if p.isdigit())
