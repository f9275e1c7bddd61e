"""The official EMNIST file formats, one module each; their names, gathered for the loader.

- :mod:`~emnist_jax.data.errors`: :class:`EmnistDataError` and the words of its one-line messages;
- :mod:`~emnist_jax.data.layout`: the 784-byte transposed rows, uint8 images, aligned arrays;
- :mod:`~emnist_jax.data.mapping`: a split's label coding (``emnist-<split>-mapping.txt``);
- :mod:`~emnist_jax.data.idx`: IDX files, plain or gzip;
- :mod:`~emnist_jax.data.matlab`: ``emnist-<split>.mat`` files, read and written;
- :mod:`~emnist_jax.data.archives`: the members of ``matlab.zip`` and ``gzip.zip``.
"""

from __future__ import annotations

from emnist_jax.data.archives import zip_members
from emnist_jax.data.errors import EmnistDataError, describe_values, os_error_line, os_reason, reading
from emnist_jax.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, MAX_DEFLATE_RATIO, open_idx, read_idx
from emnist_jax.data.layout import (ALIGNMENT, PIXELS, SIDE, RawSplit, aligned_empty, check_images, check_labels,
                                    check_pair, file_rows, upright)
from emnist_jax.data.mapping import (MAX_CODE, MAX_MAPPING_BYTES, Mapping, mapping_from_rows, read_mapping_file,
                                     read_mapping_text)
from emnist_jax.data.matlab import mat_bytes, mat_contents, read_mat, save_mat, write_mat

__all__ = ["ALIGNMENT", "EmnistDataError", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "MAX_CODE", "MAX_DEFLATE_RATIO",
           "MAX_MAPPING_BYTES", "Mapping", "PIXELS", "RawSplit", "SIDE", "aligned_empty", "check_images",
           "check_labels", "check_pair", "describe_values", "file_rows", "mapping_from_rows", "mat_bytes",
           "mat_contents", "open_idx", "os_error_line", "os_reason", "read_idx", "read_mapping_file",
           "read_mapping_text", "read_mat", "reading", "save_mat", "upright", "write_mat", "zip_members"]
