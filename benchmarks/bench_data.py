"""Loading the official formats (.mat and gzip IDX) through ``emnist_jax.data.load``."""

import gzip
import os
import struct
import tempfile

import numpy as np

from . import common


class Load:
    params = ["mat", "idx"]
    param_names = ["format"]
    timeout = 300

    def setup_cache(self):
        from emnist_jax.data import default_file, file_rows

        ds = common.default_dataset()
        folder = tempfile.mkdtemp(prefix="emnist-bench-")
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

        load(paths[fmt], "byclass")  # fills the array cache that time_load_from_cache reads

    def time_load(self, paths, fmt):
        from emnist_jax.data import load

        load(paths[fmt], "byclass", use_cache=False)

    def peakmem_load(self, paths, fmt):
        from emnist_jax.data import load

        load(paths[fmt], "byclass", use_cache=False)

    def time_load_from_cache(self, paths, fmt):
        from emnist_jax.data import load

        load(paths[fmt], "byclass")
