"""Localisation quality: PRO, region-level and box-level matching, and a labelling-effort proxy.

Written here: PRO and region matching exist only inside larger frameworks (anomalib, MVTec's
evaluation scripts) that would be heavy dependencies for a few dozen lines of NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment


def components(mask: np.ndarray) -> list[np.ndarray]:
    """Connected ground-truth regions of a bool mask (8-connectivity), each as a bool mask."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == k for k in range(1, count)]


def pro_score(maps: list[np.ndarray], masks: list[np.ndarray], max_fpr: float = 0.3, steps: int = 300) -> float | None:
    """Area under the per-region-overlap curve up to ``max_fpr``, divided by ``max_fpr`` (1 = perfect).

    For each threshold the PRO is the mean, over all ground-truth regions, of the fraction of the
    region above the threshold; the FPR is the fraction of all defect-free pixels above it.
    """
    negatives = np.sort(np.concatenate([m[~k].ravel() for m, k in zip(maps, masks)]))
    regions = [np.sort(m[r]) for m, k in zip(maps, masks) for r in components(k)]
    if not regions or negatives.size == 0:
        return None
    fprs = np.linspace(0.0, max_fpr, steps + 1)
    # Threshold for each FPR: the matching upper quantile of defect-free pixels.
    idx = np.clip(np.ceil((1.0 - fprs) * negatives.size).astype(int) - 1, 0, negatives.size - 1)
    thresholds = negatives[idx]
    fpr = 1.0 - np.searchsorted(negatives, thresholds, side="right") / negatives.size
    overlap = np.mean([1.0 - np.searchsorted(r, thresholds, side="right") / r.size for r in regions], axis=0)
    order = np.argsort(fpr)
    grid = np.linspace(0.0, max_fpr, 1001)
    return float(np.trapezoid(np.interp(grid, fpr[order], overlap[order]), grid) / max_fpr)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def box_iou(a: tuple, b: tuple) -> float:
    """IoU of inclusive pixel boxes (x0, y0, x1, y1)."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def match(ious: np.ndarray, min_iou: float) -> list[tuple[int, int, float]]:
    """One-to-one matching (predicted i, ground truth j) maximising total IoU, pairs with IoU >= min_iou."""
    if ious.size == 0:
        return []
    rows, cols = linear_sum_assignment(-ious)
    return [(int(i), int(j), float(ious[i, j])) for i, j in zip(rows, cols) if ious[i, j] >= min_iou]


@dataclass
class MatchCounts:
    predicted: int = 0
    truth: int = 0
    matched: int = 0

    def add(self, predicted: int, truth: int, matched: int) -> None:
        self.predicted += predicted
        self.truth += truth
        self.matched += matched

    def summary(self) -> dict[str, float | int | None]:
        p = self.matched / self.predicted if self.predicted else None
        r = self.matched / self.truth if self.truth else None
        f1 = 2 * p * r / (p + r) if p and r else (0.0 if p is not None and r is not None else None)
        return {"precision": p, "recall": r, "f1": f1, "predicted": self.predicted, "truth": self.truth,
                "matched": self.matched}


def edits_needed(ious: np.ndarray) -> int:
    """Edits to turn predictions into the truth: delete unmatched predictions, add missed regions,
    adjust matches with IoU < 0.5 (a match at IoU >= 0.5 is only confirmed). Matching at IoU >= 0.1."""
    n_pred, n_truth = ious.shape
    pairs = match(ious, 0.1)
    adjust = sum(iou < 0.5 for _, _, iou in pairs)
    return (n_pred - len(pairs)) + (n_truth - len(pairs)) + adjust


def read_boxes(path) -> list[tuple[int, int, int, int]]:
    """Boxes ``x1 y1 x2 y2 [type]`` one per line, space- or comma-separated (DeepPCB style)."""
    boxes = []
    for line in open(path).read().splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) >= 4:
            x0, y0, x1, y1 = (int(float(v)) for v in parts[:4])
            boxes.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    return boxes
