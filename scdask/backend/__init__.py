"""``scdask.open``: one or many stores as a lazy xarray Dataset, and the xarray backend.

The Dataset has dimensions ``cell`` and ``gene`` (and ``raw_gene`` when raw is
present). ``X``, each layer and ``raw`` are :class:`~scdask.compute.ScdaskArray`
Dask arrays. ``gene`` is indexed by the gene names; var columns and the per-gene
statistics stored at conversion are coordinates along ``gene`` (small, read at
open). obs columns, the cell names (``obs_names``) and the per-cell statistics
are Dask-backed coordinates along ``cell``, one chunk per row group, read only
when used: opening reads no per-cell data and builds no per-cell index.
"""

from __future__ import annotations

import builtins
import difflib
import glob
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from xarray.backends import BackendEntrypoint
from xarray.core.indexes import PandasIndex

from scdask.backend.cells import (
    CellIndex,
    lazy_cells,
    numpy_dtype,
    obs_coords,
    read_stat_chunk,
    to_numpy,
)
from scdask.backend.genes import concurrently, gene_maps, gene_stats
from scdask.compute import Base, Part, ScdaskArray
from scdask.format import STATS
from scdask.store.reader import Store

__all__ = ["CellIndex", "GeneIndex", "ScdaskBackendEntrypoint", "open"]


class GeneIndex(PandasIndex):
    """The gene-name index: a pandas index whose misses suggest close gene names."""

    def sel(self, labels: dict[Any, Any], method: Any = None, tolerance: Any = None) -> Any:
        try:
            return super().sel(labels, method=method, tolerance=tolerance)
        except KeyError as e:
            (label,) = labels.values()
            wanted = [label] if np.ndim(label) == 0 else list(np.asarray(label).ravel())
            missing = [x for x in wanted if x not in self.index]
            if not missing:
                raise
            raise KeyError(_unknown_gene(missing[0], self.index, self.dim)) from e


