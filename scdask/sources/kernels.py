"""Compiled kernels of the source readers."""

from __future__ import annotations

from scdask._jit import jit


@jit(nogil=True)
def cast_checked(src, dst, low, high):  # pragma: no cover - compiled
    """``dst[:] = src``, checking each value lies in ``[low, high)`` and survives the cast;
    returns the first entry that does not (or -1). One vectorised pass instead of numpy's
    four (cast, compare, reduce, copy) when slabs are narrowed as they are read."""
    ok = True
    for i in range(src.shape[0]):
        v = src[i]
        inside = (v >= low) & (v < high)
        d = dst.dtype.type(v if inside else low)
        dst[i] = d
        ok &= inside & (d == v)
    if ok:
        return -1
    for i in range(src.shape[0]):  # rare: find where
        v = src[i]
        if not (v >= low and v < high) or dst[i] != v:
            return i
    return -1
