"""Compiled reductions over the genes of one row group, as read from a store.

Every kernel takes the same view of a row group: ``starts``/``ends`` delimit, in a
buffer of values (``vals``, already transformed and float64) and local cell
indices (``rows``), the stored entries of each requested gene — in any order,
repeats allowed. The implicit entries (cells with no stored value for a gene)
all hold the same value ``fill``: 0, or whatever the elementwise expression
makes of 0.

Partial results are ``(6, n)`` float64 arrays whose rows are named by
:data:`PARTIAL`: the count of non-NaN values, their sum, the sum of squared
deviations from their mean (so partials merge with Chan et al.'s pairwise
formula), min, max, and whether a NaN was seen. Values may come in any numeric
dtype (stored uint16 counts are not converted) and are accumulated in float64.
"""

from __future__ import annotations

import numpy as np

from scdask._jit import jit

PARTIAL = ("n", "sum", "m2", "min", "max", "nan")
N, SUM, M2, MIN, MAX, NAN = range(6)


def empty_partial(n: int) -> np.ndarray:
    """The partial of nothing: zero counts, ``min = +inf``, ``max = -inf``."""
    out = np.zeros((6, n), dtype=np.float64)
    out[MIN] = np.inf
    out[MAX] = -np.inf
    return out


#: Calls over at most this many genes, with every cell of one class, run in numpy: in a
#: fresh process the first compiled kernel costs ~0.3 s of numba start-up (its registries
#: load), more than a few genes' query takes; more genes amortise it.
NUMPY_GENES = 8


def gene_partials(starts: np.ndarray, ends: np.ndarray, vals: np.ndarray, rows: np.ndarray,
                  lab: np.ndarray, n_class: np.ndarray, table: np.ndarray,
                  out: np.ndarray) -> None:
    """Per requested gene, over the selected cells of the group, into ``out`` ``(6, genes)``.

    ``lab[r]`` is the class of local cell ``r`` (-1: not selected); empty when every
    cell of the group is selected, all of class 0 (then ``rows`` is not read and may
    be empty). ``n_class[c]`` counts the selected cells of class ``c``, whose
    implicit entries hold ``table[c, j]`` (``table[c, 0]`` when it has one column).
    A few genes over one class run in numpy (:data:`NUMPY_GENES`), the rest compiled.
    """
    if lab.shape[0] == 0 and starts.shape[0] <= NUMPY_GENES:
        _gene_partials_numpy(starts, ends, vals, int(n_class[0]), table, out)
    else:
        _gene_partials(starts, ends, vals, rows, lab, n_class, table, out)


def _gene_partials_numpy(starts: np.ndarray, ends: np.ndarray, vals: np.ndarray,
                         n_cells: int, table: np.ndarray, out: np.ndarray) -> None:
    """:func:`_gene_partials` over one class of cells, in numpy (same statistics)."""
    per_gene = table.shape[1] > 1
    for j in range(starts.shape[0]):
        v = vals[starts[j] : ends[j]]
        imp = n_cells - len(v)
        nan = False
        if v.dtype.kind in "fc":
            bad = np.isnan(v)
            nan = bool(bad.any())
            if nan:
                v = v[~bad]
        v = np.asarray(v, dtype=np.float64)
        fill = float(table[0, j] if per_gene else table[0, 0])
        shift = v[0] if len(v) else fill
        d = v - shift
        n, s, d1, d2 = len(v), float(v.sum()), float(d.sum()), float(d @ d)
        mn, mx = (float(v.min()), float(v.max())) if len(v) else (np.inf, -np.inf)
        if imp > 0 and fill != fill:
            nan = True
        elif imp > 0:
            df = fill - shift
            n, s, d1, d2 = n + imp, s + imp * fill, d1 + imp * df, d2 + imp * df * df
            mn, mx = min(mn, fill), max(mx, fill)
        out[N, j] = n
        out[SUM, j] = s
        out[M2, j] = max(d2 - d1 * d1 / n, 0.0) if n > 0 else 0.0
        out[MIN, j] = mn
        out[MAX, j] = mx
        out[NAN, j] = 1.0 if nan else 0.0


