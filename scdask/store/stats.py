"""Per-cell and per-gene statistics: accumulators, merging and the final fold of zeros.

Plain numpy, so the processes that only combine statistics (the conversion's
driver, the finaliser) need no compiler. The kernels that fill the accumulators
from a stored row group are in :mod:`scdask.store.kernels`.
"""

from __future__ import annotations

import numpy as np

from scdask.format import STATS


def empty_stats(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Accumulators for :func:`gene_stats`/:func:`cell_stats`: nnz and (sum, sumsq, min, max)."""
    f = np.zeros((n, 4), dtype=np.float64)
    f[:, 2] = np.inf
    f[:, 3] = -np.inf
    return np.zeros(n, dtype=np.int64), f


def merge_into(acc: tuple[np.ndarray, np.ndarray], part: tuple[np.ndarray, np.ndarray]) -> None:
    """Add the partial statistics ``part`` of the same genes (or cells) into ``acc``, in place."""
    np.add(acc[0], part[0], out=acc[0])
    np.add(acc[1][:, :2], part[1][:, :2], out=acc[1][:, :2])
    np.minimum(acc[1][:, 2], part[1][:, 2], out=acc[1][:, 2])  # NaN propagates, like numpy's min
    np.maximum(acc[1][:, 3], part[1][:, 3], out=acc[1][:, 3])


def finish_stats(nnz: np.ndarray, f: np.ndarray, n_total: int) -> dict[str, np.ndarray]:
    """Fold the implicit zeros into min/max: statistics over all ``n_total`` entries.

    Returns arrays named as :data:`scdask.format.STATS`. min and max are NaN where
    ``n_total`` is 0.
    """
    has_zero = nnz < n_total
    mn = np.where(has_zero, np.minimum(f[:, 2], 0.0), f[:, 2])
    mx = np.where(has_zero, np.maximum(f[:, 3], 0.0), f[:, 3])
    if n_total == 0:
        mn = np.full_like(mn, np.nan)
        mx = np.full_like(mx, np.nan)
    out = dict(zip(STATS, (nnz, f[:, 0], f[:, 1], mn, mx), strict=True))
    return out


