"""What the line reads off an anomaly map: the descriptor and the regions of an inspection.

The descriptor stored with every inspection and given to the alert rules (``Observation``) says
what kind of anomaly a part shows, so that ``NewAnomalyKind`` can tell kinds apart. It is
``DESCRIPTOR_FIELDS``, nine numbers read off the anomaly map and the image:

    score       asinh_a           asinh(A): log-like for large A, finite for negative A
                log_map_max       log(1 + map max / map scale)
                log_area_share    log10(share of map pixels over half the pixel threshold + 1e-4);
                                  half, so that it varies for passing parts too
    shape of    solidity          region pixels / pixels of its convex hull
    the largest fill              region pixels / pixels of its bounding box
    region      orientation       its long axis (second moments) against the image's x axis,
                                  folded to [0, 90] degrees
    position    centre_distance   centroid of all regions from the image centre / half the diagonal
    intensity   contrast          (image mean inside the largest region - mean in a ring around it)
                                  / the image's sd: < 0 dark defects, > 0 bright ones
                texture           log(image sd inside / sd in the ring): < 0 smoothed (glue), > 0 busier

Regions are connected areas of the map over the pixel threshold of at least 4 model-input pixels
(the run's calibrated threshold, or half the map scale without one); a part with none (most
passing parts) is described by its relaxed regions (the map's top 1 %), so every part has a
descriptor and passing parts give the rule its reference of what normal looks like. Maps and
images larger than ``DESCRIPTOR_SIDE`` are first reduced to it, so the cost is bounded and the
features do not depend on the image size.

The features were chosen with ``benchmarks/descriptor_check.py`` on the demo's LED line (leave
one defect kind out: the share of its parts outside every known kind, against held-out parts of
the known kinds and flagged normals). Measured there and left out: the elongation of the largest
region (the blurred map breaks a thin crack into blobs of any shape, so it diluted the distance
more than it told kinds apart: in development, adding it cut the left-out crack kind's novel
share from about 55 % to under 40 %), the area share over the pixel threshold itself (the same
value, none, for nearly every passing part, so every flagged normal looked unlike normal), R and
L (no gain over A).

Inspections stored before this descriptor carry the six numbers ``LEGACY_DESCRIPTOR_FIELDS``;
they stay readable as they are, and ``is_current`` tells the two apart (by length) so they are
never mixed into the known kinds.

Anomalous parts whose Inspector gives no regions get the map regions in the verdict's ``regions``
(kind ``"anomaly"``, largest first, at most ``MAX_REGIONS``, each with its outline as
``"polygon"``), or, when no map pixel is over the pixel threshold, relaxed pre-labels
(``prelabel_regions``: the map's top 1 %, ``"relaxed": true``), so the review queue always has an
outline to confirm or correct.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from aoiflow.predict import Inspector, Prediction

MAX_REGIONS = 20
MAX_PRELABELS = 5       # relaxed pre-labels kept per part
RELAXED_TOP = 0.01      # share of the map's pixels relaxed pre-labels start from
MIN_REGION = 4.0        # model-input pixels: smaller specks are no region
DESCRIPTOR_FIELDS = ("asinh_a", "log_map_max", "log_area_share", "solidity", "fill", "orientation", "centre_distance",
                     "contrast", "texture")
LEGACY_DESCRIPTOR_FIELDS = ("a", "r", "l", "area_share", "regions", "map_max")  # stored before DESCRIPTOR_FIELDS
DESCRIPTOR_SIDE = 512   # maps and images are reduced to this long side before describing
RING = 0.03             # width of the ring around a region, as a share of the image's shorter side
_SHARE_FLOOR = 1e-4     # keeps log10 of an empty area share finite
_SD_FLOOR = 1e-3        # image sd (in [0, 1] units) below which a patch counts as flat


def is_current(descriptor: Sequence[float] | None) -> bool:
    """Whether a stored descriptor has today's fields (older rows have the six legacy ones)."""
    return descriptor is not None and len(descriptor) == len(DESCRIPTOR_FIELDS)


def describe_map(pred: Prediction, inspector: Inspector) -> tuple[list[float], list[dict[str, Any]]]:
    """The descriptor (``DESCRIPTOR_FIELDS``, see the module docstring) and the map's regions
    over the pixel threshold, largest first."""
    from aoiflow.regions import RegionSettings, find_regions

    amap = pred.anomaly_map
    pixel_threshold = float(inspector.calibration.pixel_threshold or inspector.map_scale / 2)
    size = inspector.config.model.input_size
    regions = find_regions(amap, RegionSettings(threshold=pixel_threshold, min_area=MIN_REGION),
                           pixels_per_model_pixel=amap.size / size**2)
    descriptor = map_descriptor(amap, pred.original, pred.a, pixel_threshold, inspector.map_scale, size)
    return descriptor, region_dicts(regions[:MAX_REGIONS])


