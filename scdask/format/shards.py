"""Shards of ``data`` and ``indices`` (format 3): Zarr v3's sharding codec, encoded and
decoded by scdask.

A row of a matrix's ``data`` (or ``indices``) array is cut into shards of
``chunk_size`` entries (one file each, as the chunks of format 2 were), and each shard
into inner chunks of :data:`INNER_CHUNK` entries, each compressed on its own and ending
with a CRC-32C; the shard ends with its index (offset and length of every inner chunk,
little-endian uint64, ``2**64 - 1`` for one not written) and the index's CRC-32C. This
is exactly Zarr's ``sharding_indexed`` codec with ``index_location = "end"``, so Zarr
reads every store; scdask reads a shard's index and only the inner chunks a query needs
(one gene over a row group: ~0.14 ms instead of ~2.4 ms through Zarr, docs/FORMAT.md)
and writes shards with this encoder (Zarr's sharded writes cost 2.2× the CPU).

:class:`ShardCodec` is the one description of an array's inner pipeline both sides use;
:meth:`ShardCodec.from_array` derives it from the codecs recorded in the array's
``zarr.json``, and returns ``None`` for any other pipeline (Zarr then reads it).
"""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import Any

import google_crc32c
import numcodecs
import numpy as np

#: Entries per inner chunk: one gene over a row group decodes one or two of them.
INNER_CHUNK = 1 << 16
#: An inner chunk not written (the shard index's offset and length both hold it).
MISSING = (1 << 64) - 1


def delta_encode(arr: np.ndarray) -> np.ndarray:
    """numcodecs' ``Delta`` encoding of a 1-D integer array (differences, wrapping)."""
    out = np.empty_like(arr)
    out[:1] = arr[:1]
    np.subtract(arr[1:], arr[:-1], out=out[1:])
    return out


def delta_decode(enc: np.ndarray) -> np.ndarray:
    """The inverse of :func:`delta_encode` (a wrapping prefix sum).

    ``numpy.cumsum`` into a uint16 chunk's own dtype runs at ~0.5 GB/s; accumulating in
    32 bits and casting back gives the same bits (both wrap modulo 2**16) at ~2.7 GB/s, as
    fast as a compiled loop, with no kernel to load in a fresh process.
    """
    if enc.dtype.itemsize >= 4:
        return np.cumsum(enc, dtype=enc.dtype)
    wide = np.dtype(f"{enc.dtype.kind}4")  # same bits modulo 2**(8 * itemsize), faster
    return np.cumsum(enc, dtype=wide).astype(enc.dtype)


class ShardError(ValueError):
    """A shard or one of its inner chunks is damaged; the message says which part."""


