"""Out of scdask, into the tools scientists use next.

- :mod:`~scdask.interop.anndata`: ``to_anndata``, a selection as an in-memory AnnData
- :mod:`~scdask.interop.parquet`: ``export_parquet``, tables for Daft, DuckDB, Polars, Spark
- :mod:`~scdask.interop.torch`: ``CellDataset`` and ``loader``, batches for PyTorch

Each is imported when used (``scdask.to_anndata``, ``scdask.export_parquet``,
``scdask.ml``), so none of their dependencies load with the others.
"""