def _unknown_gene(label: Any, index: pd.Index, dim: str) -> str:
    names = index.astype(str)
    s = str(label)
    close = list(names[names.str.lower() == s.lower()][:3])
    if not close:
        pool = names[names.str[:2].str.lower() == s[:2].lower()] if len(s) >= 2 else names
        close = difflib.get_close_matches(s, list(pool), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"{label!r} is not a {dim} of this dataset ({len(index)} names){hint}"


def _expand(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    if isinstance(paths, str | os.PathLike):
        p = os.fspath(paths)
        if glob.has_magic(p) and "://" not in p:
            found = sorted(glob.glob(p))
            if not found:
                raise FileNotFoundError(f"{p}: no store matches this pattern")
            return found
        return [p]
    out = [os.fspath(p) for p in paths]
    if not out:
        raise ValueError("no stores given")
    return out


def _matrix(stores: Sequence[Store], name: str, maps: list[Any], n_genes: int) -> ScdaskArray:
    dtypes = {st.dtype(name) for st in stores}
    dtype = np.result_type(*dtypes)
    parts, offset = [], 0
    for st, m in zip(stores, maps, strict=True):
        parts.append(Part(st, name, m, offset))
        offset += st.n_obs
    return ScdaskArray(Base(tuple(parts), n_genes, dtype))


def _var_coords(var: pd.DataFrame, dim: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col in var.columns:
        if col == dim:
            continue
        out[col] = (dim, to_numpy(var[col], numpy_dtype(var[col].dtype)))
    return out


def open(  # noqa: A001 - the name users expect: scdask.open
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    join: str = "exact",
    storage_options: dict[str, Any] | None = None,
    categorical: bool = True,
) -> xr.Dataset:
    """Open scdask stores as one lazy xarray Dataset, cells concatenated in order.

    Parameters
    ----------
    paths
        A store path or URL, a glob pattern (``"atlas/plate*.zarr"``), or a list.
    join
        ``"exact"`` (default): every store must have the same genes (in any order:
        they are aligned by name). ``"inner"``: keep the genes all stores share.
    storage_options
        fsspec options for remote stores.
    categorical
        obs columns stored as categoricals of strings are pandas Categoricals (their codes:
        a byte a cell for up to 127 categories), as anndata's obs holds them. ``False``:
        numpy objects (strings), which xarray's ``.str``, ``chunk()`` and writers need.

    Returns
    -------
    xarray.Dataset
        Lazy: nothing per cell is read until used.

    Examples
    --------
    >>> ds = scdask.open("plate7.zarr")  # doctest: +SKIP
    >>> ds.X.sel(gene="C1orf112").mean().compute()  # doctest: +SKIP
    """
    return _open(paths, join, storage_options, categorical=categorical)


def _open(paths: Any, join: str, storage_options: dict[str, Any] | None, *,
          categorical: bool) -> xr.Dataset:
    urls = _expand(paths)
    stores = list(concurrently(lambda u: Store(u, storage_options), urls))
    names = set(stores[0].matrices)
    for st in stores[1:]:
        if set(st.matrices) != names:
            raise ValueError(f"{st.url}: has matrices {sorted(st.matrices)}, "
                             f"{stores[0].url} has {sorted(names)}")
    var, maps = gene_maps(stores, "X", join)  # var.parquet, with X or without
    index = GeneIndex(pd.Index(var.index, name="gene"), "gene")
    variables, indexes = dict(index.create_variables()), {"gene": index}
    data_vars: dict[str, Any] = {}
    extra: dict[str, Any] = dict(_var_coords(var, "gene"))
    if "X" in names:
        data_vars["X"] = (("cell", "gene"), _matrix(stores, "X", maps, len(var)))
        extra.update({k: ("gene", v) for k, v in gene_stats(stores, "X", maps, len(var)).items()})
        for stat in STATS:
            extra[f"cell_{stat}"] = ("cell", lazy_cells(
                stores, read_stat_chunk, (f"X/cell_{stat}",),
                np.dtype(np.int64 if stat == "nnz" else np.float64)))
    for name in sorted(names - {"X", "raw/X"}):
        data_vars[name.split("/", 1)[1]] = (("cell", "gene"), _matrix(stores, name, maps, len(var)))
    if "raw/X" in names:
        rvar, rmaps = gene_maps(stores, "raw/X", join)
        rindex = GeneIndex(pd.Index(rvar.index, name="raw_gene"), "raw_gene")
        variables.update(rindex.create_variables())
        indexes["raw_gene"] = rindex
        data_vars["raw"] = (("cell", "raw_gene"), _matrix(stores, "raw/X", rmaps, len(rvar)))
        extra.update({f"raw_{k}": v for k, v in _var_coords(rvar, "raw_gene").items()})
    for name, (dims, arr) in data_vars.items():  # xarray's chunks={} / "auto" keep the blocks
        data_vars[name] = xr.Variable(dims, arr, encoding={"preferred_chunks": dict(
            zip(dims, arr.chunks, strict=True))})
    obs = obs_coords(stores, categorical=categorical)
    for name in [k for k in obs if k in extra]:  # one namespace: a var column named like an
        extra[f"var_{name}"] = extra.pop(name)    # obs column is var_<name> (obs keeps its own)
    extra.update(obs)
    cell = CellIndex(obs["obs_names"][1], "cell", tuple(st.url for st in stores))
    variables.update(cell.create_variables())
    indexes["cell"] = cell
    ds = xr.Dataset(data_vars, coords=xr.Coordinates(variables, indexes))
    ds = ds.assign_coords(extra)
    ds.attrs["scdask_stores"] = [st.url for st in stores]
    return ds


class ScdaskBackendEntrypoint(BackendEntrypoint):
    """``xr.open_dataset(path, engine="scdask")``."""

    description = "Open scdask stores (chunked sparse single-cell matrices) lazily"
    url = "https://github.com/scdask/scdask"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "join", "storage_options")

    def open_dataset(self, filename_or_obj: Any, *, drop_variables: Any = None,
                     join: str = "exact", storage_options: dict[str, Any] | None = None) -> xr.Dataset:
        # xarray cannot chunk a categorical (chunks={}, open_mfdataset): obs as objects
        ds = _open(filename_or_obj, join, storage_options, categorical=False)
        if drop_variables:
            ds = ds.drop_vars(drop_variables)
        return ds

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        try:
            p = os.fspath(filename_or_obj)
        except TypeError:
            return False
        return os.path.isdir(p) and os.path.exists(os.path.join(p, "zarr.json")) and _is_scdask(p)


def _is_scdask(path: str) -> bool:

    try:
        with builtins.open(os.path.join(path, "zarr.json")) as f:
            return "scdask" in json.load(f).get("attributes", {})
    except (OSError, ValueError):
        return False
