"""Any source → scdask store, in three resumable steps.

``convert_init`` reads shapes, writes the :class:`~scdask.format.Plan`, the empty
arrays and the metadata; ``convert_partition(i)`` converts row group ``i`` of every
matrix, independently of every other partition; ``convert_finalise`` checks that
all partitions are there, combines the per-gene statistics and only then marks
the store complete. :func:`convert` chains the three on any executor.

Until ``convert_finalise`` has written the root ``scdask`` attribute, a store
does not open: an interrupted conversion never looks complete, and rerunning the
same conversion resumes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from typing import Any

import zarr

from scdask._version import __version__
from scdask.conversion import spill
from scdask.conversion.arrays import (
    WRITE_CONCURRENCY,
    WRITE_CONFIG,
    create_matrix,
    file_checksums,
    finalise_matrix,
    write_row,
)
from scdask.conversion.metadata import write_metadata
from scdask.conversion.plan import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_ROW_GROUP_SIZE,
    check_source,
    make_plan,
    store_state,
)
from scdask.format import (
    COLPTR,
    DATA,
    INDICES,
    ROOT_ATTR,
    STATS,
    WIP_ATTR,
    WIP_DIR,
    Codecs,
    FormatError,
    LossyDtypeError,
    Plan,
    cell_stat_array,
)
from scdask.parallel import release_memory
from scdask.sources import Source, open_source
from scdask.sources.scratch import Scratch
from scdask.store import stats
from scdask.store.integrity import write_tables
from scdask.store.location import Location, check_destination

_INIT_DONE = f"{WIP_DIR}/init.done"
METADATA_TASK = "metadata"
METADATA_DONE = f"{WIP_DIR}/done/{METADATA_TASK}.json"


def partition_marker(partition: int) -> str:
    return f"{WIP_DIR}/done/p{partition}.json"


def convert_init(
    source: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    codecs: Codecs | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> Plan:
    """Start (or resume) a conversion: write the plan, empty arrays and metadata, and
    bucket the entries of any CSC matrix by row group (:func:`convert_spill`).

    Parameters
    ----------
    source
        Path of the H5AD file.
    dst
        Path or fsspec URL of the store to create.
    row_group_size
        Cells per row group (the unit of parallelism and of cell-wise reads), at most 65,536.
    chunk_size
        Non-zeros per Zarr chunk of ``data``/``indices``.
    codecs
        Compression settings.
    overwrite
        Replace ``dst`` if it holds a scdask store (complete or not). Anything else, and
        a ``dst`` that is or contains ``source``, is refused.
    storage_options
        fsspec options for ``dst``.

    Returns
    -------
    Plan
        The plan now recorded in the store; when an interrupted conversion with the
        same plan is found, it is returned unchanged so the caller can resume.
    """
    plan = init_store(source, dst, row_group_size, chunk_size, codecs, overwrite, storage_options)
    warn_dropped(plan.source, convert_metadata(dst, storage_options))
    loc = Location(os.fspath(dst), storage_options)
    for name, k in spill.spill_tasks(loc, plan):
        convert_spill(dst, name, k, storage_options)
    return plan


def init_store(
    source: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    row_group_size: int,
    chunk_size: int,
    codecs: Codecs | None,
    overwrite: bool,
    storage_options: dict[str, Any] | None,
) -> Plan:
    """The first half of :func:`convert_init`: the plan and the empty matrix arrays.

    It reads only shapes and a sample of values, so it is quick and light.
    """
    src = open_source(source)
    plan = make_plan(src, row_group_size, chunk_size, codecs)
    loc = Location(os.fspath(dst), storage_options)
    check_destination(loc, [plan.source], "the store")
    state = store_state(loc)
    if state not in ("missing", "empty"):
        if overwrite and state in ("complete", "wip"):
            loc.remove()
        elif state == "complete":
            raise FileExistsError(
                f"{loc}: already holds a complete scdask store; pass overwrite=True "
                "(--overwrite) to replace it"
            )
        elif state == "wip":
            stored = loc.open_group("r").attrs[WIP_ATTR]
            wide = make_plan(src, row_group_size, chunk_size,
                             dataclasses.replace(plan.codecs, narrow=False))
            if stored == wide.to_dict():
                plan = wide  # a conversion that fell back to the source dtype: resume it
            elif stored.get("format_version") != plan.format_version:
                raise FileExistsError(
                    f"{loc}: holds an interrupted conversion started by another scdask "
                    f"(format {stored.get('format_version')}, this one writes "
                    f"{plan.format_version}); pass overwrite=True (--overwrite) to start again"
                )
            elif stored != plan.to_dict():
                raise FileExistsError(
                    f"{loc}: holds an interrupted conversion of another source or with other "
                    "settings; pass overwrite=True (--overwrite) to start again"
                )
            if loc.exists(_INIT_DONE):
                return plan  # resume: the tasks without a marker are still to do
            loc.remove()  # init itself was interrupted: start again
        else:
            raise FileExistsError(
                f"{loc}: exists and is not a scdask store; choose another destination "
                "(overwrite replaces only a scdask store, recognised by its zarr.json)"
            )
    root = zarr.open_group(loc.zarr_store(), mode="w", zarr_format=3)
    root.attrs.put({WIP_ATTR: plan.to_dict()})
    for m in plan.matrices:
        create_matrix(root, plan, m)
    spill.plan_spills(loc, src, plan)
    with loc.open(_INIT_DONE, "wb") as f:
        f.write(b"ok")
    src.close()
    return plan


def convert_metadata(
    dst: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Write obs, var, uns, obsm and varm of an initialised conversion.

    Returns the elements of the source that are not kept (see
    :func:`warn_dropped`). Safe to rerun: once written, the
    recorded list is returned without reading the source again.
    """
    loc = Location(os.fspath(dst), storage_options)
    if loc.exists(METADATA_DONE):
        return _recorded_drops(loc)
    crcs: dict[str, int] = {}
    root = loc.open_group("r+", crcs)
    plan = Plan.from_dict(root.attrs[WIP_ATTR])
    check_source(plan)
    src = open_source(plan.source, plan.source_kind)
    dropped = write_metadata(src, loc, root, plan)
    src.close()
    with loc.open(METADATA_DONE, "wb") as f:
        f.write(json.dumps({"dropped": dropped, "crc32c": crcs}).encode())
    return dropped


