"""Class probabilities -> defect regions, and the two-stage verdict (GANomaly, then the kind model).

Plain NumPy and OpenCV on arrays: no torch, no files, so the line's predict path and the metrics
call the same rules and tests can give known answers.

Boxes are inclusive pixel bounds ``[x0, y0, x1, y1]`` as ``aoiflow.regions.Region`` uses; areas
are pixel counts; both in the pixels of the image the caller names (the original image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from aoiflow.regions import _polygon

DECISIONS = ("normal", "anomalous")


@dataclass(frozen=True)
class ClassRegion:
    """One connected region of one class in a class map, at the map's resolution."""

    id: int                            # its value in the region-label image (1-based)
    cls: int                           # class index, 1 = class_names[0]
    area: int                          # pixels
    box: tuple[int, int, int, int]     # x0, y0, x1, y1 inclusive
    confidence: float                  # mean probability of its class over its pixels


def check_probs(probs: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """``probs`` as float (K+1, H, W); ValueError saying what was expected otherwise."""
    if hasattr(probs, "detach"):  # a torch tensor
        probs = probs.detach().cpu().numpy()
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(f"probs must be (K+1, H, W) class probabilities with K >= 1, got shape {probs.shape}")
    if n_classes is not None and probs.shape[0] != n_classes + 1:
        raise ValueError(f"probs has {probs.shape[0]} channels but {n_classes} class name(s) were given; "
                         f"expected background + one channel per class = {n_classes + 1}")
    return probs


def resize_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(K+1, h, w) -> (K+1, H, W), bilinear (the channels still sum to 1)."""
    probs = check_probs(probs)
    h, w = int(shape[0]), int(shape[1])
    if probs.shape[1:] == (h, w):
        return probs
    out = cv2.resize(np.ascontiguousarray(probs.transpose(1, 2, 0)), (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(h, w, -1).transpose(2, 0, 1)


def class_regions(probs: np.ndarray, min_area: float = 0.0,
                  min_confidence: float = 0.0) -> tuple[np.ndarray, list[ClassRegion]]:
    """Connected regions (8-connectivity) of each defect class of ``argmax(probs)``, (K+1, H, W).

    A region is kept when it has at least ``min_area`` pixels and its confidence (the mean
    probability of its class over its pixels) is at least ``min_confidence``. Returns the region
    labels (H, W) int32 (0 = no kept region, k = the region with ``id`` k) and the regions,
    largest first. Touching regions of two classes stay two regions."""
    probs = check_probs(probs)
    classes = probs.argmax(0)
    labels = np.zeros(classes.shape, np.int32)
    found: list[tuple[int, int, tuple[int, int, int, int], float]] = []
    for c in range(1, probs.shape[0]):
        sel = classes == c
        if not sel.any():
            continue
        count, lab, stats, _ = cv2.connectedComponentsWithStats(sel.astype(np.uint8), connectivity=8)
        sums = np.bincount(lab.ravel(), weights=probs[c].ravel(), minlength=count)
        remap = np.zeros(count, np.int32)
        for k in range(1, count):
            area = int(stats[k, cv2.CC_STAT_AREA])
            confidence = float(sums[k] / area)
            if area < min_area or confidence < min_confidence:
                continue
            x, y, w, h = (int(stats[k, i]) for i in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                      cv2.CC_STAT_HEIGHT))
            found.append((c, area, (x, y, x + w - 1, y + h - 1), confidence))
            remap[k] = len(found)
        labels += remap[lab]  # lab is 0 outside this class, and classes do not overlap
    order = sorted(range(len(found)), key=lambda i: (-found[i][1], found[i][0], found[i][2]))
    renumber = np.zeros(len(found) + 1, np.int32)
    regions = []
    for rank, i in enumerate(order, start=1):
        renumber[i + 1] = rank
        c, area, box, confidence = found[i]
        regions.append(ClassRegion(rank, c, area, box, confidence))
    return renumber[labels], regions


def filtered_class_map(labels: np.ndarray, regions: Sequence[ClassRegion]) -> np.ndarray:
    """The class map (H, W) uint8 of the kept regions only (0 elsewhere)."""
    cls_of = np.zeros(len(regions) + 1, np.uint8)
    for r in regions:
        cls_of[r.id] = r.cls
    return cls_of[labels]


def region_dicts(regions: Sequence[ClassRegion], class_names: Sequence[str], labels: np.ndarray,
                 original_size: tuple[int, int] | None = None, polygons: bool = True) -> list[dict]:
    """Regions as plain records ``{"kind", "confidence", "box": [x0, y0, x1, y1], "area"}``, with
    ``"polygon"`` (the outline, [[x, y], ...]) when ``polygons``; ``labels`` is the region-label
    image (H, W) they came from. Coordinates and areas in the pixels of ``original_size`` (H, W)
    (default: the map's own): a box covers every original pixel under its map pixels."""
    mh, mw = labels.shape
    h, w = original_size if original_size is not None else (mh, mw)
    sx, sy = w / mw, h / mh
    out = []
    for r in regions:
        x0, y0, x1, y1 = r.box
        ox0, oy0 = int(x0 * sx), int(y0 * sy)
        record = {"kind": class_names[r.cls - 1], "confidence": round(float(r.confidence), 6),
                  "box": [ox0, oy0, max(ox0, math.ceil((x1 + 1) * sx) - 1), max(oy0, math.ceil((y1 + 1) * sy) - 1)],
                  "area": int(round(r.area * sx * sy))}
        if polygons:
            outline = _polygon(labels == r.id, 1.0, r.box)
            record["polygon"] = [[round((px + 0.5) * sx - 0.5, 2), round((py + 0.5) * sy - 0.5, 2)]
                                 for px, py in outline]
        out.append(record)
    return out


def anomalous_area(anomaly_map: np.ndarray, pixel_threshold: float | None, top_fraction: float = 0.01) -> np.ndarray:
    """bool (H, W): the map above ``pixel_threshold``; where nothing is (or no threshold is given),
    the ``top_fraction`` highest pixels (at least one)."""
    amap = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float64), nan=-np.inf)
    area = amap > pixel_threshold if pixel_threshold is not None else np.zeros(amap.shape, bool)
    if area.any():
        return area
    n = max(1, math.ceil(top_fraction * amap.size))
    flat = np.zeros(amap.size, bool)
    flat[np.argpartition(-amap.ravel(), n - 1)[:n]] = True
    return flat.reshape(amap.shape)


