"""Differential expression with scanpy's names: :func:`rank_genes_groups`, out of core.

Every group against the rest (or one reference group) in one streaming pass per statistic:

- t-tests from per-group means and variances: one labelled pass over the store
  (:func:`scdask.compute.grouped`), the rest's moments from the totals;
- Wilcoxon rank-sum tests, exact, from the stored entries of a block of genes at a time
  (:mod:`scdask.tl.wilcoxon`); that pass also sums each group's values, so it is the only
  pass.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal

import dask
import numpy as np
import pandas as pd
import xarray as xr

from scdask.compute import Matrix, as_matrix, grouped, narrow, obs_column
from scdask.tl import wilcoxon

#: Threads that compute the tests' scores, p-values and orders.
CORES = os.cpu_count() or 1
Method = Literal["t-test", "t-test_overestim_var", "wilcoxon"]


def _matrix(ds: xr.Dataset, layer: str | None, use_raw: bool | None) -> Matrix:
    if use_raw is None:  # scanpy's default: raw when there is one
        use_raw = layer is None and isinstance(ds, xr.Dataset) and "raw" in ds
    if use_raw and layer is not None:
        raise ValueError("Cannot specify `layer` and have `use_raw=True`.")
    return as_matrix(ds, "raw" if use_raw else (layer or "X"),
                     caller="scdask.tl.rank_genes_groups")


def _groups(values: np.ndarray, groups: Sequence[Any] | Literal["all"], reference: str,
            groupby: str) -> tuple[list[Any], np.ndarray]:
    """The groups in scanpy's order and each cell's label (-1: in no group)."""
    cat = pd.Categorical(values)
    cats = list(cat.categories)
    if groups == "all":
        order = cats
    elif isinstance(groups, str | int):
        raise ValueError("Specify a sequence of groups")
    else:
        order = [str(g) if isinstance(g, int) else g for g in groups]
        if reference != "rest" and reference not in order:
            order.append(reference)
    if reference != "rest" and reference not in cats:
        raise ValueError(f"reference = {reference} needs to be one of groupby = {cats}.")
    missing = [g for g in order if g not in cats]
    if missing:
        raise ValueError(f"groups {missing} do not occur in {groupby!r}")
    where = {c: i for i, c in enumerate(order)}
    lut = narrow(np.array([where.get(c, -1) for c in cats] + [-1]), len(order))
    codes = lut[cat.codes]  # NaN's code -1 picks the last: -1 (a byte a cell, for 127 groups)
    sizes = np.bincount(codes[codes >= 0], minlength=len(order))
    small = [g for g, n in zip(order, sizes, strict=True) if n < 2]
    if small:
        raise ValueError(f"Could not calculate statistics for groups {', '.join(map(str, small))}"
                         " since they only contain one sample.")
    return order, codes


def _labels(codes: np.ndarray, strata: np.ndarray, n_groups: int, n_s: int,
            step: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's label, (its group, or ``n_groups`` for no tested group) × its stratum
    (-1: no stratum), in the smallest integer type, and the cells of each label; a slice of
    cells at a time, so numpy's temporaries stay small."""
    n_labels = (n_groups + 1) * n_s
    labels = narrow(np.empty(len(codes), np.int8), n_labels)
    n_cells = np.zeros(n_labels)
    for a in range(0, len(codes), step):
        c, s = (np.asarray(v[a : a + step], np.int64) for v in (codes, strata))
        lab = np.where(s < 0, -1, np.where(c < 0, n_groups, c) * n_s + s)
        labels[a : a + step] = lab
        n_cells += np.bincount(lab[lab >= 0], minlength=n_labels)
    return labels, n_cells


