"""A CSC matrix's entries bucketed by row group in one pass: an out-of-core transpose.

Rows of a CSC matrix are scattered over every column, so reading one row group means
scanning every stored entry: once per row group, ~350 full passes for a 5.7M-cell
plate. Instead, *spill* tasks each read a range of whole columns once (values cast and
checked as a row read checks them) and write its entries sorted by row group to three
scratch files in the store's ``wip`` folder — the cell within its group (uint16), the
column, the value — with a marker holding where each row group starts. A partition then
reads its row group's slice of every range (:func:`gather`), in column order.

Ranges hold at most :data:`ENTRIES` entries (more for a matrix that would need more than
:data:`MAX_RANGES` of them), so a spill task's memory is bounded whatever the matrix.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from scdask.format import WIP_DIR, FormatError, MatrixPlan, Plan
from scdask.format.blocks import CSRBlock
from scdask.sources import Source
from scdask.store.location import Location

SPILL_DIR = f"{WIP_DIR}/spill"

#: Stored entries per column range (a spill task holds about 16 bytes per entry).
ENTRIES = 1 << 22

#: At most this many ranges per matrix (a partition reads a slice of every one).
MAX_RANGES = 1024

#: Peak bytes a spill task holds per entry of its range (indices, values, sort keys).
BYTES_PER_ENTRY = 16

_PARTS = ("rows", "cols", "vals")  # the scratch files of a range, one array each


def column_ranges(offsets: np.ndarray, entries: int | None = None) -> np.ndarray:
    """Boundaries of consecutive column ranges holding at most ``entries`` stored entries
    each (a column holding more is a range of its own); ``offsets`` is the CSC indptr."""
    n_cols = len(offsets) - 1
    per = max(entries or ENTRIES, -(-int(offsets[-1]) // MAX_RANGES), 1)
    bounds = [0]
    while bounds[-1] < n_cols:
        a = bounds[-1]
        b = int(np.searchsorted(offsets, offsets[a] + per, side="right")) - 1
        bounds.append(min(n_cols, max(b, a + 1)))
    return np.asarray(bounds, dtype=np.int64)


def csc_matrices(plan: Plan) -> list[MatrixPlan]:
    return [m for m in plan.matrices if m.source_format == "csc"]


def _dir(name: str) -> str:
    return f"{SPILL_DIR}/{name}"


def plan_spills(loc: Location, src: Source, plan: Plan) -> None:
    """Record the column ranges of every CSC matrix (at initialisation)."""
    for m in csc_matrices(plan):
        bounds = column_ranges(src.column_offsets(m.name))
        with loc.open(f"{_dir(m.name)}/ranges.json", "wb") as f:
            f.write(json.dumps(bounds.tolist()).encode())


def _ranges(loc: Location, name: str) -> list[int]:
    with loc.open(f"{_dir(name)}/ranges.json", "rb") as f:
        return list(json.loads(f.read()))


def spill_tasks(loc: Location, plan: Plan) -> list[tuple[str, int]]:
    """The ``(matrix, range)`` spills not done yet."""
    return [(m.name, k) for m in csc_matrices(plan)
            for k in range(len(_ranges(loc, m.name)) - 1)
            if not loc.exists(f"{_dir(m.name)}/{k}.json")]


def spill(loc: Location, src: Source, plan: Plan, name: str, k: int) -> int:
    """Read column range ``k`` of CSC matrix ``name`` once and write its entries bucketed
    by row group; return the entries written. Safe to rerun: its marker is written last."""
    m = next(m for m in plan.matrices if m.name == name)
    bounds = _ranges(loc, name)
    a, b = bounds[k], bounds[k + 1]
    block = src.read_columns(name, a, b, value_dtype=m.stored_dtype or None)
    from scdask.conversion.transpose import bucket_by_group  # compiled: imported where it runs

    n = block.nnz
    parts = {"rows": np.empty(n, np.uint16), "cols": np.empty(n, _col_dtype(m.n_vars)),
             "vals": np.empty(n, block.data.dtype)}
    offsets = bucket_by_group(block.indptr, block.indices, block.data, a,
                              plan.row_group_size, plan.n_groups, *parts.values())
    del block
    base = f"{_dir(name)}/{k}"
    for part, values in parts.items():
        with loc.open(f"{base}.{part}", "wb") as f:
            f.write(memoryview(np.ascontiguousarray(values)).cast("B"))
    marker = {"offsets": offsets.tolist(), "vals": parts["vals"].dtype.str}
    with loc.open(f"{base}.json", "wb") as f:
        f.write(json.dumps(marker).encode())
    return int(offsets[-1])


def _col_dtype(n_vars: int) -> Any:
    return np.uint16 if n_vars <= 1 << 16 else np.uint32


def gather(loc: Location, plan: Plan, m: MatrixPlan, partition: int) -> CSRBlock:
    """Row group ``partition`` of CSC matrix ``m``, from every range's spilled entries.

    Raises
    ------
    RuntimeError
        If a range is not spilled yet.
    FormatError
        If a scratch file is shorter than its marker says (its marker is then removed,
        so rerunning the same conversion spills that range again).
    """
    n_ranges = len(_ranges(loc, m.name)) - 1
    pieces: dict[str, list[np.ndarray]] = {p: [] for p in _PARTS}
    for k in range(n_ranges):
        base = f"{_dir(m.name)}/{k}"
        if not loc.exists(f"{base}.json"):
            raise RuntimeError(
                f"{loc}: {m.name}: column range {k} of {n_ranges} is not read yet; rerun "
                "convert_init (or the same convert) to finish the CSC pass first")
        with loc.open(f"{base}.json", "rb") as f:
            marker = json.loads(f.read())
        lo, hi = marker["offsets"][partition : partition + 2]
        dtypes = {"rows": np.uint16, "cols": _col_dtype(m.n_vars), "vals": marker["vals"]}
        for part, dtype in dtypes.items():
            pieces[part].append(_read_slice(loc, f"{base}.{part}", np.dtype(dtype), lo, hi,
                                            f"{base}.json"))
    start, stop = plan.group_rows(partition)
    n_rows = stop - start
    from scdask.conversion.transpose import group_by_row  # compiled: imported where it runs

    rows, cols, vals = (np.concatenate(pieces[p]) for p in _PARTS)
    del pieces
    out_cols, out_vals = np.empty_like(cols), np.empty_like(vals)
    indptr = group_by_row(rows, cols, vals, n_rows, out_cols, out_vals)  # columns stay in order
    return CSRBlock(indptr, out_cols, out_vals, m.n_vars)


def _read_slice(loc: Location, path: str, dtype: np.dtype, lo: int, hi: int,
                marker: str) -> np.ndarray:
    n = (hi - lo) * dtype.itemsize
    with loc.open(path, "rb") as f:
        f.seek(lo * dtype.itemsize)
        raw = f.read(n)
    if len(raw) != n:
        loc.remove(marker)
        raise FormatError(
            f"{loc}: {path}: scratch file is shorter than recorded ({len(raw)} of {n} bytes "
            f"from entry {lo}); rerun the same conversion to read that column range again")
    return np.frombuffer(raw, dtype=dtype)
