"""scdask: single-cell matrices larger than memory, as chunked sparse Zarr opened with Dask and xarray."""

from __future__ import annotations

from typing import Any

from scdask._version import __version__

# Imported when first used: ``import scdask`` loads nothing else, conversion workers do not
# load xarray, and a script that opens a store does not load the converter (or Zarr).
_LAZY = {
    "cluster": "scdask.clusters",
    "convert": "scdask.conversion",
    "export_parquet": "scdask.interop.parquet",
    "open": "scdask.backend",
    "pp": "scdask.pp",
    "pseudobulk": "scdask.compute.groupby",
    "tl": "scdask.tl",
    "to_anndata": "scdask.interop.anndata",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__ == f"scdask.{name}" else getattr(module, name)
        if name == "open":  # its datasets' ds.scdask accessor (obs, var, to_anndata)
            importlib.import_module("scdask.interop.anndata")
        globals()[name] = value
        return value
    raise AttributeError(f"module 'scdask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
