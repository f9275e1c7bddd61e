"""Write a ByClass-sized file in the official ``.mat`` layout by tiling the embedded default.

    python benchmarks/make_byclass_sized.py emnist-tiled/emnist-byclass.mat

697,932 training and 116,323 test images (ByClass's counts, EMNIST_FILES.md), so the full
profile can be timed at real scale without the real download. The images are the synthetic
default's, repeated: accuracies from it mean nothing; times and memory do. The file keeps the
"synthetic" flag, so every output made from it says so.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from emnist_jax import synthetic
from emnist_jax.data import load, write_mat

BYCLASS = (697_932, 116_323)


def tile(array: np.ndarray, n: int) -> np.ndarray:
    return np.resize(array, (n, *array.shape[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="output .mat path (name it emnist-byclass.mat so the split is inferred)")
    args = parser.parse_args()
    ds = load("default")
    mapping = np.array([[label, ord(c)] for label, c in enumerate(synthetic.CHARACTERS)])
    os.makedirs(os.path.dirname(os.path.abspath(args.path)), exist_ok=True)
    write_mat(args.path, tile(ds.train_images, BYCLASS[0]), tile(ds.train_labels, BYCLASS[0]),
              tile(ds.test_images, BYCLASS[1]), tile(ds.test_labels, BYCLASS[1]), mapping, synthetic=True)
    print(f"wrote {args.path}: {BYCLASS[0]:,} train / {BYCLASS[1]:,} test images (embedded default, tiled)")


if __name__ == "__main__":
    main()
