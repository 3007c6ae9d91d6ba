"""LabelMe .json files: polygons, rectangles and circles (points on pixel centres)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from aoiflow.supervised.labels.core import LabelError, LabelledSample, Shape, _Context, _fit, _load_json, _number_list


def _circle(c: np.ndarray, edge: np.ndarray, n: int = 64) -> np.ndarray:
    r = float(np.linalg.norm(edge - c))
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return c + r * np.stack([np.cos(t), np.sin(t)], 1)


def _labelme_shape(raw: dict) -> Shape | str:
    """One LabelMe shape (points on pixel centres, as labelme and aoiflow's writer use) -> a
    Shape in corner coordinates, or the reason it is skipped."""
    label, kind = str(raw.get("label", "")), raw.get("shape_type") or "polygon"
    try:
        pts = _number_list(raw.get("points")).reshape(-1, 2) + 0.5
    except (ValueError, TypeError) as exc:
        return f"shape {label!r}: bad points ({exc})"
    if kind == "polygon" and len(pts) >= 3:
        return Shape(label, "polygon", pts)
    if kind == "rectangle" and len(pts) == 2:
        return Shape(label, "box", np.concatenate([pts.min(0), pts.max(0)]))
    if kind == "circle" and len(pts) == 2:
        return Shape(label, "polygon", _circle(pts[0], pts[1]))
    return f"shape {label!r}: {kind} with {len(pts)} point(s) is not an area (polygon, rectangle, circle)"


def _read_labelme(root: Path, ctx: _Context, **_: object) -> tuple[list[LabelledSample], None]:
    """A folder of LabelMe .json files (or one file) -> samples."""
    files = [root] if root.is_file() else sorted(root.rglob("*.json"))
    samples, problems = [], []
    for f in files:
        try:
            doc = _load_json(f)
            if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
                raise LabelError(f"{f}: not a LabelMe file (no 'shapes' list)")
            if not doc.get("imagePath"):
                raise LabelError(f"{f}: no 'imagePath'")
        except LabelError as exc:
            problems.append(str(exc))
            ctx.warn(f"{exc}; skipped")
            continue
        ref = str(doc["imagePath"]).replace("\\", "/")
        found = ctx.locate(f, ref, [f.parent / ref, *ctx.in_images(Path(ref).name), f.parent / Path(ref).name])
        if found is None:
            continue
        shapes = []
        for raw in doc["shapes"]:
            s = _labelme_shape(raw if isinstance(raw, dict) else {})
            if isinstance(s, str):
                ctx.warn(f"{f}: {s}; skipped")
            else:
                shapes.append(s)
        shapes = _fit(shapes, (doc.get("imageHeight"), doc.get("imageWidth")), found[1], f, found[0], ctx)
        samples.append(LabelledSample(found[0], f, found[1], shapes))
    if not samples and problems:
        raise LabelError(f"{root}: no usable LabelMe file; first problem: {problems[0]}")
    return samples, None
