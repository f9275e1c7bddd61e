"""The report's quick profile on the embedded default, as a whole."""

import os
import subprocess
import sys
import tempfile

from . import common


class QuickReport:
    params = [common.backend()]
    param_names = ["backend"]
    timeout = 1200
    number = 1
    repeat = 1

    def setup(self, backend):
        common.default_dataset()  # make the embedded set (once; cached) outside the timing

    def time_report_quick(self, backend):
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([sys.executable, "-m", "emnist_jax.report", "--out", os.path.join(out, "r")],
                           check=True, stdout=subprocess.DEVNULL)
