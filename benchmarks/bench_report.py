"""The report command as a whole on the embedded default: ``smoke`` (said to take <= 20 s) and ``quick``.

Each run is a fresh process writing to a new folder (the command's real cost: imports, JAX
compilation, every stage and figure); the data set is made and cached in ``setup``.
"""

import os
import subprocess
import sys
import tempfile

from . import common


class Report:
    params = [[common.backend()], ["smoke", "quick"]]
    param_names = ["backend", "profile"]
    timeout = 1200
    number = 1
    repeat = 1

    def setup(self, backend, profile):
        common.default_dataset()  # make the embedded set (once; cached) outside the timing

    def time_report(self, backend, profile):
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([sys.executable, "-m", "emnist_jax.report", "--profile", profile,
                            "--out", os.path.join(out, "r")], check=True, stdout=subprocess.DEVNULL)
