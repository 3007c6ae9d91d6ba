"""Metrics of the supervised defect-kind model, on plain arrays (known-answer testable).

Class maps are (H, W) integer arrays, 0 = background, k = ``class_names[k - 1]``. Pixel metrics
accumulate one confusion matrix over all images (rows: truth, columns: prediction), so a class's
IoU is TP / (TP + FP + FN) over the whole set, not a mean of per-image IoUs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aoiflow.localisation import match
from aoiflow.supervised.review import label_regions, region_ious

GOOD = "good"  # the kind of an image with no defect (MVTec's name for its normal folder)


def pixel_confusion(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 pixel counts, [truth, prediction]; ``n_classes`` counts the
    background. Maps (H, W) of class indices below ``n_classes``."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must have the same shape")
    if pred.size and (pred.max() >= n_classes or truth.max() >= n_classes or min(pred.min(), truth.min()) < 0):
        raise ValueError(f"class indices must be 0..{n_classes - 1}")
    idx = truth.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def class_scores(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, dict]:
    """Per class (``"background"`` first, then ``class_names``): IoU, F1 (Dice), precision, recall
    and the class's true pixel count. A score is None where it is 0 / 0 (a class neither present
    nor predicted)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    names = ["background", *class_names]
    if confusion.shape != (len(names), len(names)):
        raise ValueError(f"confusion {confusion.shape} does not match {len(names)} classes (background included)")
    out = {}
    for k, name in enumerate(names):
        tp = confusion[k, k]
        fn = confusion[k].sum() - tp
        fp = confusion[:, k].sum() - tp
        out[name] = {"iou": _ratio(tp, tp + fp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
                     "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "pixels": int(tp + fn)}
    return out


def mean_score(scores: dict[str, dict], key: str = "iou", background: bool = False) -> float | None:
    """Mean of ``key`` over the classes where it is defined; without the background by default
    (its IoU is near 1 on any set and would hide a missed defect kind)."""
    values = [v[key] for name, v in scores.items() if (background or name != "background") and v[key] is not None]
    return float(np.mean(values)) if values else None


def region_counts(pred: np.ndarray, truth: np.ndarray, n_classes: int, min_iou: float = 0.5) -> np.ndarray:
    """Region matching of one image: (n_classes, 3) int64, per class [predicted, truth, matched].

    Regions are the connected areas (8-connectivity) of each class of each map; a predicted region
    matches a truth region of the same class with IoU >= ``min_iou``, one to one (maximum total
    IoU, as ``localisation.match``). Row 0 (background) stays zero."""
    pred_lab, pred_cls = label_regions(pred)
    truth_lab, truth_cls = label_regions(truth)
    ious = region_ious(pred_lab, len(pred_cls), truth_lab, len(truth_cls))
    ious[pred_cls[:, None] != truth_cls[None, :]] = 0.0
    out = np.zeros((n_classes, 3), np.int64)
    np.add.at(out[:, 0], pred_cls, 1)
    np.add.at(out[:, 1], truth_cls, 1)
    for i, _, _ in match(ious, min_iou):
        out[pred_cls[i], 2] += 1
    return out


def precision_recall(counts: np.ndarray) -> dict:
    """[predicted, truth, matched] -> precision, recall, F1 (None where undefined) and the counts."""
    predicted, truth, matched = (int(v) for v in counts)
    p, r = _ratio(matched, predicted), _ratio(matched, truth)
    f1 = 2 * p * r / (p + r) if p and r else (0.0 if p is not None and r is not None else None)
    return {"precision": p, "recall": r, "f1": f1, "predicted": predicted, "truth": truth, "matched": matched}


def image_kind(class_map: np.ndarray, class_names: Sequence[str]) -> str:
    """``"good"`` for a map with no defect pixel, else the kind with the most pixels (the first
    such kind on a tie)."""
    counts = np.bincount(np.asarray(class_map).ravel().astype(np.int64), minlength=len(class_names) + 1)
    if counts[1:].sum() == 0:
        return GOOD
    return class_names[int(counts[1:].argmax())]


def kind_confusion(true_kinds: Sequence[str], pred_kinds: Sequence[str], kinds: Sequence[str]) -> np.ndarray:
    """(len(kinds), len(kinds)) int64 image counts, [true kind, predicted kind]."""
    if len(true_kinds) != len(pred_kinds):
        raise ValueError(f"{len(true_kinds)} true kinds but {len(pred_kinds)} predicted kinds")
    index = {k: i for i, k in enumerate(kinds)}
    unknown = sorted((set(true_kinds) | set(pred_kinds)) - set(index))
    if unknown:
        raise ValueError(f"kinds {unknown} are not in the confusion matrix's kinds {list(kinds)}")
    out = np.zeros((len(kinds), len(kinds)), np.int64)
    for t, p in zip(true_kinds, pred_kinds):
        out[index[t], index[p]] += 1
    return out


def image_auroc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """AUROC of image scores against 0/1 labels; None unless both labels occur."""
    labels = np.asarray(labels)
    if len(set(labels.tolist())) != 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def accuracy(truth: Sequence, predicted: Sequence) -> float | None:
    """Share of equal entries; None for no entries."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    return float((truth == predicted).mean()) if truth.size else None
