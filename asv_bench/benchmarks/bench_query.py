"""Opening and selective queries, against anndata backed mode, anndata's lazy reader and the floor."""

from __future__ import annotations

import dask
import numpy as np

from . import common

GENE = common.GENE


class Open(common.PlateBenchmark):

    def time_open(self, plates, n):
        import scdask

        scdask.open(plates[n]["store"])

    def peakmem_open(self, plates, n):
        import scdask

        scdask.open(plates[n]["store"])

    def time_baseline_anndata_backed_open(self, plates, n):
        import anndata

        anndata.read_h5ad(plates[n]["h5ad"], backed="r").file.close()

    def time_baseline_anndata_read_lazy_open(self, plates, n):
        import anndata

        anndata.experimental.read_lazy(plates[n]["h5ad"])


class OneGene(common.PlateBenchmark):
    """count, max and mean of one gene over every cell (the headline query)."""

    number = 1
    repeat = (1, 5, 60.0)
    timeout = 900

    def setup(self, plates, n):
        common.warm(plates[n]["store"])
        common.warm(plates[n]["unchecked"])

    def time_scdask(self, plates, n):
        import scdask

        g = scdask.open(plates[n]["store"]).X.sel(gene=GENE)
        dask.compute(g.count(), g.max(), g.mean())

    def time_scdask_without_checksums(self, plates, n):
        """The same query on a format-1 store (no checksums): what checking costs."""
        import scdask

        g = scdask.open(plates[n]["unchecked"]).X.sel(gene=GENE)
        dask.compute(g.count(), g.max(), g.mean())

    def time_floor_read_gene_bytes(self, plates, n):
        """Only the gene's stored values, read with zarr: what any reader must pay."""
        from scdask.store.reader import Store

        st = Store(plates[n]["store"])
        j = st.var().index.get_loc(GENE)
        cp = st.colptr("X", slice(None), slice(j, j + 2))
        data = st.array("X/data")
        for g in range(st.n_groups):
            data[g, int(cp[g, 0]) : int(cp[g, 1])]

    def time_baseline_anndata_backed(self, plates, n):
        import anndata

        a = anndata.read_h5ad(plates[n]["h5ad"], backed="r")
        col = a[:, GENE].X
        col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
        (col.size, col.max(), col.astype(np.float64).mean())
        a.file.close()

    def time_baseline_anndata_read_lazy(self, plates, n):
        import anndata

        a = anndata.experimental.read_lazy(plates[n]["h5ad"])
        j = int(np.flatnonzero(a.var_names == GENE)[0])
        col = a.X[:, j : j + 1].compute()
        col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
        (col.size, col.max(), col.astype(np.float64).mean())


class Selections(common.PlateBenchmark):
    """Selections that compose with reductions: many genes, a cell range, an obs filter."""

    number = 1
    repeat = (1, 5, 60.0)

    def setup(self, plates, n):
        import scdask

        common.warm(plates[n]["store"])
        self.ds = scdask.open(plates[n]["store"])
        rng = np.random.default_rng(0)
        self.genes = list(self.ds.gene.values[np.sort(rng.choice(self.ds.sizes["gene"], 100,
                                                                 replace=False))])

    def time_100_genes_mean(self, plates, n):
        self.ds.X.sel(gene=self.genes).mean("cell").compute()

    def time_cell_range_gene_means(self, plates, n):
        self.ds.X.isel(cell=slice(n // 4, n // 2)).mean("cell").compute()

    def time_drug_subset_gene_mean(self, plates, n):
        sub = self.ds.where(self.ds.drug == "DMSO_TF", drop=True)
        sub.X.sel(gene=GENE).mean().compute()


class FreshProcess(common.PlateBenchmark):
    """A script's first answer: open and the one-gene count, max and mean in a fresh
    Python process (asv's ``timeraw_``), beside a single-process h5py scan of the
    uncompressed H5AD in a fresh process: imports of each tool's top-level package are
    setup, not timed (scdask's own lazy imports inside ``open`` are timed)."""

    repeat = (3, 7, 120.0)
    timeout = 600

    def timeraw_scdask_open_one_gene(self, plates, n):
        store = plates[n]["store"]
        code = (f"g = scdask.open({store!r}).X.sel(gene={GENE!r})\n"
                "dask.compute(g.count(), g.max(), g.mean())")
        return code, "import dask, scdask"

    def timeraw_scdask_import_open_one_gene(self, plates, n):
        store = plates[n]["store"]
        return ("import dask, scdask\n"
                f"g = scdask.open({store!r}).X.sel(gene={GENE!r})\n"
                "dask.compute(g.count(), g.max(), g.mean())")

    def timeraw_scdask_imports_for_open(self, plates, n):
        """``import scdask`` and everything ``open`` needs (its lazy imports), nothing else
        (issue #19's goal: 0.7 s)."""
        return "import dask, scdask\nscdask.open"

    def timeraw_baseline_h5py_scan_one_gene(self, plates, n):
        path = plates[n]["raw"]
        code = (f"f = h5py.File({path!r}, 'r')\n"
                "names = f['var']['_index'][:].astype(str)\n"
                f"j = int(np.flatnonzero(names == {GENE!r})[0])\n"
                "x = f['X']; ind = x['indices'][:]; hit = ind == j\n"
                "vals = x['data'][:][hit].astype(np.float64)\n"
                "n = f['obs']['_index'].shape[0]\n"
                "(np.count_nonzero(vals), vals.max(initial=0), vals.sum() / n)")
        return code, "import h5py, numpy as np"
