"""An installed scdask writes nothing into its own folder: kernels cache in the user's cache."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.fixture(scope="module")
def read_only_install(tmp_path_factory):
    """scdask installed (not editable) into a folder of its own, then made read-only."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"pip install --target failed: {proc.stderr[-2000:]}")
    for p in [target, *target.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield target
    for p in [target, *target.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def _run(target: Path, home: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("NUMBA_CACHE_DIR", "SCDASK_CACHE_DIR", "XDG_CACHE_HOME")}
    environ.update(HOME=str(home), PYTHONPATH=str(target), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=environ, cwd=str(home))


KERNEL = """
import numpy as np, scdask
assert scdask.__file__.startswith({target!r}), scdask.__file__
from scdask.sources.kernels import cast_checked
src = np.arange(5, dtype=np.float32); dst = np.empty(5, np.uint16)
assert cast_checked(src, dst, 0, 65536) == -1 and (dst == src).all()
print(cast_checked.stats.cache_path, sum(cast_checked.stats.cache_hits.values()))
"""


def test_a_read_only_install_runs_and_caches_its_kernels_in_the_users_cache(
        read_only_install, tmp_path):
    before = _tree(read_only_install)
    code = KERNEL.format(target=str(read_only_install))
    first = _run(read_only_install, tmp_path, code)
    assert first.returncode == 0, first.stderr
    path, hits = first.stdout.split()
    assert path.startswith(str(tmp_path / ".cache" / "scdask" / "numba")) and hits == "0"
    second = _run(read_only_install, tmp_path, code)  # a new process loads the cached kernel
    assert second.returncode == 0 and second.stdout.split() == [path, "1"], second.stderr
    assert _tree(read_only_install) == before  # nothing written into the installed package


def test_cache_folder_can_be_chosen_and_an_unwritable_one_is_survived(read_only_install,
                                                                      tmp_path):
    code = KERNEL.format(target=str(read_only_install))
    chosen = _run(read_only_install, tmp_path, code, SCDASK_CACHE_DIR=str(tmp_path / "mine"))
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.split()[0].startswith(str(tmp_path / "mine" / "numba"))
    blocked = tmp_path / "a-file"  # a folder below a file cannot be made, even by root
    blocked.write_text("")
    out = _run(read_only_install, tmp_path, code, SCDASK_CACHE_DIR=str(blocked / "cache"))
    assert out.returncode == 0, out.stderr
    assert "scdask-" in out.stdout.split()[0]  # fell back to the temporary folder, still ran
