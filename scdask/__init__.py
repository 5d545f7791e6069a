"""scdask: single-cell matrices larger than memory, as chunked sparse Zarr opened with Dask and xarray."""

from __future__ import annotations

__version__ = "0.1.0"

from scdask.aggregate import pseudobulk  # noqa: E402
from scdask.backend import open  # noqa: E402, A004
from scdask.convert import convert  # noqa: E402
from scdask.materialize import to_anndata  # noqa: E402

__all__ = ["__version__", "convert", "open", "pseudobulk", "to_anndata"]
