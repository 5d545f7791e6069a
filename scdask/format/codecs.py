"""Fast implementations of the codecs scdask stores use, bit for bit the same.

The cell indices of a store go through numcodecs' ``Delta`` filter, whose decoding is
``numpy.cumsum`` into the chunk's own dtype: on uint16 that runs at about 0.5 GB/s, a
fraction of Blosc's decoding speed. :func:`scdask.format.shards.delta_decode` gives the
same bits five times faster. :class:`Delta` is the same codec (same name,
configuration and bytes) with these loops for integer chunks; :func:`implementations`
selects it through Zarr's own mechanism for choosing a codec implementation
(``zarr.config["codecs"]``), only where scdask opens its arrays.
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

from scdask.format.shards import delta_decode, delta_encode


class Delta(_ZarrDelta):
    """numcodecs' ``Delta`` with faster loops for integer chunks (same bytes)."""

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
        out = await self._fast(delta_decode, chunk_data)
        if out is None:
            return await super()._decode_single(chunk_data, chunk_spec)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(out.reshape(chunk_spec.shape))

    async def _encode_single(self, chunk_data: Any, chunk_spec: Any) -> Any:
        out = await self._fast(delta_encode, chunk_data)
        if out is None:
            return await super()._encode_single(chunk_data, chunk_spec)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(out)

    async def _fast(self, loop: Any, chunk_data: Any) -> np.ndarray | None:
        """The chunk through ``loop``, flat; ``None`` where numcodecs' loops must run."""
        arr = chunk_data.as_ndarray_like()
        if not (isinstance(arr, np.ndarray) and self._plain(arr.dtype)):
            return None
        return await asyncio.to_thread(loop, np.ascontiguousarray(arr).reshape(-1))

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
