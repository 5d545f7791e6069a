"""The examples run as written."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_quickstart(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")


def test_pseudobulk_deseq2_example(tmp_path):
    import pytest

    pytest.importorskip("pydeseq2")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "pseudobulk_deseq2.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")


def test_local_cluster_example(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "local_cluster.py"), str(tmp_path), "3000"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "dashboard: http://" in proc.stdout
    assert "C1orf112: count=3000" in proc.stdout and "pseudobulk:" in proc.stdout


def test_hpc_example_builds_a_slurm_job_script():
    """The SLURM example's cluster settings, without a SLURM to submit to: its job script."""
    import runpy

    import pytest

    dask_jobqueue = pytest.importorskip("dask_jobqueue")
    example = runpy.run_path(str(EXAMPLES / "hpc_slurm.py"), run_name="example")
    with dask_jobqueue.SLURMCluster(**example["CLUSTER"]) as cluster:
        script = cluster.job_script()
    assert "#SBATCH -n 1" in script and "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH --mem=30G" in script and "--nworkers 8" in script
    assert "#SBATCH -t 02:00:00" in script


def test_daft_example(tiny_store, tmp_path):
    import pytest

    pytest.importorskip("daft")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "daft_export.py"), tiny_store,
                           str(tmp_path / "pq")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    daft_line = next(x for x in lines if x.startswith("Daft   C1orf112"))
    ours_line = next(x for x in lines if x.startswith("scdask C1orf112"))
    assert daft_line.split(":", 1)[1] == ours_line.split(":", 1)[1]
    daft_means = next(x for x in lines if x.startswith("Daft   per-gene"))
    our_means = next(x for x in lines if x.startswith("scdask per-gene"))
    assert daft_means.split(":", 1)[1] == our_means.split(":", 1)[1]
