"""Whole-matrix statistics and pseudobulk, against plain h5py scans of the H5AD (the floor)."""

from __future__ import annotations

import dask

from . import common


class Scans(common.PlateBenchmark):
    number = 1
    repeat = (1, 3, 120.0)
    timeout = 1800

    def setup_cache(self):
        plates = common.all_plates()
        for p in plates.values():  # page cache warm for the floors
            common.h5py_read(p["raw"])
        return plates

    def setup(self, plates, n):
        import scdask

        common.warm(plates[n]["store"])
        self.ds = scdask.open(plates[n]["store"])
        self.unchecked = scdask.open(plates[n]["unchecked"])

    def time_gene_mean_var(self, plates, n):
        dask.compute(self.ds.X.mean("cell"), self.ds.X.var("cell"))

    def time_gene_mean_var_without_checksums(self, plates, n):
        """The same scan of a format-1 store (no checksums): what checking costs."""
        dask.compute(self.unchecked.X.mean("cell"), self.unchecked.X.var("cell"))

    def time_cell_totals(self, plates, n):
        self.ds.X.sum("gene").compute()

    def time_pseudobulk_drug_cell_line_2000_genes(self, plates, n):
        import scdask

        scdask.pseudobulk(self.ds.isel(gene=slice(0, 2000)), ["drug", "cell_line"]).compute()

    def time_baseline_h5py_gene_mean_var_gzip(self, plates, n):
        common.h5py_gene_mean_var(plates[n]["h5ad"])

    def time_baseline_h5py_gene_mean_var_uncompressed(self, plates, n):
        common.h5py_gene_mean_var(plates[n]["raw"])

    def time_baseline_h5py_cell_totals_uncompressed(self, plates, n):
        common.h5py_cell_totals(plates[n]["raw"])

    def time_baseline_h5py_pseudobulk_2000_genes_uncompressed(self, plates, n):
        common.h5py_pseudobulk(plates[n]["raw"], ["drug", "cell_line"], 2000)
