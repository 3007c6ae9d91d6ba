"""Small generated surface images in MVTec layout, for fast tests that need known defects
(the demo uses the LED frames of ``ledsynth``).

A brushed-metal-like surface (smooth illumination gradient, directional grain, sensor noise) with
two defect kinds and their pixel masks: ``scratch`` (a thin dark or bright line) and ``stain``
(a soft low-contrast blob). Deterministic for a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from aoiflow.fileio import atomic_write

DEFECT_KINDS = ("scratch", "stain")


def _blur_rows(a: np.ndarray, k: int) -> np.ndarray:
    kernel = np.ones(k) / k
    return np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, a)


def normal_surface(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A defect-free surface, float (size, size) in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    base = 0.55 + gx * (xx - 0.5) + gy * (yy - 0.5)
    grain = _blur_rows(rng.normal(0, 1, (size, size)), 15) * 0.12
    noise = rng.normal(0, 0.015, (size, size))
    return np.clip(base + grain + noise, 0, 1)


def _scratch_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    angle = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    length = rng.uniform(0.25, 0.5) * size
    width = rng.uniform(1.0, 2.0)
    dx, dy = np.cos(angle), np.sin(angle)
    along = (xx - cx) * dx + (yy - cy) * dy
    across = -(xx - cx) * dy + (yy - cy) * dx
    return (np.abs(across) <= width) & (np.abs(along) <= length / 2)


def _stain_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    cx, cy = rng.uniform(0.25, 0.75, 2) * size
    rx, ry = rng.uniform(0.06, 0.14, 2) * size
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


def add_defect(surface: np.ndarray, kind: str, rng: np.random.Generator, strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Return (image with defect, bool mask)."""
    size = surface.shape[0]
    if kind == "scratch":
        mask = _scratch_mask(rng, size)
        delta = rng.choice([-1, 1]) * 0.3 * strength
    elif kind == "stain":
        mask = _stain_mask(rng, size)
        delta = rng.choice([-1, 1]) * 0.15 * strength
    else:
        raise ValueError(f"unknown defect kind {kind!r}; choose from {DEFECT_KINDS}")
    out = surface.copy()
    out[mask] += delta
    return np.clip(out, 0, 1), mask


def _save_png(arr: np.ndarray, path: Path) -> None:
    img = Image.fromarray((arr * 255).round().astype(np.uint8))
    atomic_write(path, lambda p: img.save(p, format="PNG"))


def make_surface_dataset(root: str | Path, n_train: int = 80, n_test_good: int = 20, n_per_defect: int = 15,
                         size: int = 128, seed: int = 0, strength: float = 1.0) -> Path:
    """Write a small MVTec-layout set: train/good, test/good, test/<kind>, ground_truth/<kind>."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        _save_png(normal_surface(rng, size), root / "train" / "good" / f"{i:04d}.png")
    for i in range(n_test_good):
        _save_png(normal_surface(rng, size), root / "test" / "good" / f"{i:04d}.png")
    for kind in DEFECT_KINDS:
        for i in range(n_per_defect):
            img, mask = add_defect(normal_surface(rng, size), kind, rng, strength)
            _save_png(img, root / "test" / kind / f"{i:04d}.png")
            _save_png(mask.astype(float), root / "ground_truth" / kind / f"{i:04d}.png")
    return root
