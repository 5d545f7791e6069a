"""scdask's codec implementations write and read the same bytes as numcodecs'."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numcodecs import Delta as NumcodecsDelta

from scdask.format import codecs

DTYPES = st.sampled_from(["uint8", "uint16", "int8", "int16", "int32", "uint32", "int64", "uint64"])


@settings(max_examples=60, deadline=None)
@given(DTYPES.flatmap(lambda dt: arrays(dt, st.integers(1, 3000))))
def test_delta_loops_equal_numcodecs(x):
    ref = NumcodecsDelta(dtype=str(x.dtype))
    enc = codecs.delta_encode(x)
    assert enc.dtype == x.dtype
    np.testing.assert_array_equal(enc, ref.encode(x))  # wraps around like numpy
    dec = codecs.delta_decode(enc)
    assert dec.dtype == x.dtype
    np.testing.assert_array_equal(dec, x)
    np.testing.assert_array_equal(dec, ref.decode(ref.encode(x)))


@pytest.mark.parametrize("dtype", ["uint16", "int64"])
def test_arrays_written_with_ours_read_with_zarrs_and_back(tmp_path, dtype):
    from zarr.codecs.numcodecs import Delta

    rng = np.random.default_rng(0)
    x = rng.integers(0, np.iinfo(dtype).max, size=(3, 10_000), dtype=dtype)
    paths = {}
    for name, ctx in (("ours", codecs.implementations), ("zarr", _nothing)):
        zarr.create_array(tmp_path / name, shape=x.shape, chunks=(1, 4096), dtype=dtype,
                          filters=[Delta(dtype=dtype)])
        with ctx():  # the implementation is chosen when an array is opened
            a = zarr.open_array(tmp_path / name, mode="r+")
            assert isinstance(a.metadata.codecs[0], codecs.Delta) == (name == "ours")
            a[:] = x
        paths[name] = tmp_path / name
    for name in paths:  # the same chunk files, byte for byte
        ours = sorted(p.relative_to(paths["ours"]) for p in paths["ours"].rglob("c/*/*"))
        assert ours and ours == sorted(p.relative_to(paths[name]) for p in paths[name].rglob("c/*/*"))
        for rel in ours:
            assert (paths["ours"] / rel).read_bytes() == (paths["zarr"] / rel).read_bytes()
    for ctx in (codecs.implementations, _nothing):
        with ctx():
            np.testing.assert_array_equal(zarr.open_array(paths["ours"])[:], x)
            np.testing.assert_array_equal(zarr.open_array(paths["ours"])[1, 17:9000], x[1, 17:9000])


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
