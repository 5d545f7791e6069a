"""H5AD → scdask store, in three resumable steps.

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

import numpy as np
import zarr
from dask.utils import format_bytes, parse_bytes
from zarr.codecs import BloscCodec, Crc32cCodec

from scdask._version import __version__
from scdask.format import (
    COLPTR,
    COLPTR_DTYPE,
    DATA,
    FORMAT_VERSION,
    INDEX_DTYPE,
    INDICES,
    MATRIX_ENCODING,
    OBS_FILE,
    ROOT_ATTR,
    STATS,
    UNS_FILE,
    VAR_FILE,
    WIP_ATTR,
    WIP_DIR,
    Codecs,
    FormatError,
    LossyDtypeError,
    MatrixPlan,
    Plan,
    cell_stat_array,
    gene_stat_array,
    narrow_dtype,
    parse_chunk_size,
    parse_row_group_size,
)
from scdask.parallel import release_memory
from scdask.sources.h5ad import H5ADSource
from scdask.sources.scratch import Scratch
from scdask.store import stats
from scdask.store.integrity import write_tables
from scdask.store.location import Location, check_destination

DEFAULT_ROW_GROUP_SIZE = 16384
DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_MEMORY_BUDGET = "2GB"
# colptr is re-chunked at finalise to this many row groups × genes per chunk.
COLPTR_CHUNKS = (64, 1024)
# Resident memory of a worker process before it reads anything (Python, numpy, zarr, h5py).
_WORKER_BASE_BYTES = 200 << 20

_INIT_DONE = f"{WIP_DIR}/init.done"
# How a partition writes: no scan of every chunk for all-zero content (zarr's default,
# which cost 40% of the encoding; a partition writes only chunks it filled), and chunks
# written one at a time to a local disk (the cores are busy with other partitions; each
# chunk in flight cost a worker ~13 MB) but several at once to object storage, whose
# latency would otherwise add up.
_WRITE_CONFIG = {"array.write_empty_chunks": True}
_WRITE_CONCURRENCY = {True: 1, False: 8}  # by Location.is_local
# Every chunk of every array is written, all-zero ones included, so that a reader can
# tell a lost chunk from zeros (docs/FORMAT.md).
_EVERY_CHUNK = {"write_empty_chunks": True}
_METADATA = "metadata"
_METADATA_DONE = f"{WIP_DIR}/done/{_METADATA}.json"


def _marker(partition: int) -> str:
    return f"{WIP_DIR}/done/p{partition}.json"


# False writes format-1 stores, without checksums: only to measure what checksums cost
# (asv_bench), never for data anyone keeps.
_CHECKSUMS = True


def _compressors(codecs: Codecs, shuffle: str, blocksize: int = 0) -> list[Any]:
    """Blosc, then a CRC-32C of the compressed bytes (every chunk of a format-2 store)."""
    # blocksize: Blosc's own default (0) cuts a chunk into small blocks; one block per
    # chunk compressed the 200k-cell plate's indices 2% smaller and encoded faster.
    blosc = BloscCodec(cname=codecs.cname, clevel=codecs.clevel, shuffle=shuffle,
                       blocksize=blocksize)
    return [blosc, Crc32cCodec()] if _CHECKSUMS else [blosc]


def _value_shuffle(dtype: np.dtype) -> str:
    """Blosc's shuffle for stored values: integers bit-shuffled (a partition's uint16
    counts encode in 39 ms instead of 51 ms byte-shuffled and decode a little faster, for
    1.4% more bytes), floats byte-shuffled."""
    if dtype.itemsize == 1:
        return "noshuffle"
    return "bitshuffle" if dtype.kind in "iu" else "shuffle"


def _delta(dtype: str) -> list[Any]:
    from zarr.codecs.numcodecs import Delta

    return [Delta(dtype=dtype)]


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
    source: H5ADSource,
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
        n_obs=source.n_obs,
        n_vars=source.n_vars,
        row_group_size=parse_row_group_size(row_group_size),
        chunk_size=parse_chunk_size(chunk_size),
        matrices=matrices,
        codecs=codecs,
        source_size=st.st_size,
        source_mtime=st.st_mtime,
        format_version=FORMAT_VERSION if _CHECKSUMS else 1,
    )
    plan.validate()
    return plan


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


def _counts(source: H5ADSource, m: Any) -> bool:
    """Whether the matrix looks like counts: its first stored values are integers ≤ 65,535.

    Every row group is checked again as it is read (see :meth:`H5ADSource.read_rows`).
    """
    if m.format == "dense" or np.dtype(m.dtype).itemsize <= 2:
        return False
    v = source.sample_values(m.name)
    return bool(np.all((v >= 0) & (v <= 65535) & (v == np.floor(v))))


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
    """Start (or resume) a conversion: write the plan, empty arrays and metadata.

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
    plan = _init(source, dst, row_group_size, chunk_size, codecs, overwrite, storage_options)
    warn_dropped(plan.source, convert_metadata(dst, storage_options))
    return plan


