"""Reading a store: where it lives, its checked chunks and tables, its matrices, verify.

Rooms: :mod:`~scdask.store.location` (local or fsspec, writer lock, safe overwrite),
:mod:`~scdask.store.integrity` (checked reads, checksums, chunk position tables),
:mod:`~scdask.store.metadata` (obs/var Parquet, uns JSON), :mod:`~scdask.store.reader`
(:class:`Store`), :mod:`~scdask.store.stats` and :mod:`~scdask.store.kernels` (statistics of
row groups), :mod:`~scdask.store.verify`.
"""

from __future__ import annotations

from scdask.store.reader import IncompleteStoreError, ReplacedStoreError, Store

__all__ = ["IncompleteStoreError", "ReplacedStoreError", "Store"]
