"""The ``scdask`` command line: thin wrappers over the public API, in pipeline order."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from scdask.format import Codecs, FormatError

overwrite = click.option(
    "--overwrite", is_flag=True,
    help="Replace the destination if it holds an earlier scdask output (never anything else).",
)
row_group_size = click.option(
    "--row-group-size", type=int, default=None, help="Cells per row group (at most 65536)."
)
chunk_size = click.option("--chunk-size", type=int, default=None, help="Non-zeros per Zarr chunk.")
workers = click.option(
    "-w", "--workers", type=int, default=None,
    help="Local worker processes (default: CPUs, capped by --memory-budget); 0 = in-process.",
)
memory_budget = click.option(
    "--memory-budget", default="2GB", show_default=True, help="Memory all workers may use together."
)
narrow = click.option(
    "--narrow/--no-narrow", default=True, show_default=True,
    help="Store integer counts as uint16 when lossless (checked for every row group).",
)
progress = click.option("--progress/--no-progress", default=None, help="Show a progress bar.")
cluster = click.option(
    "--cluster", "where", default=None, metavar="WHERE",
    help="Run on a Dask cluster: 'local', a scheduler address (tcp://host:8786), or a "
         "dask-jobqueue system configured in jobqueue.yaml (slurm, pbs, sge, lsf, ...). "
         "Default: a local process pool.",
)
jobs = click.option("--jobs", type=int, default=None, help="Batch jobs for a jobqueue cluster.")


def _fail(e: BaseException) -> None:
    click.echo(f"scdask: error: {e}", err=True)
    sys.exit(1)


def _kwargs(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


@click.group()
@click.version_option(package_name="scdask")
def main() -> None:
    """scdask: single-cell matrices larger than memory."""


@main.command()
@click.option("--workdir", default="scdask-demo", show_default=True, help="Where files are written.")
@click.option("--cells", "n_cells", type=int, default=20000, show_default=True)
@click.option("-w", "--workers", type=int, default=2, show_default=True)
def demo(workdir: str, n_cells: int, workers: int) -> None:
    """Generate a Tahoe-like plate, convert, verify and query it on a local Dask cluster."""
    from scdask.demo import run

    run(workdir, n_cells, workers)


@main.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--cells", "n_cells", type=int, default=20000, show_default=True)
@click.option("--genes", "n_genes", type=int, default=62710, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), default="gzip", show_default=True)
def synth(out: str, n_cells: int, n_genes: int, seed: int, compression: str) -> None:
    """Write a synthetic Tahoe-like plate to OUT (.h5ad)."""
    from scdask.datasets import synth as _synth

    _synth(out, n_cells, n_genes=n_genes, seed=seed, compression=None if compression == "none" else compression)
    click.echo(out)


@main.command()
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst")
@row_group_size
@chunk_size
@workers
@memory_budget
@cluster
@jobs
@overwrite
@narrow
@progress
def convert(src: str, dst: str, row_group_size: int | None, chunk_size: int | None,
            workers: int | None, memory_budget: str, where: str | None, jobs: int | None,
            overwrite: bool, narrow: bool, progress: bool | None) -> None:
    """Convert SRC (.h5ad) into the scdask store DST; rerun to resume an interrupted one."""
    import contextlib

    import scdask

    try:
        with contextlib.ExitStack() as stack:
            executor = None
            if where:
                executor = scdask.cluster(where, workers=workers, jobs=jobs)
                stack.callback(executor.close)
                if executor.cluster is not None:
                    stack.callback(executor.cluster.close)
            scdask.convert(src, dst, workers=workers, executor=executor,
                           memory_budget=memory_budget, overwrite=overwrite, progress=progress,
                           codecs=Codecs(narrow=narrow),
                           **_kwargs(row_group_size=row_group_size, chunk_size=chunk_size))
    except (ValueError, FileExistsError, FileNotFoundError, MemoryError, OSError) as e:
        _fail(e)  # ValueError: FormatError, DestinationError, options out of range
    click.echo(dst)


@main.command("convert-init")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst")
@row_group_size
@chunk_size
@overwrite
@narrow
def convert_init(src: str, dst: str, row_group_size: int | None, chunk_size: int | None,
                 overwrite: bool, narrow: bool) -> None:
    """Plan a conversion and print the number of partitions (for an HPC job array)."""
    from scdask.conversion.steps import convert_init as _init

    try:
        plan = _init(src, dst, overwrite=overwrite, codecs=Codecs(narrow=narrow),
                     **_kwargs(row_group_size=row_group_size, chunk_size=chunk_size))
    except (ValueError, FileExistsError, FileNotFoundError, OSError) as e:
        _fail(e)
    click.echo(plan.n_groups)


@main.command("convert-partition")
@click.argument("dst")
@click.argument("partitions", type=int, nargs=-1, required=True)
def convert_partition(dst: str, partitions: tuple[int, ...]) -> None:
    """Convert the given PARTITIONS of an initialised conversion."""
    from scdask.conversion.steps import convert_partition as _part

    try:
        for p in partitions:
            _part(dst, p)
    except (FormatError, IndexError, OSError) as e:
        _fail(e)


@main.command("convert-finalise")
@click.argument("dst")
def convert_finalise(dst: str) -> None:
    """Check every partition is converted and mark the store complete."""
    from scdask.conversion.steps import convert_finalise as _fin

    try:
        _fin(dst)
    except (FormatError, RuntimeError, OSError) as e:
        _fail(e)


@main.command()
@click.argument("store")
@click.option("--against", type=click.Path(exists=True, dir_okay=False), help="The source .h5ad.")
def verify(store: str, against: str | None) -> None:
    """Check STORE's integrity, and every value against the source with --against."""
    from scdask.store.verify import verify as _verify

    try:
        report = _verify(store, against)
    except (FormatError, FileNotFoundError, OSError) as e:
        _fail(e)
    click.echo(str(report))
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(store: str, as_json: bool) -> None:
    """Shape, non-zeros, dtype, layout, size on disk and obs/var columns of STORE."""
    from dask.utils import format_bytes

    from scdask.store.verify import info as _info

    try:
        d = _info(store)
    except (FormatError, FileNotFoundError, OSError) as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"{d['store']}  (scdask format {d['format_version']}, {d['created_by']})")
    click.echo(f"  {d['shape'][0]:,} cells × {d['shape'][1]:,} genes, "
               f"{d['n_row_groups']} row groups of {d['row_group_size']:,} cells, "
               f"{format_bytes(d['size_bytes'])} on disk")
    for name, m in d["matrices"].items():
        click.echo(f"  {name}: {m['dtype']}, {m['nnz']:,} non-zeros, {m['layout']}, "
                   f"chunks of {m['chunk_size']:,}")
    click.echo(f"  obs: {', '.join(d['obs_columns']) or '-'}")
    click.echo(f"  var: {', '.join(d['var_columns']) or '-'}")
    if d["obsm"] or d["varm"]:
        click.echo(f"  obsm: {', '.join(d['obsm']) or '-'}; varm: {', '.join(d['varm']) or '-'}")
    if d["not_kept"]:
        click.echo(f"  not kept from the source: {'; '.join(d['not_kept'])}")



