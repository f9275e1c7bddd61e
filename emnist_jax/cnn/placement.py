"""Where the arrays live: a one-axis mesh over the devices, and host arrays placed on it.

The mesh spans every device of every process of a multi-process run; one device is the same code.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from emnist_jax.data.formats import ALIGNMENT, aligned_empty


def make_mesh(devices: list | None = None) -> Mesh:
    """A one-axis ("data") mesh over ``devices``, by default every device of every process."""
    return Mesh(np.asarray(devices or jax.devices()), ("data",))


def platform_of(mesh: Mesh) -> str:
    """"cpu", "gpu" or "tpu": the kind of device the mesh holds (CUDA and ROCm devices say "gpu")."""
    return mesh.devices.flat[0].platform


def replicate(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array copied to every device of the mesh (every process passes the whole array)."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P()), np.asarray(array))


def place_images(images: np.ndarray, mesh: Mesh) -> jax.Array:
    """``images`` on every device of the mesh; on a CPU, the host array itself when it can be.

    XLA's CPU client uses a C-ordered host buffer that starts at a multiple of 64 bytes as the
    device array without copying it, and :func:`emnist_jax.data.load` gives such arrays: the
    training images then take no second copy (547 MB at ByClass size; a gathered copy of the
    training rows held 0.34 GiB more). The caller must not change ``images`` while the result is
    in use. Elsewhere the devices get their copy of the whole array as they would anyway.
    """
    if platform_of(mesh) == "cpu" and not (images.flags.c_contiguous and images.ctypes.data % ALIGNMENT == 0):
        aligned = aligned_empty(images.shape, images.dtype)
        aligned[...] = images
        images = aligned
    return replicate(images, mesh)


def replicate_tree(tree: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda leaf: replicate(np.asarray(leaf), mesh), tree)