def _expm1(m: Matrix) -> Any:
    """``expm1`` in the base of the values' logarithm, as scanpy's fold changes: the base
    ``pp.log1p`` took, or for stored values the one in the store's ``uns["log1p"]``."""
    base = m.data.attrs.get("log1p_base")
    if base is None and m.expr.is_identity:
        log1p = m.base.parts[0].store.uns().get("log1p")
        base = log1p.get("base") if isinstance(log1p, dict) else None
    if base is None:
        return np.expm1
    return lambda v: np.expm1(v * np.log(float(base)))


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (statsmodels' ``fdr_bh``, as scanpy) of each
    row of ``p``."""
    n = p.shape[-1]
    order = np.argsort(p, axis=-1)
    adj = np.take_along_axis(p, order, -1) * n / np.arange(1, n + 1)
    adj = np.minimum.accumulate(adj[..., ::-1], axis=-1)[..., ::-1]
    out = np.empty_like(adj)
    np.put_along_axis(out, order, np.minimum(adj, 1.0), -1)
    return out


def rank_genes_groups(
    ds: xr.Dataset,
    groupby: str,
    *,
    groups: Sequence[Any] | Literal["all"] = "all",
    reference: str = "rest",
    method: Method = "t-test",
    n_genes: int | None = None,
    rankby_abs: bool = False,
    pts: bool = False,
    tie_correct: bool = False,
    corr_method: Literal["benjamini-hochberg", "bonferroni"] = "benjamini-hochberg",
    layer: str | None = None,
    use_raw: bool | None = None,
    within: str | None = None,
) -> pd.DataFrame:
    """Rank genes for characterizing groups, as ``scanpy.tl.rank_genes_groups``.

    Parameters
    ----------
    ds
        A Dataset from :func:`scdask.open`, a selection of it, or a transform of it from
        :mod:`scdask.pp` (e.g. log-normalized).
    groupby
        The obs column whose values are the groups.
    groups
        The groups to test (``"all"``: every value of ``groupby``).
    reference
        ``"rest"``: each group against every other cell; or a group to test each against.
    method
        ``"t-test"``, ``"t-test_overestim_var"`` or ``"wilcoxon"`` (exact rank sums).
    n_genes
        Genes per group in the result, best scores first (``None``: all).
    rankby_abs
        Rank by the absolute value of the score.
    pts
        Add ``pct_nz_group`` (and ``pct_nz_reference`` against the rest): the fraction of
        cells with a non-zero value.
    tie_correct
        Correct the Wilcoxon test's variance for ties.
    corr_method
        p-value correction: ``"benjamini-hochberg"`` or ``"bonferroni"``.
    layer, use_raw
        Test this matrix instead of ``X`` (``use_raw=None``: ``raw`` when there is one, as
        scanpy).
    within
        An obs column (not scanpy's): test each group against the reference group of the
        same value of ``within`` (every drug against the control within each cell line),
        all in the same pass; strata where either side has under two cells are left out.

    Returns
    -------
    pandas.DataFrame
        What ``scanpy.get.rank_genes_groups_df(adata, group=None)`` gives: ``group``
        (categorical, or strings with ``pts`` as scanpy's; left out for one group),
        ``names``, ``scores``, ``logfoldchanges``, ``pvals``, ``pvals_adj`` and with
        ``pts`` the fractions, each group's genes best score first; with ``within``, a
        column of that name after ``group``.

    Examples
    --------
    >>> logn = scdask.pp.log1p(scdask.pp.normalize_total(ds, target_sum=1e4))  # doctest: +SKIP
    >>> de = scdask.tl.rank_genes_groups(logn, "drug", reference="DMSO_TF",
    ...                                  method="wilcoxon")  # doctest: +SKIP
    """
    if method not in ("t-test", "t-test_overestim_var", "wilcoxon"):
        raise ValueError(f"method {method!r}: t-test, t-test_overestim_var or wilcoxon "
                         "(logreg is not out of core)")
    if corr_method not in ("benjamini-hochberg", "bonferroni"):
        raise ValueError("Correction method must be one of {'benjamini-hochberg', "
                         "'bonferroni'}.")
    m = _matrix(ds, layer, use_raw)
    x = m.data
    order, codes = _groups(obs_column(ds, groupby), groups, reference, groupby)
    n_groups = len(order)
    ref = -1 if reference == "rest" else order.index(reference)
    strata: list[Any] = [None]
    scode = np.zeros(len(codes), np.int8)
    if within is not None:
        if ref < 0:
            raise NotImplementedError("within= tests each group against the reference group "
                                      "of the same stratum: give reference=")
        cat = pd.Categorical(obs_column(ds, within))
        strata, scode = list(cat.categories), cat.codes
    n_s = len(strata)
    n_labels = (n_groups + 1) * n_s
    labels, n_cells = _labels(codes, scode, n_groups, n_s)
    ref_of = np.full(n_labels, -1, np.int64)  # the label each label is tested against
    if ref >= 0:
        for g in range(n_groups):
            ref_of[g * n_s : (g + 1) * n_s] = ref * n_s + np.arange(n_s)
    sums_r = ties = moments = None
    if method == "wilcoxon":
        gnnz = x.coords.get(f"{x.dims[1]}_nnz")
        sums_r, ties, moments = wilcoxon.rank_sums(
            m, labels, n_cells, ref_of, ref < 0,
            None if gnnz is None else np.asarray(gnnz.values))
    with warnings.catch_warnings():  # a label of no cell (or one): its statistics unused
        warnings.simplefilter("ignore", RuntimeWarning)
        if moments is None:
            mean, var, nnz = (np.asarray(a) for a in dask.compute(*grouped(
                m.array, labels, n_labels, [("mean", 0), ("var", 1), ("count_nonzero", 0)])))
        else:  # the rank sums' pass summed each label's values (NaN left out)
            _, nan, total, sq, nnz = moments
            valued = n_cells[:, None] - nan
            mean = total / valued
            var = np.maximum(sq - total * mean, 0.0) / (valued - 1)
    n = n_cells[:, None]
    mean, var = np.where(n > 0, mean, 0.0), np.where(n > 1, var, 0.0)
    if ref < 0:  # each label against every other cell
        total = n_cells.sum()
        sums, sumsq = mean * n, var * np.maximum(n - 1, 0) + mean * mean * n
        n_rest = total - n
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_rest = (sums.sum(0) - sums) / n_rest
            # sums of squares less the squared mean cancel: a constant rest is 0, not -1e-16
            var_rest = np.maximum((sumsq.sum(0) - sumsq) - mean_rest ** 2 * n_rest, 0) / (
                n_rest - 1)
        nnz_rest = nnz.sum(0) - nnz
    else:
        r = np.maximum(ref_of, 0)
        n_rest, mean_rest, var_rest, nnz_rest = n[r], mean[r], var[r], nnz[r]
    names = np.asarray(np.asarray(x[x.dims[1]].values).astype(str), dtype=object)
    tested = [str(g) for i, g in enumerate(order) if i != ref]  # scanpy's: names as str
    rows = [(g - (g > ref >= 0), k, g * n_s + k) for g in range(n_groups) if g != ref
            for k in range(n_s)]
    if within is not None:  # strata where either side has under 2 cells are left out
        rows = [r for r in rows if min(n_cells[r[2]], n_rest[r[2], 0]) >= 2]
    stat = partial(_scores, method=method, tie_correct=tie_correct, corr_method=corr_method,
                   rankby_abs=rankby_abs, expm1=_expm1(m), mean=mean,
                   mean_rest=mean_rest, var=var, var_rest=var_rest, n_cells=n_cells,
                   n_rest=n_rest, rest=ref < 0)
    if method == "wilcoxon":
        stat = partial(stat, sums=sums_r, ties=ties)
    keys = ["scores", "logfoldchanges", "pvals", "pvals_adj"]
    keys += ([] if not pts else ["pct_nz_group"] if ref >= 0 else
             ["pct_nz_group", "pct_nz_reference"])
    ntop = len(names) if n_genes is None else min(n_genes, len(names))
    lab = np.array([r[2] for r in rows], np.int64)
    # the result's columns, a (test, gene) row each, filled in slices of tests by threads
    cols = {k: np.empty((len(rows), ntop), np.float32 if k in keys[:2] else np.float64)
            for k in keys}
    top = np.empty((len(rows), ntop), np.int64)
    step = max(1, min((1 << 22) // max(1, len(names)), -(-len(rows) // (2 * CORES))))

    def fill(i: int) -> None:
        sl = slice(i, i + step)
        out = {k: v[sl] for k, v in cols.items()}
        stat(lab[sl], top[sl], out)
        if pts:
            out["pct_nz_group"][:] = np.take_along_axis(nnz[lab[sl]], top[sl], 1) / n_cells[
                lab[sl], None]
            if ref < 0:
                out["pct_nz_reference"][:] = np.take_along_axis(
                    nnz_rest[lab[sl]], top[sl], 1) / n_rest[lab[sl]]

    with ThreadPoolExecutor(CORES) as pool:  # numpy and scipy's kernels release the GIL
        list(pool.map(fill, range(0, len(rows), step)))
    codes = np.array([r[:2] for r in rows], np.int64).reshape(-1, 2)
    group = pd.Categorical.from_codes(np.repeat(codes[:, 0], ntop), categories=tested)
    # scanpy's table: the group categorical, but object once the fractions are merged in
    frame: dict[str, Any] = {"group": np.asarray(group, object) if pts else group}
    if within is not None:
        frame[within] = pd.Index(strata).take(np.repeat(codes[:, 1], ntop))
    frame["names"] = names[top.reshape(-1)]
    frame.update((k, v.reshape(-1)) for k, v in cols.items())
    out = pd.DataFrame(frame, copy=False)
    if len(tested) == 1 and within is None:
        out = out.drop(columns="group")
    return out


def _scores(lab: np.ndarray, top: np.ndarray, out: dict[str, np.ndarray], *, method: str,
            tie_correct: bool, corr_method: str, rankby_abs: bool, expm1: Any,
            mean: np.ndarray, mean_rest: np.ndarray, var: np.ndarray, var_rest: np.ndarray,
            n_cells: np.ndarray, n_rest: np.ndarray, rest: bool,
            sums: np.ndarray | None = None, ties: np.ndarray | None = None) -> None:
    """The tests of labels ``lab`` (one row each), every gene at once: into ``top`` each
    row's genes in the result's order (best score first, as many as ``top`` has columns),
    into ``out`` the result's columns in that order."""
    from scipy import special

    n1, n2 = n_cells[lab, None], n_rest[lab]
    if method == "wilcoxon":
        assert sums is not None
        assert ties is not None
        scores = _wilcoxon_scores(sums[lab], ties[0][None] if rest else ties[lab], n1, n2,
                                  tie_correct)
        pvals = 2 * special.ndtr(-np.abs(scores))  # scipy's norm.sf
    else:
        scores, pvals = _welch(mean[lab], var[lab], n1, mean_rest[lab], var_rest[lab],
                               n2 if method == "t-test" else n1)
    adj = _bh(pvals) if corr_method == "benjamini-hochberg" else np.minimum(
        pvals * pvals.shape[1], 1.0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lfc = np.log2((expm1(mean[lab]) + 1e-9) / (expm1(mean_rest[lab]) + 1e-9))
    order = np.argsort(-(np.abs(scores) if rankby_abs else scores), axis=1, kind="stable")
    top[:] = order[:, : top.shape[1]]
    for key, v in (("scores", scores), ("logfoldchanges", lfc), ("pvals", pvals),
                   ("pvals_adj", adj)):
        out[key][:] = np.take_along_axis(v, top, 1)


def _welch(m1: np.ndarray, v1: np.ndarray, n1: Any, m2: np.ndarray, v2: np.ndarray, n2: Any
           ) -> tuple[np.ndarray, np.ndarray]:
    """Welch's t-test from moments, as ``scipy.stats.ttest_ind_from_stats(...,
    equal_var=False)`` (its formulas, less its per-call machinery); NaN scores are 0 and
    their p-values 1, as scanpy sets them."""
    from scipy import special

    with np.errstate(invalid="ignore", divide="ignore"):
        vn1, vn2 = v1 / n1, v2 / n2
        df = (vn1 + vn2) ** 2 / (vn1 ** 2 / (n1 - 1) + vn2 ** 2 / (n2 - 1))
        df = np.where(np.isnan(df), 1.0, df)  # zero variances: any df
        t = (m1 - m2) / np.sqrt(vn1 + vn2)
        p = 2 * special.stdtr(df, -np.abs(t))
    t[np.isnan(t)] = 0
    p[np.isnan(p)] = 1
    return t, p


def _wilcoxon_scores(sums: np.ndarray, ties: np.ndarray, n1: Any, n2: Any,
                     tie_correct: bool) -> np.ndarray:
    """z-scores of rank sums (scanpy's normal approximation; pooled over ``n1 + n2``)."""
    pooled = n1 + n2  # at least 4: each side has at least 2 cells
    tc = 1.0 - ties / (pooled ** 3 - pooled) if tie_correct else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = (sums - n1 * (pooled + 1) / 2.0) / np.sqrt(tc * n1 * n2 * (pooled + 1) / 12.0)
    scores[np.isnan(scores)] = 0
    return scores