@jit(nogil=True)
def _gene_partials(starts, ends, vals, rows, lab, n_class, table, out):  # pragma: no cover
    """Per requested gene, over the selected cells of the group.

    ``lab[r]`` is the class of local cell ``r`` (-1: not selected); empty when every
    cell of the group is selected, all of class 0 (then ``rows`` is not read and may
    be empty). ``n_class[c]`` counts the selected cells of class ``c``, whose
    implicit entries hold ``table[c, j]`` (``table[c, 0]`` when it has one column).
    One pass: squared deviations are accumulated shifted by the gene's first value,
    which keeps them exact for counts and accurate for data far from zero.
    """
    use_lab = lab.shape[0] > 0
    n_c = n_class.shape[0]
    per_gene = table.shape[1] > 1
    cnt = np.zeros(n_c, dtype=np.int64)
    for j in range(starts.shape[0]):
        n = 0
        s = 0.0
        d1 = 0.0
        d2 = 0.0
        shift = np.nan
        mn = np.inf
        mx = -np.inf
        nan = False
        for k in range(starts[j], ends[j]):
            if use_lab:
                c = lab[rows[k]]
                if c < 0:
                    continue
                cnt[c] += 1
            else:
                cnt[0] += 1
            v = np.float64(vals[k])
            if v != v:
                nan = True
                continue
            if shift != shift:
                shift = v
            n += 1
            s += v
            d = v - shift
            d1 += d
            d2 += d * d
            mn = min(mn, v)
            mx = max(mx, v)
        for c in range(n_c):
            imp = n_class[c] - cnt[c]
            cnt[c] = 0
            if imp <= 0:
                continue
            fill = table[c, j] if per_gene else table[c, 0]
            if fill != fill:
                nan = True
                continue
            if shift != shift:
                shift = fill
            n += imp
            s += imp * fill
            d = fill - shift
            d1 += imp * d
            d2 += imp * d * d
            mn = min(mn, fill)
            mx = max(mx, fill)
        out[N, j] = n
        out[SUM, j] = s
        out[M2, j] = max(d2 - d1 * d1 / n, 0.0) if n > 0 else 0.0
        out[MIN, j] = mn
        out[MAX, j] = mx
        out[NAN, j] = 1.0 if nan else 0.0


@jit(nogil=True)
def cell_partials(starts, ends, vals, rows, fill, out):  # pragma: no cover - compiled
    """Per cell of the group (``out`` is ``(6, n_rows)``), over the requested genes,
    whose implicit entries in cell ``r`` hold ``fill[r]``.

    One pass, squared deviations shifted by each cell's first value (see
    :func:`gene_partials`). Each cell's accumulators share one cache line, since
    cells are visited in scattered order.
    """
    n_rows = out.shape[1]
    n_genes = starts.shape[0]
    # per cell: stored, shift, d1, d2, n, sum, min, max
    acc = np.zeros((n_rows, 8))
    for r in range(n_rows):
        acc[r, 1] = np.nan
        acc[r, 6] = np.inf
        acc[r, 7] = -np.inf
    nan = np.zeros(n_rows, dtype=np.bool_)
    for j in range(n_genes):
        for k in range(starts[j], ends[j]):
            r = rows[k]
            a = acc[r]
            a[0] += 1
            v = np.float64(vals[k])
            if v != v:
                nan[r] = True
                continue
            if a[1] != a[1]:
                a[1] = v
            d = v - a[1]
            a[2] += d
            a[3] += d * d
            a[4] += 1
            a[5] += v
            a[6] = min(a[6], v)
            a[7] = max(a[7], v)
    for r in range(n_rows):
        a = acc[r]
        imp = n_genes - a[0]
        f = fill[r]
        if imp > 0:
            if f != f:
                nan[r] = True
            else:
                if a[1] != a[1]:
                    a[1] = f
                d = f - a[1]
                a[2] += imp * d
                a[3] += imp * d * d
                a[4] += imp
                a[5] += imp * f
                a[6] = min(a[6], f)
                a[7] = max(a[7], f)
        n = a[4]
        out[N, r] = n
        out[SUM, r] = a[5]
        out[M2, r] = max(a[3] - a[2] * a[2] / n, 0.0) if n > 0 else 0.0
        out[MIN, r] = a[6]
        out[MAX, r] = a[7]
        out[NAN, r] = 1.0 if nan[r] else 0.0


