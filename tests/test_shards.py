"""Format 3's shards: scdask's encoder and reader against Zarr's, and damaged shards.

Zarr's ``sharding_indexed`` codec is the reference: what scdask writes, Zarr reads back
the same, and what Zarr writes, scdask reads the same. Then a shard is damaged the ways
disks and people do (one inner chunk, its index, a crafted Blosc header, an index that
points outside the file) and every read must be right or an error naming the store, the
array, the chunk and the inner chunk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import scdask
from scdask.format.shards import MISSING, ShardCodec, inner_chunk_size, with_crc
from scdask.store.integrity import TABLE, ChunkError, decode_table, encode_table
from scdask.store.reader import Store
from scdask.store.verify import verify


def _sharded(path, dtype, shard=4096, inner=256, delta=False):
    from zarr.codecs import BloscCodec, Crc32cCodec

    from scdask.conversion.arrays import delta_filter

    return zarr.create_array(
        str(path), shape=(3, shard * 3), chunks=(1, inner), shards=(1, shard), dtype=dtype,
        fill_value=0, filters=delta_filter(str(np.dtype(dtype))) if delta else None,
        compressors=[BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle",
                                blocksize=inner * np.dtype(dtype).itemsize), Crc32cCodec()])


@pytest.mark.parametrize("dtype,delta", [("uint16", True), ("uint16", False), ("float32", False),
                                         ("float64", False), ("int8", False)])
@pytest.mark.parametrize("n", [1, 255, 256, 257, 1000, 4096])
def test_scdask_shards_read_by_zarr_and_zarr_shards_by_scdask(tmp_path, dtype, delta, n):
    from scdask.format.codecs import implementations

    rng = np.random.default_rng(n)
    values = rng.integers(1, 120, n).astype(dtype)
    with implementations():
        ours = _sharded(tmp_path / "ours", dtype, delta=delta)
        codec = ShardCodec.from_array(ours)
        assert codec is not None and (codec.inner, codec.delta) == (256, delta)
        raw, crc = codec.encode(values)
        assert int.from_bytes(raw[-4:], "little") == crc
        (tmp_path / "ours" / "c" / "1").mkdir(parents=True)
        (tmp_path / "ours" / "c" / "1" / "0").write_bytes(raw)
        got = zarr.open_array(str(tmp_path / "ours"))[1, :4096]
        np.testing.assert_array_equal(got[:n], values)
        assert not got[n:].any()
        # and Zarr's own shard, decoded by scdask inner chunk by inner chunk
        theirs = _sharded(tmp_path / "theirs", dtype, delta=delta)
        theirs[1, :n] = values
    shard = (tmp_path / "theirs" / "c" / "1" / "0").read_bytes()
    index = codec.index(shard[-codec.index_nbytes:], "test")
    pieces = [codec.decode(shard[o : o + m], "test") for o, m in index.tolist() if o != MISSING]
    np.testing.assert_array_equal(np.concatenate(pieces)[:n], values)


def test_inner_chunk_sizes():
    assert inner_chunk_size(1 << 20) == 65536
    assert inner_chunk_size(4096) == 256
    assert inner_chunk_size(1280) == 64
    assert inner_chunk_size(100_000) == 100_000  # no power of two of 64 or more divides it


def test_inner_chunk_cap():
    assert inner_chunk_size(1 << 20, 1 << 15) == 32768
    assert inner_chunk_size(4096, 1 << 15) == 256  # still a sixteenth of a small shard


@pytest.mark.parametrize("codecs", [
    {},  # the defaults: values in lz4hc, indices in zstd, inner chunks apart
    {"value_cname": "zstd", "cname": "lz4", "value_chunk": 64, "index_chunk": 128},
])
def test_each_array_gets_its_codec_and_inner_chunk(tmp_path, tiny_plate, codecs):
    """Each of ``data`` and ``indices`` is written with its own Blosc codec and inner chunk
    (recorded in its ``zarr.json``), and every read (scdask's, Zarr's) gives the plate."""
    import anndata

    from scdask.format import Codecs

    want = Codecs(**codecs)
    dst = tmp_path / "plate.zarr"
    scdask.convert(tiny_plate, dst, row_group_size=1024, chunk_size=4096, workers=0,
                   codecs=want)
    for leaf, cname, most in (("data", want.value_cname, want.value_chunk),
                              ("indices", want.cname, want.index_chunk)):
        meta = zarr.open_array(str(dst / "X" / leaf)).metadata.to_dict()
        shard = meta["codecs"][0]["configuration"]
        assert shard["chunk_shape"][1] == inner_chunk_size(4096, most)
        assert [c for c in shard["codecs"] if c["name"] == "blosc"][0]["configuration"][
            "cname"] == cname
    ds = scdask.open(dst)
    X = anndata.read_h5ad(tiny_plate).X
    np.testing.assert_allclose(ds.X.sum("cell").values, np.asarray(X.sum(0)).ravel(), rtol=1e-6)
    j = 17
    np.testing.assert_array_equal(ds.X.isel(gene=j).values, X[:, j].toarray().ravel())
    assert verify(str(dst), against=tiny_plate).ok


@pytest.fixture
def store(tmp_path, tiny_store):
    dst = tmp_path / "plate.zarr"
    shutil.copytree(tiny_store, dst)
    return dst


def test_ranges_equal_zarrs_reads(tiny_store):
    st = Store(tiny_store)
    assert st.format_version >= 3
    rng = np.random.default_rng(0)
    for leaf in ("data", "indices"):
        e = st.entries("X", leaf)
        assert e.codec is not None and e.codec.n_inner == 16
        for g in range(st.n_groups):
            nnz = int(st.colptr_row("X", g)[-1])
            whole = np.asarray(e.arr[g, :nnz])
            for _ in range(20):
                cuts = np.sort(rng.choice(nnz + 1, size=6, replace=False))
                a, b = cuts[0::2], cuts[1::2]
                lengths = b - a
                starts = np.cumsum(lengths) - lengths
                got = e.ranges(g, a, b, starts, int(lengths.sum()))
                want = np.concatenate([whole[x:y] for x, y in zip(a, b, strict=True)])
                np.testing.assert_array_equal(got, want)


def _shard_of_gene(store: Path, gene: int, group: int = 0) -> tuple[Path, int, int]:
    """The shard file, and the inner chunk within it, holding gene ``gene``'s first entry."""
    st = Store(store)
    e = st.entries("X", "data")
    a = int(st.colptr_row("X", group)[gene])
    k = a // e.codec.inner
    return store / "X" / "data" / "c" / str(group) / str(k // e.codec.n_inner), k % e.codec.n_inner, k


def _rewrite(path: Path, store: Path, group: int, shard: int, edit) -> None:
    """Rewrite a shard through ``edit(parts, index)`` with every checksum made consistent
    again (index CRC, position table): damage only a crafted store carries."""
    raw = path.read_bytes()
    codec = ShardCodec.from_array(Store(store).array("X/data"))
    index = codec.index(raw[-codec.index_nbytes:], "test").copy()
    parts = {k: raw[o : o + n] for k, (o, n) in enumerate(index.tolist()) if o != MISSING}
    edit(parts, index)
    out, offset = [], 0
    for k in range(codec.n_inner):
        if k in parts and index[k, 0] != MISSING:
            index[k] = offset, len(parts[k])
            out.append(parts[k])
            offset += len(parts[k])
    tail = with_crc(index.astype("<u8").tobytes())
    path.write_bytes(b"".join(out) + tail)
    tpath = store / "X" / "data" / TABLE
    table = decode_table("t", "X/data", tpath.read_bytes()).copy()
    table[group, shard] = int.from_bytes(tail[-4:], "little")
    tpath.write_bytes(encode_table(table))


def _gene_mean(store, gene: int) -> float:
    ds = scdask.open(store)
    return float(ds.X.isel(gene=gene).mean())


def test_damaged_inner_chunk_fails_only_the_queries_that_read_it(store, ref):
    _, X = ref
    st = Store(store)
    cp = st.colptr_row("X", 0)
    e = st.entries("X", "data")
    # a gene whose entries in row group 0 lie in one inner chunk, and one far from it
    first, last = cp[:-1] // e.codec.inner, (cp[1:] - 1) // e.codec.inner
    has = np.diff(cp) > 0
    gene = int(np.flatnonzero(has & (first >= 2))[0])
    path, k, flat = _shard_of_gene(store, gene)
    far = int(np.flatnonzero(has & ((last < flat) | (first > flat)))[-1])
    raw = bytearray(path.read_bytes())
    index = e.codec.index(bytes(raw[-e.codec.index_nbytes:]), "test")
    raw[int(index[k, 0]) + int(index[k, 1]) // 2] ^= 0x04
    path.write_bytes(bytes(raw))
    assert _gene_mean(store, far) == pytest.approx(X[:, far].mean(), rel=1e-12)
    with pytest.raises(ChunkError) as err:
        _gene_mean(store, gene)
    msg = str(err.value)
    assert str(store) in msg and "X/data" in msg and f"inner chunk {k}" in msg, msg
    report = verify(str(store))
    assert not report.ok and any(f"inner chunk {k}" in p for p in report.problems), report.problems


@pytest.mark.parametrize("how", ["outside", "huge_header", "missing", "garbage"])
def test_crafted_shard_is_refused_not_trusted(store, how):
    path, k, _ = _shard_of_gene(store, 0)
    gene_shard = int(path.name)

    def edit(parts, index):
        if how == "outside":
            parts[k] = parts[k]  # kept; its offset is moved past the file below
        elif how == "huge_header":  # Blosc header claiming 2 GB, valid CRC
            body = bytearray(parts[k][:-4])
            body[4:8] = (2**31 - 1).to_bytes(4, "little")
            parts[k] = with_crc(bytes(body))
        elif how == "missing":
            index[k] = MISSING, MISSING
        elif how == "garbage":
            parts[k] = with_crc(bytes(range(256)) * 4)

    _rewrite(path, store, 0, gene_shard, edit)
    if how == "outside":  # point inner chunk k past the end, index CRC and table made valid
        raw = bytearray(path.read_bytes())
        codec = ShardCodec.from_array(Store(store).array("X/data"))
        index = codec.index(bytes(raw[-codec.index_nbytes:]), "t").copy()
        index[k, 0] = len(raw) * 4
        tail = with_crc(index.astype("<u8").tobytes())
        path.write_bytes(bytes(raw[: -codec.index_nbytes]) + tail)
        tpath = store / "X" / "data" / TABLE
        table = decode_table("t", "X/data", tpath.read_bytes()).copy()
        table[0, gene_shard] = int.from_bytes(tail[-4:], "little")
        tpath.write_bytes(encode_table(table))
    with pytest.raises(ChunkError) as err:
        _ = scdask.open(store).X.isel(gene=0).mean().values
    msg = str(err.value)
    assert str(store) in msg and "X/data" in msg and f"0/{gene_shard}" in msg, msg
    assert {"outside": "points outside", "huge_header": "cannot be decompressed",
            "missing": f"inner chunk {k} is not written",
            "garbage": "cannot be decompressed"}[how] in msg, msg
    assert not verify(str(store)).ok


def test_misplaced_shard_is_refused(store):
    """A whole shard copied over another of the same array: its CRCs are valid, its place
    is not (the position table records the index's CRC)."""
    folder = store / "X" / "data" / "c" / "0"
    files = sorted(folder.iterdir(), key=lambda p: int(p.name))
    assert len(files) >= 2
    files[1].write_bytes(files[0].read_bytes())
    st = Store(store)
    with pytest.raises(ChunkError, match="not the chunk written at this position"):
        st.read_group("X", 0)
