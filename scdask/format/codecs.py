"""Compiled implementations of the codecs scdask stores use, bit for bit the same.

The cell indices of a store go through numcodecs' ``Delta`` filter; numpy's
``cumsum``/``diff`` on uint16 run at about 0.3 GB/s, a third of Blosc's decoding
speed, so the prefix sum cost more than decompressing. :class:`Delta` is the same
codec (same name, configuration and bytes) with compiled loops for integer chunks;
:func:`implementations` selects it through Zarr's own mechanism for choosing a codec
implementation (``zarr.config["codecs"]``), only where scdask opens its arrays.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import zarr
from zarr.codecs.numcodecs import Delta as _ZarrDelta
from zarr.registry import register_codec

from scdask._jit import jit


@jit(nogil=True)
def _undelta(enc, out):  # pragma: no cover - compiled; wraps around like numpy's
    acc = enc.dtype.type(0)
    for i in range(enc.shape[0]):
        acc += enc[i]
        out[i] = acc


@jit(nogil=True)
def _delta(arr, out):  # pragma: no cover - compiled
    prev = arr.dtype.type(0)
    for i in range(arr.shape[0]):
        out[i] = arr[i] - prev
        prev = arr[i]


def delta_encode(arr: np.ndarray) -> np.ndarray:
    """numcodecs' ``Delta`` encoding of a 1-D integer array (differences, wrapping)."""
    out = np.empty_like(arr)
    _delta(arr, out)
    return out


def delta_decode(enc: np.ndarray) -> np.ndarray:
    """The inverse of :func:`delta_encode` (a wrapping prefix sum)."""
    out = np.empty_like(enc)
    _undelta(enc, out)
    return out


class Delta(_ZarrDelta):
    """numcodecs' ``Delta`` with compiled loops for integer chunks (same bytes)."""

    def __init__(self, **codec_config: Any) -> None:
        # Zarr notes, on every array it opens, that numcodecs' codecs are outside the v3
        # spec; docs/FORMAT.md says so once. Only this notice, only here, is silenced.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Numcodecs codecs are not in the Zarr version 3")
            super().__init__(**codec_config)

    def _plain(self, dtype: np.dtype) -> bool:
        cfg = self.codec_config
        return (np.dtype(cfg.get("dtype", dtype)) == dtype and dtype.kind in "iu"
                and cfg.get("astype") in (None, cfg.get("dtype")))

    async def _decode_single(self, chunk_data: Any, chunk_spec: Any) -> Any:
        out = await self._compiled(_undelta, chunk_data)
        if out is None:
            return await super()._decode_single(chunk_data, chunk_spec)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(out.reshape(chunk_spec.shape))

    async def _encode_single(self, chunk_data: Any, chunk_spec: Any) -> Any:
        out = await self._compiled(_delta, chunk_data)
        if out is None:
            return await super()._encode_single(chunk_data, chunk_spec)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(out)

    async def _compiled(self, kernel: Any, chunk_data: Any) -> np.ndarray | None:
        """The chunk through ``kernel``, flat; ``None`` where numcodecs' loops must run."""
        arr = chunk_data.as_ndarray_like()
        if not (isinstance(arr, np.ndarray) and self._plain(arr.dtype)):
            return None
        arr = np.ascontiguousarray(arr).reshape(-1)
        out = np.empty_like(arr)
        await asyncio.to_thread(kernel, arr, out)
        return out

register_codec("numcodecs.delta", Delta)
_OURS = {"numcodecs.delta": f"{Delta.__module__}.{Delta.__qualname__}"}


_STATE: dict[str, Any] = {"users": 0, "saved": None}
_LOCK = threading.Lock()


@contextlib.contextmanager
def implementations() -> Iterator[None]:
    """Open Zarr arrays within this context to use scdask's codec implementations.

    Zarr's configuration is one for the process: the setting is counted across threads
    (Dask runs reads in several), made by the first to enter and undone by the last to
    leave, so no thread opens an array with zarr's own implementation meanwhile.
    """
    with _LOCK:
        if _STATE["users"] == 0:
            saved = dict(zarr.config.get("codecs", {}))
            # codec names hold dots: the mapping is set whole, not as dotted config keys
            zarr.config.set({"codecs": {**saved, **_OURS}})
            _STATE["saved"] = saved
        _STATE["users"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _STATE["users"] -= 1
            if _STATE["users"] == 0:
                zarr.config.set({"codecs": _STATE["saved"]})
                _STATE["saved"] = None
