"""One heat overlay for anomaly maps, shared by ``predict`` map PNGs and ``prelabel`` review sheets.

overlay = BASE_WEIGHT * image + HEAT_WEIGHT * colormap(clip(map / vmax, 0, 1)), all in [0, 1].
Only NumPy at import time; matplotlib's colormaps are loaded on first use.
"""

from __future__ import annotations

import numpy as np

COLORMAP = "inferno"
BASE_WEIGHT = 0.55  # the image stays readable under the heat
HEAT_WEIGHT = 0.45


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 1|3) or (H, W) float image -> (H, W, 3)."""
    if image.ndim == 2:
        image = image[..., None]
    return image if image.shape[2] == 3 else np.repeat(image, 3, axis=2)


def heat_colours(amap: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) map -> (H, W, 3) float32 colours in [0, 1]: 0 is the colormap's bottom, ``vmax`` and
    above its top. Indexes the colormap's 256-colour table directly (as matplotlib itself bins
    values), so a large map costs 12 bytes a pixel, not matplotlib's 32 of float64 RGBA."""
    index = np.minimum((np.clip(amap / max(vmax, 1e-8), 0, 1) * 256).astype(np.int32), 255)
    return _table()[index]


def _table() -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps[COLORMAP]
    return cmap(np.arange(cmap.N))[:, :3].astype(np.float32)


def heat_overlay(image: np.ndarray, amap: np.ndarray, vmax: float) -> np.ndarray:
    """The image dimmed with the map's heat blended over it, (H, W, 3) float in [0, 1]."""
    return BASE_WEIGHT * as_rgb(image) + HEAT_WEIGHT * heat_colours(amap, vmax)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8, rounded to the nearest level."""
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def side_by_side(image: np.ndarray, amap: np.ndarray, vmax: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) pair: the plain image and its heat overlay."""
    return to_uint8(as_rgb(image)), to_uint8(heat_overlay(image, amap, vmax))