def two_stage_verdict(decision: str, anomaly_map: np.ndarray, pixel_threshold: float | None, probs: np.ndarray,
                      class_names: Sequence[str], min_confidence: float, min_cover: float = 0.5, *,
                      min_area: float = 0.0,
                      top_fraction: float = 0.01) -> tuple[str, str | None, float | None, list[dict]]:
    """The line's verdict from GANomaly's ``decision`` and the supervised model's ``probs``.

    ``anomaly_map`` (H, W): GANomaly's map at the original image size; ``probs`` (K+1, h, w): the
    supervised model's class probabilities (background first), resized to (H, W) when their size
    differs; ``min_area`` is in ``probs``' own pixels (model pixels when they come from
    ``SupervisedModel.infer``) and scaled along. Regions: connected areas of each class of the
    class map with at least ``min_area`` pixels and mean class probability >= ``min_confidence``
    (``class_regions``). The rule:

    - ``decision == "normal"``: no region -> ``("ok", None, None, [])``. Any region -> a known
      defect GANomaly missed: ``("defect:<kind>", kind, confidence, regions)``, the kind with the
      most region pixels, its confidence the mean probability of that kind over its regions.
    - ``decision == "anomalous"``: the anomalous area is ``anomaly_map > pixel_threshold`` (where
      that is empty, or the threshold is None, the ``top_fraction`` highest pixels, 1 %), split
      into its connected parts (8-connectivity). A part is explained when a region of a known kind
      overlaps it (``explained_area``). When explained parts hold at least ``min_cover`` of the
      anomalous area, ``("defect:<kind>", kind, confidence, regions)`` with the kind that has the
      most pixels inside the anomalous area, its confidence the mean probability of that kind over
      those pixels. Otherwise GANomaly saw something the model cannot name:
      ``("unknown_anomaly", None, None, regions)``.

    ``regions`` are all kept regions as ``region_dicts`` with polygons, in (H, W) pixels, largest
    first. Raises ValueError for another decision or mismatched shapes."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    if not 0 < min_cover <= 1:
        raise ValueError(f"min_cover must be in (0, 1], got {min_cover}")
    amap = np.asarray(anomaly_map)
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map must be (H, W), got shape {amap.shape}")
    probs = check_probs(probs, len(class_names))
    h, w = probs.shape[1:]
    if (h, w) != amap.shape:
        min_area *= amap.size / (h * w)
        probs = resize_probs(probs, amap.shape)
    labels, regions = class_regions(probs, min_area, min_confidence)
    found = region_dicts(regions, class_names, labels)
    class_map = filtered_class_map(labels, regions)
    if decision == "normal":
        if not regions:
            return "ok", None, None, []
        k = int(np.bincount(class_map.ravel(), minlength=probs.shape[0])[1:].argmax()) + 1
        return f"defect:{class_names[k - 1]}", class_names[k - 1], float(probs[k][class_map == k].mean()), found
    area = anomalous_area(amap, pixel_threshold, top_fraction)
    explained = explained_area(area, class_map > 0)
    if explained.any() and explained.sum() >= min_cover * area.sum():
        k = int(np.bincount(class_map[area], minlength=probs.shape[0])[1:].argmax()) + 1
        confidence = float(probs[k][area & (class_map == k)].mean())
        return f"defect:{class_names[k - 1]}", class_names[k - 1], confidence, found
    return "unknown_anomaly", None, None, found


def explained_area(area: np.ndarray, known: np.ndarray) -> np.ndarray:
    """bool (H, W): the connected parts (8-connectivity) of ``area`` that ``known`` overlaps.

    Whole parts, not overlapping pixels: GANomaly's map is smooth (``map_sigma``) and coarser than
    the kind model's outline, so its anomalous area around a thin crack is several times the
    crack's own pixels; the crack still explains that spot. A part with no known region in it
    is what no known kind explains."""
    count, parts = cv2.connectedComponents(area.astype(np.uint8), connectivity=8)
    hit = np.zeros(count, bool)
    hit[np.unique(parts[area & known])] = True
    hit[0] = False  # outside the area
    return hit[parts]
