"""``from scdask.verify import verify, info``, as documented; they live in :mod:`scdask.store.verify`."""

from __future__ import annotations

from scdask.store.verify import Report, info, verify

__all__ = ["Report", "info", "verify"]