@main.command("export-parquet")
@click.argument("store")
@click.argument("out_dir")
@click.option("--layout", type=click.Choice(["long", "wide"]), default="long", show_default=True)
@click.option("--gene", "genes", multiple=True, help="Export only these genes (repeatable).")
@click.option("--obs", "where_obs", default=None, metavar="COL=VALUE",
              help="Export only the cells whose obs column COL equals VALUE.")
@click.option("--partition-by", default=None, help="Split the files by this obs column.")
@cluster
@jobs
@overwrite
@progress
def export_parquet(store: str, out_dir: str, layout: str, genes: tuple[str, ...],
                   where_obs: str | None, partition_by: str | None, where: str | None,
                   jobs: int | None, overwrite: bool, progress: bool | None) -> None:
    """Export STORE (or a selection of it) as Parquet tables in OUT_DIR."""
    import contextlib

    import scdask

    try:
        with contextlib.ExitStack() as stack:
            if where:
                client = scdask.cluster(where, jobs=jobs)
                stack.callback(client.close)
            ds = scdask.open(store)
            if genes:
                ds = ds.sel(gene=list(genes))
            if where_obs:
                col, _, value = where_obs.partition("=")
                if col not in ds.coords:
                    raise KeyError(f"--obs: {col!r} is not an obs column")
                ds = ds.where(ds[col].astype(str) == value, drop=True)
            scdask.export_parquet(ds, out_dir, layout=layout, partition_by=partition_by,
                                  overwrite=overwrite, progress=progress)
    except (FormatError, FileExistsError, FileNotFoundError, KeyError, ValueError,
            PermissionError, OSError) as e:
        _fail(e)
    click.echo(out_dir)


if __name__ == "__main__":  # pragma: no cover - every command is defined above
    main()
