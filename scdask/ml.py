"""``scdask.ml``, the documented path of the PyTorch loader (:mod:`scdask.interop.torch`)."""

from scdask.interop.torch import CellDataset, loader

__all__ = ["CellDataset", "loader"]
