"""The command line: each command end to end, and errors as exit codes with messages."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from scdask.cli import main


def test_synth_convert_info_verify(tmp_path):
    r = CliRunner()
    src, dst = tmp_path / "p.h5ad", tmp_path / "p.zarr"
    assert r.invoke(main, ["synth", "--cells", "500", "--genes", "300", str(src)]).exit_code == 0
    res = r.invoke(main, ["convert", str(src), str(dst), "-w", "0", "--row-group-size", "128"])
    assert res.exit_code == 0, res.output
    res = r.invoke(main, ["info", "--json", str(dst)])
    d = json.loads(res.output)
    assert d["shape"] == [500, 300] and d["n_row_groups"] == 4 and "drug" in d["obs_columns"]
    res = r.invoke(main, ["verify", str(dst), "--against", str(src)])
    assert res.exit_code == 0 and res.output.strip().endswith("OK")
    # refused without --overwrite
    res = r.invoke(main, ["convert", str(src), str(dst), "-w", "0"])
    assert res.exit_code == 1 and "already holds a complete scdask store" in res.output


def test_step_by_step_like_a_job_array(tmp_path):
    r = CliRunner()
    src, dst = tmp_path / "p.h5ad", tmp_path / "p.zarr"
    r.invoke(main, ["synth", "--cells", "300", "--genes", "100", str(src)])
    res = r.invoke(main, ["convert-init", str(src), str(dst), "--row-group-size", "100"])
    assert res.output.strip() == "3"
    res = r.invoke(main, ["convert-finalise", str(dst)])
    assert res.exit_code == 1 and "3 of 3 partitions are not converted" in res.output
    for p in ("0", "1", "2"):
        assert r.invoke(main, ["convert-partition", str(dst), p]).exit_code == 0
    assert r.invoke(main, ["convert-finalise", str(dst)]).exit_code == 0
    assert r.invoke(main, ["verify", str(dst), "--against", str(src)]).exit_code == 0


def test_bad_input_exit_status(tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not hdf5")
    proc = subprocess.run([sys.executable, "-m", "scdask", "convert", str(bad), str(tmp_path / "o.zarr")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "bad.h5ad: not an HDF5 file" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "scdask", "info", str(tmp_path / "missing.zarr")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "missing.zarr" in proc.stderr


def test_demo_end_to_end(tmp_path):
    """README command 1's job, on a smaller plate, in a fresh process as users run it."""
    out = subprocess.run(
        [sys.executable, "-m", "scdask", "demo", "--cells", "3000", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "verified every value" in text and ": OK" in text
    assert 'X.sel(gene="C1orf112"): count=3,000' in text
    assert "per-gene mean and variance of all 62,710 genes" in text
    assert "pseudobulk by drug × cell_line" in text and "DMSO_TF groups" in text
