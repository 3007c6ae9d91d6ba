"""The MVTec folder layout: test/<kind>/ images with ground_truth/<kind>/ masks or annotations_bbox boxes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from aoiflow import data
from aoiflow.supervised.labels.core import (LabelError, LabelledSample, Shape, _Context, _fit, _image_size,
                                            _read_mask_values)
from aoiflow.supervised.labels.masks import _check_mask_size


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}.png", f"{stem}_mask.png", f"{stem}.bmp", f"{stem}_mask.bmp"):
        if (gt_dir / name).is_file():
            return gt_dir / name
    return None


def _box_file(path: Path, kind: str, box_types: Mapping[int, str] | None, ctx: _Context) -> list[Shape]:
    """``x1 y1 x2 y2 [type]`` lines (inclusive pixel bounds, DeepPCB style) -> boxes; the class is
    ``box_types[type]`` when given, else the kind."""
    shapes = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.replace(",", " ").split()
        try:
            x0, y0, x1, y1 = (float(v) for v in parts[:4])
            label = box_types[int(float(parts[4]))] if box_types else kind
        except (ValueError, IndexError, KeyError):
            if parts:
                ctx.warn(f"{path}:{n}: expected 'x1 y1 x2 y2{' type' if box_types else ''}' with a known type; skipped")
            continue
        shapes.append(Shape(label, "box", np.array([min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1])))
    return shapes


def _mvtec_defect(root: Path, kind: str, image: Path, hw: tuple[int, int], ctx: _Context,
                  box_types: Mapping[int, str] | None) -> LabelledSample | None:
    """A test/<kind> image with its mask (class = kind) or its boxes; None (warned) without either."""
    mask = _find_mask(root / "ground_truth" / kind, image.stem)
    if mask is not None:
        try:
            values = _read_mask_values(mask)
        except data.ImageReadError as exc:
            ctx.warn(f"{exc}; {image} skipped")
            return None
        _check_mask_size(mask, values.shape, image, hw, ctx)
        if not (values > 127).any():
            ctx.warn(f"{mask}: mask of {image} is empty; the image counts as a negative")
        return LabelledSample(image, mask, hw, mask_path=mask, mask_values={255: kind} if (values > 127).any() else {})
    boxes = root / "annotations_bbox" / kind / f"{image.stem}.txt"
    if boxes.is_file():
        shapes = _fit(_box_file(boxes, kind, box_types, ctx), (None, None), hw, boxes, image, ctx)
        return LabelledSample(image, boxes, hw, shapes)
    ctx.warn(f"{image}: a {kind!r} image with no mask in {root / 'ground_truth' / kind} and no boxes; skipped")
    return None


def _read_mvtec(root: Path, ctx: _Context, include_train_good: bool = False, box_types: Mapping[int, str] | None = None,
                **_: object) -> tuple[list[LabelledSample], list[str] | None]:
    """ROOT/test/<kind>/ images; class = kind, ``good`` (and train/good when asked) = negatives."""
    test = root / "test"
    if not test.is_dir():
        raise LabelError(f"{test}: missing; expected ROOT/test/good and ROOT/test/<defect kind>")
    folders = [d for d in sorted(test.iterdir()) if d.is_dir()]
    if include_train_good:
        folders.append(root / "train" / data.NORMAL_LABEL)
    samples = []
    for folder in folders:
        if not folder.is_dir():
            ctx.warn(f"{folder}: missing; no training normals included")
            continue
        for image in data.list_images(folder):
            try:
                hw = _image_size(image)
            except data.ImageReadError as exc:
                ctx.warn(f"{exc}; skipped")
                continue
            if folder.name == data.NORMAL_LABEL:
                samples.append(LabelledSample(image, folder, hw))
            elif (s := _mvtec_defect(root, folder.name, image, hw, ctx, box_types)) is not None:
                samples.append(s)
    return samples, list(box_types.values()) if box_types else None
