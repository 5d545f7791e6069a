"""Parquet export for Daft, DuckDB, Polars and Spark users, one row group per task.

Layout of ``out_dir`` (every table joins on integer ids)::

    obs.parquet          cell_id (int64) + the obs columns of the exported cells
    var.parquet          gene_id (int32) + gene name + the var columns of the exported genes
    X/part-00000.parquet long layout: cell_id, gene_id, value — sorted by gene_id then
                         cell_id, so a one-gene filter prunes row groups by statistics
    X/<col>=<v>/part-…   the same, split by an obs column (``partition_by``), hive style
    _scdask.json         marks a scdask export (what ``overwrite`` may replace)
    _SUCCESS             written last: a dataset without it is incomplete

or, with ``layout="wide"``, ``X/part-*.parquet`` holds cell_id and one column per
exported gene (for a gene list; refused beyond ``max_wide_columns``).

The export is written into a temporary sibling folder and renamed into place at the
end (local paths), so a failed or interrupted export never leaves a dataset that
looks complete. Tasks run on the active Dask scheduler (a ``distributed`` cluster if
one is active); each holds one row group's selected entries, so memory per worker
does not grow with the store.

Arrow memory pool: the writing tasks use Arrow's *system* pool (malloc), not the
default jemalloc/mimalloc pool, which keeps freed memory and, across thousands of
tables, grows a worker far past the data it holds (apache/arrow#47266); freed memory
is handed back to the OS after each task. The process's default pool is switched
only while export tasks run in it and restored after the last one. Readers of the export who see the same
growth can set ``ARROW_DEFAULT_MEMORY_POOL=system``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import dask
import numpy as np
import pandas as pd

from scdask.compute import GroupSel, Matrix, as_matrix, read_gene_runs
from scdask.store.location import Location, check_destination

#: Refuse wide tables with more gene columns than this (Parquet footers and readers
#: slow down badly with tens of thousands of columns).
MAX_WIDE_COLUMNS = 2000
SUCCESS = "_SUCCESS"
#: Written into every export, so that ``overwrite`` recognises what it may replace.
MARKER = "_scdask.json"
#: Cells per slice of the obs table.
OBS_SLICE = 1 << 16
#: Entries of a row group converted to Arrow at once.
SLICE_ENTRIES = 1 << 22


_POOL_LOCK = threading.Lock()
_POOL_STATE: dict[str, Any] = {"users": 0, "previous": None}


@contextlib.contextmanager
def _arrow() -> Iterator[tuple[Any, Any]]:
    """pyarrow and pyarrow.parquet, with Arrow's system pool the default meanwhile.

    Counted across threads: the pool the process had is restored when the last
    export task running in it finishes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _POOL_LOCK:
        if _POOL_STATE["users"] == 0:
            _POOL_STATE["previous"] = pa.default_memory_pool()
            pa.set_memory_pool(pa.system_memory_pool())
        _POOL_STATE["users"] += 1
    try:
        yield pa, pq
    finally:
        with _POOL_LOCK:
            _POOL_STATE["users"] -= 1
            if _POOL_STATE["users"] == 0:
                pa.set_memory_pool(_POOL_STATE["previous"])
                _POOL_STATE["previous"] = None


