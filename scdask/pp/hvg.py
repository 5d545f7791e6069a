"""Highly variable genes with scanpy's flavors: :func:`highly_variable_genes`.

``seurat`` and ``cell_ranger`` bin the genes' dispersions from one pass of per-gene means and
variances; ``seurat_v3`` fits scanpy's loess (scikit-misc) to the counts' variances per batch
(one labelled pass for every batch at once) and sums the clipped counts (one pass per batch).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import dask
import numpy as np
import pandas as pd
import xarray as xr

from scdask.compute import as_matrix, grouped, narrow, obs_column


def _x(ds: xr.Dataset, layer: str | None) -> xr.DataArray:
    return as_matrix(ds, layer or "X", caller="scdask.pp.highly_variable_genes").data


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
    flavor: Literal["seurat", "cell_ranger", "seurat_v3", "seurat_v3_paper"] = "seurat",
    batch_key: str | None = None,
    span: float = 0.3,
) -> pd.DataFrame:
    """Highly variable genes, as ``scanpy.pp.highly_variable_genes(..., inplace=False)``.

    Expects log-normalized data (e.g. ``pp.log1p(pp.normalize_total(ds))``), as scanpy
    does. The per-gene mean and variance come from one pass over the stored values; the
    binning and normalization of dispersions follow scanpy's.

    Parameters
    ----------
    ds
        A Dataset from :func:`scdask.open`, a selection of it, or a transform of it.
    layer, n_top_genes, min_disp, max_disp, min_mean, max_mean, n_bins, flavor, span
        As in scanpy. ``seurat_v3`` (and ``seurat_v3_paper``) expect counts and select
        ``n_top_genes`` (default 2000); the others expect log-normalized values.
    batch_key
        An obs column: ``seurat_v3`` ranks genes in each batch and combines the ranks, as
        scanpy (``seurat``/``cell_ranger`` with batches: not available yet).

    Returns
    -------
    pandas.DataFrame
        Indexed by gene, scanpy's columns: ``means``, ``dispersions``, ``dispersions_norm``
        and ``highly_variable``; for ``seurat_v3``: ``means``, ``variances``,
        ``gene_name``, ``highly_variable_rank``, ``variances_norm``, ``highly_variable``
        (and ``highly_variable_nbatches`` with ``batch_key``).
    """
    if flavor in ("seurat_v3", "seurat_v3_paper"):
        return _seurat_v3(ds, layer, 2000 if n_top_genes is None else n_top_genes,
                          batch_key, span, flavor)
    if flavor not in ("seurat", "cell_ranger"):
        raise ValueError(f"flavor={flavor!r}: 'seurat', 'cell_ranger', 'seurat_v3' or "
                         "'seurat_v3_paper'")
    if batch_key is not None:
        raise NotImplementedError(f"batch_key with flavor={flavor!r}: not available in scdask "
                                  "yet (seurat_v3 has it)")
    x = _x(ds, layer)
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
    by_bin = df.groupby("mean_bin", observed=True)["dispersions"]
    if flavor == "seurat":
        stats = by_bin.agg(avg="mean", dev="std")
        single = stats["dev"].isnull()  # one gene in its bin: normalized dispersion 1
        stats.loc[single, "dev"] = stats.loc[single, "avg"]
        stats.loc[single, "avg"] = 0
    else:
        stats = by_bin.agg(avg="median", dev=_mad)
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


def _seurat_v3(ds: xr.Dataset, layer: str | None, n_top_genes: int, batch_key: str | None,
               span: float, flavor: str) -> pd.DataFrame:
    """scanpy's ``seurat_v3``: a loess fit of log variance on log mean per batch, the
    variance of each gene's counts clipped at ``mean + sqrt(n) * fitted sd``, ranked."""
    try:
        from skmisc.loess import loess
    except ImportError as e:
        raise ImportError("Please install skmisc package via `pip install --user scikit-misc"
                          ) from e
    m = as_matrix(ds, layer or "X", caller="scdask.pp.highly_variable_genes")
    arr, n = m.array, m.base.n_sel_cells
    if batch_key is None:
        names: list[Any] = [0]
        codes = np.zeros(n, np.int64)
    else:  # scanpy iterates np.unique of the column's values
        values = obs_column(ds, batch_key)
        if isinstance(values, pd.Categorical) and (values.codes >= 0).all():
            cats = np.asarray(values.categories)  # as codes: np.unique's order of categories
            order = np.argsort(cats, kind="stable")
            names = list(cats[order])
            rank = narrow(np.empty(len(cats), np.int64), len(cats))
            rank[order] = np.arange(len(cats))
            codes = rank[values.codes]
        else:
            values = np.asarray(values)
            names = list(np.unique(values))
            codes = np.searchsorted(np.asarray(names, dtype=values.dtype), values)
    n_b = np.bincount(codes, minlength=len(names)).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means, variances = (np.asarray(a) for a in dask.compute(*grouped(
            arr, codes, len(names), [("mean", 0), ("var", 1)])))
    mean = (n_b[:, None] * means).sum(0) / n  # the whole selection's, from the batches'
    var = ((np.maximum(n_b - 1, 0)[:, None] * np.nan_to_num(variances)).sum(0)
           + (n_b[:, None] * (means - mean) ** 2).sum(0)) / (n - 1)
    norm_gene_vars = []
    for b in range(len(names)):
        mean_b, var_b, nb = means[b], np.nan_to_num(variances[b]), n_b[b]
        not_const = var_b > 0
        estimat_var = np.zeros(len(mean_b), dtype=np.float64)
        model = loess(np.log10(mean_b[not_const]), np.log10(var_b[not_const]), span=span,
                      degree=2)
        model.fit()
        estimat_var[not_const] = model.outputs.fitted_values
        reg_std = np.sqrt(10**estimat_var)
        clip_val = reg_std * np.sqrt(nb) + mean_b
        clipped = np.minimum(arr, clip_val)  # counts clipped per gene (zeros stay zeros)
        in_batch = np.where(codes == b, 0, -1)
        c_mean, c_var = (np.asarray(a)[0] for a in dask.compute(*grouped(
            clipped, in_batch, 1, [("mean", 0), ("var", 0)])))
        sums, squares = c_mean * nb, (c_var + c_mean**2) * nb
        norm_gene_vars.append((1 / ((nb - 1) * np.square(reg_std))) * (
            nb * np.square(mean_b) + squares - 2 * sums * mean_b))
    norm = np.stack(norm_gene_vars)
    ranked = np.argsort(np.argsort(-norm, axis=1), axis=1).astype(np.float32)
    nbatches = np.sum((ranked < n_top_genes).astype(int), axis=0)
    ranked[ranked >= n_top_genes] = np.nan
    median = np.ma.median(np.ma.masked_invalid(ranked), axis=0).filled(np.nan)
    df = pd.DataFrame(index=pd.Index(np.asarray(m.data[m.gene_dim].values)))
    df["means"], df["variances"] = mean, var
    df["gene_name"] = df.index
    df["highly_variable_nbatches"] = nbatches
    df["highly_variable_rank"] = median
    df["variances_norm"] = np.mean(norm, axis=0)
    cols, ascending = ((["highly_variable_rank", "highly_variable_nbatches"], [True, False])
                       if flavor == "seurat_v3" else
                       (["highly_variable_nbatches", "highly_variable_rank"], [False, True]))
    order = df[cols].sort_values(cols, ascending=ascending, na_position="last").index
    df["highly_variable"] = False
    df.loc[order[: int(n_top_genes)], "highly_variable"] = True
    if batch_key is None:
        df = df.drop(columns="highly_variable_nbatches")
    return df
