"""Property test of the engine: selection × elementwise expression × reduction against dense numpy."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from anndata.io import write_elem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scdask
from scdask.compute import ScdaskArray
from tests.conftest import QUERY_PLANNING

N_CELLS, N_GENES = 230, 37


@pytest.fixture(autouse=True, params=["a task per row group", "row groups batched"])
def tasks(request, monkeypatch):
    """Every test twice: one task per row group, and per-gene reductions reading the store's
    4 row groups two to a task (as a query over ~6,100 row groups does, 24 to a task)."""
    from scdask.compute import reductions

    if request.param == "row groups batched":
        monkeypatch.setattr(reductions, "MAX_TASKS", 2)
        monkeypatch.setattr(reductions, "FEW_GENE_TASKS", 2)
    return request.param


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    """A store of a random count matrix with several row groups, and the dense matrix."""
    rng = np.random.default_rng(7)
    m = sp.random(N_CELLS, N_GENES, density=0.2, format="csr", random_state=rng,
                  data_rvs=lambda n: rng.integers(1, 9, n)).astype(np.float32)
    m[5, :] = 0  # an empty cell
    m.eliminate_zeros()
    d = tmp_path_factory.mktemp("prop")
    src = d / "m.h5ad"
    import pandas as pd

    with h5py.File(src, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        write_elem(f, "X", m)
        write_elem(f, "obs", pd.DataFrame(index=[f"c{i}" for i in range(N_CELLS)]))
        write_elem(f, "var", pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdask.convert(src, d / "m.zarr", row_group_size=64, chunk_size=1024, workers=0)
    return scdask.open(d / "m.zarr").X.data, m.toarray().astype(np.float64)


EXPRESSIONS = {
    "x": lambda x: x,
    "2x+1": lambda x: x * 2 + 1,
    "log1p": np.log1p,
    "x/3-1": lambda x: x / 3 - 1,
    "x>2": lambda x: x > 2,
    "sqrt(x)*x": lambda x: np.sqrt(x) * x,
    "x**2": lambda x: x**2,
    "-abs(x-3)": lambda x: -abs(x - 3),
    "float64": lambda x: x.astype("float64"),
}
REDUCTIONS = ["sum", "mean", "var", "std", "min", "max", "count_nonzero", "nansum", "nanmean",
              "nanmax"]


@st.composite
def selections(draw):
    kind = draw(st.sampled_from(["all", "slice", "sorted", "bool", "one"]))
    if kind == "all":
        cells = slice(None)
    elif kind == "slice":
        a = draw(st.integers(0, N_CELLS - 1))
        cells = slice(a, draw(st.integers(a + 1, N_CELLS)), draw(st.integers(1, 70)))
    elif kind == "sorted":
        cells = np.array(sorted(draw(st.sets(st.integers(0, N_CELLS - 1), min_size=1,
                                             max_size=90))))
    elif kind == "bool":
        seed = draw(st.integers(0, 2**16))
        cells = np.random.default_rng(seed).random(N_CELLS) < draw(st.sampled_from([0.05, 0.5]))
        if not cells.any():
            cells[3] = True
    else:
        cells = draw(st.integers(-N_CELLS, N_CELLS - 1))
    gkind = draw(st.sampled_from(["all", "list", "slice", "one"]))
    if gkind == "all":
        genes = slice(None)
    elif gkind == "list":  # any order, repeats allowed
        genes = draw(st.lists(st.integers(0, N_GENES - 1), min_size=1, max_size=12))
    elif gkind == "slice":
        genes = slice(draw(st.integers(0, 10)), draw(st.integers(11, N_GENES)),
                      draw(st.integers(1, 4)))
    else:
        genes = draw(st.integers(0, N_GENES - 1))
    return cells, genes


def _select(a, sel):
    """``a[cells, genes]`` the way both the lazy matrix and numpy take it (cells may drop)."""
    cells, genes = sel
    a = a[cells]
    return a[:, genes] if a.ndim == 2 else a[genes]


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sel=selections(), expr=st.sampled_from(sorted(EXPRESSIONS)),
       op=st.sampled_from(REDUCTIONS), axis=st.sampled_from([None, 0, 1]))
def test_selection_expression_reduction_equal_numpy(plate, sel, expr, op, axis):
    lazy, dense = plate
    x, ref = _select(lazy, sel), _select(dense, sel)
    if ref.size == 0:
        return
    if axis is not None and axis >= ref.ndim:
        axis = None
    f = EXPRESSIONS[expr]
    got = np.asarray(getattr(np, op)(f(x), axis=axis).compute())
    with np.errstate(invalid="ignore", divide="ignore"):
        values = f(ref.astype(np.float32))  # computed as the store's dtype, like the engine
        if op != "count_nonzero" and values.dtype != bool:
            values = values.astype(np.float64)  # and accumulated in float64
        want = getattr(np, op)(values, axis=axis)
    np.testing.assert_allclose(got.astype(np.float64), np.asarray(want, dtype=np.float64),
                               rtol=1e-9, atol=1e-9, err_msg=f"{op}({expr}) axis={axis} {sel}")


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sel=selections(), expr=st.sampled_from(sorted(EXPRESSIONS)))
def test_selection_expression_values_equal_numpy(plate, sel, expr):
    """The generic view (sparse blocks) holds the same values as numpy."""
    lazy, dense = plate
    x, ref = _select(lazy, sel), _select(dense, sel)
    f = EXPRESSIONS[expr]
    got = f(x).compute()
    got = got.todense() if hasattr(got, "todense") else np.asarray(got)
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64),
                               np.asarray(f(ref.astype(np.float32)), dtype=np.float64),
                               rtol=1e-6, err_msg=f"{expr} {sel}")


# -- contract of the partial statistics: merging pieces is computing the whole ----------------


def _partial(values: np.ndarray) -> np.ndarray:
    """The partial of one element from its values, as the kernels define it."""
    from scdask.compute.kernels import empty_partial

    p = empty_partial(1)
    ok = values[~np.isnan(values)]
    p[:, 0] = [len(ok), ok.sum(), ((ok - ok.mean()) ** 2).sum() if len(ok) else 0.0,
               ok.min() if len(ok) else np.inf, ok.max() if len(ok) else -np.inf,
               float(np.isnan(values).any())]
    return p


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(float("nan"))), max_size=60),
       cuts=st.lists(st.integers(0, 60), max_size=5), op=st.sampled_from(
           ["sum", "mean", "var", "std", "min", "max", "count"]), skipna=st.booleans())
def test_merged_partials_equal_the_partial_of_the_whole(values, cuts, op, skipna):
    from scdask.compute.kernels import empty_partial, fold_partials, merge_partials
    from scdask.compute.reductions import finalize

    v = np.array(values, dtype=np.float64)
    bounds = sorted({0, len(v), *[min(c, len(v)) for c in cuts]})
    pieces = [_partial(v[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    merged = empty_partial(1)
    for p in pieces:
        merged = merge_partials(merged, p)
    whole = _partial(v)
    # identity, commutativity, and the tree fold agree with the sequential merge
    np.testing.assert_array_equal(merge_partials(whole, empty_partial(1)), whole)
    if len(pieces) >= 2:
        np.testing.assert_allclose(merge_partials(pieces[1], pieces[0]),
                                   merge_partials(pieces[0], pieces[1]), rtol=1e-12, atol=1e-6)
    folded = fold_partials(np.concatenate(pieces, axis=1)) if pieces else empty_partial(1)
    got = finalize(merged, op, skipna, 0, False)
    np.testing.assert_allclose(finalize(folded, op, skipna, 0, False), got, rtol=1e-9, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ok = v[~np.isnan(v)] if skipna else v
        want = {"sum": np.sum, "mean": np.mean, "var": np.var, "std": np.std,
                "min": np.min if len(ok) else (lambda x: np.nan),
                "max": np.max if len(ok) else (lambda x: np.nan),
                "count": lambda x: np.count_nonzero(~np.isnan(v))}[op](ok)
    if op == "sum" and not len(ok):
        want = 0.0
    scale = max(1.0, float(np.nanmax(np.abs(v))) if len(v) and not np.isnan(v).all() else 1.0)
    tol = 1e-9 * scale**2 if op == "var" else 1e-9 * scale * max(1, len(v))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=tol, err_msg=f"{op} {values}")


@settings(max_examples=150, deadline=None)
@given(runs=st.lists(st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(float("nan"))),
                              max_size=12), min_size=1, max_size=8),
       extra=st.integers(0, 5), fill=st.one_of(st.floats(-10, 10), st.just(float("nan"))),
       per_gene=st.booleans(), dtype=st.sampled_from(["float64", "float32", "uint16"]))
def test_small_calls_in_numpy_equal_the_compiled_kernel(runs, extra, fill, per_gene, dtype):
    """A few genes over one class of cells run in numpy: same partials as the kernel."""
    from scdask.compute import kernels

    if dtype == "uint16":
        runs = [[abs(x) % 60000 for x in r if x == x] for r in runs]
    vals = np.array([x for r in runs for x in r], dtype=dtype)
    lengths = np.array([len(r) for r in runs], np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    n_cells = int(lengths.max()) + extra
    table = (np.linspace(fill, fill + 1, len(runs))[None] if per_gene else np.array([[fill]]))
    got, want = np.empty((6, len(runs))), np.empty((6, len(runs)))
    empty = np.zeros(0, np.int64)
    kernels._gene_partials_numpy(starts, ends, vals, n_cells, table, got)
    kernels._gene_partials(starts, ends, vals, empty, empty, np.array([n_cells], np.int64),
                           table, want)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-3)
    np.testing.assert_array_equal(got[[kernels.N, kernels.MIN, kernels.MAX, kernels.NAN]],
                                  want[[kernels.N, kernels.MIN, kernels.MAX, kernels.NAN]])


# -- expressions with per-cell and per-gene operands --------------------------------------------

UNARY = {
    "log1p|.|": lambda a: np.log1p(abs(a)),
    "sqrt|.|": lambda a: np.sqrt(abs(a)),
    "neg": lambda a: -a,
    "expm1(min(.,3))": lambda a: np.expm1(np.minimum(a, 3)),
}
BINARY = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/(|.|+1)": lambda a, b: a / (abs(b) + 1),
    "min": np.minimum,
    "max": np.maximum,
}


@st.composite
def trees(draw, depth=3):
    """A random expression of ``x`` (the matrix), ``c`` (per cell), ``g`` (per gene), constants."""
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        leaf = draw(st.sampled_from(["x", "c", "g", "const"]))
        if leaf == "const":
            k = draw(st.sampled_from([0.0, 1.0, 2.5, -3.0]))
            return f"{k}", lambda x, c, g, k=k: k
        return leaf, lambda x, c, g, leaf=leaf: {"x": x, "c": c, "g": g}[leaf]
    kind = draw(st.sampled_from(["unary", "binary", "binary", "where"]))
    if kind == "unary":
        name = draw(st.sampled_from(sorted(UNARY)))
        s, f = draw(trees(depth - 1))
        return f"{name}({s})", lambda x, c, g: UNARY[name](f(x, c, g))
    if kind == "where":
        k = draw(st.sampled_from([0.0, 2.0]))
        (sa, fa), (sb, fb) = draw(trees(depth - 1)), draw(trees(depth - 1))
        return (f"where(x>{k}, {sa}, {sb})",
                lambda x, c, g: np.where(x > k, fa(x, c, g), fb(x, c, g)))
    name = draw(st.sampled_from(sorted(BINARY)))
    (sa, fa), (sb, fb) = draw(trees(depth - 1)), draw(trees(depth - 1))
    return f"({sa} {name} {sb})", lambda x, c, g: BINARY[name](fa(x, c, g), fb(x, c, g))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sel=selections(), tree=trees(), op=st.sampled_from(REDUCTIONS),
       axis=st.sampled_from([None, 0, 1]), lazy_ops=st.booleans())
def test_operand_expressions_equal_numpy(plate, sel, tree, op, axis, lazy_ops):
    """Random expression trees with per-cell and per-gene vectors (numpy, or lazy reductions of
    the same matrix as scanpy's normalize_total and scale use) × selections × reductions."""
    lazy, dense = plate
    x, ref = _select(lazy, sel), _select(dense, sel)
    if ref.ndim != 2 or ref.size == 0:
        return
    text, f = tree
    ref32 = ref.astype(np.float32)
    rng = np.random.default_rng(len(text))
    if lazy_ops:  # per-cell totals and per-gene means, computed lazily by the engine itself
        c, g = x.sum(axis=1)[:, None] + 1.0, x.mean(axis=0)
        c_ref, g_ref = ref32.astype(np.float64).sum(1)[:, None] + 1.0, ref32.astype(
            np.float64).mean(0)
    else:
        c_ref = rng.choice([0.5, 1.0, 2.0], size=(ref.shape[0], 1))
        g_ref = rng.normal(size=ref.shape[1])
        c, g = c_ref, g_ref
    try:
        expr = BINARY["+"](x * 1.0, f(x, c, g))  # always an expression of x
    except (NotImplementedError, AttributeError):
        if QUERY_PLANNING:  # an operation on a plain Dask operand that dask-expr lacks
            return
        raise
    if not isinstance(expr, ScdaskArray):
        return  # a cell × gene operand (c - g, say): not an expression of the engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = np.asarray(getattr(np, op)(expr, axis=axis).compute(), dtype=np.float64)
        with np.errstate(all="ignore"):
            values = BINARY["+"](ref32 * 1.0, f(ref32, c_ref, g_ref))
            if op != "count_nonzero":
                values = np.asarray(values, dtype=np.float64)
            want = np.asarray(getattr(np, op)(values, axis=axis), dtype=np.float64)
    scale = max(1.0, float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * scale**2 * max(ref.shape),
                               err_msg=f"{op}({text}) axis={axis} lazy_ops={lazy_ops} {sel}")