def dense_partials(block: np.ndarray, axis: int) -> np.ndarray:
    """Partial statistics of a dense block along ``axis`` (0: per column, 1: per row)."""
    with np.errstate(invalid="ignore"):
        isnan = np.isnan(block)
        n = (~isnan).sum(axis=axis).astype(np.float64)
        s = np.where(isnan, 0.0, block).sum(axis=axis)
        mean = np.where(n > 0, s / np.where(n > 0, n, 1), 0.0)
        dev = np.where(isnan, 0.0, block - np.expand_dims(mean, axis))
        out = np.empty((6, n.shape[0]))
        out[N], out[SUM] = n, s
        out[M2] = (dev * dev).sum(axis=axis)
        out[MIN] = np.where(isnan, np.inf, block).min(axis=axis, initial=np.inf)
        out[MAX] = np.where(isnan, -np.inf, block).max(axis=axis, initial=-np.inf)
        out[NAN] = isnan.any(axis=axis)
    return out


@jit(nogil=True)
def add_moments(acc, lab, v):  # pragma: no cover - compiled
    """One stored value ``v`` (float64) of label ``lab`` into ``acc``'s first five rows:
    entries, NaN, and of the others sum, sum of squares, non-zeros. Without branches:
    values in random order mispredict a branch per comparison (3x slower)."""
    nan = v != v
    w = 0.0 if nan else v
    acc[0, lab] += 1
    acc[1, lab] += nan
    acc[2, lab] += w
    acc[3, lab] += w * w
    acc[4, lab] += w != 0


@jit(nogil=True)
def _add_value(acc, lab, v):  # pragma: no cover - compiled
    """:func:`add_moments`, then rows 5 and 6: min and max (NaN left out)."""
    add_moments(acc, lab, v)
    nan = v != v
    acc[5, lab] = min(acc[5, lab], np.inf if nan else v)
    acc[6, lab] = max(acc[6, lab], -np.inf if nan else v)


@jit(nogil=True)
def label_partials(starts, ends, vals, rows, labels, same, n_labels):  # pragma: no cover
    """Per (label, requested gene), over the stored entries of the label's cells.

    ``labels[r]`` is the label of cell ``r`` of the row group, or -1 to leave it out; with
    ``same >= 0`` every cell has label ``same`` (``labels`` and ``rows`` are not read).
    Values may be of any dtype: they are accumulated in float64.
    Returns ``(label, gene, stats)`` for the pairs with a stored entry, ``stats`` a
    ``(len(LABEL_STATS), pairs)`` array: entries stored, NaN among them, and of the
    others their sum, sum of squares, non-zero count, min and max.
    """
    cap = 0
    for j in range(starts.shape[0]):
        cap += ends[j] - starts[j]
    out_l = np.empty(cap, dtype=np.int64)
    out_g = np.empty(cap, dtype=np.int64)
    out = np.empty((7, cap), dtype=np.float64)
    acc = np.zeros((7, n_labels), dtype=np.float64)
    touched = np.empty(n_labels, dtype=np.int64)
    m = 0
    for j in range(starts.shape[0]):
        t = 0
        for k in range(starts[j], ends[j]):
            lab = same if same >= 0 else labels[rows[k]]
            if lab < 0:
                continue
            if acc[0, lab] == 0:
                touched[t] = lab
                t += 1
                acc[5, lab] = np.inf
                acc[6, lab] = -np.inf
            _add_value(acc, lab, np.float64(vals[k]))
        for i in range(t):
            lab = touched[i]
            out_l[m] = lab
            out_g[m] = j
            for f in range(7):
                out[f, m] = acc[f, lab]
                acc[f, lab] = 0.0
            m += 1
    return out_l[:m], out_g[:m], out[:, :m]


