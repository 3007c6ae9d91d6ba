"""What the line reads off an anomaly map: the descriptor and the regions of an inspection.

The descriptor stored with every inspection and given to the alert rules (``Observation``) is,
until the supervised model supplies a learned one, six numbers pooled from the anomaly map:

    [A, R, L, share of map pixels over the pixel threshold, number of regions, map max / map scale]

(the pixel threshold is the run's calibrated one, or half the map scale for runs without it;
regions are connected areas over it of at least 4 model-input pixels, as ``aoiflow prelabel``
finds them). Anomalous parts whose Inspector gives no regions get these map regions in the
verdict's ``regions`` (kind ``"anomaly"``, largest first, at most ``MAX_REGIONS``, each with its
outline as ``"polygon"``), or, when no map pixel is over the pixel threshold, relaxed pre-labels
(``prelabel_regions``: the map's top 1 %, ``"relaxed": true``), so the review queue always has an
outline to confirm or correct.
"""

from __future__ import annotations

import math
from typing import Any

from aoiflow.predict import Inspector, Prediction

MAX_REGIONS = 20
MAX_PRELABELS = 5       # relaxed pre-labels kept per part
RELAXED_TOP = 0.01      # share of the map's pixels relaxed pre-labels start from
DESCRIPTOR_FIELDS = ("a", "r", "l", "area_share", "regions", "map_max")


def describe_map(pred: Prediction, inspector: Inspector) -> tuple[list[float], list[dict[str, Any]]]:
    """The descriptor (see the module docstring) and the map's regions, largest first."""
    from aoiflow.regions import RegionSettings, find_regions

    amap = pred.anomaly_map
    pixel_threshold = inspector.calibration.pixel_threshold or inspector.map_scale / 2
    size = inspector.config.model.input_size
    regions = find_regions(amap, RegionSettings(threshold=float(pixel_threshold), min_area=4.0),
                           pixels_per_model_pixel=amap.size / size**2)
    descriptor = [pred.a, pred.r, pred.l, float((amap > pixel_threshold).mean()), float(len(regions)),
                  float(amap.max()) / inspector.map_scale]
    return [float(v) if math.isfinite(v) else 0.0 for v in descriptor], region_dicts(regions[:MAX_REGIONS])


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
