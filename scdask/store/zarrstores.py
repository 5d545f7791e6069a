"""Zarr stores that check what is read and record what is written (see
:mod:`scdask.store.integrity`): the only part of the integrity checks that needs Zarr,
imported when a store is read or written through Zarr."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import WrapperStore

from scdask.store.integrity import (
    TABLE,
    ChunkError,
    check_crc,
    check_position,
    decode_table,
    split_chunk_key,
    trailing_crc,
)


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
            self.crcs[key] = trailing_crc(value.as_numpy_array())

    async def delete(self, key: str) -> None:
        await self._store.delete(key)
        self.crcs.pop(key, None)


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
