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

import warnings
from typing import Any, Literal

import dask
import numpy as np
import pandas as pd
import xarray as xr

from scdask.compute import as_matrix
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


def _mean_var(x: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and unbiased variance (scanpy's ``_get_mean_var``), one pass."""
    mean, var = dask.compute(x.mean("cell"), x.var("cell", ddof=1 if x.sizes["cell"] > 1 else 0))
    return np.asarray(mean, np.float64), np.asarray(var, np.float64)


def highly_variable_genes(
    ds: xr.Dataset,
    *,
    layer: str | None = None,
    n_top_genes: int | None = None,
    min_disp: float = 0.5,
    max_disp: float = np.inf,
    min_mean: float = 0.0125,
    max_mean: float = 3,
    n_bins: int = 20,
    flavor: Literal["seurat", "cell_ranger"] = "seurat",
    batch_key: str | None = None,
) -> pd.DataFrame:
    """Highly variable genes, as ``scanpy.pp.highly_variable_genes(..., inplace=False)``.

    Expects log-normalized data (e.g. ``pp.log1p(pp.normalize_total(ds))``), as scanpy
    does. The per-gene mean and variance come from one pass over the stored values; the
    binning and normalization of dispersions follow scanpy's.

    Parameters
    ----------
    ds
        A Dataset from :func:`scdask.open`, a selection of it, or a transform of it.
    layer, n_top_genes, min_disp, max_disp, min_mean, max_mean, n_bins, flavor
        As in scanpy (``seurat`` and ``cell_ranger``; ``seurat_v3`` is not available yet).
    batch_key
        Not available yet: raises ``NotImplementedError``.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene: ``means``, ``dispersions``, ``dispersions_norm``,
        ``highly_variable``, with scanpy's values and selection.
    """
    if flavor not in ("seurat", "cell_ranger"):
        raise NotImplementedError(f"flavor={flavor!r}: scdask has 'seurat' and 'cell_ranger' "
                                  "so far")
    if batch_key is not None:
        raise NotImplementedError("batch_key: not available in scdask yet")
    x = _x(ds, layer, "highly_variable_genes")
    mean, var = _mean_var(np.expm1(x) if flavor == "seurat" else x)
    mean[mean == 0] = 1e-12
    dispersion = var / mean
    if flavor == "seurat":
        dispersion[dispersion == 0] = np.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            dispersion = np.log(dispersion)
        mean = np.log1p(mean)
    df = pd.DataFrame({"means": mean, "dispersions": dispersion})
    if flavor == "seurat":
        bins: Any = n_bins
    else:
        bins = np.r_[-np.inf, np.percentile(mean, np.arange(10, 105, 5)), np.inf]
    df["mean_bin"] = pd.cut(df["means"], bins=bins)
    grouped = df.groupby("mean_bin", observed=True)["dispersions"]
    if flavor == "seurat":
        stats = grouped.agg(avg="mean", dev="std")
        single = stats["dev"].isnull()  # one gene in its bin: normalized dispersion 1
        stats.loc[single, "dev"] = stats.loc[single, "avg"]
        stats.loc[single, "avg"] = 0
    else:
        stats = grouped.agg(avg="median", dev=_mad)
    per_gene = stats.loc[df["mean_bin"]].set_index(df.index)
    df["dispersions_norm"] = (df["dispersions"] - per_gene["avg"]) / per_gene["dev"]
    norm = df["dispersions_norm"].to_numpy()
    if n_top_genes is None:
        d = np.nan_to_num(norm)
        hv = (mean > min_mean) & (mean < max_mean) & (d > min_disp) & (d < max_disp)
    else:
        finite = np.sort(norm[~np.isnan(norm)])[::-1]
        n = min(n_top_genes, len(df))
        if n > finite.size:
            warnings.warn("`n_top_genes` > number of normalized dispersions, returning all "
                          "genes with normalized dispersions.", UserWarning, stacklevel=2)
            n = finite.size
        hv = np.nan_to_num(norm, nan=-np.inf) >= finite[n - 1]
    df["highly_variable"] = hv
    df.index = pd.Index(np.asarray(x[x.dims[1]].values))
    return df.drop(columns="mean_bin")


def _mad(a: Any) -> float:
    """Median absolute deviation scaled to a normal's standard deviation (statsmodels')."""
    a = np.asarray(a, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.median(np.abs(a - np.median(a))) / 0.6744897501960817)
