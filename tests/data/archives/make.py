"""Write the archived stores of tests/test_archives.py: ``python tests/data/archives/make.py v<N>``.

Run once per format version, by the scdask that introduced it, and commit the result: later
scdask versions must keep opening these stores with the answers in ``expected.json``. Never
rewrite an existing archive.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import anndata
import numpy as np

import scdask
from scdask.datasets import synth

HERE = Path(__file__).parent


def make(version: str) -> None:
    out = HERE / version
    if out.exists():
        raise SystemExit(f"{out} exists: archives are never rewritten")
    arrays = importlib.import_module("scdask.conversion.arrays")
    arrays._CHECKSUMS = version != "v1"  # format 1: the layout without checksums
    with tempfile.TemporaryDirectory() as tmp:
        src = synth(Path(tmp) / "plate.h5ad", 90, n_genes=40, n_drugs=3, n_cell_lines=2, seed=5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scdask.convert(src, out / "store", row_group_size=32, chunk_size=1024, workers=0)
        a = anndata.read_h5ad(src)
    X = a.X.toarray().astype(np.float64)
    expected = {
        "format_version": int(version[1:]),
        "shape": list(X.shape),
        "obs_names": [str(s) for s in a.obs_names],
        "var_names": [str(s) for s in a.var_names],
        "obs": {c: [str(v) for v in a.obs[c]] for c in a.obs.columns},
        "X": X.tolist(),
    }
    (out / "expected.json").write_text(json.dumps(expected))
    shutil.rmtree(out / "store" / ".scdask.lock", ignore_errors=True)


if __name__ == "__main__":
    make(sys.argv[1])
