"""``scdask.to_anndata``: a selection of a lazy dataset as the AnnData ``read_h5ad`` gives.

X, every layer and raw are read (one Dask computation); obs, var, obsm and varm come from
the stores' own tables, so their dtypes (categoricals with their categories and order,
nullable integers and booleans, strings) and index names are the source's; uns is the
store's. Nothing is added unless asked (``stats=True``).
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from scdask.backend.cells import union_categories
from scdask.compute import Base, Matrix, as_matrix


def to_anndata(data: xr.Dataset | xr.DataArray, var: str = "X", *, stats: bool = False) -> Any:
    """Read a selection into memory as the AnnData ``anndata.read_h5ad`` would give.

    Parameters
    ----------
    data
        A Dataset from :func:`scdask.open` or a selection of it (e.g.
        ``ds.isel(cell=slice(0, 10_000)).sel(gene=hvgs)``), or one of its matrices; or
        a :func:`scdask.pseudobulk` result: one observation per group, ready for pydeseq2
        (``X`` the summed counts, as integers when every sum is one; the ``sum``,
        ``mean``, ``count_nonzero`` and ``var`` layers as ``scanpy.get.aggregate`` names
        them; obs the group's ``by`` values and ``n_cells``).
    var
        The matrix that becomes ``X`` when ``data`` is a Dataset; the other cell × gene
        matrices become layers (``X`` among them when ``var`` is another), ``raw`` the raw.
    stats
        Add per-cell and per-gene statistics of ``X`` (``cell_nnz``, ``cell_sum``,
        ``gene_nnz``, ``gene_sum``, ...), computed over the selection.

    Returns
    -------
    anndata.AnnData
        ``X`` (``None`` when the store has none) in the matrix's dtype, as the source held
        it: ``scipy.sparse.csr_matrix`` (``csc_matrix`` from a CSC source, a dense array
        from a dense one); layers, raw (its own var), obsm and varm of the selected cells
        and genes; obs and var as stored; uns as stored. Everything selected is read:
        keep selections small enough for memory.

    Raises
    ------
    ValueError
        If an expression maps the implicit zeros to something else (the result is dense).
    TypeError
        If ``data`` is not a scdask dataset or matrix.
    """
    import anndata

    if isinstance(data, xr.Dataset) and "group" in data.dims and "sum" in data.data_vars:
        return _pseudobulk(data)
    main, layers, raw = _matrices(data, var)
    ref = main or next(iter(layers.values()), None) or raw
    if ref is None:  # no matrix: obs, var and uns
        if not isinstance(data, xr.Dataset):
            raise TypeError("to_anndata needs a cell × gene matrix opened with scdask.open")
        return _without_matrices(data)
    X, raw_X, *layer_values = dask.compute(*(_sparse(m) for m in (main, raw, *layers.values())))
    values = dict(zip(layers, layer_values, strict=True))
    obs = _obs(ref.base)
    genes = main or next(iter(layers.values()), None)
    var_frame = _var(genes) if genes is not None else _without_matrices(data).var
    adata = anndata.AnnData(
        X=X, obs=obs, var=var_frame, layers=values,
        obsm=_axis_arrays(ref.base, "obsm"),
        varm=_axis_arrays(genes.base, "varm", genes) if genes is not None else None,
        uns=ref.base.parts[0].store.uns())
    for axis in ("obsp", "varp"):
        getattr(adata, axis).update(_pairwise(ref.base, axis, genes))
    if raw is not None:
        extra = {k[len("raw/varm/"):]: v for k, v in raw.base.parts[0].store.elements().items()
                 if k.startswith("raw/varm/")}
        rows = _gene_rows(raw)
        adata.raw = anndata.AnnData(X=raw_X, obs=pd.DataFrame(index=obs.index), var=_var(raw),
                                    varm={k: _take_rows(v, rows) for k, v in extra.items()})
    if stats and main is not None:
        _add_stats(adata)
    return adata


def _pseudobulk(pb: xr.Dataset) -> Any:
    import anndata

    gene_dim = next(d for d in pb["sum"].dims if d != "group")
    values = dict(zip(("sum", "mean", "count_nonzero", "var"),
                      dask.compute(*(pb[k].data for k in ("sum", "mean", "count_nonzero", "var"))),
                      strict=True))
    sums = np.asarray(values["sum"])
    integral = bool(np.all(np.isfinite(sums)) and np.all(sums == np.round(sums))
                    and np.abs(sums).max(initial=0) < 2**53)
    X = sums.astype(np.int64) if integral else sums
    obs = pd.DataFrame({k: np.asarray(c.values) for k, c in pb.coords.items()
                        if c.dims == ("group",)})
    by = [c for c in obs.columns if c != "n_cells"]
    obs.index = pd.Index(["_".join(map(str, row)) for row in obs[by].itertuples(index=False)])
    for c in by:
        obs[c] = obs[c].astype("category")
    var = pd.DataFrame(index=pd.Index(np.asarray(pb[gene_dim].values).astype(str)))
    layers = {k: np.asarray(v) for k, v in values.items()}
    return anndata.AnnData(X=X, obs=obs, var=var, layers=layers)


def _matrices(data: Any, var: str) -> tuple[Matrix | None, dict[str, Matrix], Matrix | None]:
    if not isinstance(data, xr.Dataset):
        return as_matrix(data, caller="to_anndata"), {}, None
    if var not in data.data_vars and var != "X":
        raise KeyError(f"{var!r} is not a matrix of this dataset ({', '.join(data.data_vars)})")
    found = {k: as_matrix(data, str(k), caller="to_anndata") for k, v in data.data_vars.items()
             if v.ndim == 2 and v.dims[0] == "cell"}
    raw = found.pop("raw", None) if var != "raw" else None
    main = found.pop(var, None)
    return main, found, raw


def _sparse(m: Matrix | None) -> Any:
    """The selection's values, lazily, in the class the source held (None for no matrix)."""
    if m is None:
        return None
    if m.fill is not None and m.fill != 0:
        raise ValueError(f"the selection maps zeros to {m.fill}: it is dense, not an AnnData X")
    formats = {p.store.matrix(p.matrix).get("source_format", "csr") for p in m.base.parts}
    fmt = formats.pop() if len(formats) == 1 else "csr"
    # one CSR block per row group; zeros that a per-cell operand keeps zero are checked there
    return dask.delayed(_as_source_class)(m.array.csr_blocks(), fmt, m.data.shape)


def _as_source_class(blocks: list[Any], fmt: str, shape: tuple[int, int]) -> Any:
    import scipy.sparse as sp

    csr = sp.csr_matrix(sp.vstack(blocks, format="csr")) if blocks else sp.csr_matrix(shape)
    if fmt == "dense":
        return csr.toarray()
    # the *_matrix classes: scanpy before 1.12 does not handle scipy's sparse arrays
    return sp.csc_matrix(csr) if fmt == "csc" else csr


def _local(base: Base, part: Any) -> np.ndarray | None:
    """Positions in ``part``'s store of the selected cells it holds (None: all of them)."""
    if base.cells is None:
        return None
    lo, hi = np.searchsorted(base.cells, [part.offset, part.offset + part.n_cells])
    return base.cells[lo:hi] - part.offset


def _obs(base: Base) -> pd.DataFrame:
    frames = []
    for p in base.parts:
        local = _local(base, p)
        if local is not None and not len(local):
            continue
        obs = p.store.obs()
        frames.append(obs if local is None else obs.iloc[local])
    if not frames:
        return base.parts[0].store.obs().iloc[:0]
    return _concat(frames)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Frames one after another, categoricals united as ``anndata.concat`` unites them."""
    if len(frames) == 1:
        return frames[0]
    out = pd.concat(frames)
    for col in frames[0].columns:
        dtypes = [f[col].dtype for f in frames]
        if all(isinstance(d, pd.CategoricalDtype) for d in dtypes):
            dtype = union_categories(dtypes)
            out[col] = out[col].astype(object if dtype is None else dtype)
    return out


def _gene_rows(m: Matrix) -> np.ndarray:
    """The selected genes' rows in the first store's var (of this matrix)."""
    gm = m.base.parts[0].gene_map
    return m.genes if gm is None else np.asarray(gm)[m.genes]


def _var(m: Matrix) -> pd.DataFrame:
    p = m.base.parts[0]
    return p.store.var(p.matrix).iloc[_gene_rows(m)]


def _axis_arrays(base: Base, axis: str, m: Matrix | None = None) -> dict[str, Any]:
    """obsm of the selected cells (from every store), or varm of the selected genes: the
    stored arrays, and the elements kept in anndata's encoding (tables, sparse)."""
    st0 = base.parts[0].store
    out: dict[str, Any] = {}
    if axis == "varm":
        rows = None if m is None else _gene_rows(m)
        for key in st0.attrs.get(axis, []):
            out[key] = _rows(st0.array(f"varm/{key}"), rows)
        for key, value in _elements(st0, "varm").items():
            out[key] = value if rows is None else _take_rows(value, rows)
        return out
    stored = [(p, p.store.attrs.get("obsm", []), _elements(p.store, "obsm"), _local(base, p))
              for p in base.parts]
    for key in st0.attrs.get("obsm", []):
        if all(key in keys for _, keys, _, _ in stored):
            pieces = [_rows(p.store.array(f"obsm/{key}"), local) for p, _, _, local in stored]
            out[key] = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    for key in stored[0][2]:
        if all(key in extra for _, _, extra, _ in stored):
            pieces = [extra[key] if local is None else _take_rows(extra[key], local)
                      for _, _, extra, local in stored]
            out[key] = pieces[0] if len(pieces) == 1 else _stack(pieces)
    return out


def _elements(store: Any, axis: str) -> dict[str, Any]:
    return {k.split("/", 1)[1]: v for k, v in store.elements().items() if k.startswith(axis + "/")}


def _take_rows(value: Any, rows: np.ndarray) -> Any:
    return value.iloc[rows] if isinstance(value, pd.DataFrame) else value[rows]


def _stack(pieces: list[Any]) -> Any:
    import scipy.sparse as sp

    if isinstance(pieces[0], pd.DataFrame):
        return pd.concat(pieces)
    if sp.issparse(pieces[0]):
        return type(pieces[0])(sp.vstack(pieces))
    return np.concatenate(pieces)


def _pairwise(base: Base, axis: str, genes: Matrix | None) -> dict[str, Any]:
    """obsp of the selected cells, varp of the selected genes (one store only: the pairs
    between plates are unknown, so several plates give none, as ``anndata.concat`` does)."""
    from scdask.store.pairwise import pairwise_keys, read_pairwise

    if len(base.parts) != 1 or (axis == "varp" and genes is None):
        return {}
    p = base.parts[0]
    rows = _local(base, p) if axis == "obsp" else _gene_rows(genes)
    if axis == "varp" and genes.base.genes is None and genes.base.parts[0].gene_map is None:
        rows = None
    return {key: read_pairwise(p.store, f"{axis}/{key}", rows)
            for key in pairwise_keys(p.store, axis)}


def _rows(arr: Any, rows: np.ndarray | None) -> np.ndarray:
    """Rows ``rows`` (all when None) of a stored array, reading only their chunks."""
    if rows is None:
        return np.asarray(arr[:])
    return np.asarray(arr.get_orthogonal_selection((rows,) + (slice(None),) * (arr.ndim - 1)))


def _without_matrices(ds: xr.Dataset) -> Any:
    """The AnnData of a dataset without matrices (a file without X): obs, var, obsm, varm
    and uns from its stores; a selection of its cells or genes is taken by name."""
    import anndata

    from scdask.store.reader import Store

    stores = [Store(u) for u in ds.attrs.get("scdask_stores") or []]
    if not stores:
        raise TypeError("to_anndata needs a dataset opened with scdask.open")
    obs = _concat([st.obs() for st in stores])
    var = stores[0].var()
    cells = np.arange(len(obs))
    if "cell" in ds.dims and ds.sizes["cell"] != len(obs):
        cells = obs.index.get_indexer(np.asarray(ds["obs_names"].values))
    genes = np.arange(len(var))
    if "gene" in ds.dims and ds.sizes["gene"] != len(var):
        genes = var.index.get_indexer(np.asarray(ds["gene"].values))
    obsm = {}
    for key in stores[0].attrs.get("obsm", []):
        whole = np.concatenate([_rows(st.array(f"obsm/{key}"), None) for st in stores])
        obsm[key] = whole[cells]
    varm = {k: _rows(stores[0].array(f"varm/{k}"), genes) for k in stores[0].attrs.get("varm", [])}
    return anndata.AnnData(obs=obs.iloc[cells], var=var.iloc[genes], obsm=obsm, varm=varm,
                           uns=stores[0].uns())


def _add_stats(adata: Any) -> None:
    """Per-cell and per-gene statistics of ``adata.X``, over the selection."""
    import scipy.sparse as sp

    X = adata.X
    for axis, frame, prefix in ((1, adata.obs, "cell"), (0, adata.var, "gene")):
        frame[f"{prefix}_nnz"] = (X != 0).sum(axis) if not sp.issparse(X) else X.getnnz(axis)
        frame[f"{prefix}_sum"] = np.asarray(X.sum(axis, dtype=np.float64)).reshape(-1)


@xr.register_dataset_accessor("scdask")
class ScdaskAccessor:
    """``ds.scdask``: a scdask Dataset in anndata's terms.

    ``ds.scdask.obs`` and ``ds.scdask.var`` are the selection's obs and var frames as the
    source had them (categoricals, nullable columns, index name), read when asked;
    ``ds.scdask.to_anndata()`` is :func:`to_anndata`.
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def _reference(self) -> tuple[Matrix | None, Matrix | None]:
        main, layers, raw = _matrices(self._ds, "X")
        genes = main or next(iter(layers.values()), None)
        return genes or raw, genes

    @property
    def obs(self) -> pd.DataFrame:
        ref, _ = self._reference()
        return _without_matrices(self._ds).obs if ref is None else _obs(ref.base)

    @property
    def var(self) -> pd.DataFrame:
        _, genes = self._reference()
        return _without_matrices(self._ds).var if genes is None else _var(genes)

    def to_anndata(self, var: str = "X", *, stats: bool = False) -> Any:
        return to_anndata(self._ds, var, stats=stats)
