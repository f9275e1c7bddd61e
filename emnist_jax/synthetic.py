"""The embedded default data set: EMNIST-like characters rendered from matplotlib's fonts.

Every command works on a fresh machine without the 535 MB download because of this module.
It renders the 62 byclass characters from the fonts matplotlib ships (sans, mono, serif,
STIX and Computer Modern; regular, bold and slanted), normalises each glyph the way the
EMNIST conversion did (crop to the ink, centre in a square frame keeping the aspect ratio,
2-pixel border), then draws every sample through a random affine map, stroke-width change,
blur, contrast change and noise. Because EMNIST's square framing throws away a glyph's size,
`o`/`O`/`0`, `s`/`S`, `z`/`Z`, `l`/`I`/`1` ... become as confusable as in the real data.

The result is written in the official MATLAB layout (``emnist_jax.data.write_mat``) and read
back through ``emnist_jax.data.load``, so the default run exercises the real loader. Numbers
measured on it are not comparable with the real EMNIST and every output says "synthetic".

    >>> from emnist_jax.synthetic import generate
    >>> train_x, train_y, test_x, test_y = generate(n_train=620, n_test=62, seed=0)

Measured: 60,000 + 12,000 images in about 16 s on 2 cores (``python -m emnist_jax.data info``
on a fresh cache).
"""

from __future__ import annotations

import functools
import os
import string
from collections.abc import Callable

import matplotlib
import numpy as np
from matplotlib import ft2font
from scipy import ndimage

#: byclass label order: 0-9, A-Z, a-z.
CHARACTERS = string.digits + string.ascii_uppercase + string.ascii_lowercase

#: Bump when the generator's output changes, so cached files are regenerated.
GENERATOR_VERSION = 1

FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf", "cmb10.ttf", "cmmi10.ttf",
)

_TEMPLATE = 56  # template side in pixels: twice the output, so sampling never aliases badly
_SIDE = 28


def _render_glyph(font: ft2font.FT2Font, char: str) -> np.ndarray:
    """One glyph framed as EMNIST frames it: ink centred in a square, 2/28 border each side."""
    font.set_text(char)
    font.draw_glyphs_to_bitmap(antialiased=True)
    ink = np.asarray(font.get_image(), dtype=np.float32) / 255.0
    rows, cols = np.nonzero(ink > 0.05)
    ink = ink[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    height, width = ink.shape
    side = max(height, width)
    square = np.zeros((side, side), np.float32)
    square[(side - height) // 2:(side - height) // 2 + height,
           (side - width) // 2:(side - width) // 2 + width] = ink
    box = round(_TEMPLATE * 24 / _SIDE)
    glyph = ndimage.zoom(square, box / side, order=1, grid_mode=True, mode="grid-constant")
    out = np.zeros((_TEMPLATE, _TEMPLATE), np.float32)
    offset = (_TEMPLATE - glyph.shape[0]) // 2
    out[offset:offset + glyph.shape[0], offset:offset + glyph.shape[1]] = glyph
    return np.clip(out, 0.0, 1.0)


@functools.lru_cache(maxsize=1)
def glyph_templates() -> np.ndarray:
    """(fonts x strokes, 62, 56, 56) float32 templates in [0, 1]: thin, regular and bold strokes."""
    font_dir = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    regular = []
    for file_name in FONT_FILES:
        font = ft2font.FT2Font(os.path.join(font_dir, file_name))
        font.set_size(64, 72)
        regular.append([_render_glyph(font, c) for c in CHARACTERS])
    regular = np.asarray(regular, np.float32)
    footprint = np.ones((1, 1, 3, 3), bool)
    thin = ndimage.grey_erosion(regular, footprint=footprint)
    bold = ndimage.grey_dilation(regular, footprint=footprint)
    return np.concatenate([thin, regular, bold])


def _bilinear(templates: np.ndarray, which: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample templates[which[n]] at (rows[n], cols[n]) with zero outside; all samples at once."""
    r0 = np.floor(rows).astype(np.int32)
    c0 = np.floor(cols).astype(np.int32)
    fr = (rows - r0).astype(np.float32)
    fc = (cols - c0).astype(np.float32)
    chosen = templates.reshape(-1, _TEMPLATE * _TEMPLATE)[which]
    out = np.zeros(rows.shape, np.float32)
    for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                           (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        r, c = r0 + dr, c0 + dc
        inside = (r >= 0) & (r < _TEMPLATE) & (c >= 0) & (c < _TEMPLATE)
        index = np.where(inside, r * _TEMPLATE + c, 0)
        out += np.where(inside, np.take_along_axis(chosen, index.reshape(len(which), -1), 1)
                        .reshape(rows.shape), 0.0) * weight
    return out


def _blur(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur with one sigma per image (5-tap kernels, vectorised)."""
    taps = np.arange(-2, 3, dtype=np.float32)
    kernel = np.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    kernel /= kernel.sum(axis=1, keepdims=True)
    padded = np.pad(images, ((0, 0), (2, 2), (0, 0)))
    images = sum(kernel[:, k, None, None] * padded[:, k:k + _SIDE, :] for k in range(5))
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2)))
    return sum(kernel[:, k, None, None] * padded[:, :, k:k + _SIDE] for k in range(5))


