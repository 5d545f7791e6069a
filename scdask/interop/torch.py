"""Streaming batches of cells to PyTorch with flat memory (``pip install 'scdask[ml]'``).

:class:`CellDataset` is an ``IterableDataset`` over one or many stores (or any
selection of them: genes, an obs filter) that yields ready batches: X rows as a
``torch.sparse_csr_tensor`` (or dense), and the requested obs columns as tensors
(categorical codes; the categories are in :attr:`CellDataset.categories`).

Order: row groups are shuffled, then cells within a buffer of ``buffer_groups``
groups; everything derives from ``(seed, epoch)``, so a seed reproduces an epoch.
Sharding: the groups of an epoch are dealt round-robin to ``world_size × workers``
shards (ranks of ``torch.distributed`` and DataLoader workers), so each cell is
yielded exactly once per epoch. Memory: a worker holds its buffer of row groups
and one batch, whatever the store's size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from scdask.compute import (
    Expr,
    GroupSel,
    as_matrix,
    count_cells,
    obs_column,
    read_gene_runs,
    scatter_rows,
)

try:
    from torch.utils.data import IterableDataset as _Base
except ImportError:  # pragma: no cover - the class stays importable without torch
    _Base = object  # type: ignore[assignment,misc]


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise ImportError("scdask.ml needs PyTorch: pip install 'scdask[ml]'") from e
    return torch


#: The strings of missing values (``str`` of NaN, None, ``pd.NA``, ``NaT``).
_MISSING = frozenset({"nan", "None", "<NA>", "NaT"})


class CellDataset(_Base):  # type: ignore[misc,valid-type]
    """An iterable of batches of cells from scdask stores, for ``torch.utils.data.DataLoader``.

    Parameters
    ----------
    data
        A store path or URL, a list/glob of them, or a Dataset from :func:`scdask.open`
        (or a selection of it).
    batch_size
        Cells per batch (the last batch of a shard may be smaller unless ``drop_last``).
    genes
        Gene names to keep (default: all genes).
    obs
        obs columns to yield with each batch, as tensors.
    where
        Keep only the cells whose obs columns equal these values, e.g.
        ``{"pass_filter": "full"}`` (a value or a list of accepted values; NaN or None
        accepts the cells whose value is missing).
    shuffle, seed, buffer_groups
        Block shuffling: row groups in random order, cells shuffled within a buffer of
        ``buffer_groups`` groups (default: as many as make about 16,384 cells); reproducible
        from ``seed`` and the epoch. A buffer costs 12 bytes per stored entry.
    normalize
        Scale each cell to this total count (library-size normalisation using the
        cell's total over all genes, stored at conversion), e.g. ``1e4``.
    log1p
        Apply ``log1p`` after normalising.
    sparse
        Yield X as ``torch.sparse_csr_tensor`` (default) or as a dense tensor.
    drop_last
        Drop each shard's last incomplete batch.
    rank, world_size
        This process's place among distributed ranks (default: from
        ``torch.distributed`` when initialised, else 0 of 1).
    var
        The matrix to read.
    threads
        Threads that read and transpose row groups, one buffer ahead of the batches
        (default: the cores available, at most 8, shared out among DataLoader workers).
    """

    def __init__(
        self,
        data: Any,
        *,
        batch_size: int = 1024,
        genes: Sequence[str] | None = None,
        obs: Sequence[str] = (),
        where: dict[str, Any] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        buffer_groups: int | None = None,
        normalize: float | None = None,
        log1p: bool = False,
        sparse: bool = True,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        var: str = "X",
        threads: int | None = None,
    ) -> None:
        import pandas as pd
        import xarray as xr

        from scdask.backend import open as open_dataset

        ds = data if isinstance(data, xr.Dataset) else open_dataset(data)
        if genes is not None:
            ds = ds.sel(gene=list(genes))
        if where:
            keep = np.ones(ds.sizes["cell"], dtype=bool)
            for col, value in where.items():
                accepted = [str(v) for v in ([value] if np.ndim(value) == 0 else value)]
                values = obs_column(ds, col)
                if isinstance(values, pd.Categorical):  # its categories, not every cell's
                    hit = np.isin(np.asarray(values.categories).astype(str), accepted)
                    # code -1 (missing) takes the last: selected by NaN, None or pd.NA, as
                    # a column of objects is (its missing values as strings)
                    missing = bool(_MISSING.intersection(accepted))
                    keep &= np.append(hit, missing)[values.codes]
                else:
                    keep &= np.isin(np.asarray(values).astype(str), accepted)
            ds = ds.isel(cell=np.flatnonzero(keep))
        m = as_matrix(ds, var, caller="CellDataset")
        x = m.data
        self.base = m.base
        self._matrix = None if m.expr.is_identity else m  # an expression: read through it
        if self._matrix is not None:
            self._matrix.operands  # noqa: B018 - lazy operands computed once, here
        if self._matrix is not None and (normalize or log1p):
            raise ValueError(
                f"this selection is already an expression ({m.expr}); normalize=/log1p= would "
                "transform it again: put every transform in the expression (scdask.pp) or "
                "stream the stored values with normalize=/log1p=")
        if self.base.n_sel_cells == 0:
            raise ValueError(f"CellDataset: the selection has no cells (where={where!r}): an "
                             "epoch would yield nothing; check the obs values")
        self.gene_names = [str(g) for g in np.asarray(x[x.dims[1]].values)]
        genes_sel = self.base.genes
        self.unique, self.inverse = (None, None) if genes_sel is None else np.unique(
            genes_sel, return_inverse=True)
        self.n_genes = self.base.n_sel_genes
        self.batch_size = int(batch_size)
        if buffer_groups is None:
            R = max(p.store.row_group_size for p in self.base.parts)
            buffer_groups = max(1, round(16384 / R))
        self.shuffle, self.seed, self.buffer_groups = shuffle, int(seed), max(1, buffer_groups)
        self.normalize, self.log1p, self.sparse, self.drop_last = normalize, log1p, sparse, drop_last
        self.rank, self.world_size = rank, world_size
        self.threads = threads
        self.epoch = 0
        self._parts = False  # set by loader(): batches leave workers as plain tensors
        self.obs_names = list(obs)
        self.categories: dict[str, list[Any]] = {}
        self._obs: dict[str, np.ndarray] = {}
        for col in self.obs_names:  # read once, as codes or numbers: small per cell
            values = np.asarray(ds[col].values)
            if values.dtype == object or values.dtype.kind in "USb":
                codes, cats = _factorize(values)
                self.categories[col] = cats
                self._obs[col] = codes
            else:
                self._obs[col] = values
        self._totals = np.asarray(ds["cell_sum"].values) if normalize and var == "X" else None
        if normalize and self._totals is None:
            raise ValueError("normalize needs per-cell totals, stored for X only")

    def __len__(self) -> int:
        """Cells per epoch (over all shards)."""
        return self.base.n_sel_cells

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order to yield (as with ``DistributedSampler``)."""
        self.epoch = int(epoch)

    # -- sharding ------------------------------------------------------------------
    def _shard(self) -> tuple[int, int]:
        torch = _torch()
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                rank, world = dist.get_rank(), dist.get_world_size()
            else:
                rank, world = 0, 1
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw

    def groups(self) -> list[GroupSel]:
        """This shard's row groups for the current epoch, in order."""
        groups = list(self.base.groups)
        order = np.arange(len(groups))
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(len(groups))
        shard, n_shards = self._shard()
        return [groups[i] for i in order[shard::n_shards]]

    # -- reading -------------------------------------------------------------------
    def _read(self, sel: GroupSel) -> tuple[np.ndarray, ...]:
        """One row group's entries of the selected genes, gene-major (the selection's order)."""
        if self._matrix is not None:
            return self._matrix.entries(sel)
        starts, ends, vals, rows = read_gene_runs(sel.part, sel.group, self.unique, Expr(), True)
        if self.inverse is not None:  # the selection's gene order, repeats included
            starts, ends = starts[self.inverse], ends[self.inverse]
        return starts, ends, vals, rows

    def _n_threads(self) -> int:
        if self.threads is not None:
            return max(1, int(self.threads))
        from scdask.parallel import default_workers

        info = _torch().utils.data.get_worker_info()
        n_workers = 1 if info is None else info.num_workers  # DataLoader workers share the cores
        return max(1, min(default_workers() // n_workers, 8))

    def buffers(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """This shard's cells, a buffer of row groups at a time, as shuffled CSR.

        Yields ``(indptr, indices, data, cells)``: the buffer's cells in their
        shuffled order (positions in the selection) and their rows. With more than
        one thread, the next buffer is read and transposed while this one is used,
        each transpose split over the threads by ranges of genes.
        """
        from concurrent.futures import ThreadPoolExecutor

        shard = self._shard()
        groups = self.groups()
        chunks = [groups[b : b + self.buffer_groups]
                  for b in range(0, len(groups), self.buffer_groups)]
        n = self._n_threads()
        if n == 1:
            for i, chunk in enumerate(chunks):
                yield self._buffer(i, chunk, shard, None, 1)
            return
        pool, ahead = ThreadPoolExecutor(n), ThreadPoolExecutor(1)
        try:
            nxt = ahead.submit(self._buffer, 0, chunks[0], shard, pool, n) if chunks else None
            for i in range(len(chunks)):
                out = nxt.result()
                if i + 1 < len(chunks):  # one buffer ahead: memory stays two buffers
                    nxt = ahead.submit(self._buffer, i + 1, chunks[i + 1], shard, pool, n)
                yield out
                del out
        finally:
            ahead.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True)

    def _buffer(self, index: int, chunk: list[GroupSel], shard: tuple[int, int],
                pool: Any, n_threads: int) -> tuple[np.ndarray, ...]:
        """Buffer ``index`` of this shard's epoch: its row groups read and transposed
        straight into shuffled CSR (stored entries 4 bytes each, CSR 8 bytes each)."""
        from scdask.parallel import release_memory

        def run(fn: Any, tasks: list[tuple[Any, ...]]) -> list[Any]:
            if pool is None:
                return [fn(*t) for t in tasks]
            return list(pool.map(lambda t: fn(*t), tasks))

        def count(i: int, lo: int, hi: int) -> np.ndarray:
            c = np.zeros(chunk[i].n_rows, dtype=np.int64)
            count_cells(reads[i][0][lo:hi], reads[i][1][lo:hi], reads[i][3], c)
            return c

        reads = run(self._read, [(g,) for g in chunk])
        # each group's genes in ranges of about equal entries: one transpose task each
        tasks = [(i, lo, hi) for i, r in enumerate(reads) for lo, hi in _gene_ranges(r[1],
                                                                                      n_threads)]
        counts = run(count, tasks)
        local = [np.arange(g.n_rows) if g.local is None else g.local for g in chunk]
        totals = [np.zeros(g.n_rows, dtype=np.int64) for g in chunk]
        for (i, _, _), c in zip(tasks, counts, strict=True):
            totals[i] += c
        cells = np.concatenate([np.arange(g.first, g.first + g.count) for g in chunk])
        rng = np.random.default_rng((self.seed, self.epoch, *shard, index))
        order = rng.permutation(len(cells)) if self.shuffle else np.arange(len(cells))
        cell_counts = np.concatenate([t[loc] for t, loc in zip(totals, local, strict=True)])
        indptr = np.zeros(len(cells) + 1, dtype=np.int64)
        np.cumsum(cell_counts[order], out=indptr[1:])
        row_of = np.empty(len(cells), dtype=np.int64)
        row_of[order] = np.arange(len(cells))  # buffer position -> output row
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        data = np.empty(int(indptr[-1]), dtype=np.float32)
        fill, offset = [], 0  # per group: each stored cell's next free slot, -1 if not selected
        for g, loc in zip(chunk, local, strict=True):
            f = np.full(g.n_rows, -1, dtype=np.int64)
            f[loc] = indptr[row_of[offset : offset + len(loc)]]
            fill.append(f)
            offset += len(loc)
        firsts = []  # a range's cells start where the previous range of their group ended
        for (i, _, _), c in zip(tasks, counts, strict=True):
            firsts.append(fill[i].copy())
            fill[i][local[i]] += c[local[i]]
        run(lambda t, f: scatter_rows(*reads[t[0]], t[1], t[2], f, indices, data),
            list(zip(tasks, firsts, strict=True)))
        reads.clear()
        release_memory()  # the stored entries are freed: hand them back to the OS
        return indptr, indices, data, cells[order]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        bs = self.batch_size
        carry: tuple[np.ndarray, ...] | None = None  # the last buffer's incomplete batch
        for indptr, indices, data, cells in self.buffers():
            a = 0
            if carry is not None:  # completed with the first cells of this buffer
                a = min(len(cells), bs - len(carry[3]))
                carry = _concat(carry, (*_rows(indptr, indices, data, 0, a), cells[:a]))
                if len(carry[3]) < bs:
                    continue
                yield self._batch(*carry)
                carry = None
            n_full = a + ((len(cells) - a) // bs) * bs
            for b in range(a, n_full, bs):
                yield self._batch(*_rows(indptr, indices, data, b, b + bs), cells[b : b + bs])
            if n_full < len(cells):  # a copy, so the buffer can go
                carry = tuple(np.array(x) for x in (*_rows(indptr, indices, data, n_full,
                                                           len(cells)), cells[n_full:]))
        if carry is not None and len(carry[3]) and not self.drop_last:
            yield self._batch(*carry)

    def _batch(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
               pos: np.ndarray) -> dict[str, Any]:
        torch = _torch()
        shape = (len(pos), self.n_genes)
        if self.normalize:
            totals = self._totals[pos]
            scale = np.where(totals > 0, self.normalize / np.where(totals > 0, totals, 1), 0.0)
            data = data * np.repeat(scale, np.diff(indptr)).astype(np.float32)
        if self.log1p:
            data = np.log1p(data)
        if self.sparse and self._parts:  # plain tensors cross process boundaries cheaply
            X = {"crow": torch.from_numpy(indptr.astype(np.int32)),
                 "col": torch.from_numpy(indices),
                 "values": torch.from_numpy(np.ascontiguousarray(data)),
                 "size": shape}
        elif self.sparse:
            X = _csr(torch, indptr.astype(np.int32), indices, np.ascontiguousarray(data), shape)
        else:
            dense = np.zeros(shape, dtype=np.float32)
            dense[np.repeat(np.arange(shape[0]), np.diff(indptr)), indices] = data
            X = torch.from_numpy(dense)
        out = {"X": X, "cell": torch.from_numpy(pos.astype(np.int64))}
        for col, values in self._obs.items():
            out[col] = torch.as_tensor(values[pos])
        return out


def _gene_ranges(ends: np.ndarray, n: int) -> list[tuple[int, int]]:
    """``n`` ranges of genes holding about equal numbers of entries (``ends``: cumulative)."""
    total = int(ends[-1]) if len(ends) else 0
    cuts = [int(c) for c in np.searchsorted(ends, np.linspace(0, total, n + 1)[1:-1])]
    return list(zip([0, *cuts], [*cuts, len(ends)], strict=True))


def _rows(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, a: int, b: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``a:b`` of a CSR as views (indptr rebased to 0)."""
    lo, hi = indptr[a], indptr[b]
    return indptr[a : b + 1] - lo, indices[lo:hi], data[lo:hi]


def _concat(x: tuple[np.ndarray, ...], y: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    return (np.concatenate([x[0][:-1], y[0] + x[0][-1]]), np.concatenate([x[1], y[1]]),
            np.concatenate([x[2], y[2]]), np.concatenate([x[3], y[3]]))


def _factorize(values: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    import pandas as pd

    codes, cats = pd.factorize(pd.Series(values), sort=True)
    return codes.astype(np.int64), list(cats)


def loader(data: Any, *, num_workers: int = 0, **kwargs: Any) -> Any:
    """A ``torch.utils.data.DataLoader`` over :class:`CellDataset` batches.

    By default the batches are made in this process: the dataset's threads read
    and transpose the next buffer (compiled code and decompression, outside the
    GIL) while the training step runs, which is faster than worker processes
    because no batch has to be copied between processes. With ``num_workers > 0``,
    workers start with ``forkserver`` (not ``fork``: zarr's I/O thread does not
    survive a fork), stay alive between epochs, and each reads its own row groups.
    Sparse batches cross from the workers as their three plain tensors (shared
    memory) and become ``torch.sparse_csr_tensor`` in this process. Call
    ``loader.dataset.set_epoch(e)`` before each epoch for a new order.
    """
    torch = _torch()
    ds = CellDataset(data, **kwargs)
    extra: dict[str, Any] = {}
    if num_workers > 0:
        ds._parts = True
        extra = {"multiprocessing_context": "forkserver" if os.name == "posix" else "spawn",
                 "persistent_workers": True, "prefetch_factor": 4,
                 "collate_fn": _assemble}
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, **extra)


def _assemble(batch: dict[str, Any]) -> dict[str, Any]:
    X = batch["X"]
    if isinstance(X, dict):
        batch = dict(batch)
        batch["X"] = _csr(_torch(), X["crow"], X["col"], X["values"], tuple(X["size"]))
    return batch


def _csr(torch: Any, crow: Any, col: Any, values: Any, size: tuple[int, int]) -> Any:
    import warnings

    def as_t(a: Any) -> Any:
        return a if isinstance(a, torch.Tensor) else torch.from_numpy(a)

    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(as_t(crow), as_t(col), as_t(values), size=size)