def _init(
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
    src = H5ADSource(source)
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
        _create_matrix(root, plan, m)
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
    if loc.exists(_METADATA_DONE):
        with loc.open(_METADATA_DONE, "rb") as f:
            return list(json.loads(f.read())["dropped"])
    crcs: dict[str, int] = {}
    root = loc.open_group("r+", crcs)
    plan = Plan.from_dict(root.attrs[WIP_ATTR])
    _check_source(plan)
    src = H5ADSource(plan.source)
    dropped = _write_metadata(src, loc, root, plan)
    src.close()
    with loc.open(_METADATA_DONE, "wb") as f:
        f.write(json.dumps({"dropped": dropped, "crc32c": crcs}).encode())
    return dropped


# Buffers a local worker process reuses from one partition to the next (see
# scdask.sources.scratch); set by _warm_worker, so in-process and cluster conversions keep nothing.
_SCRATCH: Scratch | None = None


def _convert_task(dst: str, task: int | str, storage_options: dict[str, Any] | None) -> Any:
    """One task of :func:`convert`: the metadata, or a partition."""
    try:
        if task == _METADATA:
            if _SCRATCH is not None:
                _SCRATCH.clear()  # the metadata task needs memory of its own
            return convert_metadata(dst, storage_options)
        return convert_partition(dst, int(task), storage_options, _SCRATCH)
    finally:
        release_memory()


def _create_matrix(root: zarr.Group, plan: Plan, m: MatrixPlan) -> None:
    g = root.require_group(m.name)
    G, cap = plan.n_groups, plan.capacity(m)
    c = plan.codecs
    chunk = min(plan.chunk_size, cap)
    stored = np.dtype(m.stored_dtype)
    g.create_array(
        DATA, shape=(G, cap), chunks=(1, chunk), dtype=stored, fill_value=0,
        compressors=_compressors(c, _value_shuffle(stored), chunk * stored.itemsize),
    )
    g.create_array(
        INDICES, shape=(G, cap), chunks=(1, chunk), dtype=INDEX_DTYPE, fill_value=0,
        filters=_delta(INDEX_DTYPE) if c.delta_indices else None,
        compressors=_compressors(c, "bitshuffle", chunk * np.dtype(INDEX_DTYPE).itemsize),
    )
    for stat in STATS:
        g.create_array(
            cell_stat_array(stat), shape=(plan.n_obs,), chunks=(plan.row_group_size,),
            dtype="int64" if stat == "nnz" else "float64", fill_value=0,
            compressors=_compressors(c, "shuffle"),
        )
    wip = root.require_group(f"{WIP_DIR}/{m.name}")
    wip.create_array(
        COLPTR, shape=(G, m.n_vars + 1), chunks=(1, m.n_vars + 1), dtype=COLPTR_DTYPE,
        fill_value=0, filters=_delta(COLPTR_DTYPE), compressors=_compressors(c, "bitshuffle"),
    )
    wip.create_array(
        "gene_partial", shape=(G, 4, max(m.n_vars, 1)), chunks=(1, 4, max(m.n_vars, 1)),
        dtype="float64", fill_value=0, compressors=_compressors(c, "shuffle"),
    )


def _write_metadata(src: H5ADSource, loc: Location, root: zarr.Group, plan: Plan) -> list[str]:
    from scdask.store.metadata import write_table, write_uns

    R = plan.row_group_size
    write_table(loc, OBS_FILE, src.frame("obs"), R)
    write_table(loc, VAR_FILE, src.frame("var"), 1 << 16)
    if any(m.name == "raw/X" for m in plan.matrices):
        write_table(loc, "raw/" + VAR_FILE, src.frame("raw/var"), 1 << 16)
    for key, arr in src.obsm_varm().items():
        axis = key.split("/", 1)[0]
        chunks = (R, *arr.shape[1:]) if axis == "obsm" else arr.shape
        z = root.create_array(
            key, shape=arr.shape, chunks=tuple(max(1, c) for c in chunks), dtype=arr.dtype,
            compressors=_compressors(plan.codecs, "shuffle"), config=_EVERY_CHUNK,
        )
        step = R if axis == "obsm" else max(1, arr.shape[0])
        for a in range(0, arr.shape[0], step):
            z[a : a + step] = arr[a : a + step]
    dropped = src.dropped()
    dropped += write_uns(loc, src.uns())
    return dropped


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
    _check_source(plan)
    src = H5ADSource(plan.source)
    from scdask.conversion.transpose import to_group  # compiled kernels: imported where they run
    from scdask.format.codecs import implementations

    config = {**_WRITE_CONFIG, "async.concurrency": _WRITE_CONCURRENCY[loc.is_local]}
    with zarr.config.set(config), implementations():
        nnz = _convert_rows(root, plan, src, partition, to_group, scratch)
    src.close()
    with loc.open(_marker(partition), "wb") as f:
        f.write(json.dumps({"nnz": nnz, "crc32c": crcs}).encode())
    return nnz


def _convert_rows(root: zarr.Group, plan: Plan, src: H5ADSource, partition: int,
                  to_group: Any, scratch: Scratch | None) -> dict[str, int]:
    start, stop = plan.group_rows(partition)
    nnz: dict[str, int] = {}
    for m in plan.matrices:
        try:  # the source's errors name the file, element and rows
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
            mg[DATA][partition, : g.nnz] = g.data
            # Blosc's output buffers, shrunk after compressing, leave the encoding thread's
            # heap fragmented: handed back between the two large writes, a worker's first
            # partition peaks 40 MB lower.
            release_memory()
            mg[INDICES][partition, : g.nnz] = g.indices
        root[f"{WIP_DIR}/{m.name}"][COLPTR][partition, :] = g.colptr
        cells = stats.finish_stats(*c.cells, m.n_vars)
        for stat in STATS:
            mg[cell_stat_array(stat)][start:stop] = cells[stat]
        if m.n_vars:
            root[f"{WIP_DIR}/{m.name}"]["gene_partial"][partition] = c.genes[1].T
        nnz[m.name] = g.nnz
        del c, g
    return nnz


def _check_source(plan: Plan) -> None:
    try:
        st = os.stat(plan.source)
    except FileNotFoundError:
        raise FileNotFoundError(f"{plan.source}: the conversion source is gone") from None
    if st.st_size != plan.source_size or st.st_mtime != plan.source_mtime:
        raise FormatError(
            f"{plan.source}: changed since the conversion started; rerun with --overwrite"
        )


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
    if not loc.exists(_METADATA_DONE):
        raise RuntimeError(
            f"{loc}: obs/var metadata are not written; run convert_metadata, or rerun the "
            "same convert to resume"
        )
    missing = [i for i in range(plan.n_groups) if not loc.exists(_marker(i))]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
        raise RuntimeError(
            f"{loc}: {len(missing)} of {plan.n_groups} partitions are not converted ({shown}); "
            "run convert_partition for them, or rerun the same convert to resume"
        )
    # The partitions' results are read checked: a lost or damaged chunk is an error here,
    # not a wrong colptr or statistic in the finished store.
    checked = loc.open_checked(checksums=plan.format_version >= 2)
    matrices = {}
    for m in plan.matrices:
        matrices[m.name] = _finalise_matrix(root, checked[f"{WIP_DIR}/{m.name}"], plan, m)
    obsm = sorted(root["obsm"].array_keys()) if "obsm" in root else []
    varm = sorted(root["varm"].array_keys()) if "varm" in root else []
    if plan.format_version >= 2:
        written: dict[str, int] = {}  # every chunk's CRC, as each task wrote it
        for marker in [_METADATA_DONE, *map(_marker, range(plan.n_groups))]:
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
                "row_group_size": plan.row_group_size,
                "source": os.path.basename(plan.source),
                "created_by": f"scdask {__version__}",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "uuid": uuid.uuid4().hex,
                **_file_checksums(loc),
            }
        }
    )
    # The store is complete from the line above; leftovers below are only clutter.
    del root[WIP_DIR]
    loc.remove(WIP_DIR)


