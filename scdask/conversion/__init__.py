"""Any source into a store, in three resumable steps: init, partitions, finalise."""

from __future__ import annotations

from scdask.conversion.run import convert
from scdask.conversion.steps import (
    convert_finalise,
    convert_init,
    convert_metadata,
    convert_partition,
)

__all__ = ["convert", "convert_finalise", "convert_init", "convert_metadata", "convert_partition"]
