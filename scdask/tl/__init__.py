"""Tools with scanpy's names, out of core: ``scdask.tl``.

:func:`rank_genes_groups`: t-tests and exact Wilcoxon rank-sum tests of every group against
the rest or a reference, answered as ``scanpy.get.rank_genes_groups_df``; :func:`pca`: the
principal components of any (scaled, log-normalized) selection, never densified.
"""

from __future__ import annotations

from scdask.tl.pca import pca
from scdask.tl.rank import rank_genes_groups

__all__ = ["pca", "rank_genes_groups"]