def _slices(sel: GroupSel, unique: np.ndarray | None, expr: Any, dtype: np.dtype
            ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(cell position in the selection, gene index into ``unique``, value), gene-major,
    in slices of about :data:`SLICE_ENTRIES` entries (whole genes), so that the wide
    int64/int32 columns exist for one slice at a time."""
    starts, ends, vals, rows = read_gene_runs(sel.part, sel.group, unique, expr, True)
    lengths = ends - starts
    pos = None
    if sel.local is not None:
        pos = np.full(sel.n_rows, -1, np.int64)
        pos[sel.local] = np.arange(sel.count)
    bounds = np.searchsorted(np.cumsum(lengths), np.arange(SLICE_ENTRIES, lengths.sum(),
                                                             SLICE_ENTRIES), side="right")
    for g0, g1 in zip(np.r_[0, bounds], np.r_[bounds, len(lengths)], strict=True):
        if g1 <= g0:
            continue
        lo, hi = int(starts[g0]), int(ends[g1 - 1])
        gene = np.repeat(np.arange(g0, g1, dtype=np.int32), lengths[g0:g1])
        r, v = rows[lo:hi], vals[lo:hi]
        if pos is not None:
            cell = pos[r]
            keep = cell >= 0
            cell, gene, v = cell[keep], gene[keep], v[keep]
        else:
            cell = r.astype(np.int64)
        yield cell + sel.first, gene, np.asarray(v).astype(dtype, copy=False)


def _write_part(path: str, sel: GroupSel, unique: np.ndarray | None, columns: np.ndarray, expr: Any,
                dtype: np.dtype, names: list[str] | None, labels: np.ndarray | None,
                part: int) -> int:
    """Write one row group's entries; return the number of matrix rows written.

    ``columns[k]`` is the gene id (long layout) or the column (wide layout, with
    ``names``) of the dataset gene ``unique[k]``.
    """
    from scdask.parallel import release_memory

    with _arrow() as (pa, pq):
        writers: dict[str, Any] = {}
        rows = 0
        try:
            if names is not None:  # wide: one dense block of the group's cells × the genes
                block = np.zeros((sel.count, len(names)), dtype=dtype)
                for cell, gene, value in _slices(sel, unique, expr, dtype):
                    block[cell - sel.first, columns[gene]] = value
                cells = np.arange(sel.first, sel.first + sel.count, dtype=np.int64)
                tables = [pa.table({"cell_id": cells,
                                    **{n: block[:, j] for j, n in enumerate(names)}})]
            else:
                tables = (pa.table({"cell_id": cell, "gene_id": columns[gene].astype(np.int32),
                                    "value": value})
                          for cell, gene, value in _slices(sel, unique, expr, dtype))
            for table in tables:
                pieces = [("", table)]
                if labels is not None:  # hive partitions by an obs column
                    lab = labels[table.column("cell_id").to_numpy()]
                    pieces = [(str(v), table.filter(pa.array(lab == v))) for v in np.unique(lab)]
                for sub, t in pieces:
                    if sub not in writers:
                        d = os.path.join(path, sub) if sub else path
                        os.makedirs(d, exist_ok=True)
                        writers[sub] = pq.ParquetWriter(
                            os.path.join(d, f"part-{part:05d}.parquet"), t.schema,
                            compression="zstd", write_page_checksum=True)
                    writers[sub].write_table(t, row_group_size=1 << 20)
                rows += table.num_rows
            return rows
        finally:
            for w in writers.values():
                w.close()
            release_memory()


def export_parquet(
    data: Any,
    out_dir: str | os.PathLike[str],
    *,
    layout: str = "long",
    var: str = "X",
    partition_by: str | None = None,
    overwrite: bool = False,
    max_wide_columns: int = MAX_WIDE_COLUMNS,
    progress: bool | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Export a store, or any selection of one, as Parquet tables.

    Parameters
    ----------
    data
        A store path/URL, or a Dataset from :func:`scdask.open` or a selection of it
        (``ds.sel(gene=[...])``, ``ds.where(ds.drug == "DMSO_TF", drop=True)``, …).
    out_dir
        Local directory to create.
    layout
        ``"long"`` (cell_id, gene_id, value; any number of genes) or ``"wide"``
        (cell_id and one column per gene; at most ``max_wide_columns`` genes).
    var
        The matrix to export.
    partition_by
        An obs column to split the matrix files by (hive style ``X/<col>=<value>/``).
    overwrite
        Replace ``out_dir`` if it holds an earlier export (or nothing). Anything else,
        and an ``out_dir`` that is, holds or lies inside the store, is refused.
    max_wide_columns
        The widest wide table allowed.
    progress
        Show a progress bar (default: on a terminal).
    storage_options
        fsspec options when ``data`` is a URL.

    Returns
    -------
    str
        ``out_dir``.
    """
    from scdask.backend import open as open_dataset

    ds = open_dataset(data, storage_options=storage_options) if isinstance(
        data, str | os.PathLike) else data
    m = as_matrix(ds, var, caller="export_parquet")
    if layout not in ("long", "wide"):
        raise ValueError(f"layout must be 'long' or 'wide', not {layout!r}")
    b = m.base
    if layout == "wide" and b.n_sel_genes > max_wide_columns:
        raise ValueError(
            f"a wide table of {b.n_sel_genes:,} gene columns is refused (limit "
            f"{max_wide_columns:,}): Parquet writers and readers slow down badly with tens of "
            "thousands of columns. Select a gene list (ds.sel(gene=[...])) or use the long "
            "layout, which has any number of genes in three columns."
        )
    if m.fill != 0:
        raise ValueError("the selection maps zeros to non-zeros: it is dense, export it as such")
    if m.has_operands:
        raise NotImplementedError(f"export_parquet of an expression with per-cell or per-gene "
                                  f"operands ({m.expr}) is not supported yet: export the stored "
                                  "values and apply it in the reading engine")
    out_dir = os.fspath(out_dir)
    stores = list({p.store.url: p.store.loc for p in b.parts}.values())
    check_destination(Location(out_dir), stores, "the export")
    if os.path.lexists(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir}: exists; pass overwrite=True (--overwrite)")
        if not is_export(out_dir) and not _empty_dir(out_dir):
            raise FileExistsError(
                f"{out_dir}: exists and is not a scdask Parquet export; choose another "
                f"destination (overwrite replaces only an export, recognised by its {MARKER})"
            )
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{out_dir}: cannot write in {parent}")
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _export(m, tmp, layout, partition_by, progress)
        if os.path.lexists(out_dir):  # checked above: an export, or an empty folder
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _export(m: Matrix, tmp: str, layout: str, partition_by: str | None,
            progress: bool | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, b, gene_dim, genes = m.data, m.base, m.gene_dim, m.genes
    os.makedirs(os.path.join(tmp, "X"))
    unique, inverse = np.unique(genes, return_inverse=True)
    gene_ids = genes.astype(np.int32)  # ids: positions in the dataset's genes
    # obs and var tables, categoricals dictionary-encoded; obs in slices of cells, so
    # that this process holds one slice of the per-cell columns, not all of them
    cols = [k for k, c in x.coords.items() if c.dims == ("cell",)]
    writer = None
    for a in range(0, max(1, b.n_sel_cells), OBS_SLICE):
        part = x.isel(cell=slice(a, a + OBS_SLICE))
        obs = {"cell_id": np.arange(a, a + part.sizes["cell"], dtype=np.int64)}
        obs.update({k: _column(np.asarray(part[k].values)) for k in cols})
        table = pa.table(obs)
        if writer is None:
            writer = pq.ParquetWriter(os.path.join(tmp, "obs.parquet"), table.schema,
                                      compression="zstd", write_page_checksum=True)
        writer.write_table(table.cast(writer.schema))
    writer.close()
    varcols = {"gene_id": np.unique(gene_ids), "gene": None}
    names = np.asarray(x[gene_dim].values)
    first = np.unique(gene_ids, return_index=True)[1]
    varcols["gene"] = names[first].astype(str)
    for k, c in x.coords.items():
        if c.dims == (gene_dim,) and k != gene_dim:
            varcols[k] = np.asarray(c.values)[first]
    pq.write_table(pa.table(varcols), os.path.join(tmp, "var.parquet"), compression="zstd",
                   write_page_checksum=True)
    labels = None
    if partition_by is not None:
        if partition_by not in x.coords or x[partition_by].dims != ("cell",):
            raise KeyError(f"partition_by: {partition_by!r} is not an obs column")
        vals = pd.Series(np.asarray(x[partition_by].values)).astype(str)
        # Hive folder names, each value percent-encoded as Arrow and Spark decode them, so
        # that no value ("../x", "a/b") names a folder outside its partition.
        labels = np.array([f"{quote(partition_by, safe='')}={quote(v, safe='')}"
                           for v in vals], dtype=object)
    names = None
    columns = unique.astype(np.int32)  # long: gene ids are positions in the dataset
    if layout == "wide":
        names = [str(n) for n in np.asarray(x[gene_dim].values)]
        if len(set(names)) != len(names):
            raise ValueError("wide layout: gene names repeat in the selection; select unique "
                             "genes or use the long layout")
        columns = np.empty(len(unique), dtype=np.int64)
        columns[inverse] = np.arange(len(genes))  # the selection's order
    tasks = [
        dask.delayed(_write_part, pure=False)(
            os.path.join(tmp, "X"), sel, None if b.genes is None else unique, columns,
            m.expr, m.dtype, names, labels, i,
            dask_key_name=f"export-parquet-{os.path.basename(tmp)}-{i}")
        for i, sel in enumerate(b.groups)
    ]
    _compute(tasks, progress)
    with open(os.path.join(tmp, MARKER), "w") as f:
        json.dump({"scdask_export": 1, "layout": layout,
                   "stores": [p.store.url for p in b.parts]}, f)
    with open(os.path.join(tmp, SUCCESS), "w") as f:
        f.write("ok\n")


def is_export(path: str) -> bool:
    """Whether ``path`` is a folder written by :func:`export_parquet`: it holds
    :data:`MARKER`, or (exports of earlier versions) only the files an export writes."""
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    try:
        with open(os.path.join(path, MARKER)) as f:
            return json.load(f).get("scdask_export") == 1
    except (OSError, ValueError, AttributeError):
        pass
    try:
        with open(os.path.join(path, SUCCESS), "rb") as f:
            ok = f.read() == b"ok\n"
    except OSError:
        return False
    return ok and set(os.listdir(path)) <= {"obs.parquet", "var.parquet", "X", SUCCESS}


def _empty_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)


def _column(values: np.ndarray) -> Any:
    import pyarrow as pa

    if values.dtype == object:
        return pa.array(pd.Series(values).astype(str)).dictionary_encode()
    return values


def _compute(tasks: list[Any], progress: bool | None) -> None:
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        client = None
    show = progress if progress is not None else os.isatty(2)
    if client is not None:
        futures = client.compute(tasks)
        if show:
            from distributed import progress as dprogress

            dprogress(futures)
        client.gather(futures)
        return
    if show:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            dask.compute(*tasks)
    else:
        dask.compute(*tasks)