def merge_partials(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Combine two partials of the same elements (Chan et al.'s pairwise update)."""
    out = np.empty_like(a)
    na, nb = a[N], b[N]
    n = na + nb
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = np.where(nb > 0, b[SUM] / np.where(nb > 0, nb, 1), 0.0) - np.where(
            na > 0, a[SUM] / np.where(na > 0, na, 1), 0.0
        )
        extra = np.where(n > 0, delta * delta * na * nb / np.where(n > 0, n, 1), 0.0)
    out[N] = n
    out[SUM] = a[SUM] + b[SUM]
    out[M2] = a[M2] + b[M2] + extra
    out[MIN] = np.minimum(a[MIN], b[MIN])
    out[MAX] = np.maximum(a[MAX], b[MAX])
    out[NAN] = np.maximum(a[NAN], b[NAN])
    return out


def fold_partials(p: np.ndarray) -> np.ndarray:
    """Merge the partials of all elements of ``p`` (shape ``(6, n)``) into one, ``(6, 1)``."""
    if p.shape[1] == 0:
        return empty_partial(1)
    while p.shape[1] > 1:
        half = p.shape[1] // 2
        merged = merge_partials(p[:, :half], p[:, half : 2 * half])
        p = np.concatenate([merged, p[:, 2 * half :]], axis=1) if p.shape[1] % 2 else merged
    return p


@jit(nogil=True)
def count_cells(starts, ends, rows, counts):  # pragma: no cover - compiled
    """Stored entries per cell (``counts[r] += 1``) over the requested genes."""
    for j in range(starts.shape[0]):
        for k in range(starts[j], ends[j]):
            counts[rows[k]] += 1


@jit(nogil=True)
def scatter_rows(starts, ends, vals, rows, lo, hi, fill, out_indices, out_data):  # pragma: no cover
    """Genes ``lo:hi`` of gene-major entries into cell-major CSR rows: ``fill[r]`` is the
    next free slot of stored cell ``r``'s output row (negative: the cell is skipped), so
    a shuffled output costs no more than an ordered one. Genes are visited in order, so
    each row's column indices come out sorted."""
    for j in range(lo, hi):
        for k in range(starts[j], ends[j]):
            r = rows[k]
            p = fill[r]
            if p < 0:
                continue
            fill[r] = p + 1
            out_indices[p] = j
            out_data[p] = vals[k]


@jit(nogil=True)
def gather(values, idx):  # pragma: no cover - compiled
    """``values[idx]`` for any integer ``idx`` (stored uint16 cell indices are not widened)."""
    out = np.empty(idx.shape[0], dtype=values.dtype)
    for k in range(idx.shape[0]):
        out[k] = values[idx[k]]
    return out


@jit(nogil=True)
def add_pairs(out, label, gene, st, rows, dest):  # pragma: no cover - compiled
    """Add ``st[rows[i]]`` of each pair ``(label[k], gene[k])`` into ``out[dest[i], label,
    gene]`` (repeated pairs add up): :func:`label_partials`' pairs into a dense
    ``(rows, labels, genes)`` accumulator, in one pass instead of a ``ufunc.at`` per row."""
    for k in range(gene.shape[0]):
        a = label[k]
        b = gene[k]
        for i in range(rows.shape[0]):
            out[dest[i], a, b] += st[rows[i], k]


@jit(nogil=True)
def label_dense(starts, ends, vals, rows, labels, same, out):  # pragma: no cover - compiled
    """:func:`label_partials` added into a dense ``out`` of shape ``(7, labels, genes)``: for
    labels of many cells, where nearly every (label, gene) has a stored entry and pairs
    would be as large. ``out`` starts as zeros with min ``+inf`` and max ``-inf`` (several
    row groups add into one). It is best laid out gene-major (a transposed view of a
    ``(7, genes, labels)`` array, see :func:`scdask.compute.labels.dense_stats`), so one
    gene's labels are adjacent in memory."""
    for j in range(starts.shape[0]):
        acc = out[:, :, j]
        for k in range(starts[j], ends[j]):
            lab = same if same >= 0 else labels[rows[k]]
            if lab >= 0:
                _add_value(acc, lab, np.float64(vals[k]))
