"""COCO instances files: polygons, RLE (via pycocotools) or boxes; images without annotations are negatives."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from aoiflow.supervised.labels.core import LabelError, LabelledSample, Shape, _Context, _fit, _load_json, _number_list


def _coco_shapes(ann: dict, cats: dict[int, str], path: Path, ctx: _Context) -> list[Shape]:
    """The shapes of one COCO annotation: RLE, polygons, or else its bbox."""
    try:
        label = cats[int(ann.get("category_id"))]
    except (KeyError, TypeError, ValueError):
        raise LabelError(f"{path}: annotation {ann.get('id')} has category_id {ann.get('category_id')!r}, "
                         f"which is not among the categories (ids {sorted(cats)})") from None
    seg, bbox = ann.get("segmentation"), ann.get("bbox")
    try:
        if isinstance(seg, dict) and "counts" in seg and "size" in seg:
            return [Shape(label, "rle", rle=seg)]
        if isinstance(seg, list) and seg:
            parts = seg if isinstance(seg[0], list) else [seg]
            polys = [_number_list(p).reshape(-1, 2) for p in parts if len(p) >= 6 and len(p) % 2 == 0]
            if polys:
                return [Shape(label, "polygon", p) for p in polys]
        if isinstance(bbox, list) and len(bbox) == 4:
            x, y, bw, bh = _number_list(bbox)
            return [Shape(label, "box", np.array([x, y, x + bw, y + bh]))]
    except (ValueError, TypeError) as exc:
        ctx.warn(f"{path}: annotation {ann.get('id')}: unusable geometry ({exc}); skipped")
        return []
    ctx.warn(f"{path}: annotation {ann.get('id')} has no polygon, RLE or bbox; skipped")
    return []


def _read_coco(path: Path, ctx: _Context, **_: object) -> tuple[list[LabelledSample], list[str]]:
    """COCO instances file -> samples (images without annotations are negatives), category order."""
    doc = _load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not isinstance(doc.get("categories"), list):
        raise LabelError(f"{path}: not a COCO file (expected 'images', 'annotations' and 'categories' lists)")
    try:
        cats = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
    except (KeyError, TypeError, ValueError):
        raise LabelError(f"{path}: a category has no integer 'id' or no 'name'") from None
    by_image: dict[object, list[dict]] = defaultdict(list)
    for ann in doc.get("annotations") or []:
        if isinstance(ann, dict):
            by_image[ann.get("image_id")].append(ann)
    samples, seen = [], set()
    for im in doc["images"]:
        if not isinstance(im, dict) or "id" not in im or not im.get("file_name"):
            ctx.warn(f"{path}: image entry {str(im)[:80]} has no 'id' or 'file_name'; skipped")
            continue
        seen.add(im["id"])
        name = str(im["file_name"]).replace("\\", "/")
        found = ctx.locate(path, name, [*ctx.in_images(name, Path(name).name), path.parent / name,
                                        path.parent / "images" / name])
        if found is None:
            continue
        image, hw = found
        shapes = [s for ann in by_image.get(im["id"], []) for s in _coco_shapes(ann, cats, path, ctx)]
        shapes = _fit(shapes, (im.get("height"), im.get("width")), hw, path, image, ctx)
        samples.append(LabelledSample(image, path, hw, shapes))
    orphans = [k for k in by_image if k not in seen]
    if orphans:
        ctx.warn(f"{path}: annotations name image ids not in 'images' ({', '.join(map(str, orphans[:5]))}); ignored")
    return samples, list(cats.values())
