"""Pseudobulk a plate by drug × cell line and test one drug against DMSO with pydeseq2.

    python examples/pseudobulk_deseq2.py [WORKDIR]

Counts are summed per (drug, cell line) by scdask's kernels, never densified per cell;
``scdask.to_anndata`` turns the result into the AnnData pydeseq2 takes (integer counts
in X, the groups as obs columns). Needs ``pip install pydeseq2``.
"""

import os
import sys

import scdask
from scdask.datasets import synth

workdir = sys.argv[1] if len(sys.argv) > 1 else "scdask-deseq2"
os.makedirs(workdir, exist_ok=True)
src = synth(os.path.join(workdir, "plate.h5ad"), 4000, n_genes=500, n_drugs=3, n_cell_lines=4)
ds = scdask.open(scdask.convert(src, os.path.join(workdir, "plate.zarr"), overwrite=True,
                                workers=0))

pb = scdask.to_anndata(scdask.pseudobulk(ds, ["drug", "cell_line"]))
print(pb)

from pydeseq2.dds import DeseqDataSet  # noqa: E402
from pydeseq2.ds import DeseqStats  # noqa: E402

control = next(d for d in pb.obs["drug"].cat.categories if d.startswith("DMSO"))
treated = next(d for d in pb.obs["drug"].cat.categories if d != control)
pb = pb[pb.obs["drug"].isin([control, treated])].copy()
pb.obs["drug"] = pb.obs["drug"].cat.remove_unused_categories()
pb = pb[:, pb.X.sum(0) > 0].copy()  # genes with counts somewhere
dds = DeseqDataSet(adata=pb, design="~cell_line + drug", quiet=True, n_cpus=1)
dds.deseq2()
stats = DeseqStats(dds, contrast=["drug", treated, control], quiet=True, n_cpus=1)
stats.summary()
res = stats.results_df
print(res.sort_values("padj").head())
assert len(res) == pb.n_vars and res["pvalue"].notna().any()
print("OK")
