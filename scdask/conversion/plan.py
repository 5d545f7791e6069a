"""What a conversion will do, decided before any data moves: the :class:`~scdask.format.Plan`.

:func:`make_plan` reads a :class:`~scdask.sources.Source`'s shapes and a sample of
its values; :func:`estimate_partition_bytes` is what one worker will hold, which
sets how many run at once.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from scdask.conversion import arrays
from scdask.conversion.spill import BYTES_PER_ENTRY, column_ranges
from scdask.format import (
    FORMAT_VERSION,
    ROOT_ATTR,
    VAR_FILE,
    WIP_ATTR,
    Codecs,
    FormatError,
    MatrixPlan,
    Plan,
    narrow_dtype,
    parse_chunk_size,
    parse_row_group_size,
)
from scdask.sources import Source
from scdask.store.location import Location

DEFAULT_ROW_GROUP_SIZE = 16384


DEFAULT_CHUNK_SIZE = 1 << 20


DEFAULT_MEMORY_BUDGET = "2GB"


# Resident memory of a worker process before it reads anything (Python, numpy, zarr, h5py).
_WORKER_BASE_BYTES = 200 << 20


def store_state(loc: Location) -> str:
    """``missing``, ``empty``, ``complete``, ``wip`` (a conversion in progress) or ``other``."""
    if not loc.exists():
        return "missing"
    if not loc.listdir():
        return "empty"
    if not loc.exists("zarr.json"):
        return "other"
    try:
        attrs = loc.open_group("r").attrs.asdict()
    except Exception:  # noqa: BLE001 - anything unreadable is simply not ours
        return "other"
    if ROOT_ATTR in attrs:
        return "complete"
    if WIP_ATTR in attrs:
        return "wip"
    return "other"


def make_plan(
    source: Source,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    codecs: Codecs | None = None,
) -> Plan:
    """The conversion plan for ``source`` with these settings."""
    codecs = codecs or Codecs()
    st = os.stat(source.path)
    for m in source.matrices():
        check_value_dtype(source.path, m.name, m.dtype)
    matrices = tuple(
        MatrixPlan(
            name=m.name,
            n_obs=m.n_obs,
            n_vars=m.n_vars,
            dtype=m.dtype.str,
            source_format=m.format,
            var=VAR_FILE if m.var == "var" else "raw/" + VAR_FILE,
            stored_dtype=narrow_dtype(m.dtype) if codecs.narrow and _counts(source, m) else "",
        )
        for m in source.matrices()
    )
    plan = Plan(
        source=os.path.abspath(source.path),
        source_kind=source.kind,
        n_obs=source.n_obs,
        n_vars=source.n_vars,
        row_group_size=parse_row_group_size(row_group_size),
        chunk_size=parse_chunk_size(chunk_size),
        matrices=matrices,
        codecs=codecs,
        source_size=st.st_size,
        source_mtime=st.st_mtime,
        format_version=FORMAT_VERSION if arrays._CHECKSUMS else 1,
    )
    plan.validate()
    return plan


def check_source(plan: Plan) -> None:
    """Refuse a source that is gone or changed since the plan was made."""
    try:
        st = os.stat(plan.source)
    except FileNotFoundError:
        raise FileNotFoundError(f"{plan.source}: the conversion source is gone") from None
    if st.st_size != plan.source_size or st.st_mtime != plan.source_mtime:
        raise FormatError(
            f"{plan.source}: changed since the conversion started; rerun with --overwrite"
        )


class UnsupportedDtypeError(FormatError):
    """A matrix holds values of a dtype scdask does not convert."""


def check_value_dtype(path: str, name: str, dtype: np.dtype) -> None:
    """Refuse value dtypes the compiled kernels do not handle (float16, complex, objects)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf" or dtype.itemsize > 8 or dtype == np.float16:
        raise UnsupportedDtypeError(
            f"{path}: {name} has values of dtype {dtype}, which scdask does not convert "
            "(booleans, integers, float32 and float64 are supported); cast it first, e.g. "
            f"adata.X = adata.X.astype('float32'), and write the file again"
        )


def _counts(source: Source, m: Any) -> bool:
    """Whether the matrix looks like counts: its first stored values are integers ≤ 65,535.

    Every row group is checked again as it is read (see :meth:`Source.read_rows`).
    """
    if m.format == "dense" or np.dtype(m.dtype).itemsize <= 2:
        return False
    v = source.sample_values(m.name)
    return bool(np.all((v >= 0) & (v <= 65535) & (v == np.floor(v))))


def estimate_partition_bytes(source: Source, plan: Plan) -> int:
    """Peak memory of one worker: the largest row group of each matrix, read and transposed.

    A local worker keeps its four row-group arrays (slab indices and values, transposed
    cells and values) from one matrix and partition to the next, each as large as the
    largest it has held: the estimate adds up, per array, its largest size over matrices.
    """
    boundaries = np.array([plan.group_rows(g)[0] for g in range(plan.n_groups)] + [plan.n_obs])
    largest = np.zeros(4, dtype=np.int64)
    for m in plan.matrices:
        info = next(i for i in source.matrices() if i.name == m.name)
        per_group = source.row_group_nnz(m.name, boundaries)
        if per_group is None or len(per_group) == 0:
            nnz = plan.row_group_size * m.n_vars if info.format == "dense" else 0
            if info.format == "csc":
                nnz = info.nnz * min(1.0, plan.row_group_size / max(1, m.n_obs))
        else:
            nnz = int(per_group.max())
        index = 8 if info.format != "csr" else info.index_itemsize
        stored = np.dtype(m.stored_dtype).itemsize
        sizes = np.array([index, info.dtype.itemsize, 2, stored], dtype=np.int64) * int(nnz)
        np.maximum(largest, sizes, out=largest)
    spill = 0  # a CSC matrix is first read a column range at a time (conversion.spill)
    for m in plan.matrices:
        if m.source_format == "csc":
            offsets = source.column_offsets(m.name)
            spill = max(spill, int(np.diff(offsets[column_ranges(offsets)]).max(initial=0)))
    return (max(int(largest.sum()) + plan.chunk_size * 8, spill * BYTES_PER_ENTRY)
            + _WORKER_BASE_BYTES)