def inner_chunk_size(chunk_size: int, most: int = INNER_CHUNK) -> int:
    """The inner chunk of a shard of ``chunk_size`` entries: the largest power of two that
    divides the shard and is at most ``most`` and a sixteenth of the shard
    (65,536 for the default shards of 1M entries; small shards, as in tests, still hold
    several inner chunks), or the whole shard when that would be under 64 entries."""
    cap = min(most, max(1, chunk_size // 16))
    size = 1 << (cap.bit_length() - 1)
    while chunk_size % size:
        size //= 2
    return size if size >= 64 else chunk_size


def with_crc(raw: bytes) -> bytes:
    """``raw`` followed by its CRC-32C (little-endian), as Zarr's ``crc32c`` codec writes."""
    return raw + int(google_crc32c.value(raw)).to_bytes(4, "little")


def strip_crc(raw: bytes | memoryview, what: str) -> memoryview:
    """The bytes before a trailing CRC-32C, checked; :class:`ShardError` naming ``what``."""
    mv = memoryview(raw)
    if len(mv) < 4 or google_crc32c.value(bytes(mv[:-4])) != int.from_bytes(mv[-4:], "little"):
        raise ShardError(f"{what} is damaged (its checksum does not match its bytes)")
    return mv[:-4]


_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


@dataclasses.dataclass(frozen=True)
class ChunkCodec:
    """How one chunk (a plain chunk, or an inner chunk of a shard) is encoded: numcodecs'
    ``Delta`` (optionally), Blosc, then a CRC-32C — the chains scdask writes.

    Attributes
    ----------
    size
        Entries per chunk (the product of the chunk shape).
    dtype
        The array's dtype (little-endian).
    delta
        numcodecs' ``Delta`` filter first (cell indices, colptr offsets).
    blosc
        numcodecs' Blosc configuration (``cname``, ``clevel``, ``shuffle``, ``blocksize``).
    """

    size: int
    dtype: np.dtype
    delta: bool
    blosc: dict[str, Any]

    @classmethod
    def from_chain(cls, chain: list[dict[str, Any]], dtype: np.dtype, size: int
                   ) -> ChunkCodec | None:
        """The codec for a Zarr codec chain (``zarr.json``'s), or ``None`` for another chain."""
        chain = list(chain)
        delta = chain[0]["name"] == "numcodecs.delta"
        if delta:
            d = chain.pop(0).get("configuration", {})
            if np.dtype(d.get("dtype", dtype)) != dtype or d.get("astype") not in (None, d.get("dtype")):
                return None
        if [c["name"] for c in chain] != ["bytes", "blosc", "crc32c"] or (
                dtype.itemsize > 1 and chain[0]["configuration"]["endian"] != "little"):
            return None
        b = chain[1]["configuration"]
        blosc = {"cname": b["cname"], "clevel": int(b["clevel"]),
                 "shuffle": _SHUFFLES[b["shuffle"]], "blocksize": int(b.get("blocksize", 0))}
        return cls(int(size), dtype, delta, blosc)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> ChunkCodec | None:
        """The codec of a plain (not sharded) array from its ``zarr.json``, or ``None``."""
        try:
            if meta["chunk_key_encoding"]["configuration"].get("separator", "/") != "/":
                return None
            shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
            return cls.from_chain(meta["codecs"], np.dtype(meta["data_type"]), math.prod(shape))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            return None

    def encode(self, values: np.ndarray) -> bytes:
        """A chunk's bytes from its ``size`` entries."""
        if self.delta:
            values = delta_encode(values)
        return with_crc(numcodecs.Blosc(**self.blosc).encode(values))

    def decode(self, raw: bytes | memoryview, what: str) -> np.ndarray:
        """A chunk's entries (flat) from its bytes, checked (CRC-32C, then sizes)."""
        body = strip_crc(raw, what)
        want = self.size * self.dtype.itemsize
        try:  # the header's sizes first: never allocate what a damaged header claims
            if len(body) < 16:  # Blosc's header: flags, then nbytes, blocksize, cbytes (LE)
                raise ValueError("it is shorter than Blosc's header")
            nbytes, _, cbytes = struct.unpack_from("<III", body, 4)
            if nbytes != want or cbytes != len(body):
                raise ValueError(f"its header gives {nbytes} bytes from {cbytes}, not "
                                 f"{want} from {len(body)}")
            out = np.frombuffer(numcodecs.blosc.decompress(body), dtype=self.dtype)
        except Exception as e:  # Blosc's errors do not say which chunk
            raise ShardError(f"{what} cannot be decompressed ({e})") from None
        return delta_decode(out) if self.delta else out


@dataclasses.dataclass(frozen=True)
class ShardCodec:
    """How one sharded array (``data``, ``indices``) is encoded.

    Attributes
    ----------
    shard
        Entries per shard, a multiple of the inner chunk's.
    chunk
        The codec of each inner chunk.
    """

    shard: int
    chunk: ChunkCodec

    @property
    def inner(self) -> int:
        return self.chunk.size

    @property
    def dtype(self) -> np.dtype:
        return self.chunk.dtype

    @property
    def delta(self) -> bool:
        return self.chunk.delta

    @property
    def n_inner(self) -> int:
        return self.shard // self.inner

    @property
    def index_nbytes(self) -> int:
        """Bytes of a shard's index with its CRC-32C."""
        return 16 * self.n_inner + 4

    @classmethod
    def from_array(cls, arr: Any) -> ShardCodec | None:
        """The codec of a Zarr array written as format 3 writes it, else ``None``."""
        return cls.from_metadata(arr.metadata.to_dict())

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> ShardCodec | None:
        """The codec from an array's ``zarr.json`` (parsed), if it is the pipeline format 3
        writes (any numcodecs ``Blosc`` settings); ``None`` for any other."""
        try:
            return cls._parse(meta)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            return None

    @classmethod
    def _parse(cls, meta: dict[str, Any]) -> ShardCodec | None:
        codecs = meta["codecs"]
        if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
            return None
        cfg = codecs[0]["configuration"]
        shard = list(meta["chunk_grid"]["configuration"]["chunk_shape"])
        inner = list(cfg["chunk_shape"])
        names = [c["name"] for c in cfg["index_codecs"]]
        if (len(shard) != 2 or shard[0] != 1 or inner[0] != 1 or shard[1] % inner[1]
                or cfg.get("index_location", "end") != "end" or names != ["bytes", "crc32c"]
                or cfg["index_codecs"][0].get("configuration", {}).get("endian") != "little"
                or meta["chunk_key_encoding"]["configuration"].get("separator", "/") != "/"):
            return None
        chunk = ChunkCodec.from_chain(cfg["codecs"], np.dtype(meta["data_type"]), inner[1])
        return None if chunk is None else cls(int(shard[1]), chunk)

    def encode(self, values: np.ndarray) -> tuple[bytes, int]:
        """One shard's bytes from its first ``len(values)`` entries (the rest not written),
        and the CRC-32C of its index (what the position table records)."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if len(values) > self.shard:
            raise ValueError(f"{len(values)} entries do not fit a shard of {self.shard}")
        parts: list[bytes] = []
        index = np.full((self.n_inner, 2), MISSING, dtype="<u8")
        offset = 0
        for k in range(-(-len(values) // self.inner)):
            piece = values[k * self.inner : (k + 1) * self.inner]
            if len(piece) < self.inner:  # the last inner chunk holds fill values (0) after
                piece = np.concatenate([piece, np.zeros(self.inner - len(piece), self.dtype)])
            raw = self.chunk.encode(piece)
            index[k] = offset, len(raw)
            offset += len(raw)
            parts.append(raw)
        tail = with_crc(index.tobytes())
        return b"".join(parts) + tail, int.from_bytes(tail[-4:], "little")

    def index(self, raw: bytes | memoryview, what: str) -> np.ndarray:
        """The ``(n_inner, 2)`` offsets and lengths from a shard's last
        :attr:`index_nbytes` bytes, checked."""
        body = strip_crc(raw, f"{what}: the shard index")
        if len(body) != 16 * self.n_inner:
            raise ShardError(f"{what}: the shard index has {len(body)} bytes, not "
                             f"{16 * self.n_inner}")
        # a copy: a view would keep the whole shard's bytes alive wherever the index is kept
        return np.frombuffer(body, dtype="<u8").reshape(-1, 2).copy()

    def decode(self, raw: bytes | memoryview, what: str) -> np.ndarray:
        """One inner chunk's entries from its bytes, checked."""
        return self.chunk.decode(raw, what)


def check_extent(index: np.ndarray, size: int, what: str) -> None:
    """Refuse an index whose written inner chunks leave a shard file of ``size`` bytes
    (the index at its end included) or overlap."""
    written = index[:, 0] != MISSING
    off, n = index[written, 0], index[written, 1]
    end = size - 16 * len(index) - 4
    if len(off) and ((off + n > end).any() or (n < 4).any() or (off > end).any()):
        raise ShardError(f"{what}: the shard index points outside the shard's {size} bytes")


def index_nbytes(arr: Any) -> int:
    """Bytes of the index (with its CRC-32C) at the end of each chunk file of a Zarr
    array: 0 unless it is sharded."""
    if arr.shards is None:
        return 0
    return 16 * math.prod(s // c for s, c in zip(arr.shards, arr.chunks, strict=True)) + 4


def check_shard(raw: bytes | memoryview, n_index: int, what: str) -> None:
    """Check a whole shard file: its index's CRC-32C, where the index points, and every
    written inner chunk's CRC-32C; :class:`ShardError` for the first failure."""
    mv = memoryview(raw)
    if len(mv) < n_index:
        raise ShardError(f"{what}: the shard is {len(mv)} bytes, shorter than its index")
    body = strip_crc(mv[len(mv) - n_index :], f"{what}: the shard index")
    index = np.frombuffer(body, dtype="<u8").reshape(-1, 2)
    check_extent(index, len(mv), what)
    for k, (off, n) in enumerate(index.tolist()):
        if off != MISSING:
            strip_crc(mv[off : off + n], f"{what}: inner chunk {k}")
