"""Tools with scanpy's names, out of core: ``scdask.tl``.

:func:`rank_genes_groups`: t-tests and exact Wilcoxon rank-sum tests of every group against
the rest or a reference, answered as ``scanpy.get.rank_genes_groups_df``.
"""

from __future__ import annotations

from scdask.tl.rank import rank_genes_groups

__all__ = ["rank_genes_groups"]
