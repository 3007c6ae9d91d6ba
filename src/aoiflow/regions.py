"""Defect regions: how an anomaly map becomes regions, and the records pre-labelling produces.

Their own module so that ``prelabel`` (which labels images), ``labelformats`` (which writes the
labels) and ``evaluate`` (whose region metrics judge them) all depend on it and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # only a type here: regions stay free of the inference code
    from aoiflow.predict import Prediction


@dataclass
class Region:
    """One defect region in original-image pixel coordinates."""

    id: int
    polygon: list[tuple[float, float]]  # simplified outline, (x, y), at least 3 points
    box: tuple[int, int, int, int]      # x0, y0, x1, y1 inclusive pixel bounds
    area: int                           # pixels
    mean_score: float
    max_score: float
    label: str = "defect"
    mask: np.ndarray | None = field(default=None, repr=False)  # bool (H, W), for metrics


@dataclass
class LabelledImage:
    """A judged image and its regions (empty when judged normal)."""

    path: Path
    width: int
    height: int
    prediction: Prediction
    regions: list[Region]


@dataclass
class RegionSettings:
    """How a map becomes regions. ``min_area`` is in model-input pixels, so it means the same
    for every original image size; ``simplify`` is the polygon tolerance in original pixels."""

    threshold: float
    min_area: float = 4.0
    opening: int = 0          # morphological opening radius (original pixels): removes thin specks
    closing: int = 0          # closing radius: joins fragments of one defect
    simplify: float = 1.0
    label: str = "defect"


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def find_regions(amap: np.ndarray, settings: RegionSettings, pixels_per_model_pixel: float = 1.0) -> list[Region]:
    """Connected regions of ``amap`` (H, W) above the threshold, largest first.

    ``pixels_per_model_pixel`` (map pixels covered by one model-input pixel) converts
    ``settings.min_area`` from model pixels to map pixels.
    """
    binary = (amap > settings.threshold).astype(np.uint8)
    if settings.opening:
        binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, _disk(settings.opening))
    if settings.closing:
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, _disk(settings.closing))
    min_pixels = max(1.0, settings.min_area * pixels_per_model_pixel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    regions: list[Region] = []
    for k in range(1, count):
        area = int(stats[k, cv2.CC_STAT_AREA])
        if area < min_pixels:
            continue
        mask = labels == k
        x, y, w, h = (int(stats[k, i]) for i in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
        values = amap[mask]
        region = Region(0, _polygon(mask, settings.simplify, (x, y, x + w - 1, y + h - 1)),
                        (x, y, x + w - 1, y + h - 1), area, float(values.mean()), float(values.max()),
                        settings.label, mask)
        regions.append(region)
    regions.sort(key=lambda r: -r.area)
    for i, r in enumerate(regions, start=1):
        r.id = i
    return regions


def _polygon(mask: np.ndarray, tolerance: float, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    """Outer contour of a region, simplified (Douglas-Peucker); a box outline for tiny regions."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if contours:
        contour = max(contours, key=cv2.contourArea)
        approx = cv2.approxPolyDP(contour, tolerance, True)[:, 0, :] if tolerance > 0 else contour[:, 0, :]
        if len(approx) >= 3 and cv2.contourArea(approx.astype(np.float32)) > 0:
            # Contour points sit on pixel centres; push them out half a pixel so the polygon covers
            # the region's pixels rather than cutting through its border pixels.
            centre = approx.mean(axis=0)
            grown = approx + 0.5 * np.sign(approx - centre)
            return [(float(px), float(py)) for px, py in grown]
    x0, y0, x1, y1 = box
    return [(x0 - 0.5, y0 - 0.5), (x1 + 0.5, y0 - 0.5), (x1 + 0.5, y1 + 0.5), (x0 - 0.5, y1 + 0.5)]
