"""The arrays a conversion writes: their codecs, their creation, their finalisation.

Every chunk of every array is compressed with Blosc and checked by a CRC-32C
(format 2, docs/FORMAT.md); the matrix arrays are created empty by ``init`` and
the per-row-group ones are re-chunked and summed up by ``finalise``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from scdask.format import (
    COLPTR,
    COLPTR_DTYPE,
    DATA,
    ELEMENTS_FILE,
    INDEX_DTYPE,
    INDICES,
    MATRIX_ENCODING,
    STATS,
    UNS_FILE,
    WIP_DIR,
    Codecs,
    MatrixPlan,
    Plan,
    cell_stat_array,
    gene_stat_array,
)
from scdask.format.shards import ShardCodec, inner_chunk_size
from scdask.store import stats
from scdask.store.location import Location

# colptr is re-chunked at finalise to this many row groups × genes per chunk.
COLPTR_CHUNKS = (64, 1024)


# How a partition writes: no scan of every chunk for all-zero content (zarr's default,
# which cost 40% of the encoding; a partition writes only chunks it filled), and chunks
# written one at a time to a local disk (the cores are busy with other partitions; each
# chunk in flight cost a worker ~13 MB) but several at once to object storage, whose
# latency would otherwise add up.
WRITE_CONFIG = {"array.write_empty_chunks": True}


WRITE_CONCURRENCY = {True: 1, False: 8}  # by Location.is_local


# Every chunk of every array is written, all-zero ones included, so that a reader can
# tell a lost chunk from zeros (docs/FORMAT.md).
EVERY_CHUNK = {"write_empty_chunks": True}


# False writes format-1 stores, without checksums: only to measure what checksums cost
# (asv_bench), never for data anyone keeps.
_CHECKSUMS = True


def compressors(codecs: Codecs, shuffle: str, blocksize: int = 0, values: bool = False
                ) -> list[Any]:
    """Blosc, then a CRC-32C of the compressed bytes (every chunk of a format-2 store);
    ``values``: the compressor of ``data``."""
    # blocksize: Blosc's own default (0) cuts a chunk into small blocks; one block per
    # chunk compressed the 200k-cell plate's indices 2% smaller and encoded faster.
    cname, clevel = ((codecs.value_cname, codecs.value_clevel) if values
                     else (codecs.cname, codecs.clevel))
    blosc = BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle, blocksize=blocksize)
    return [blosc, Crc32cCodec()] if _CHECKSUMS else [blosc]


def value_shuffle(dtype: np.dtype) -> str:
    """Blosc's shuffle for stored values: integers bit-shuffled (a partition's uint16
    counts encode in 39 ms instead of 51 ms byte-shuffled and decode a little faster, for
    1.4% more bytes), floats byte-shuffled."""
    if dtype.itemsize == 1:
        return "noshuffle"
    return "bitshuffle" if dtype.kind in "iu" else "shuffle"


def delta_filter(dtype: str) -> list[Any]:
    from scdask.format.codecs import Delta  # numcodecs' delta, compiled

    return [Delta(dtype=dtype)]


def _inner(plan: Plan, chunk: int, most: int) -> int:
    """Entries per Blosc-compressed piece: an inner chunk (format 3), else the chunk."""
    return inner_chunk_size(chunk, most) if plan.format_version >= 3 else chunk


def _layout(plan: Plan, chunk: int, most: int) -> dict[str, Any]:
    """Zarr's chunking of ``data`` or ``indices``: each chunk of format 2 is a shard of
    inner chunks of at most ``most`` entries in format 3."""
    if plan.format_version >= 3:
        return {"chunks": (1, inner_chunk_size(chunk, most)), "shards": (1, chunk)}
    return {"chunks": (1, chunk)}


def create_matrix(root: zarr.Group, plan: Plan, m: MatrixPlan) -> None:
    g = root.require_group(m.name)
    G, cap = plan.n_groups, plan.capacity(m)
    c = plan.codecs
    chunk = min(plan.chunk_size, cap)
    stored = np.dtype(m.stored_dtype)
    g.create_array(
        DATA, shape=(G, cap), dtype=stored, fill_value=0, **_layout(plan, chunk, c.value_chunk),
        compressors=compressors(c, value_shuffle(stored), values=True,
                                blocksize=_inner(plan, chunk, c.value_chunk) * stored.itemsize),
    )
    g.create_array(
        INDICES, shape=(G, cap), dtype=INDEX_DTYPE, fill_value=0,
        **_layout(plan, chunk, c.index_chunk),
        filters=delta_filter(INDEX_DTYPE) if c.delta_indices else None,
        compressors=compressors(c, "bitshuffle", _inner(plan, chunk, c.index_chunk)
                                * np.dtype(INDEX_DTYPE).itemsize),
    )
    for stat in STATS:
        g.create_array(
            cell_stat_array(stat), shape=(plan.n_obs,), chunks=(plan.row_group_size,),
            dtype="int64" if stat == "nnz" else "float64", fill_value=0,
            compressors=compressors(c, "shuffle"),
        )
    wip = root.require_group(f"{WIP_DIR}/{m.name}")
    wip.create_array(
        COLPTR, shape=(G, m.n_vars + 1), chunks=(1, m.n_vars + 1), dtype=COLPTR_DTYPE,
        fill_value=0, filters=delta_filter(COLPTR_DTYPE), compressors=compressors(c, "bitshuffle"),
    )
    wip.create_array(
        "gene_partial", shape=(G, 4, max(m.n_vars, 1)), chunks=(1, 4, max(m.n_vars, 1)),
        dtype="float64", fill_value=0, compressors=compressors(c, "shuffle"),
    )


def write_row(arr: zarr.Array, row: int, values: np.ndarray, concurrency: int) -> None:
    """Write ``values`` as the first entries of row ``row`` of ``data`` or ``indices``.

    A sharded array (format 3) gets its shards from :class:`ShardCodec` (Zarr's sharded
    writes cost 2.2× the CPU), through the array's store, so the CRC of each shard's index
    is recorded like any chunk's (:class:`scdask.store.zarrstores.RecordingStore`). Shards
    past the last entry are not written.
    """
    codec = ShardCodec.from_array(arr) if arr.shards is not None else None
    if codec is None:
        arr[row, : len(values)] = values
        return
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store, proto = arr.store_path.store, default_buffer_prototype()
    prefix = f"{arr.path}/c/{row}" if arr.path else f"c/{row}"

    async def put(ks: range) -> None:
        async def one(k: int) -> None:
            raw, _ = codec.encode(values[k * codec.shard : (k + 1) * codec.shard])
            await store.set(f"{prefix}/{k}", proto.buffer.from_bytes(raw))

        await asyncio.gather(*(one(k) for k in ks))

    n = -(-len(values) // codec.shard)
    for k0 in range(0, n, concurrency):
        sync(put(range(k0, min(n, k0 + concurrency))))


def file_checksums(loc: Location) -> dict[str, int]:
    """CRC-32C of uns.json and elements.h5 (Parquet files carry their own page checksums)."""
    import google_crc32c

    out = {}
    for name, key in ((UNS_FILE, "uns_crc32c"), (ELEMENTS_FILE, "elements_crc32c")):
        if loc.exists(name):
            with loc.open(name, "rb") as f:
                out[key] = google_crc32c.value(f.read())
    return out


def finalise_matrix(root: zarr.Group, wip: zarr.Group, plan: Plan, m: MatrixPlan
                     ) -> dict[str, Any]:
    """Write ``colptr`` and the per-gene statistics from the partitions' results ``wip``.

    Rerunnable: arrays an interrupted finalise created are written again.
    """
    mg = root[m.name]
    G = plan.n_groups
    rows = COLPTR_CHUNKS[0]
    colptr = mg.create_array(
        COLPTR, shape=(G, m.n_vars + 1),
        chunks=(max(1, min(G, rows)), min(m.n_vars + 1, COLPTR_CHUNKS[1])),
        dtype=COLPTR_DTYPE, fill_value=0, filters=delta_filter(COLPTR_DTYPE),
        compressors=compressors(plan.codecs, "bitshuffle"),
        config=EVERY_CHUNK, overwrite=True,
    )
    acc = stats.empty_stats(m.n_vars)
    total = 0
    for a in range(0, G, rows):  # colptr re-chunked in blocks of row groups
        b = min(G, a + rows)
        cp = wip[COLPTR][a:b]
        colptr[a:b] = cp
        total += int(cp[:, -1].sum())
        for i in range(b - a):  # gene statistics one row group at a time
            if m.n_vars:
                f = wip["gene_partial"][a + i][:, : m.n_vars].T
                stats.merge_into(acc, (np.diff(cp[i]), f))
        del cp
    genes = stats.finish_stats(*acc, plan.n_obs)
    for stat in STATS:
        mg.create_array(
            gene_stat_array(stat), data=np.ascontiguousarray(genes[stat]),
            compressors=compressors(plan.codecs, "shuffle"), config=EVERY_CHUNK,
            overwrite=True,
        )
    info = {
        "encoding": MATRIX_ENCODING,
        "shape": [m.n_obs, m.n_vars],
        "dtype": m.dtype,
        "stored_dtype": m.stored_dtype,
        "nnz": total,
        "row_group_size": plan.row_group_size,
        "n_groups": G,
        "chunk_size": plan.chunk_size,
        "var": m.var,
        "source_format": m.source_format,
    }
    mg.attrs.put({"scdask_matrix": info})
    return info
