"""Exact Wilcoxon rank sums for :func:`scdask.tl.rank_genes_groups`, out of core.

A task takes a block of genes (sized by the stored per-gene non-zero counts) and reads the
block's entries in every row group once: each entry becomes a 64-bit key (its float32
value's bits over its label), bucketed by gene and radix-sorted per gene; one walk per gene
ranks the runs of ties (the implicit zeros one run, its size known from the cell counts),
so no rank is materialized per cell. The same walk sums each label's values and squares:
the test needs no other pass over the store.

Measured on a 200,000-cell plate (every drug against the control, log-normalized): a
binary search of each entry among the reference's sorted values (the reference's values
alone sorted) took 48 ns an entry, the radix sort and walk ~20 ns.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import dask
import numpy as np

from scdask.compute import Matrix
from scdask.compute.blocks import take_runs
from scdask.parallel import release_memory
from scdask.tl import kernels

#: Stored entries gathered for one block of genes (~6-10 bytes each, held once);
#: ``dask.config.set({"scdask.rank-entries": ...})`` sets it. Smaller blocks hold less but
#: decode each stored chunk for more blocks.
WILCOXON_ENTRIES = 8_000_000
#: Bytes of a block's per-(label, gene) sums and moments (a bound on its genes when there
#: are many labels, as with strata).
LABEL_BYTES = 64 << 20


def _runs(m: Matrix, sels: list[Any], codes: np.ndarray, lo: int, hi: int
          ) -> list[tuple[np.ndarray, ...]]:
    """Each row group's entries of genes ``lo:hi``, ``(starts, ends, values, rows,
    label of each stored row)``; small integers as float32 (exact)."""
    runs = []
    for sel in sels:
        (starts, ends, vals, rows), fill = m.entries_and_fill(sel, slice(lo, hi))
        if np.any(fill != 0):
            raise ValueError(f"{sel.part.store.url}: row group {sel.group}: {m.expr} makes the "
                             "implicit zeros other values, not zeros; rank the values before that "
                             "transform")
        lab = np.full(sel.n_rows, -1, np.int32)
        lab[np.arange(sel.n_rows) if sel.local is None else sel.local] = codes[
            sel.first : sel.first + sel.count]
        if vals.dtype.kind in "iub" and vals.dtype.itemsize <= 2:
            vals = vals.astype(np.float32)
        runs.append((starts, ends, vals, rows, lab))
    return runs


def _ranked(m: Matrix, sels: list[Any], codes: np.ndarray, lo: int, hi: int,
            n_cells: np.ndarray, ref_of: np.ndarray, rest: bool
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genes ``lo:hi``: rank sums and ties ``(labels, genes)`` from every entry ranked, and
    the moments as :func:`_versus_reference`'s."""
    runs = _runs(m, sels, codes, lo, hi)
    if any(r[2].dtype != np.float32 for r in runs):
        return _sorted(runs, hi - lo, n_cells, ref_of, rest)
    counts = np.zeros(hi - lo, np.int64)
    for starts, ends, _, rows, lab in runs:
        kernels.count_labelled(starts, ends, rows, lab, counts)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    keys = np.empty(int(offsets[-1]), np.uint64)
    nxt = offsets[:-1].copy()
    while runs:  # each row group's entries go once they are keys
        kernels.scatter_keys32(*runs.pop(0), nxt, keys)
    kernels.radix_sort_segments(keys, offsets)
    val, lab = kernels.unpack_keys32(keys)
    del keys
    out = _rank(offsets, val, lab, n_cells, ref_of, rest)
    del val, lab
    release_memory()  # the block's entries go back to the OS, not to a growing heap
    return out


def _rank(offsets: np.ndarray, vals: np.ndarray, labels: np.ndarray, n_cells: np.ndarray,
          ref_of: np.ndarray, rest: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_genes, n_labels = len(offsets) - 1, len(n_cells)
    sums, ties = np.zeros((n_labels, n_genes)), np.zeros((n_labels, n_genes))
    stats = np.zeros((n_genes, 5, n_labels))  # one gene's labels adjacent in memory
    kernels.rank_sums(offsets, vals, labels, n_cells.astype(np.float64), ref_of, rest, sums,
                      ties, stats)
    return sums, ties, np.ascontiguousarray(stats.transpose(1, 2, 0))


def _sorted(runs: list[tuple[np.ndarray, ...]], n_genes: int, n_cells: np.ndarray,
            ref_of: np.ndarray, rest: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_ranked` for values of another dtype: per gene, a stable sort by value."""
    genes, vals, labs = [], [], []
    for starts, ends, v, rows, lab in runs:
        gene = np.repeat(np.arange(n_genes, dtype=np.int32), ends - starts)
        take = take_runs(starts, ends)
        lb = lab[rows[take]]
        keep = lb >= 0
        genes.append(gene[keep])
        vals.append(np.asarray(v)[take][keep])
        labs.append(lb[keep])
    offsets, val, lab = kernels.sort_by_gene_value(np.concatenate(genes), np.concatenate(vals),
                                                   np.concatenate(labs), n_genes)
    return _rank(offsets, val, lab, n_cells, ref_of, rest)


def rank_sums(m: Matrix, codes: np.ndarray, n_cells: np.ndarray, ref_of: np.ndarray,
              rest: bool, gene_nnz: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each label's rank sums ``(labels, genes)``, one task per block of genes.

    Parameters
    ----------
    m
        The matrix.
    codes
        Each selected cell's label (-1: in none).
    n_cells
        Cells per label.
    ref_of
        The label each label is tested against (``rest``: all others; -1: none).
    rest
        Rank among every cell.
    gene_nnz
        Stored entries per gene (sizes the blocks), if known.

    Returns
    -------
    sums, ties, moments
        ``ties``: the sums of ``t**3 - t`` over runs of ``t`` tied values (with ``rest``,
        in row 0); ``moments``: each label's stored entries, NaN among them, sum, sum of
        squares and non-zeros ``(5, labels, genes)``.
    """
    n_genes = m.base.n_sel_genes
    nnz = np.ones(n_genes) * max(1, m.base.n_sel_cells // 10) if gene_nnz is None else gene_nnz
    budget = int(dask.config.get("scdask.rank-entries", WILCOXON_ENTRIES))
    widest = max(1, LABEL_BYTES // (48 * max(1, len(n_cells))))
    bounds = [0]
    acc = 0.0
    for j, c in enumerate(np.asarray(nnz, np.float64)):
        if (acc + c > budget or j - bounds[-1] >= widest) and j > bounds[-1]:
            bounds.append(j)
            acc = 0.0
        acc += c
    bounds.append(n_genes)
    m.operands  # noqa: B018 - lazy operands computed once, before the tasks
    sels = m.base.groups
    # the matrix bound in the function: Dask would take the dataclass apart as an argument
    block = dask.delayed(partial(_ranked, m, rest=rest), pure=True)
    parts = dask.compute(*[block(sels, codes, lo, hi, n_cells, ref_of)
                           for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo])
    n_labels = len(n_cells)
    sums = np.concatenate([p[0] for p in parts], axis=1) if parts else np.zeros((n_labels, 0))
    moments = (np.concatenate([p[-1] for p in parts], axis=-1) if parts else
               np.zeros((5, n_labels, 0)))
    ties = np.concatenate([p[1] for p in parts], axis=1) if parts else np.zeros((n_labels, 0))
    return sums, ties, moments
