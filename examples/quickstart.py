"""Generate a small Tahoe-like plate, convert it, and check it against the source.

    python examples/quickstart.py [WORKDIR]
"""

import os
import sys

import scdask
from scdask.datasets import synth
from scdask.verify import info, verify

workdir = sys.argv[1] if len(sys.argv) > 1 else "scdask-quickstart"
os.makedirs(workdir, exist_ok=True)
src = synth(os.path.join(workdir, "plate.h5ad"), 2000, n_genes=2000)
dst = scdask.convert(src, os.path.join(workdir, "plate.zarr"), overwrite=True, workers=0)
print(info(dst))
print(verify(dst, against=src))
