"""Helpers shared by scdask's tests and benchmarks: references and assertions.

Everything here reads small stores whole; it is for checking, not for use on plates.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scdask.store.reader import Store


def store_to_csr(store: Store, name: str = "X") -> sp.csr_matrix:
    """A whole matrix of a (small) store as scipy CSR, assembled group by group."""
    info = store.matrix(name)
    n_obs, n_vars = info["shape"]
    pieces = []
    for g in range(store.n_groups):
        b = store.read_group(name, g)
        pieces.append(
            sp.csc_matrix((b.data, b.indices.astype(np.int64), b.colptr), shape=(b.n_rows, n_vars)).tocsr()
        )
    if not pieces:
        return sp.csr_matrix((n_obs, n_vars), dtype=store.dtype(name))
    return sp.vstack(pieces, format="csr")


def as_dense(x: Any) -> np.ndarray:
    """A dense numpy copy of a numpy, scipy.sparse or h5py-backed matrix."""
    if sp.issparse(x):
        return x.toarray()
    return np.asarray(x)


def assert_matrix_equal(store: Store, name: str, expected: Any) -> None:
    """Every value of ``store``'s matrix ``name`` equals ``expected`` (NaN equal to NaN)."""
    ours = store_to_csr(store, name).toarray()
    theirs = as_dense(expected)
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} != {theirs.shape}"
    assert ours.dtype == theirs.dtype, f"{name}: dtype {ours.dtype} != {theirs.dtype}"
    np.testing.assert_array_equal(ours, theirs, err_msg=f"{name} differs")


def assert_store_matches_anndata(store: Store | str | os.PathLike[str], adata: Any,
                                 dropped: str = "") -> None:
    """X, layers, raw, obs, var, obsm/varm and uns of a store equal the AnnData it came
    from; an element of ``uns`` may be missing only when ``dropped`` (the conversion's
    warning) names it."""
    st = store if isinstance(store, Store) else Store(store)
    assert (st.n_obs, st.n_vars) == adata.shape
    if adata.X is not None:
        assert_matrix_equal(st, "X", adata.X)
    else:
        assert "X" not in st.matrices
    # anndata 0.13 lists X among the layers, as layers[None]
    layers = {k: v for k, v in adata.layers.items() if k is not None}
    for key, layer in layers.items():
        assert_matrix_equal(st, f"layers/{key}", layer)
    assert set(st.matrices) - {"X", "raw/X"} == {f"layers/{k}" for k in layers}
    pd.testing.assert_frame_equal(st.obs(), adata.obs, check_exact=True)
    pd.testing.assert_frame_equal(st.var(), adata.var, check_exact=True)
    if adata.raw is not None:
        assert_matrix_equal(st, "raw/X", adata.raw.X)
        pd.testing.assert_frame_equal(st.var("raw/X"), adata.raw.var, check_exact=True)
    for axis in ("obsm", "varm"):
        for key, value in getattr(adata, axis).items():
            if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
                np.testing.assert_array_equal(st.root[f"{axis}/{key}"][...], value)
    assert_values_equal(st.uns(), dict(adata.uns), "uns", via_json=True, dropped=dropped)


def assert_values_equal(ours: Any, theirs: Any, where: str, via_json: bool = False,
                        dropped: str = "") -> None:
    """Nested dicts, arrays, pandas arrays and scalars are equal, type and dtype included.

    With ``via_json`` (``ours`` went through a store's JSON), a key of ``theirs`` may be
    missing from ``ours`` when ``dropped`` (the conversion's warning) names it, ASCII
    bytes arrays compare equal to string arrays and numpy scalars to Python scalars of
    the same kind.
    """
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), f"{where}: {type(ours).__name__}, not a dict"
        extra = set(ours) - set(theirs)
        assert not extra, f"{where}: keys {sorted(extra)} are not in the reference"
        for k in set(theirs) - set(ours):
            assert via_json and f"{where}/{k}" in dropped, f"{where}/{k}: missing, not named"
        for k in ours:
            assert_values_equal(ours[k], theirs[k], f"{where}/{k}", via_json, dropped)
    elif isinstance(theirs, pd.Categorical):
        assert isinstance(ours, pd.Categorical), f"{where}: {type(ours).__name__}"
        pd.testing.assert_extension_array_equal(ours, theirs)
        assert ours.categories.dtype == theirs.categories.dtype, f"{where}: categories dtype"
    elif isinstance(theirs, pd.api.extensions.ExtensionArray):
        pd.testing.assert_extension_array_equal(ours, theirs)
    elif isinstance(theirs, pd.DataFrame):
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    elif sp.issparse(theirs):
        assert type(ours) is type(theirs), f"{where}: {type(ours).__name__}"
        assert_values_equal(ours.toarray(), theirs.toarray(), where)
    elif isinstance(theirs, np.ndarray):
        assert isinstance(ours, np.ndarray), f"{where}: {type(ours).__name__}, not an array"
        if via_json and theirs.dtype.kind == "S":  # JSON keeps ASCII bytes as strings
            theirs = theirs.astype(str).astype(object)
        assert ours.dtype == theirs.dtype, f"{where}: dtype {ours.dtype} != {theirs.dtype}"
        np.testing.assert_array_equal(ours, theirs, err_msg=where)
    else:
        if via_json and isinstance(theirs, np.generic):
            theirs = theirs.item()
        assert type(ours) is type(theirs), f"{where}: {type(ours).__name__} != {type(theirs).__name__}"
        assert ours == theirs or (ours != ours and theirs != theirs), f"{where}: {ours!r} != {theirs!r}"