def render(labels: np.ndarray, rng: np.random.Generator, chunk: int = 8192,
           progress: Callable[[int], object] | None = None) -> np.ndarray:
    """Draw one distorted (28, 28) uint8 upright image per label (white ink on black).

    ``progress(n)`` is called after each chunk with the number of images it drew (for a bar).
    """
    templates = glyph_templates()
    n_styles = templates.shape[0]
    n = len(labels)
    # Draw every random number up front so the output does not depend on `chunk`.
    style = rng.integers(0, n_styles, n)
    angle = np.deg2rad(rng.normal(0.0, 8.0, n))
    shear = rng.normal(0.0, 0.15, n)
    scale_r = rng.uniform(0.8, 1.08, n)
    scale_c = rng.uniform(0.8, 1.08, n)
    shift = rng.normal(0.0, 1.0, (n, 2))
    sigma = rng.uniform(0.5, 1.1, n)
    gain = rng.uniform(0.75, 1.0, n)
    gamma = rng.uniform(0.6, 1.4, n)
    noise = rng.normal(0.0, 0.06, (n, _SIDE, _SIDE)).astype(np.float32)

    centre = (_SIDE - 1) / 2
    grid_r, grid_c = np.meshgrid(np.arange(_SIDE) - centre, np.arange(_SIDE) - centre, indexing="ij")
    out = np.empty((n, _SIDE, _SIDE), np.uint8)
    for start in range(0, n, chunk):
        s = slice(start, start + chunk)
        cos, sin = np.cos(angle[s])[:, None, None], np.sin(angle[s])[:, None, None]
        y = grid_r[None] - shift[s, 0, None, None]
        x = grid_c[None] - shift[s, 1, None, None]
        # Inverse map: output pixel -> template pixel (rotate, shear, then scale each axis).
        yr, xr = cos * y - sin * x, sin * y + cos * x
        xr = xr - shear[s, None, None] * yr
        zoom = _TEMPLATE / _SIDE
        rows = yr / scale_r[s, None, None] * zoom + (_TEMPLATE - 1) / 2
        cols = xr / scale_c[s, None, None] * zoom + (_TEMPLATE - 1) / 2
        which = style[s] * len(CHARACTERS) + labels[s]
        img = _bilinear(templates.reshape(-1, _TEMPLATE, _TEMPLATE), which, rows, cols)
        img = _blur(img, sigma[s])
        img = np.clip(img, 0.0, 1.0) ** gamma[s, None, None] * gain[s, None, None]
        # Noise on the strokes only: EMNIST's background is exactly zero.
        img = np.where(img > 0.08, img + noise[s], 0.0)
        out[s] = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
        if progress is not None:
            progress(len(which))
    return out


def balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """n labels, every class equally often (counts differ by at most one), shuffled."""
    labels = np.arange(n) % n_classes
    return rng.permutation(labels).astype(np.int64)


def generate(n_train: int = 60_000, n_test: int = 12_000, seed: int = 0,
             progress: Callable[[int], object] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Upright uint8 images and byclass labels: (train_images, train_labels, test_images, test_labels).

    ``progress(n)`` is called as images are drawn (n at a time, n_train + n_test in all).
    """
    if n_train < len(CHARACTERS) or n_test < len(CHARACTERS):
        raise ValueError(f"n_train and n_test must be at least {len(CHARACTERS)} (one per class), "
                         f"got {n_train} and {n_test}")
    rng = np.random.default_rng(seed)
    train_labels = balanced_labels(n_train, len(CHARACTERS), rng)
    test_labels = balanced_labels(n_test, len(CHARACTERS), rng)
    return (render(train_labels, rng, progress=progress), train_labels,
            render(test_labels, rng, progress=progress), test_labels)
