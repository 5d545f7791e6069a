"""The house: every documented path imports, rooms import only downwards, no global side effects."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "scdask"

# Rooms in the order data flows; a module imports only from its own room or rooms before it.
ROOMS = ["format", "sources", "store", "conversion", "compute", "pp", "tl", "backend", "interop"]
# Utilities import no room (and any room may import them).
UTILITIES = {"_version", "_jit", "parallel", "clusters", "datasets"}
# The top: the package root, the command line and the documented shims may import anything.
TOP = {"__init__", "__main__", "cli", "demo", "testing", "verify", "ml"}


def _room(module: str) -> str:
    """``scdask.store.reader`` -> ``store``; ``scdask`` -> ``__init__``."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Every scdask module ``path`` imports, at any depth of the file (lazy imports too)."""
    tree = ast.parse(path.read_text())
    known = _modules()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "scdask")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "scdask":
                for a in node.names:  # `from scdask import parallel` imports scdask.parallel
                    found.add(f"{name}.{a.name}" if f"{name}.{a.name}" in known else name)
    return {m for m in found if m in known}


def _rank(room: str) -> float:
    if room in UTILITIES:
        return -1
    if room in TOP:
        return len(ROOMS)
    return ROOMS.index(room)


def test_every_module_is_in_a_room():
    rooms = {_room(m) for m in _modules()}
    unknown = rooms - set(ROOMS) - UTILITIES - TOP
    assert not unknown, f"modules outside the rooms of docs/ARCHITECTURE.md: {sorted(unknown)}"


def test_rooms_import_only_downwards():
    wrong = []
    for module, path in sorted(_modules().items()):
        room = _room(module)
        for target in sorted(_imports(path, module)):
            other = _room(target)
            if other == room or room in TOP:
                continue
            if room in UTILITIES and other not in UTILITIES:
                wrong.append(f"{module} (a utility) imports {target}")
            elif other in TOP or (other not in UTILITIES and _rank(other) > _rank(room)):
                wrong.append(f"{module} ({room}) imports {target} ({other}), a room after it")
    assert not wrong, "\n".join(wrong)


def test_format_imports_nothing_else_from_scdask_but_the_jit():
    for module, path in _modules().items():
        if _room(module) == "format":
            # the compiled-kernel decorator is the one utility it may use
            outside = {t for t in _imports(path, module) if _room(t) not in ("format", "_jit")}
            assert not outside, f"{module} imports {outside}"


def test_rooms_built_on_compute_use_only_its_package_api():
    """interop and the backend see compute through ``scdask.compute`` only, no private names."""
    for module, path in _modules().items():
        if _room(module) not in ("interop", "backend", "pp"):
            continue
        text = path.read_text()
        deep = re.findall(r"from scdask\.compute\.\w+ import", text)
        private = re.findall(r"\.(_base|_expr)\b|_group_values", text)
        assert not deep and not private, f"{module}: {deep or private}"


def test_no_module_is_longer_than_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


# -- documented paths ------------------------------------------------------------------------

DOCUMENTED = ["README.md", "docs/ARCHITECTURE.md", "docs/FORMAT.md", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.py"))]


def _documented_names() -> tuple[set[tuple[str, str]], set[str]]:
    """``(module, name)`` of every ``from scdask... import name``, and every ``scdask.attr``."""
    froms, attrs = set(), set()
    for rel in DOCUMENTED:
        text = (ROOT / rel).read_text()
        for mod, names in re.findall(r"from (scdask(?:\.\w+)*) import ([\w, ]+)", text):
            froms.update((mod, n.strip()) for n in names.split(",") if n.strip())
        attrs.update(re.findall(r"\bscdask\.(\w+)\(", text))
    return froms, attrs


def test_every_documented_import_resolves():
    import importlib

    import scdask

    froms, attrs = _documented_names()
    assert ("scdask.ml", "loader") in froms and "open" in attrs  # the scan finds them
    for mod, name in sorted(froms):
        assert hasattr(importlib.import_module(mod), name), f"from {mod} import {name}"
    for name in sorted(attrs):
        assert callable(getattr(scdask, name)), f"scdask.{name}"
    for name in scdask.__all__:
        getattr(scdask, name)


def test_public_api_names_stay_callable_after_their_modules_load():
    code = ("import scdask, scdask.clusters, scdask.conversion, scdask.interop.parquet, "
            "scdask.interop.anndata, scdask.compute.groupby, scdask.backend\n"
            "for n in ['cluster', 'convert', 'open', 'pseudobulk', 'to_anndata', "
            "'export_parquet']:\n"
            "    assert callable(getattr(scdask, n)), n\n"
            "from scdask.conversion import convert_init, convert_partition, convert_finalise\n"
            "from scdask.ml import CellDataset, loader\n"
            "from scdask.verify import verify, info\n"
            "from scdask.datasets import synth\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_xarray_entry_point():
    import xarray as xr

    from scdask.backend import ScdaskBackendEntrypoint

    assert isinstance(xr.backends.list_engines()["scdask"], ScdaskBackendEntrypoint)


@pytest.mark.parametrize("argv", [["-m", "scdask"], ["-m", "scdask.cli"]])
def test_every_command_runs_as_a_module(argv):
    from scdask.cli import main

    proc = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in main.commands:
        assert command in proc.stdout
        sub = subprocess.run([sys.executable, *argv, command, "--help"], capture_output=True,
                             text=True, timeout=120)
        assert sub.returncode == 0, (command, sub.stderr)


# -- no global side effects ----------------------------------------------------------------


def test_import_and_use_leave_warning_filters_and_arrow_pool_as_they_were(tmp_path):
    """Importing scdask, converting, reading and exporting change neither the process's warning
    filters nor Arrow's default memory pool, and zarr's notes on scdask's own format stay quiet."""
    code = f"""
import warnings
import zarr, dask.array, numba, h5py, pandas, xarray, numcodecs, pyarrow as pa
warnings.simplefilter("default")
filters, pool = list(warnings.filters), pa.default_memory_pool().backend_name
import scdask
assert warnings.filters == filters, "import"
from scdask.datasets import synth
synth({str(tmp_path / "p.h5ad")!r}, 600, n_genes=50, seed=3)
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    scdask.convert({str(tmp_path / "p.h5ad")!r}, {str(tmp_path / "p.zarr")!r}, workers=0,
                   row_group_size=256)
    ds = scdask.open({str(tmp_path / "p.zarr")!r})
    ds.X.sum("cell").compute(); ds.X[:3].compute()
    scdask.export_parquet(ds, {str(tmp_path / "e")!r}, progress=False)
    from scdask.verify import verify
    assert verify({str(tmp_path / "p.zarr")!r}).ok
zarr_notes = [str(w.message) for w in seen if "zarr" in type(w.message).__name__.lower()
              or "Numcodecs" in str(w.message)]
assert not zarr_notes, zarr_notes
assert warnings.filters == filters, "use"
assert pa.default_memory_pool().backend_name == pool, pa.default_memory_pool().backend_name
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


def test_export_restores_the_pool_in_this_process(tiny_store, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import scdask

    before = pa.default_memory_pool().backend_name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdask.export_parquet(tiny_store, tmp_path / "e", progress=False)
    assert pa.default_memory_pool().backend_name == before
