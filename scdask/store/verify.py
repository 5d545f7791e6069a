"""``scdask verify`` and ``scdask info``: check a store, alone or against its source."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pandas as pd

from scdask.format import STATS, FormatError
from scdask.store import kernels, stats
from scdask.store.reader import Store


@dataclasses.dataclass
class Report:
    """What :func:`verify` checked and what it found wrong."""

    checked: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = [f"checked: {c}" for c in self.checked]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines.append("OK" if self.ok else f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=1e-9, atol=0, equal_nan=True))


def verify(
    store: str | os.PathLike[str] | Store,
    against: str | os.PathLike[str] | None = None,
    *,
    max_problems: int = 20,
) -> Report:
    """Stream through a store checking its integrity, and optionally every value against the source.

    Parameters
    ----------
    store
        The store (path, URL or :class:`~scdask.store.Store`).
    against
        The H5AD file it was converted from: then shapes, every value of every
        matrix and every obs/var column are compared exactly.
    max_problems
        Stop after this many problems.

    Returns
    -------
    Report
        ``report.ok`` is True when nothing was found wrong.
    """
    st = store if isinstance(store, Store) else Store(store)
    report = Report()
    src = None
    names: set[str] = set()
    if against is not None:
        from scdask.sources.h5ad import H5ADSource

        src = H5ADSource(against)
        names = {m.name for m in src.matrices()}
        if names != set(st.matrices):
            report.problems.append(f"matrices differ: source {sorted(names)}, store {sorted(st.matrices)}")
        if (src.n_obs, src.n_vars) != (st.n_obs, st.n_vars):
            report.problems.append(f"shape differs: source {src.n_obs}×{src.n_vars}, store {st.n_obs}×{st.n_vars}")
    damaged = _check_files(st, report)
    for name, info in st.matrices.items():
        n_vars = info["shape"][1]
        total = 0
        acc = stats.empty_stats(n_vars)
        for g in range(st.n_groups):
            if len(report.problems) >= max_problems + damaged:
                return report
            where = f"{st.url}: {name} row group {g}"
            try:
                block = st.read_group(name, g)
            except FormatError as e:
                if not damaged:  # a damaged chunk is reported once, above
                    report.problems.append(f"{where}: {e}")
                total = -1
                continue
            cp = block.colptr
            if cp[0] != 0 or np.any(np.diff(cp) < 0):
                report.problems.append(f"{where}: colptr is not non-decreasing from 0")
                continue
            if block.nnz and block.indices.max(initial=0) >= block.n_rows:
                report.problems.append(f"{where}: a cell index is >= the {block.n_rows} cells of the group")
            total += block.nnz
            stats.merge_into(acc, kernels.gene_stats(block))
            start, stop = st.group_rows(g)
            cells = stats.finish_stats(*kernels.cell_stats(block), n_vars)
            for stat in STATS:
                try:
                    stored = st.array(f"{name}/cell_{stat}")[start:stop]
                except FormatError as e:
                    if not damaged:
                        report.problems.append(f"{where}: {e}")
                    continue
                if not _close(stored, cells[stat]):
                    report.problems.append(f"{where}: cell_{stat} disagrees with the values")
            if src is not None and name in names:
                try:
                    ref = _reference_rows(src.file, name, start, stop)
                except ValueError as e:
                    report.problems.append(f"{against}: {name}: rows {start}:{stop}: {e}")
                    continue
                for part, theirs in (("colptr", ref.indptr), ("indices", ref.indices),
                                     ("data", ref.data)):
                    if not _same(theirs, getattr(block, part)):
                        report.problems.append(f"{where}: {part} differs from the source")
        if total < 0:
            continue  # some row groups could not be read: their statistics cannot be checked
        if total != info["nnz"]:
            report.problems.append(f"{st.url}: {name}: {total} non-zeros stored, attrs say {info['nnz']}")
        genes = stats.finish_stats(*acc, st.n_obs)
        for stat in STATS:
            try:
                stored = st.stat(name, "gene", stat)
            except FormatError as e:
                stored = None
                if not damaged:
                    report.problems.append(str(e))
            if stored is not None and not _close(stored, genes[stat]):
                report.problems.append(f"{st.url}: {name}: gene_{stat} disagrees with the values")
        report.checked.append(f"{name}: {st.n_groups} row groups, {total} non-zeros"
                              + (", every value against the source" if src is not None else ""))
    if src is not None:
        for key in ("obs", "var") + (("raw/var",) if "raw/X" in st.matrices else ()):
            ours = st.obs() if key == "obs" else st.var("raw/X" if key == "raw/var" else "X")
            theirs = _reference_frame(src, key)
            try:  # an empty column index may be a RangeIndex on one side: compare names
                assert list(ours.columns) == list(theirs.columns), "columns differ"
                pd.testing.assert_frame_equal(ours, theirs, check_exact=True,
                                              check_column_type=False)
                report.checked.append(f"{key}: {ours.shape[1]} columns × {len(ours)} rows equal")
            except AssertionError as e:
                report.problems.append(f"{key} differs from the source: {str(e).splitlines()[0]}")
        src.close()
    return report


def _reference_rows(f: Any, name: str, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of matrix ``name`` of an open H5AD file, read by anndata and
    checked by scipy (not by scdask's reader): as a CSC matrix in the store's convention,
    explicit zeros dropped and duplicates summed.

    Raises ValueError where scipy finds the rows malformed.
    """
    import h5py
    import scipy.sparse as sp
    from anndata.io import sparse_dataset

    elem = f[name]
    if isinstance(elem, h5py.Dataset):
        m = sp.csr_matrix(elem[start:stop])
    else:
        m = sp.csr_matrix(sparse_dataset(elem)[start:stop])
    m.check_format(full_check=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    return m.tocsc()


def _reference_frame(src: Any, key: str) -> pd.DataFrame:
    """obs, var or raw/var of an H5AD source as anndata reads it."""
    import warnings

    import anndata
    from anndata.io import read_elem

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            frame = read_elem(src.file[key])
        except Exception:  # layouts older than anndata's element specs
            frame = None
        if isinstance(frame, pd.DataFrame):
            return frame
        adata = anndata.read_h5ad(src.path, backed="r")
        return adata.raw.var if key == "raw/var" else getattr(adata, key)


def _check_files(st: Store, report: Report) -> int:
    """Report every missing or damaged chunk and file of the store; return how many."""
    from scdask.format import COLPTR, OBS_FILE, UNS_FILE
    from scdask.store.integrity import damaged_chunks
    from scdask.store.metadata import read_table

    def extents(path: str) -> np.ndarray | None:
        name, _, leaf = path.rpartition("/")
        if name not in st.matrices or leaf not in ("data", "indices"):
            return None
        try:
            nnz = np.asarray(st.array(f"{name}/{COLPTR}")[:, -1], dtype=np.int64)
        except FormatError:
            return np.zeros(0, np.int64)  # colptr is damaged (reported): check what is there
        arr = st.array(path)
        return -(-nnz // (arr.shards or arr.chunks)[1])

    found = damaged_chunks(st.root, st.loc, st.format_version >= 2, extents)
    files = [OBS_FILE, *sorted({m["var"] for m in st.matrices.values()})]
    for rel in files:
        try:
            n = read_table(st.loc, rel).num_rows
            report.checked.append(f"{rel}: {n} rows, every page's checksum")
        except (FormatError, OSError, ValueError) as e:
            found.append(str(e))
    if st.loc.exists(UNS_FILE):
        try:
            st.uns()
            report.checked.append(f"{UNS_FILE}: readable")
        except (FormatError, OSError, ValueError) as e:
            found.append(f"{st.url}: {UNS_FILE} cannot be read ({e})")
    if not found:
        report.checked.append("every chunk of every array is present"
                              + (" and matches its checksum" if st.format_version >= 2 else ""))
    report.problems += found
    return len(found)


def info(store: str | os.PathLike[str] | Store) -> dict[str, Any]:
    """Shape, non-zeros, dtype, layout, size on disk and the obs/var columns of a store."""
    from scdask.format import OBS_FILE, VAR_FILE
    from scdask.store.metadata import frame_schema

    st = store if isinstance(store, Store) else Store(store)
    obs = [f.name for f in frame_schema(st.loc, OBS_FILE) if f.name != "_index"]
    var = [f.name for f in frame_schema(st.loc, VAR_FILE) if f.name != "_index"]
    return {
        "store": st.url,
        "format_version": st.attrs["format_version"],
        "shape": [st.n_obs, st.n_vars],
        "row_group_size": st.row_group_size,
        "n_row_groups": st.n_groups,
        "matrices": {
            k: {"shape": v["shape"], "dtype": str(np.dtype(v["dtype"])), "nnz": v["nnz"],
                "layout": v["encoding"], "chunk_size": v["chunk_size"]}
            for k, v in st.matrices.items()
        },
        "size_bytes": st.loc.size(),
        "obs_columns": obs,
        "var_columns": var,
        "obsm": st.attrs.get("obsm", []),
        "varm": st.attrs.get("varm", []),
        "created_by": st.attrs.get("created_by"),
        "not_kept": list(st.attrs.get("not_kept", [])),
    }
