"""EMNIST data: every official format, all six splits, upright images, the embedded default.

    >>> from emnist_jax.data import load
    >>> ds = load()                        # the embedded synthetic default (byclass coding)
    >>> ds = load("emnist-byclass.mat")    # or a folder of IDX files, matlab.zip, gzip.zip

Command line: ``python -m emnist_jax.data info`` and ``python -m emnist_jax.data download``.
"""

from emnist_jax.data.cache import CacheWarning
from emnist_jax.data.download import download
from emnist_jax.data.formats import EmnistDataError, file_rows, upright, write_mat
from emnist_jax.data.loading import Dataset, default_file, load
from emnist_jax.data.official import SPLITS

__all__ = ["CacheWarning", "Dataset", "EmnistDataError", "SPLITS", "default_file", "download", "file_rows", "load",
           "upright", "write_mat"]
