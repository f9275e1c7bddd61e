"""Loading the official formats (.mat and gzip IDX) through ``emnist_jax.data.load``.

Nothing is left behind: asv runs ``setup_cache`` and the benchmarks in a temporary folder of
its own and deletes it afterwards, so the IDX files are written there (a ``tempfile.mkdtemp``
folder leaked per run before), and so is the array cache the benchmarks fill (before,
entries keyed by that temporary folder piled up in the user's cache).
"""

import gzip
import os
import struct

import numpy as np

from . import common


class Load:
    params = ["mat", "idx"]
    param_names = ["format"]
    timeout = 300

    def setup_cache(self):
        from emnist_jax.data import default_file, file_rows

        ds = common.default_dataset()
        folder = os.path.abspath("idx-byclass")  # in asv's temporary working folder
        os.makedirs(folder, exist_ok=True)
        for part in ("train", "test"):
            images, labels = getattr(ds, f"{part}_images"), getattr(ds, f"{part}_labels")
            with gzip.open(os.path.join(folder, f"emnist-byclass-{part}-images-idx3-ubyte.gz"), "wb", 1) as f:
                f.write(struct.pack(">iiii", 2051, len(images), 28, 28) + file_rows(images).tobytes())
            with gzip.open(os.path.join(folder, f"emnist-byclass-{part}-labels-idx1-ubyte.gz"), "wb", 1) as f:
                f.write(struct.pack(">ii", 2049, len(labels)) + labels.astype(np.uint8).tobytes())
        with open(os.path.join(folder, "emnist-byclass-mapping.txt"), "w") as f:
            f.write("".join(f"{i} {ord(c)}\r\n" for i, c in enumerate(ds.classes)))
        return {"mat": str(default_file()), "idx": folder}

    def setup(self, paths, fmt):
        from emnist_jax.data import load

        self._user_cache = os.environ.get("EMNIST_JAX_CACHE")
        os.environ["EMNIST_JAX_CACHE"] = os.path.abspath("array-cache")  # asv deletes it with the folder
        load(paths[fmt], "byclass")  # fills the array cache that time_load_from_cache reads

    def teardown(self, paths, fmt):
        if self._user_cache is None:
            os.environ.pop("EMNIST_JAX_CACHE", None)
        else:
            os.environ["EMNIST_JAX_CACHE"] = self._user_cache

    def time_load(self, paths, fmt):
        from emnist_jax.data import load

        load(paths[fmt], "byclass", use_cache=False)

    def peakmem_load(self, paths, fmt):
        from emnist_jax.data import load

        load(paths[fmt], "byclass", use_cache=False)

    def time_load_from_cache(self, paths, fmt):
        from emnist_jax.data import load

        load(paths[fmt], "byclass")
