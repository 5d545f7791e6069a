"""``scdask.to_anndata``: a (small) selection of a lazy dataset as an in-memory AnnData."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from scdask.compute import as_matrix


def _frame(x: xr.DataArray, dim: str, index_name: str | None) -> pd.DataFrame:
    cols = {k: np.asarray(c.values) for k, c in x.coords.items() if c.dims == (dim,) and k != dim}
    index = cols.pop(index_name) if index_name in cols else (
        np.asarray(x[dim].values) if dim in x.indexes else np.arange(x.sizes[dim]))
    return pd.DataFrame(cols, index=pd.Index(np.asarray(index).astype(str)))


def to_anndata(data: xr.Dataset | xr.DataArray, var: str = "X") -> Any:
    """Read a selection into memory as an AnnData (CSR X, obs and var from the coordinates).

    Parameters
    ----------
    data
        A Dataset from :func:`scdask.open` or a selection of it (e.g.
        ``ds.isel(cell=slice(0, 10_000)).sel(gene=hvgs)``), or one of its matrices.
    var
        The matrix to read when ``data`` is a Dataset.

    Returns
    -------
    anndata.AnnData
        ``X`` as ``scipy.sparse.csr_matrix`` in the matrix's dtype; ``obs`` with every
        per-cell coordinate (index: ``obs_names``); ``var`` with every per-gene one.
        Everything selected is read: keep selections small enough for memory.
    """
    import anndata

    m = as_matrix(data, var, caller="to_anndata")
    x, gene_dim = m.data, m.gene_dim
    if m.fill != 0:
        what = "values that vary by cell or gene" if m.fill is None else m.fill
        raise ValueError(f"the selection maps zeros to {what}: it is dense, not an AnnData X")
    coo = x.data.compute()
    X = coo.to_scipy_sparse().tocsr() if hasattr(coo, "to_scipy_sparse") else coo
    return anndata.AnnData(X=X, obs=_frame(x, "cell", "obs_names"), var=_frame(x, gene_dim, None))
