"""The records pre-labelling produces: defect regions and the judged image that holds them.

Their own module so that ``prelabel`` (which finds regions) and ``labelformats`` (which writes
them) both depend on it and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
