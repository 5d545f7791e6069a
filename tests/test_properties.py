"""Property tests: random sparse matrices of awkward shapes survive conversion exactly."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata.io import write_elem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scdask
from scdask.store.reader import Store
from scdask.store.verify import verify
from scdask.testing import store_to_csr


@st.composite
def matrices(draw):
    n_obs = draw(st.integers(0, 70))
    n_vars = draw(st.integers(1, 12))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    seed = draw(st.integers(0, 2**16))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64]))
    m = sp.random(n_obs, n_vars, density=density, format="csr", random_state=seed)
    m.data = np.ceil(m.data * 5)
    if n_obs > 2:
        m[n_obs // 2, :] = 0  # an all-zero row
    m.eliminate_zeros()
    return m.astype(dtype)


def _write(path, m, int64_indptr, fmt):
    with h5py.File(path, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        if fmt == "dense":
            f.create_dataset("X", data=m.toarray())
        else:
            mm = m.tocsc() if fmt == "csc" else m
            g = f.create_group("X")
            g.attrs.update({"encoding-type": f"{fmt}_matrix", "encoding-version": "0.1.0",
                            "shape": list(m.shape)})
            g["indptr"] = mm.indptr.astype(np.int64 if int64_indptr else np.int32)
            g["indices"], g["data"] = mm.indices, mm.data
        write_elem(f, "obs", pd.DataFrame(index=[str(i) for i in range(m.shape[0])]))
        write_elem(f, "var", pd.DataFrame(index=[str(i) for i in range(m.shape[1])]))


@pytest.mark.filterwarnings("ignore::scipy.sparse.SparseEfficiencyWarning")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=matrices(), R=st.sampled_from([1, 3, 16, 64]), int64_indptr=st.booleans(),
       fmt=st.sampled_from(["csr", "csc", "dense"]))
def test_round_trip(tmp_path_factory, m, R, int64_indptr, fmt):
    d = tmp_path_factory.mktemp("p")
    _write(d / "in.h5ad", m, int64_indptr, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scdask.convert(d / "in.h5ad", d / "out.zarr", row_group_size=R, chunk_size=1024, workers=0)
    s = Store(d / "out.zarr")
    got = store_to_csr(s)
    assert got.shape == m.shape and got.dtype == m.dtype
    np.testing.assert_array_equal(got.toarray(), m.toarray())
    assert s.n_groups == -(-m.shape[0] // R)
    assert verify(s, against=d / "in.h5ad").ok
