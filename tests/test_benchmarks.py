"""Every asv benchmark runs once on a tiny plate, so none goes stale."""

from __future__ import annotations

import importlib
import inspect
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ["bench_convert", "bench_query", "bench_scan", "bench_export", "bench_expressions",
           "bench_analysis"]


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    os.environ["SCDASK_ASV_SIZES"] = "600"
    os.environ["SCDASK_ASV_DATA"] = str(tmp_path_factory.mktemp("asv"))
    sys.path.insert(0, os.path.join(REPO, "asv_bench"))
    try:
        mods = [importlib.reload(importlib.import_module(f"benchmarks.{m}")) for m in MODULES]
        importlib.reload(importlib.import_module("benchmarks.common"))
        mods = [importlib.reload(m) for m in mods]
        yield mods
    finally:
        sys.path.remove(os.path.join(REPO, "asv_bench"))
        for k in ("SCDASK_ASV_SIZES", "SCDASK_ASV_DATA"):
            os.environ.pop(k, None)


def _cases(mods):
    for mod in mods:
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ != mod.__name__:
                continue
            names = [n for n in dir(cls) if n.split("_")[0] in ("time", "peakmem", "track")]
            yield cls, names


@pytest.mark.filterwarnings("ignore")
def test_every_benchmark_runs_once(benchmarks):
    ran, skipped = [], []
    for cls, names in _cases(benchmarks):
        bench = cls()
        cache = bench.setup_cache() if hasattr(bench, "setup_cache") else None
        assert cls.params == [600]
        for name in names:
            if hasattr(bench, "setup"):
                try:
                    bench.setup(cache, 600)
                except NotImplementedError:  # asv's way to skip (e.g. torch not installed)
                    skipped.append(f"{cls.__name__}.{name}")
                    continue
            try:
                getattr(bench, name)(cache, 600)
            finally:
                if hasattr(bench, "teardown"):
                    bench.teardown(cache, 600)
            ran.append(f"{cls.__name__}.{name}")
    assert len(ran) >= 20, ran
    assert all(s.startswith("Loader.") for s in skipped), skipped