def _file_checksums(loc: Location) -> dict[str, int]:
    """CRC-32C of uns.json (Parquet files carry their own page checksums)."""
    import google_crc32c

    if not loc.exists(UNS_FILE):
        return {}
    with loc.open(UNS_FILE, "rb") as f:
        return {"uns_crc32c": google_crc32c.value(f.read())}


def _finalise_matrix(root: zarr.Group, wip: zarr.Group, plan: Plan, m: MatrixPlan
                     ) -> dict[str, Any]:
    """Write ``colptr`` and the per-gene statistics from the partitions' results ``wip``.

    Rerunnable: arrays an interrupted finalise created are written again.
    """
    mg = root[m.name]
    G = plan.n_groups
    rows = COLPTR_CHUNKS[0]
    colptr = mg.create_array(
        COLPTR, shape=(G, m.n_vars + 1),
        chunks=(max(1, min(G, rows)), min(m.n_vars + 1, COLPTR_CHUNKS[1])),
        dtype=COLPTR_DTYPE, fill_value=0, filters=_delta(COLPTR_DTYPE),
        compressors=_compressors(plan.codecs, "bitshuffle"),
        config=_EVERY_CHUNK, overwrite=True,
    )
    acc = stats.empty_stats(m.n_vars)
    total = 0
    for a in range(0, G, rows):  # colptr re-chunked in blocks of row groups
        b = min(G, a + rows)
        cp = wip[COLPTR][a:b]
        colptr[a:b] = cp
        total += int(cp[:, -1].sum())
        for i in range(b - a):  # gene statistics one row group at a time
            if m.n_vars:
                f = wip["gene_partial"][a + i][:, : m.n_vars].T
                stats.merge_into(acc, (np.diff(cp[i]), f))
        del cp
    genes = stats.finish_stats(*acc, plan.n_obs)
    for stat in STATS:
        mg.create_array(
            gene_stat_array(stat), data=np.ascontiguousarray(genes[stat]),
            compressors=_compressors(plan.codecs, "shuffle"), config=_EVERY_CHUNK,
            overwrite=True,
        )
    info = {
        "encoding": MATRIX_ENCODING,
        "shape": [m.n_obs, m.n_vars],
        "dtype": m.dtype,
        "stored_dtype": m.stored_dtype,
        "nnz": total,
        "row_group_size": plan.row_group_size,
        "n_groups": G,
        "chunk_size": plan.chunk_size,
        "var": m.var,
        "source_format": m.source_format,
    }
    mg.attrs.put({"scdask_matrix": info})
    return info


