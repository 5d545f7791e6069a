"""Arrays a conversion worker reuses from one row group to the next.

Memory a process touches for the first time is zeroed by the kernel, page by page:
allocating the four row-group-sized arrays of a partition afresh (the slab's column
indices and values, the transposed cell indices and values) cost 7% of its CPU time.
A local worker converts one row group after another, so it keeps them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Room to grow: the next row group may hold a few more entries than this one.
_HEADROOM = 1.125


class Scratch:
    """Named byte buffers, grown when too small, handed out as typed arrays.

    An array from :meth:`empty` is valid until the next call with the same name;
    callers use one name per role and finish with a row group before the next.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def empty(self, name: str, n: int, dtype: Any) -> np.ndarray:
        """An uninitialised array of ``n`` items of ``dtype``, in buffer ``name``."""
        dtype = np.dtype(dtype)
        size = n * dtype.itemsize
        buf = self._buffers.get(name)
        if buf is None or buf.nbytes < size:
            self._buffers.pop(name, None)  # freed before its successor is allocated
            buf = self._buffers[name] = np.empty(int(size * _HEADROOM) + 64, dtype=np.uint8)
        return buf[:size].view(dtype)

    def clear(self) -> None:
        """Give every buffer back."""
        self._buffers.clear()

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())


def empty(scratch: Scratch | None, name: str, n: int, dtype: Any) -> np.ndarray:
    """``scratch.empty(name, n, dtype)``, or a new array without a scratch."""
    return np.empty(n, dtype=dtype) if scratch is None else scratch.empty(name, n, dtype)
