"""A simulated human review of pre-labels against ground truth, to benchmark labelling effort.

Regions are matched one-to-one as ``localisation.edits_needed`` does (maximum total IoU, pairs at
IoU >= 0.1), so the edit counts agree with it; this adds the reviewed mask a person would leave
behind, and which edit each region took.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from aoiflow.localisation import match

MATCH_IOU = 0.1  # a prediction overlapping a truth region this much is "that region", as in edits_needed


@dataclass
class ReviewEdits:
    """Edits of one review (or a sum of reviews): predictions deleted, regions drawn from
    scratch, matches redrawn, matches confirmed as they are (no edit)."""

    deleted: int = 0
    added: int = 0
    fixed: int = 0
    accepted: int = 0

    @property
    def total(self) -> int:
        return self.deleted + self.added + self.fixed

    def __add__(self, other: ReviewEdits) -> ReviewEdits:
        return ReviewEdits(self.deleted + other.deleted, self.added + other.added,
                           self.fixed + other.fixed, self.accepted + other.accepted)


def _check(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {mask.shape}")
    return mask.astype(np.uint8) if mask.dtype == bool else mask


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected regions (8-connectivity) of each class of a class-index mask (H, W), 0 = background.

    Returns the region labels (H, W) int32, 0 = none, k = region k, and each region's class
    (count,): touching regions of two kinds stay two regions, as a person would draw them."""
    mask = _check(mask, "mask")
    labels = np.zeros(mask.shape, np.int32)
    classes: list[int] = []
    for c in np.unique(mask[mask > 0]):
        count, lab = cv2.connectedComponents((mask == c).astype(np.uint8), connectivity=8)
        labels[lab > 0] = lab[lab > 0] + len(classes)
        classes += [int(c)] * (count - 1)
    return labels, np.array(classes, np.int64)


def region_ious(pred: np.ndarray, n_pred: int, truth: np.ndarray, n_truth: int) -> np.ndarray:
    """IoU of every predicted region with every truth region, (n_pred, n_truth), from two label
    images (H, W) in one joint histogram rather than a mask per pair."""
    joint = np.bincount(pred.ravel().astype(np.int64) * (n_truth + 1) + truth.ravel(),
                        minlength=(n_pred + 1) * (n_truth + 1)).reshape(n_pred + 1, n_truth + 1)
    inter = joint[1:, 1:].astype(np.float64)
    union = joint[1:].sum(1)[:, None] + joint[:, 1:].sum(0)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def simulate_review(pre_mask: np.ndarray, truth_mask: np.ndarray,
                    iou_ok: float = 0.5) -> tuple[np.ndarray, ReviewEdits]:
    """What a reviewer does to a pre-label (H, W) given the truth (H, W) class-index mask.

    A predicted region matching no truth region is deleted; a truth region no prediction matches
    is drawn from scratch; a match with IoU < ``iou_ok`` is redrawn as the truth region; a match
    with IoU >= ``iou_ok`` is confirmed, keeping the pre-label's (slightly loose) shape. Kept and
    drawn regions take the truth class: the reviewer names the kind. ``pre_mask`` may be bool or
    class indices (its classes are ignored beyond splitting regions). Returns the reviewed uint8
    (H, W) class-index mask and the edits."""
    pre, truth = _check(pre_mask, "pre_mask"), _check(truth_mask, "truth_mask")
    if pre.shape != truth.shape:
        raise ValueError(f"pre_mask {pre.shape} and truth_mask {truth.shape} must have the same (H, W)")
    pred_lab, pred_cls = label_regions(pre)
    truth_lab, truth_cls = label_regions(truth)
    pairs = match(region_ious(pred_lab, len(pred_cls), truth_lab, len(truth_cls)), MATCH_IOU)
    keep = np.zeros(len(pred_cls) + 1, np.uint8)   # predicted region -> class it keeps (0: deleted)
    draw = np.zeros(len(truth_cls) + 1, np.uint8)  # truth region -> class when drawn (0: not drawn)
    draw[1:] = truth_cls                           # unmatched truth regions are drawn ...
    fixed = accepted = 0
    for i, j, iou in pairs:
        if iou >= iou_ok:
            keep[i + 1], draw[j + 1] = truth_cls[j], 0  # ... unless a confirmed prediction covers them
            accepted += 1
        else:
            fixed += 1
    drawn = draw[truth_lab]
    out = np.where(drawn > 0, drawn, keep[pred_lab]).astype(np.uint8)
    edits = ReviewEdits(deleted=len(pred_cls) - len(pairs), added=len(truth_cls) - len(pairs),
                        fixed=fixed, accepted=accepted)
    return out, edits


def scratch_edits(truth_mask: np.ndarray) -> int:
    """Edits to label an image from nothing: one region drawn per truth region (per class)."""
    return len(label_regions(truth_mask)[1])
