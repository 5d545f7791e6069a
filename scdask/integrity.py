"""Every chunk read from a store is there and intact, or an error names it.

Zarr reads a missing chunk as its fill value and leaves checksums to the codecs,
whose errors do not say which chunk failed. :class:`CheckedStore` wraps the Zarr
store a :class:`scdask.store.Store` reads through: a chunk key that is absent, or
whose trailing CRC-32C (Zarr v3's ``crc32c`` codec, the last codec of every array
of a format-2 store) does not match its bytes, raises :class:`ChunkError` naming
the store, the array and the chunk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import google_crc32c
import numpy as np
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from scdask.format import FormatError


class ChunkError(FormatError):
    """A chunk of a store is missing, truncated or fails its checksum."""


def split_chunk_key(key: str) -> tuple[str, str] | None:
    """``("X/data", "3/0")`` for the chunk key ``X/data/c/3/0``; ``None`` for other keys."""
    i = key.rfind("/c/")
    if i < 0:
        return None
    coords = key[i + 3 :]
    if not all(p.isdigit() for p in coords.split("/")):
        return None
    return key[:i], coords


def check_crc(url: str, key: str, raw: bytes | memoryview | np.ndarray) -> None:
    """Raise :class:`ChunkError` unless ``raw`` ends with the CRC-32C of the rest."""
    b = np.frombuffer(raw, dtype=np.uint8)
    if len(b) < 4 or np.uint32(google_crc32c.value(b[:-4].tobytes())).tobytes() != b[-4:].tobytes():
        array, coords = split_chunk_key(key) or (key, "?")
        raise ChunkError(f"{url}: {array}: chunk {coords} is damaged (its checksum does not "
                         "match its bytes); run `scdask verify` for every damaged chunk")


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
    """

    def __init__(self, store: Any, url: str = "", checksums: bool = False,
                 optional: Callable[[str], bool] | None = None, root: str | None = None
                 ) -> None:
        super().__init__(store)
        self.url = url
        self.checksums = checksums
        self.optional = optional
        self.root = os.path.realpath(root) if root is not None else None

    def _with_store(self, store: Any) -> CheckedStore:
        return CheckedStore(store, self.url, self.checksums, self.optional, self.root)

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
            check_crc(self.url, key, buf.as_numpy_array())
        return buf

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]
                                 ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        return [await self.get(k, prototype, r) for k, r in key_ranges]


def damaged_chunks(root: Any, loc: Any, checksums: bool,
                   extents: Callable[[str], np.ndarray | None]) -> list[str]:
    """Every missing or damaged chunk of every array under ``root``, one message each.

    Parameters
    ----------
    root
        The store's root group.
    loc
        Its :class:`scdask.storage.Location` (chunk files are listed and read raw).
    checksums
        Check each chunk's trailing CRC-32C.
    extents
        For an array of a matrix (``X/data``), the number of chunks each row must
        have (its stored entries); ``None`` for arrays whose every chunk is written.
    """
    problems = []
    for path, arr in root.arrays():
        problems += _array_problems(f"{root.path}/{path}".strip("/"), arr, loc, checksums, extents)
    for _, g in root.groups():
        problems += damaged_chunks(g, loc, checksums, extents)
    return problems


def _array_problems(path: str, arr: Any, loc: Any, checksums: bool,
                    extents: Callable[[str], np.ndarray | None]) -> list[str]:
    prefix = loc.path(f"{path}/c")
    present = set()
    if loc.exists(f"{path}/c"):
        for f in loc.fs.find(prefix):
            present.add(f[len(prefix) + 1 :])
    grid = arr.cdata_shape
    rows = extents(path)
    if rows is None:
        expected = {"/".join(map(str, i)) for i in np.ndindex(*grid)}
    else:
        expected = {f"{g}/{c}" for g, n in enumerate(rows) for c in range(int(n))}
    problems = [f"{loc.url}: {path}: chunk {k} is missing"
                for k in sorted(expected - present, key=_order)]
    if checksums:
        for k in sorted(present, key=_order):  # chunks past a row's entries are never written
            try:
                check_crc(loc.url, f"{path}/c/{k}", loc.fs.cat_file(f"{prefix}/{k}"))
            except ChunkError as e:
                problems.append(str(e).split(";")[0])
    return problems


def _order(key: str) -> tuple[int, ...]:
    return tuple(int(p) for p in key.split("/") if p.isdigit())
