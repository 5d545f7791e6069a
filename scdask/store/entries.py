"""Ranges of entries of a matrix's ``data`` or ``indices``, read with the fewest bytes.

A format-3 store shards these arrays (:mod:`scdask.format.shards`): :class:`Entries`
reads a shard's index and then only the inner chunks holding the wanted entries (the
whole shard file at once when most of it is wanted), straight from the files of a local
store (``pread``) or through the Zarr store's ranged reads for object storage, and
checks what it reads: each shard index's CRC-32C and its place (the position table of
docs/FORMAT.md), each inner chunk's CRC-32C and length. Earlier formats are read
through Zarr, as before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np

from scdask.format.shards import MISSING, ChunkCodec, ShardCodec, ShardError, check_extent
from scdask.store.integrity import TABLE, ChunkError, decode_table
from scdask.store.location import PathOutsideError

_NO_FOLLOW = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
#: Zarr chunks read per slice in earlier formats (bounds the bytes held at once).
SPAN_CHUNKS = 4
#: A shard whose wanted inner chunks are more than this is read whole, in one read.
WHOLE_SHARD = 4
#: Decoded shard indices kept per process (each 16 × 16 bytes for 1M-entry shards).
_INDEX_CACHE_SIZE = 1 << 16
_INDEX_CACHE: OrderedDict[tuple[Any, ...], list[tuple[int, int]]] = OrderedDict()
_LOCK = threading.Lock()
#: Bytes of decoded chunks kept per process (:meth:`Chunks.cached`), colptr's mostly.
_CHUNK_CACHE_BYTES = 96 << 20
_CHUNK_CACHE: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
_CHUNK_CACHE_NBYTES = 0


class ChunkFiles:
    """The chunk files of one array of a :class:`~scdask.store.Store`, read and checked
    without Zarr: its ``zarr.json`` (shape checked against the store's attributes), its
    position table, and byte ranges of its chunk files.

    Parameters
    ----------
    store
        The open store.
    path
        The array's path in it.
    """

    def __init__(self, store: Any, path: str) -> None:
        self.store = store
        self.path = path
        self._cache_key = (store.url, store.attrs.get("uuid"), path)  # of the process caches
        self._table: np.ndarray | None = None
        self._dirs: set[str] = set()
        self.meta = self._metadata()
        self.shape: tuple[int, ...] = tuple(int(n) for n in self.meta["shape"])

    def _metadata(self) -> dict[str, Any]:
        """The array's ``zarr.json``, its shape checked against the store's attributes."""
        import json

        from scdask.format import FormatError

        loc = self.store.loc
        try:
            meta = json.loads(loc.read(f"{self.path}/zarr.json"))  # type: ignore[arg-type]
        except FileNotFoundError:
            raise FormatError(f"{self.store.url}: array {self.path} is missing") from None
        except ValueError as e:
            raise FormatError(f"{self.store.url}: {self.path}/zarr.json cannot be read ({e})") from None
        want = self.store._expected_shape(self.path)
        shape = meta.get("shape") if isinstance(meta, dict) else None
        if (not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape)
                or (want is not None and tuple(shape) != want)
                or meta.get("node_type") != "array"):
            raise FormatError(f"{self.store.url}: array {self.path} has shape {shape}, its "
                              f"attributes say {want}; the store is damaged or not a scdask store")
        return meta

    def check_position(self, coords: tuple[int, ...], crc: int, what: str) -> None:
        """Refuse chunk ``coords`` unless ``crc`` is the one recorded for its position."""
        table = self._positions()
        if (len(coords) != table.ndim or any(c >= n for c, n in zip(coords, table.shape, strict=True))
                or int(table[coords]) != crc):
            raise ChunkError(f"{what} is not the chunk written at this position (its "
                             "checksum is another chunk's); the store is damaged")

    def _positions(self) -> np.ndarray:
        if self._table is None:
            loc = self.store.loc
            rel = f"{self.path}/{TABLE}"
            raw = loc.read(rel, missing_ok=True)
            self._table = decode_table(self.store.url, self.path, raw)
        return self._table

    def _read(self, key: str, span: tuple[int, int] | None) -> bytes:
        """Bytes ``span`` (all of them for ``None``) of chunk file ``key``."""
        if not self.store.loc.is_local:
            return self._remote(key, span)
        with self._file(key) as f:
            return f.read(0, f.size()) if span is None else f.read(span[0], span[1] - span[0])

    @contextlib.contextmanager
    def _file(self, key: str) -> Iterator[_File]:
        """Chunk file ``key``, open for reads of byte ranges."""
        f = _File(self, key)
        try:
            yield f
        finally:
            f.close()

    def _remote(self, key: str, span: tuple[int, int] | None) -> bytes:
        loc = self.store.loc
        try:
            if span is None:
                return loc.fs.cat_file(loc.path(key))
            return loc.fs.cat_file(loc.path(key), start=span[0], end=span[1])
        except FileNotFoundError:
            raise self._missing(key) from None

    def _open(self, key: str) -> int:
        """A descriptor of local chunk file ``key``, refusing links that leave the store."""
        loc = self.store.loc
        folder = key.rsplit("/", 1)[0]
        try:
            if folder not in self._dirs:  # each folder's real path checked once
                loc.check_inside(folder)
                self._dirs.add(folder)
            try:
                return os.open(loc.path(key), _NO_FOLLOW)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
            loc.check_inside(key)  # the file itself is a link: read only if it stays inside
            return os.open(loc.path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise self._missing(key) from None
        except PathOutsideError as e:
            raise ChunkError(str(e)) from None

    def _pread(self, key: str, fd: int, n: int, offset: int) -> bytes:
        out = os.pread(fd, n, offset)
        if len(out) != n:
            array, _, coords = key.partition("/c/")
            raise ChunkError(f"{self.store.url}: {array}: chunk {coords} is truncated (bytes "
                             f"{offset}:{offset + n} are past its end); the store is damaged")
        return out

    def _missing(self, key: str) -> ChunkError:
        array, _, coords = key.partition("/c/")
        return ChunkError(f"{self.store.url}: {array}: chunk {coords} is missing; the store "
                          "is damaged (run `scdask verify` for every damaged chunk)")


class Chunks(ChunkFiles):
    """Whole plain (not sharded) chunks of an array written by scdask (``colptr``), each
    checked: its CRC-32C and its place. ``codec`` is ``None`` for a chain scdask does not
    decode itself (format 1: no checksums), read through Zarr."""

    def __init__(self, store: Any, path: str) -> None:
        super().__init__(store, path)
        self.chunk_shape = tuple(self.meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.dtype = np.dtype(self.meta["data_type"])
        self.codec = (ChunkCodec.from_metadata(self.meta) if store.format_version >= 2
                      else None)

    def cached(self, coords: tuple[int, ...]) -> np.ndarray:
        """:meth:`chunk` without what lies past the array's edge, through a per-process
        cache of the most recently used chunks (the tasks of one query read rows of the
        same ``colptr`` chunks of 64 row groups × 1,024 genes: each is decoded once per
        process, not once per row group; a store of 13 row groups keeps 13 rows of each,
        so one gene's chunks of 500 such stores stay cached between queries)."""
        global _CHUNK_CACHE_NBYTES
        k = (self._cache_key, coords)
        with _LOCK:
            hit = _CHUNK_CACHE.get(k)
            if hit is not None:
                _CHUNK_CACHE.move_to_end(k)
                return hit
        block = self.chunk(coords)
        block = block[tuple(slice(0, min(n, s - c * n)) for c, n, s
                            in zip(coords, self.chunk_shape, self.shape, strict=True))].copy()
        with _LOCK:
            if k not in _CHUNK_CACHE:
                _CHUNK_CACHE[k] = block
                _CHUNK_CACHE_NBYTES += block.nbytes
            while _CHUNK_CACHE_NBYTES > _CHUNK_CACHE_BYTES and len(_CHUNK_CACHE) > 1:
                _CHUNK_CACHE_NBYTES -= _CHUNK_CACHE.popitem(last=False)[1].nbytes
        return block

    def chunk(self, coords: tuple[int, ...]) -> np.ndarray:
        """Chunk ``coords``, shaped as a chunk (edge chunks hold fill values past the edge)."""
        if self.codec is None:
            arr = self.store.array(self.path)
            sel = tuple(slice(c * n, (c + 1) * n) for c, n in zip(coords, self.chunk_shape, strict=True))
            out = np.zeros(self.chunk_shape, arr.dtype)
            got = np.asarray(arr[sel])
            out[tuple(slice(0, n) for n in got.shape)] = got
            return out
        key = f"{self.path}/c/{'/'.join(map(str, coords))}"
        what = f"{self.store.url}: {self.path}: chunk {'/'.join(map(str, coords))}"
        raw = self._read(key, None)
        try:
            flat = self.codec.decode(raw, what)
        except ShardError as e:
            raise ChunkError(f"{e}; run `scdask verify` for every damaged chunk") from None
        self.check_position(coords, int.from_bytes(raw[-4:], "little"), what)
        return flat.reshape(self.chunk_shape)


class Entries(ChunkFiles):
    """Reader of ranges of one array (``X/data``, ``X/indices``) of a store."""

    def __init__(self, store: Any, path: str) -> None:
        super().__init__(store, path)
        self.codec: ShardCodec | None = None
        if store.format_version >= 3:
            self.codec = ShardCodec.from_metadata(self.meta)
        self.width = self.shape[1]
        self.dtype = np.dtype(self.arr.dtype) if self.codec is None else self.codec.dtype

    @property
    def arr(self) -> Any:
        """The Zarr array (read through Zarr for formats before 3)."""
        return self.store.array(self.path)

    @property
    def unit(self) -> int:
        """Entries per piece read on its own: an inner chunk, or a Zarr chunk."""
        return self.codec.inner if self.codec is not None else self.arr.chunks[1]

    def range(self, group: int, lo: int, hi: int) -> np.ndarray:
        """The entries ``lo:hi`` (``lo < hi``) of row ``group``: one gene, a run of genes,
        a whole row; copied out of each piece with plain slices."""
        unit = self.unit
        out = np.empty(hi - lo, self.dtype)
        for k, buf in self._pieces(group, range(lo // unit, (hi - 1) // unit + 1)):
            s = k * unit
            x, y = max(lo, s), min(hi, s + len(buf))
            out[x - lo : y - lo] = buf[x - s : y - s]
        return out

    def ranges(self, group: int, a: np.ndarray, b: np.ndarray, starts: np.ndarray,
               total: int) -> np.ndarray:
        """The entries ``a[j]:b[j]`` (sorted, non-empty ranges) of row ``group``, one range
        after another from ``starts[j]``."""
        if len(a) == 1:
            return self.range(group, int(a[0]), int(b[0]))
        from scdask.store.kernels import copy_overlaps

        unit = self.unit
        out = np.empty(total, self.dtype)

        mark = np.zeros(-(-self.width // unit) + 1, np.int64)
        np.add.at(mark, a // unit, 1)
        np.add.at(mark, (b - 1) // unit + 1, -1)
        pieces = np.flatnonzero(np.cumsum(mark[:-1]) > 0).tolist()
        for k, buf in self._pieces(group, pieces):
            s = k * unit
            j0 = int(np.searchsorted(b, s, side="right"))
            j1 = int(np.searchsorted(a, s + len(buf)))
            copy_overlaps(buf, s, a, b, starts, j0, j1, out)
        return out

    def _pieces(self, group: int, pieces: Any) -> Any:
        """``(k, entries)`` of each wanted piece ``k`` (sorted) of row ``group``
        (consecutive runs of Zarr chunks may come as one piece)."""
        if self.codec is None:
            pieces = np.asarray(pieces)
            cut = np.flatnonzero((np.diff(pieces) != 1)
                                 | (np.arange(1, len(pieces)) % SPAN_CHUNKS == 0))
            unit = self.unit
            for run in np.split(pieces, cut + 1):
                s, e = int(run[0]) * unit, min((int(run[-1]) + 1) * unit, self.width)
                yield int(run[0]), np.asarray(self.arr[group, s:e])
            return
        n_inner = self.codec.n_inner
        by_shard: dict[int, list[int]] = {}
        for k in pieces:
            by_shard.setdefault(k // n_inner, []).append(k % n_inner)
        for shard, inner in by_shard.items():
            yield from self._shard(group, shard, inner)

    def _shard(self, group: int, shard: int, inner: list[int]) -> Any:
        """``(k, entries)`` of inner chunks ``inner`` of a shard: the whole file in one read
        when many are wanted, else its index (cached) and each wanted inner chunk's bytes,
        through one open file."""
        codec = self.codec
        assert codec is not None
        key = f"{self.path}/c/{group}/{shard}"
        what = f"{self.store.url}: {self.path}: chunk {group}/{shard}"
        ck = (self._cache_key, group, shard)
        if len(inner) > WHOLE_SHARD:
            raw = memoryview(self._read(key, None))
            n = min(len(raw), codec.index_nbytes)
            index = self._index(ck, group, shard, raw[len(raw) - n :], len(raw), what)
            spans = [self._span(index, k, what) for k in inner]
            got = [raw[off : off + m] for off, m in spans]
        else:
            f = _File(self, key)
            try:
                with _LOCK:
                    index = _INDEX_CACHE.get(ck)
                if index is None:
                    size = f.size()
                    n = min(size, codec.index_nbytes)
                    index = self._index(ck, group, shard, f.read(size - n, n), size, what)
                spans = [self._span(index, k, what) for k in inner]
                got = [f.read(off, m) for off, m in spans]
            finally:
                f.close()
        base = shard * codec.n_inner
        for k, piece in zip(inner, got, strict=True):
            try:
                yield base + k, codec.decode(piece, f"{what}: inner chunk {k}")
            except ShardError as e:
                raise ChunkError(f"{e}; run `scdask verify` for every damaged chunk") from None

    @staticmethod
    def _span(index: list[tuple[int, int]], k: int, what: str) -> tuple[int, int]:
        off, n = index[k]
        if off == MISSING:
            raise ChunkError(f"{what}: inner chunk {k} is not written, but the row's "
                             "entries reach it; the store is damaged")
        return off, n

    def _index(self, ck: tuple[Any, ...], group: int, shard: int, tail: Any, size: int,
               what: str) -> list[tuple[int, int]]:
        """The checked index of a shard from its last bytes (``size``: the file's), kept
        per process under ``ck`` as ``(offset, length)`` per inner chunk."""
        codec = self.codec
        assert codec is not None
        try:
            array = codec.index(tail, what)
            check_extent(array, size, what)
        except ShardError as e:
            raise ChunkError(f"{e}; run `scdask verify` for every damaged chunk") from None
        self.check_position((group, shard), int.from_bytes(bytes(tail[-4:]), "little"), what)
        index = [tuple(x) for x in array.tolist()]
        with _LOCK:
            _INDEX_CACHE[ck] = index
            while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
                _INDEX_CACHE.popitem(last=False)
        return index


class _File:
    """One chunk file: a descriptor of a local file, or a path on object storage."""

    def __init__(self, files: ChunkFiles, key: str) -> None:
        self.files, self.key = files, key
        self.fd = files._open(key) if files.store.loc.is_local else None

    def size(self) -> int:
        if self.fd is not None:
            return os.fstat(self.fd).st_size
        loc = self.files.store.loc
        try:
            return int(loc.fs.info(loc.path(self.key))["size"])
        except FileNotFoundError:
            raise self.files._missing(self.key) from None

    def read(self, offset: int, n: int) -> bytes:
        if self.fd is not None:
            return self.files._pread(self.key, self.fd, n, offset)
        return self.files._remote(self.key, (offset, offset + n))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
