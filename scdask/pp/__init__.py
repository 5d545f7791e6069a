"""Preprocessing with scanpy's names, out of core: ``scdask.pp``.

Each function takes a Dataset from :func:`scdask.open` (or a selection of it) and, like
scanpy's, works on ``X`` (or ``layer``). The transforms (:func:`normalize_total`,
:func:`log1p`, :func:`scale`) return a new Dataset whose matrix is a lazy expression of
the stored values — nothing is computed or densified; every reduction and function below
accepts it. :func:`highly_variable_genes` computes per-gene statistics in one pass and
returns the DataFrame scanpy writes into ``var``; :func:`calculate_qc_metrics` the per-cell
and per-gene QC metrics, from one pass (:mod:`scdask.pp.qc`).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from scdask.compute import as_matrix
from scdask.pp.hvg import highly_variable_genes
from scdask.pp.qc import calculate_qc_metrics

__all__ = ["calculate_qc_metrics", "highly_variable_genes", "log1p", "normalize_total", "scale"]


def _x(ds: xr.Dataset, layer: str | None, caller: str) -> xr.DataArray:
    name = layer or "X"
    return as_matrix(ds, name, caller=f"scdask.pp.{caller}").data


def _with(ds: xr.Dataset, layer: str | None, x: xr.DataArray) -> xr.Dataset:
    return ds.assign({layer or "X": x})


def normalize_total(ds: xr.Dataset, target_sum: float | None = None, *,
                    layer: str | None = None) -> xr.Dataset:
    """Scale every cell to the same total, as ``scanpy.pp.normalize_total``.

    Parameters
    ----------
    ds
        A Dataset from :func:`scdask.open`, or a selection of it.
    target_sum
        Each cell's total after scaling; ``None``: the median of the totals of the cells
        with any count (computed now, as scanpy does).
    layer
        Normalize this matrix instead of ``X``.

    Returns
    -------
    xarray.Dataset
        ``ds`` with the matrix replaced by ``x / x.sum("gene") * target_sum`` (lazy; a
        cell without counts stays 0, as in scanpy).
    """
    x = _x(ds, layer, "normalize_total")
    totals = x.sum(x.dims[1])
    if target_sum is None:
        t = np.asarray(totals.values, dtype=np.float64)
        target_sum = float(np.median(t[t > 0])) if (t > 0).any() else 1.0
    # scanpy's result dtype (float64 stays float64, anything else becomes float32) and its
    # arithmetic in that dtype, so that values — and their ties, for rank tests — are the
    # same to the bit: each value divided by total / target_sum, a factor of 0 being 1
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    factor = totals.astype(dtype) / np.asarray(target_sum, dtype)
    factor = factor + (factor == 0)
    return _with(ds, layer, x.astype(dtype) / factor)


def log1p(ds: xr.Dataset, *, base: float | None = None, layer: str | None = None) -> xr.Dataset:
    """``log(1 + x)`` (in ``base`` when given), as ``scanpy.pp.log1p``; lazy."""
    x = _x(ds, layer, "log1p")
    y = np.log1p(x)
    if base is not None:
        y = y / np.log(base)
        y.attrs["log1p_base"] = base  # scanpy's uns["log1p"]["base"]: fold changes use it
    return _with(ds, layer, y)


def scale(ds: xr.Dataset, *, zero_center: bool = True, max_value: float | None = None,
          layer: str | None = None) -> xr.Dataset:
    """Each gene to unit variance (and zero mean), clipped at ``max_value``, as
    ``scanpy.pp.scale``: the per-gene mean and standard deviation (``ddof=1``; a gene
    without variance divides by 1) are lazy operands, the implicit zeros become
    ``-mean / std`` per gene without densifying anything."""
    x = _x(ds, layer, "scale")
    mean = x.mean("cell", dtype=np.float64)
    std = x.std("cell", ddof=1, dtype=np.float64)
    std = std + (std == 0)  # scanpy's: a gene without variance divides by 1
    y = ((x - mean) if zero_center else x) / std
    if max_value is not None:
        y = y.clip(-max_value if zero_center else None, max_value)
    return _with(ds, layer, y)