def warn_dropped(source: str, dropped: list[str]) -> None:
    """Name, in one warning, every element of ``source`` that the store does not keep."""
    if dropped:
        import warnings

        warnings.warn(
            f"{source}: not kept in the scdask store: " + "; ".join(dropped),
            UserWarning,
            stacklevel=3,
        )


def _active_client() -> Any:
    import sys

    if "distributed" not in sys.modules:  # no Client without it; importing it costs 75 MB
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # no client
        return None


def _local_workers(source: str | os.PathLike[str], row_group_size: int, chunk_size: int,
                   codecs: Codecs | None, workers: int | None, memory_budget: int | str) -> int:
    """Worker processes for a local conversion: as asked (default: the CPUs), as many
    as ``memory_budget`` holds, at least one (with a warning when even one does not fit)."""
    from scdask import parallel

    src = H5ADSource(source)
    try:
        per = estimate_partition_bytes(src, make_plan(src, row_group_size, chunk_size, codecs))
    finally:
        src.close()
    budget = parse_bytes(memory_budget) if isinstance(memory_budget, str) else int(memory_budget)
    requested = parallel.default_workers() if workers is None else workers
    if per > budget and requested:
        import warnings

        warnings.warn(
            f"one partition needs about {format_bytes(per)}, more than memory_budget "
            f"{format_bytes(budget)}; using 1 worker. Lower row_group_size to fit.",
            stacklevel=3,
        )
    return min(requested, max(1, budget // per)) if requested else 0


# What a worker imports; a forkserver imports them once for all its workers.
_WORKER_MODULES = ("scdask.conversion.steps", "scdask.conversion.transpose", "scdask.format.codecs",
                   "scdask.sources.h5ad")


def _warm_worker() -> None:
    """Load the compiled kernels in a new worker while the driver prepares the store,
    and give it the buffers it keeps from one partition to the next."""
    global _SCRATCH
    _SCRATCH = Scratch()
    # A worker does no linear algebra, but numba's start loads SciPy's OpenBLAS, whose
    # threads spin on both cores for a while: 0.2 s of CPU per worker, taken from partitions.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        import numpy as np

        import scdask.format.codecs  # noqa: F401
        import scdask.sources.h5ad  # noqa: F401
        from scdask.conversion.transpose import to_group
        from scdask.format.blocks import CSRBlock

        one = np.array([1], np.uint16)
        to_group(CSRBlock(np.array([0, 1]), one - 1, one, 1), np.uint16)
    except Exception:  # noqa: BLE001 - a task would meet the same problem and report it
        pass


def estimate_partition_bytes(source: H5ADSource, plan: Plan) -> int:
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
                nnz = int(source.file[m.name]["indptr"][-1]) * min(1.0, plan.row_group_size / max(1, m.n_obs))
        else:
            nnz = int(per_group.max())
        index = 8 if info.format != "csr" else source.file[m.name]["indices"].dtype.itemsize
        stored = np.dtype(m.stored_dtype).itemsize
        sizes = np.array([index, info.dtype.itemsize, 2, stored], dtype=np.int64) * int(nnz)
        np.maximum(largest, sizes, out=largest)
    return int(largest.sum()) + plan.chunk_size * 8 + _WORKER_BASE_BYTES


def convert(
    source: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    codecs: Codecs | None = None,
    workers: int | None = None,
    executor: Any = None,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    overwrite: bool = False,
    progress: bool | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Convert an H5AD file into a scdask store.

    Parameters
    ----------
    source
        Path of the ``.h5ad`` file.
    dst
        Path or fsspec URL of the store to write.
    row_group_size
        Cells per row group, at most 65,536.
    chunk_size
        Non-zeros per Zarr chunk.
    codecs
        Compression settings (:class:`scdask.format.Codecs`).
    workers
        Local worker processes (default: the CPUs, capped by ``memory_budget``);
        0 converts in this process. They are forked, which starts them fastest, when
        this process has no other thread yet (a script, the command line); otherwise
        they start from a ``forkserver`` (see :func:`scdask.parallel.process_pool`).
    executor
        Run partitions on this ``concurrent.futures.Executor`` or
        ``distributed.Client`` instead of a local pool. By default, the active
        ``distributed`` client (e.g. from :func:`scdask.cluster`) when there is one
        and ``workers`` is not given.
    memory_budget
        Memory the local workers may use together, e.g. ``"2GB"``.
    overwrite
        Replace ``dst`` if it holds a scdask store; anything else is refused.
    progress
        Show a progress bar (default: on a terminal).
    storage_options
        fsspec options for ``dst``.

    Returns
    -------
    str
        ``dst``.

    Examples
    --------
    >>> import scdask
    >>> scdask.convert("plate7.h5ad", "plate7.zarr")  # doctest: +SKIP
    """
    # One writer at a time: a second conversion into the same destination is refused
    # while this one runs (two writers would leave a store neither of them wrote).
    with Location(os.fspath(dst), storage_options).writer_lock():
        return _convert(source, dst, row_group_size, chunk_size, codecs, workers, executor,
                        memory_budget, overwrite, progress, storage_options)


def _convert(source: str | os.PathLike[str], dst: str | os.PathLike[str], row_group_size: int,
             chunk_size: int, codecs: Codecs | None, workers: int | None, executor: Any,
             memory_budget: int | str, overwrite: bool, progress: bool | None,
             storage_options: dict[str, Any] | None) -> str:
    from scdask import parallel

    if executor is None and workers is None:
        executor = _active_client()  # a Client the user started is where work runs
    pool = None
    if executor is None:
        workers = _local_workers(source, row_group_size, chunk_size, codecs, workers,
                                 memory_budget)
        if workers > 0:  # started before this process touches Zarr (see process_pool)
            pool = parallel.process_pool(workers, initializer=_warm_worker,
                                         preload=_WORKER_MODULES)
    lossy = None
    try:
        # The plan needs only shapes; obs/var/uns are written by a task beside the partitions.
        plan = _init(source, dst, row_group_size, chunk_size, codecs, overwrite,
                     storage_options)
        loc = Location(os.fspath(dst), storage_options)
        todo: list[int | str] = [i for i in range(plan.n_groups) if not loc.exists(_marker(i))]
        if not loc.exists(_METADATA_DONE):
            # The metadata task (anndata's import, then obs) takes about two partitions'
            # time and leaves its worker larger: started with two partitions per other
            # worker still to go, it ends with them and no partition runs after it there.
            n_other = 1 if executor is not None or not workers else max(1, workers - 1)
            todo.insert(max(0, len(todo) - 2 * n_other), _METADATA)
        args = [(os.fspath(dst), t, storage_options) for t in todo]
        parallel.run(_convert_task, args, workers=workers, executor=executor or pool,
                     progress=progress, desc="convert")
    except LossyDtypeError as e:
        if not plan.codecs.narrow:
            raise
        lossy = e
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if lossy is not None:
        # Counts were expected (the values' dtype allows them) but a row group holds
        # something else: start again, storing values in the source dtype.
        import warnings

        warnings.warn(f"{lossy.args[0].split(';')[0]}: storing values in the source dtype "
                      "instead", stacklevel=2)
        return convert(source, dst, row_group_size=row_group_size, chunk_size=chunk_size,
                       codecs=dataclasses.replace(plan.codecs, narrow=False), workers=workers,
                       executor=executor, memory_budget=memory_budget, overwrite=True,
                       progress=progress, storage_options=storage_options)
    warn_dropped(plan.source, convert_metadata(dst, storage_options))
    convert_finalise(dst, storage_options)
    return os.fspath(dst)