def convert_spill(dst: str | os.PathLike[str], name: str, k: int,
                  storage_options: dict[str, Any] | None = None) -> int:
    """Read column range ``k`` of CSC matrix ``name`` once, bucketing its entries by row
    group for the partitions (:mod:`scdask.conversion.spill`); return the entries read."""
    loc = Location(os.fspath(dst), storage_options)
    plan = Plan.from_dict(loc.open_group("r").attrs[WIP_ATTR])
    check_source(plan)
    src = open_source(plan.source, plan.source_kind)
    try:
        return spill.spill(loc, src, plan, name, k)
    except LossyDtypeError as e:
        raise LossyDtypeError(f"{e}; convert again with narrow=False (--no-narrow)") from None
    finally:
        src.close()


def convert_partition(
    dst: str | os.PathLike[str], partition: int, storage_options: dict[str, Any] | None = None,
    scratch: Scratch | None = None,
) -> dict[str, int]:
    """Convert row group ``partition`` of every matrix; return its non-zeros per matrix.

    Safe to rerun: a partition owns its chunks, and its marker is written last. With
    ``scratch``, the row group is read and transposed in its buffers (kept for the next).
    """
    loc = Location(os.fspath(dst), storage_options)
    crcs: dict[str, int] = {}
    root = loc.open_group("r+", crcs)
    plan = Plan.from_dict(root.attrs[WIP_ATTR])
    if not 0 <= partition < plan.n_groups:
        raise IndexError(f"{loc}: partition {partition} is outside 0..{plan.n_groups - 1}")
    check_source(plan)
    src = open_source(plan.source, plan.source_kind)
    from scdask.conversion.transpose import to_group  # compiled kernels: imported where they run
    from scdask.format.codecs import implementations

    config = {**WRITE_CONFIG, "async.concurrency": WRITE_CONCURRENCY[loc.is_local]}
    with zarr.config.set(config), implementations():
        nnz = _convert_rows(root, loc, plan, src, partition, to_group, scratch)
    src.close()
    with loc.open(partition_marker(partition), "wb") as f:
        f.write(json.dumps({"nnz": nnz, "crc32c": crcs}).encode())
    return nnz


