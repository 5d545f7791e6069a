"""Fault injection: ``--overwrite`` never destroys what scdask did not write (issue: trust).

Each case is run through the command line, as the reports were, and checked for the
exact outcome: a clear error, and every file that was there before still there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import scdask
from scdask.store.location import DestinationError


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scdask", *args], capture_output=True,
                          text=True, timeout=300)


def _snapshot(folder) -> dict[str, int]:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, folder)] = os.path.getsize(p)
    return out


@pytest.fixture
def work(tmp_path, tiny_plate, tiny_store):
    """A working folder holding a source H5AD, its store and an unrelated file."""
    w = tmp_path / "work"
    w.mkdir()
    shutil.copy(tiny_plate, w / "plate.h5ad")
    shutil.copytree(tiny_store, w / "plate.zarr")
    (w / "notes.txt").write_text("irreplaceable")
    return w


@pytest.mark.parametrize("args, message", [
    (["export-parquet", "{w}/plate.zarr", "{w}", "--overwrite"], "contains its source"),
    (["export-parquet", "{w}/plate.zarr", "{w}/plate.zarr", "--overwrite"], "is its source"),
    (["export-parquet", "{w}/plate.zarr", "{w}/plate.zarr/X", "--overwrite"], "inside its source"),
    (["export-parquet", "{w}/plate.zarr", "{w}/notes.txt", "--overwrite"], "not a scdask Parquet export"),
    (["convert", "{w}/plate.h5ad", "{w}", "--overwrite"], "contains its source"),
    (["convert", "{w}/plate.h5ad", "{w}/plate.h5ad", "--overwrite"], "is its source"),
    (["convert", "{w}/plate.h5ad", "{w}/notes.txt", "--overwrite"], "not a scdask store"),
], ids=["export-into-parent", "export-onto-store", "export-inside-store", "export-onto-file",
        "convert-into-parent", "convert-onto-source", "convert-onto-file"])
def test_overwrite_refuses_what_scdask_did_not_write(work, args, message):
    before = _snapshot(work)
    r = _cli(*[a.format(w=work) for a in args])
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _snapshot(work) == before


def test_overwrite_through_a_symlink_to_the_source_folder(work, tmp_path):
    link = tmp_path / "link"
    os.symlink(work, link)
    before = _snapshot(work)
    with pytest.raises(DestinationError, match="contains its source"):
        scdask.convert(work / "plate.h5ad", link, overwrite=True, workers=0)
    with pytest.raises(DestinationError, match="contains its source"):
        scdask.export_parquet(str(work / "plate.zarr"), link, overwrite=True)
    assert _snapshot(work) == before


def test_overwrite_replaces_scdask_outputs(work, tmp_path):
    """What ``--overwrite`` is for still works: an earlier store, an earlier export."""
    out = tmp_path / "export"
    for _ in range(2):
        r = _cli("export-parquet", str(work / "plate.zarr"), str(out), "--overwrite")
        assert r.returncode == 0, r.stderr
    assert (out / "_scdask.json").exists() and (out / "_SUCCESS").exists()
    # an export of an earlier version (no marker, only an export's files) is recognised
    (out / "_scdask.json").unlink()
    assert _cli("export-parquet", str(work / "plate.zarr"), str(out), "--overwrite").returncode == 0
    # a Spark job's output folder with its own _SUCCESS is not an export of ours
    spark = tmp_path / "spark"
    spark.mkdir()
    (spark / "_SUCCESS").write_text("")
    (spark / "part-0.csv").write_text("1")
    r = _cli("export-parquet", str(work / "plate.zarr"), str(spark), "--overwrite")
    assert r.returncode == 1 and (spark / "part-0.csv").exists()
    dst = tmp_path / "again.zarr"
    for _ in range(2):
        scdask.convert(work / "plate.h5ad", dst, overwrite=True, workers=0,
                       row_group_size=1024, chunk_size=4096)
    assert scdask.open(dst).sizes["cell"] == 3000
