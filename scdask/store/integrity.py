"""Every chunk read from a store is there and intact, or an error names it.

Zarr reads a missing chunk as its fill value and leaves checksums to the codecs,
whose errors do not say which chunk failed. A chunk key that is absent, or whose
trailing CRC-32C (Zarr v3's ``crc32c`` codec, the last codec of every array of a
format-2 store) does not match its bytes, raises :class:`ChunkError` naming the
store, the array and the chunk: here for scdask's own reader
(:mod:`scdask.store.entries`), in :mod:`scdask.store.zarrstores` for reads through
Zarr. This module does not import Zarr.

A CRC binds a chunk's bytes, not its place: a chunk copied over another of the same
array passes it. So each array of a format-2 store also keeps a table of its chunks'
CRCs by position (:data:`TABLE`, written once at the end of a conversion from what
:class:`scdask.store.zarrstores.RecordingStore` saw written), and a chunk read at a position whose recorded
CRC differs is refused too.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from typing import Any

import google_crc32c
import numpy as np

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


def trailing_crc(raw: bytes | memoryview | np.ndarray) -> int:
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
    if len(raw) < 4 or trailing_crc(raw) != google_crc32c.value(bytes(raw[:-4])):
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
    if int(table[idx]) != trailing_crc(raw):
        raise ChunkError(f"{url}: {array}: chunk {coords} is not the chunk written at this "
                         "position (its checksum is another chunk's); the store is damaged")


def write_tables(loc: Any, root: Any, crcs: dict[str, int], skip: str) -> None:
    """Write the :data:`TABLE` of every array under ``root`` but those under ``skip``.

    Parameters
    ----------
    loc
        The store's :class:`scdask.storage.Location`.
    root
        Its root group.
    crcs
        The CRC of every chunk written, by chunk key (:attr:`scdask.store.zarrstores.RecordingStore.crcs`).
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