def _convert_rows(root: zarr.Group, loc: Location, plan: Plan, src: Source, partition: int,
                  to_group: Any, scratch: Scratch | None) -> dict[str, int]:
    concurrency = WRITE_CONCURRENCY[loc.is_local]
    start, stop = plan.group_rows(partition)
    nnz: dict[str, int] = {}
    for m in plan.matrices:
        try:  # the source's errors name the file, element and rows
            if m.source_format == "csc":  # bucketed by row group already (one pass)
                block = spill.gather(loc, plan, m, partition)
            else:
                block = src.read_rows(m.name, start, stop, value_dtype=m.stored_dtype,
                                      scratch=scratch)
        except LossyDtypeError as e:
            raise LossyDtypeError(f"{e}; convert again with narrow=False (--no-narrow)") from None
        try:
            c = to_group(block, m.stored_dtype, scratch)
        except FormatError as e:
            raise FormatError(f"{plan.source}: {m.name}: rows {start}:{stop}: {e}") from None
        del block
        g = c.group
        mg = root[m.name]
        if g.nnz:
            write_row(mg[DATA], partition, g.data, concurrency)
            # Blosc's output buffers, shrunk after compressing, leave the encoding thread's
            # heap fragmented: handed back between the two large writes, a worker's first
            # partition peaks 40 MB lower.
            release_memory()
            write_row(mg[INDICES], partition, g.indices, concurrency)
        root[f"{WIP_DIR}/{m.name}"][COLPTR][partition, :] = g.colptr
        cells = stats.finish_stats(*c.cells, m.n_vars)
        for stat in STATS:
            mg[cell_stat_array(stat)][start:stop] = cells[stat]
        if m.n_vars:
            root[f"{WIP_DIR}/{m.name}"]["gene_partial"][partition] = c.genes[1].T
        nnz[m.name] = g.nnz
        del c, g
    return nnz


def convert_finalise(
    dst: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> None:
    """Check every partition is done, write per-gene statistics, mark the store complete."""
    loc = Location(os.fspath(dst), storage_options)
    crcs: dict[str, int] = {}
    root = loc.open_group("r+", crcs)
    if ROOT_ATTR in root.attrs:  # finished; only the clean-up may have been interrupted
        loc.remove(WIP_DIR)
        return
    plan = Plan.from_dict(root.attrs[WIP_ATTR])
    if not loc.exists(METADATA_DONE):
        raise RuntimeError(
            f"{loc}: obs/var metadata are not written; run convert_metadata, or rerun the "
            "same convert to resume"
        )
    missing = [i for i in range(plan.n_groups) if not loc.exists(partition_marker(i))]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
        raise RuntimeError(
            f"{loc}: {len(missing)} of {plan.n_groups} partitions are not converted ({shown}); "
            "run convert_partition for them, or rerun the same convert to resume"
        )
    # The partitions' results are read checked: a lost or damaged chunk is an error here,
    # not a wrong colptr or statistic in the finished store.
    checked = loc.open_checked(checksums=plan.format_version >= 2)
    from scdask.format.codecs import implementations  # compiled: imported where it runs

    matrices = {}
    with implementations():
        for m in plan.matrices:
            matrices[m.name] = finalise_matrix(root, checked[f"{WIP_DIR}/{m.name}"], plan, m)
    obsm, varm, obsp, varp = (sorted(root[a].keys()) if a in root else []
                              for a in ("obsm", "varm", "obsp", "varp"))
    if plan.format_version >= 2:
        written: dict[str, int] = {}  # every chunk's CRC, as each task wrote it
        for marker in [METADATA_DONE, *map(partition_marker, range(plan.n_groups))]:
            with loc.open(marker, "rb") as f:
                written.update(json.loads(f.read())["crc32c"])
        write_tables(loc, root, {**written, **crcs}, skip=WIP_DIR)
    root.attrs.put(
        {
            ROOT_ATTR: {
                "format_version": plan.format_version,
                "n_obs": plan.n_obs,
                "n_vars": plan.n_vars,
                "matrices": matrices,
                "obsm": obsm,
                "varm": varm,
                "obsp": obsp,
                "varp": varp,
                "row_group_size": plan.row_group_size,
                "source": os.path.basename(plan.source),
                "created_by": f"scdask {__version__}",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "uuid": uuid.uuid4().hex,
                "not_kept": _recorded_drops(loc),
                **file_checksums(loc),
            }
        }
    )
    # The store is complete from the line above; leftovers below are only clutter.
    del root[WIP_DIR]
    loc.remove(WIP_DIR)


def _recorded_drops(loc: Location) -> list[str]:
    """What ``convert_metadata`` recorded as not kept (named again in the store)."""
    with loc.open(METADATA_DONE, "rb") as f:
        return list(json.loads(f.read())["dropped"])


def warn_dropped(source: str, dropped: list[str]) -> None:
    """Name, in one warning, every element of ``source`` that the store does not keep."""
    if dropped:
        import warnings

        warnings.warn(
            f"{source}: not kept in the scdask store: " + "; ".join(dropped),
            UserWarning,
            stacklevel=3,
        )