def map_descriptor(amap: np.ndarray, image: np.ndarray | None, a: float, pixel_threshold: float,
                   map_scale: float, input_size: int) -> list[float]:
    """``DESCRIPTOR_FIELDS`` of one part: ``amap`` (H, W) its anomaly map, ``image`` (H, W[, C])
    in [0, 1] the image it was judged on (None: no intensity features, 0), ``a`` its score,
    ``input_size`` the side the model read the image at (sets the smallest region)."""
    amap = np.nan_to_num(np.asarray(amap, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if amap.ndim != 2 or amap.size == 0:
        raise ValueError(f"the anomaly map must be (H, W), got shape {amap.shape}")
    gray = _gray(image, amap.shape)
    amap, gray = _reduced(amap, gray)
    min_pixels = max(1.0, MIN_REGION * amap.size / input_size**2)
    relaxed = amap >= np.quantile(amap, 1.0 - RELAXED_TOP)
    found = _components(amap > pixel_threshold, min_pixels) or _components(relaxed, min_pixels)
    if found is None:  # every component under min_pixels: the map's maximum alone
        found = _components(amap >= amap.max(), 1.0)
    largest, union = found
    values = [math.asinh(a) if math.isfinite(a) else 0.0,
              math.log1p(max(0.0, float(amap.max()) / map_scale)),
              math.log10(float((amap > pixel_threshold / 2).mean()) + _SHARE_FLOOR),
              *_shape(largest), _centre_distance(union), *_intensity(largest, gray)]
    return [float(v) if math.isfinite(v) else 0.0 for v in values]


def _gray(image: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The image as one float32 channel at the map's size."""
    if image is None:
        return None
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img.mean(axis=2)
    if img.shape != shape:
        img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return img


def _reduced(amap: np.ndarray, gray: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    scale = DESCRIPTOR_SIDE / max(amap.shape)
    if scale >= 1:
        return amap, gray
    size = (max(1, round(amap.shape[1] * scale)), max(1, round(amap.shape[0] * scale)))
    shrink = lambda x: cv2.resize(x, size, interpolation=cv2.INTER_AREA)
    return shrink(amap), None if gray is None else shrink(gray)


def _components(binary: np.ndarray, min_pixels: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Masks of the largest 8-connected component and of all of them, counting components of at
    least ``min_pixels``; None when there is none."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_pixels) + 1
    if keep.size == 0:
        return None
    largest = int(keep[np.argmax(stats[keep, cv2.CC_STAT_AREA])])
    return labels == largest, np.isin(labels, keep)


def _shape(mask: np.ndarray) -> tuple[float, float, float]:
    """Solidity, fill and folded orientation (degrees) of one region."""
    m = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    orientation = abs(math.degrees(0.5 * math.atan2(2 * m["mu11"], m["mu20"] - m["mu02"])))  # in [0, 90]
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    crop = mask[y0 : int(ys.max()) + 1, x0 : int(xs.max()) + 1]
    hull = np.zeros(crop.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.column_stack([xs - x0, ys - y0]).astype(np.int32)), 1)
    area = float(len(xs))
    return area / max(area, float(hull.sum())), area / crop.size, orientation


def _centre_distance(mask: np.ndarray) -> float:
    """Centroid of ``mask`` from the image centre, over half the image's diagonal."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return math.hypot(xs.mean() - (w - 1) / 2, ys.mean() - (h - 1) / 2) / (math.hypot(h, w) / 2)


def _intensity(mask: np.ndarray, gray: np.ndarray | None) -> tuple[float, float]:
    """Contrast and texture of the image inside ``mask`` against a ring around it (0, 0 without an image)."""
    if gray is None:
        return 0.0, 0.0
    h, w = mask.shape
    r = max(2, round(RING * min(h, w)))
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = max(0, ys.min() - r), min(h, ys.max() + r + 1), max(0, xs.min() - r), min(w, xs.max() + r + 1)
    inside = mask[y0:y1, x0:x1]
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    ring = cv2.dilate(inside.astype(np.uint8), disk).astype(bool) & ~inside
    patch = gray[y0:y1, x0:x1]
    if not ring.any():  # the region fills the image: nothing around it to compare with
        return 0.0, 0.0
    contrast = (float(patch[inside].mean()) - float(patch[ring].mean())) / (float(gray.std()) + _SD_FLOOR)
    texture = math.log((float(patch[inside].std()) + _SD_FLOOR) / (float(patch[ring].std()) + _SD_FLOOR))
    return contrast, texture


def region_dicts(regions: list[Any], relaxed: bool = False) -> list[dict[str, Any]]:
    """``regions.Region`` objects as the verdict's region records: kind "anomaly", box, area, max
    score and the outline ``polygon`` ([[x, y], ...], pixel centres at integers, as ``Region``)."""
    out = []
    for r in regions:
        d = {"kind": "anomaly", "confidence": None, "box": [int(v) for v in r.box], "area": int(r.area),
             "max_score": float(r.max_score), "polygon": [[round(float(x), 2), round(float(y), 2)] for x, y in r.polygon]}
        if relaxed:
            d["relaxed"] = True
        out.append(d)
    return out


def prelabel_regions(pred: Prediction, inspector: Inspector) -> list[dict[str, Any]]:
    """Pre-labels for a flagged part whose map has no region over the pixel threshold: the top
    ``RELAXED_TOP`` of the map's pixels, closed over one model pixel so a defect's fragments join,
    in regions of at least 4 model-input pixels, largest first, at most ``MAX_PRELABELS``.

    Weaker evidence than regions over the calibrated threshold (marked ``"relaxed": true``): an
    outline to confirm or delete rather than nothing. Whether it saves a reviewer work depends on
    the run (benchmarks/labelling_speed.py measures it: with a tiny run and runs/tile128 on the
    tile set it did not, as these outlines seldom overlapped the defect)."""
    import numpy as np

    from aoiflow.regions import RegionSettings, find_regions

    amap = np.nan_to_num(np.asarray(pred.anomaly_map, dtype=np.float64), nan=-np.inf)
    if amap.size == 0 or not np.isfinite(amap).any():
        return []
    size = inspector.config.model.input_size
    per_model_pixel = amap.size / size**2
    threshold = float(np.quantile(amap[np.isfinite(amap)], 1.0 - RELAXED_TOP))
    settings = RegionSettings(threshold=threshold, min_area=4.0, closing=max(1, round(math.sqrt(per_model_pixel))))
    regions = find_regions(amap, settings, pixels_per_model_pixel=per_model_pixel)
    return region_dicts(regions[:MAX_PRELABELS], relaxed=True)
