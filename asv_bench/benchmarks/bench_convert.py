"""Conversion against the floor: a plain single-process h5py read of the same X."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from . import common


class Convert(common.PlateBenchmark):
    number = 1
    repeat = (1, 3, 120.0)
    timeout = 1800

    def setup(self, plates, n):
        self.src = plates[n]["h5ad"]
        self.tmp = tempfile.mkdtemp(dir=common.data_dir())
        self.dst = os.path.join(self.tmp, "out.zarr")

    def teardown(self, plates, n):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_convert_2_workers(self, plates, n):
        """A conversion in a session that has already used Zarr: workers from a forkserver."""
        import scdask

        scdask.convert(self.src, self.dst, workers=2, overwrite=True, progress=False)

    def time_convert_2_workers_without_checksums(self, plates, n):
        """The same conversion writing a format-1 store: what checksums cost to write."""
        import scdask

        with common.unchecked():
            scdask.convert(self.src, self.dst, workers=2, overwrite=True, progress=False)

    def track_convert_2_workers_fresh_process(self, plates, n):
        """Seconds of the ``scdask.convert`` call in a fresh process, as from the command
        line or a script: the workers are forked, with this process's imports."""
        import json
        import subprocess

        code = (f"import json, time, warnings, scdask; warnings.simplefilter('ignore'); "
                f"t = time.perf_counter(); scdask.convert({self.src!r}, {self.dst!r}, "
                f"workers=2, overwrite=True, progress=False); "
                f"print(json.dumps(time.perf_counter() - t))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout.splitlines()[-1])

    track_convert_2_workers_fresh_process.unit = "seconds"

    def peakmem_convert_in_process(self, plates, n):
        import scdask

        scdask.convert(self.src, self.dst, workers=0, overwrite=True, progress=False)

    def track_peak_rss_2_workers(self, plates, n):
        """Peak RSS of the whole process tree of a fresh 2-worker conversion."""
        from scdask.testing import peak_tree_rss

        code = (f"import scdask, warnings; warnings.simplefilter('ignore'); "
                f"scdask.convert({self.src!r}, {self.dst!r}, workers=2, progress=False)")
        rc, peak = peak_tree_rss([sys.executable, "-c", code])
        assert rc == 0
        return peak

    track_peak_rss_2_workers.unit = "bytes"

    def time_baseline_h5py_read(self, plates, n):
        common.h5py_read(self.src)