def random_csr(
    n_obs: int, n_vars: int, density: float, seed: int = 0, dtype: Any = np.float32
) -> sp.csr_matrix:
    """Integer-valued random counts, with all-zero rows and columns when density is low."""
    rng = np.random.default_rng(seed)
    m = sp.random(n_obs, n_vars, density=density, format="csr", random_state=rng, dtype=np.float64)
    m.data = np.ceil(m.data * 20).astype(dtype)
    return m.astype(dtype)


def write_random_h5ad(
    path: str | os.PathLike[str],
    n_obs: int,
    n_vars: int,
    nnz_per_row: int,
    *,
    seed: int = 0,
    batch: int = 20000,
    compression: str | None = None,
    fmt: str = "csr",
) -> str:
    """Stream a large random sparse H5AD (int64 indptr) to disk without holding it in memory.

    With ``fmt="csr"``, each row has ``nnz_per_row`` (at most ``n_vars``) distinct,
    sorted columns; with ``fmt="csc"``, each column has ``n_obs * nnz_per_row // n_vars``
    distinct, sorted rows. Values are integer counts. For memory tests: the file can be
    far larger than the memory of the writer.
    """
    import h5py

    rng = np.random.default_rng(seed)
    comp = {"compression": compression} if compression else {}
    n_major, n_minor = (n_obs, n_vars) if fmt == "csr" else (n_vars, n_obs)
    per = nnz_per_row if fmt == "csr" else n_obs * nnz_per_row // n_vars
    with h5py.File(path, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        X = f.create_group("X")
        X.attrs.update({"encoding-type": f"{fmt}_matrix", "encoding-version": "0.1.0",
                        "shape": [n_obs, n_vars]})
        total = n_major * per
        data = X.create_dataset("data", shape=(total,), dtype=np.float32, chunks=(1 << 18,), **comp)
        indices = X.create_dataset("indices", shape=(total,), dtype=np.int32, chunks=(1 << 18,), **comp)
        X.create_dataset("indptr", data=np.arange(n_major + 1, dtype=np.int64) * per)
        for a in range(0, n_major, batch):
            b = min(n_major, a + batch)
            n = b - a
            # one index drawn in each of `per` equal strata: distinct and sorted
            width = n_minor // per
            idx = np.arange(per) * width + rng.integers(0, width, (n, per))
            indices[a * per : b * per] = idx.ravel().astype(np.int32)
            data[a * per : b * per] = rng.integers(1, 50, n * per).astype(np.float32)
        from anndata.io import write_elem

        write_elem(f, "obs", pd.DataFrame(index=[f"c{i}" for i in range(n_obs)]))
        write_elem(f, "var", pd.DataFrame(index=[f"g{i}" for i in range(n_vars)]))
    return os.fspath(path)


def timed(fn: Any, repeat: int = 3) -> tuple[Any, float]:
    """``fn()``'s last result and the median of ``repeat`` wall-clock timings (for scripts)."""
    import statistics
    import time

    out, times = None, []
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def peak_tree_rss(cmd: list[str], interval: float = 0.02, timeout: float = 600) -> tuple[int, int]:
    """Run ``cmd``; return (exit code, peak summed RSS in bytes of it and all its children)."""
    import subprocess

    import psutil

    proc = subprocess.Popen(cmd)
    ps = psutil.Process(proc.pid)
    peak = 0
    import time

    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        total = 0
        try:
            for p in [ps, *ps.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(interval)
    if proc.poll() is None:
        proc.kill()
    return proc.wait(), peak
