"""Reviewed regions: checked at the boundary, compared with the pre-labels, written as label sets.

A region, as the review editor sends it and the store keeps it in ``reviewed_regions``:

    {"kind": "crack", "polygon": [[x, y], ...], "box": [x0, y0, x1, y1], "area": 37, "source": "prelabel"}

Coordinates are original-image pixels with pixel centres at integers (as ``regions.Region``: a
pixel (i, j) spans [i - 0.5, i + 0.5)); ``box`` holds the inclusive bounds of the pixels whose
centre lies inside, ``area`` the polygon's area in pixels. Export goes through the same
``labelformats.Writers`` as ``aoiflow prelabel`` (COCO, YOLO, LabelMe); the training set for
``aoiflow supervise train`` is class-index mask PNGs with classes.txt.
"""

from __future__ import annotations

import math
import shutil
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EXPORT_FORMATS = ("coco", "yolo", "labelme", "mask")
MAX_REGIONS = 200
MAX_POINTS = 2000
MAX_KIND = 100
SAME_PX = 0.01  # vertices closer than this count as unchanged (JSON round trips, float noise)


class LabelProblem(ValueError):
    """A reviewed region that cannot be kept as sent; the message says what was expected."""


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return int(im.width), int(im.height)


def _kind(value: Any) -> str:
    kind = " ".join(str(value or "").split())
    if not kind:
        raise LabelProblem("a region needs a non-empty kind (its class name)")
    if len(kind) > MAX_KIND:
        raise LabelProblem(f"a region's kind is at most {MAX_KIND} characters, got {len(kind)}")
    return kind


def polygon_area(points: Sequence[Sequence[float]]) -> float:
    """Shoelace area of a closed polygon."""
    p = np.asarray(points, np.float64)
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def clean_region(region: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """A region as sent by the editor (or an importer), checked and completed: the polygon
    clipped to the image, rounded to 0.01 px; box and area computed from it."""
    if not isinstance(region, dict):
        raise LabelProblem(f"a region is an object with kind and polygon, got {type(region).__name__}")
    points = region.get("polygon")
    if not isinstance(points, list) or not 3 <= len(points) <= MAX_POINTS:
        raise LabelProblem(f"a region's polygon is a list of 3 to {MAX_POINTS} [x, y] points, got "
                           f"{len(points) if isinstance(points, list) else type(points).__name__}")
    clipped = []
    for p in points:
        if not (isinstance(p, (list, tuple)) and len(p) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)):
            raise LabelProblem(f"a polygon point is [x, y] with finite numbers, got {p!r}")
        clipped.append([round(min(max(float(p[0]), -0.5), width - 0.5), 2),
                        round(min(max(float(p[1]), -0.5), height - 0.5), 2)])
    area = polygon_area(clipped)
    if area <= 0:
        raise LabelProblem("a region's polygon encloses no area (all its points on one line, or outside the image)")
    xs, ys = [p[0] for p in clipped], [p[1] for p in clipped]
    x0, y0 = min(max(math.ceil(min(xs)), 0), width - 1), min(max(math.ceil(min(ys)), 0), height - 1)
    x1, y1 = max(min(math.floor(max(xs)), width - 1), x0), max(min(math.floor(max(ys)), height - 1), y0)
    out = {"kind": _kind(region.get("kind")), "polygon": clipped, "box": [x0, y0, x1, y1],
           "area": max(1, round(area))}
    source = region.get("source")
    if isinstance(source, str) and source:
        out["source"] = source[:40]
    return out


def clean_regions(regions: Any, width: int, height: int) -> list[dict[str, Any]]:
    if not isinstance(regions, list):
        raise LabelProblem(f"regions is a list, got {type(regions).__name__}")
    if len(regions) > MAX_REGIONS:
        raise LabelProblem(f"at most {MAX_REGIONS} regions per image, got {len(regions)}")
    return [clean_region(r, width, height) for r in regions]


def prelabel_outlines(regions: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The verdict's regions as editable outlines: the polygon where there is one, else the
    box's outline (supervised regions of older verdicts, or boxes from elsewhere)."""
    out = []
    for r in regions or []:
        polygon = r.get("polygon")
        if not polygon and r.get("box") and len(r["box"]) == 4:
            x0, y0, x1, y1 = r["box"]
            polygon = [[x0 - 0.5, y0 - 0.5], [x1 + 0.5, y0 - 0.5], [x1 + 0.5, y1 + 0.5], [x0 - 0.5, y1 + 0.5]]
        if polygon and len(polygon) >= 3:
            out.append({"kind": r.get("kind") or "defect", "polygon": [[float(x), float(y)] for x, y in polygon],
                        "source": "prelabel"})
    return out


def editable_prelabels(regions: Iterable[dict[str, Any]] | None, width: int, height: int) -> list[dict[str, Any]]:
    """The verdict's regions as the editor shows them and a review is compared against: outlines
    (``prelabel_outlines``) checked as reviewed regions are, those that enclose no area left out."""
    out = []
    for r in prelabel_outlines(regions or []):
        try:
            out.append(clean_region(r, width, height))
        except LabelProblem:
            continue
    return out


def same_regions(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> bool:
    """Whether two region lists are the same labels (kinds and vertices, in order, within
    ``SAME_PX``)."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        if _kind(ra.get("kind")) != _kind(rb.get("kind")):
            return False
        pa, pb = np.asarray(ra["polygon"], np.float64), np.asarray(rb["polygon"], np.float64)
        if pa.shape != pb.shape or np.abs(pa - pb).max() > SAME_PX:
            return False
    return True


def review_status(prelabels: Sequence[dict[str, Any]], reviewed: Sequence[dict[str, Any]]) -> str:
    """rejected: no region left (the flag was a false alarm); confirmed: the pre-labels as they
    were; corrected: anything else."""
    if not reviewed:
        return "rejected"
    return "confirmed" if same_regions(prelabels, reviewed) else "corrected"


def labels_of(record: Any, width: int, height: int) -> list[dict[str, Any]] | None:
    """The reviewed labels of a reviewed inspection: its reviewed regions; for a review without
    them (``POST .../review``), none when rejected, the pre-labels when confirmed, the pre-labels
    renamed to ``review_label`` when corrected with one; None when unknown (corrected, no label)."""
    if record.review_status is None:
        return None
    if record.reviewed_regions is not None:
        return list(record.reviewed_regions)
    if record.review_status == "rejected":
        return []
    outlines = prelabel_outlines(record.regions)
    if record.review_status == "corrected":
        if not record.review_label:
            return None
        outlines = [{**r, "kind": record.review_label} for r in outlines]
    try:
        return clean_regions(outlines, width, height)
    except LabelProblem:
        return None


# -- label sets ---------------------------------------------------------------------------------

@dataclass
class LabelledFile:
    """A reviewed image copied into a label set, and its labels."""

    path: Path
    width: int
    height: int
    regions: list[dict[str, Any]]
    inspection_id: int


def collect(records: Iterable[Any], resolve: Callable[[str | None], Path | None], images: Path) -> list[LabelledFile]:
    """Copy the image of every reviewed record with known labels into ``images`` (named
    ``<id>_<file name>``, unique); the files with their labels. Records whose image is gone or
    whose labels are unknown are left out."""
    from aoiflow.service.files import safe_name

    images.mkdir(parents=True, exist_ok=True)
    out = []
    for record in records:
        source = resolve(record.image_path)
        if source is None:
            continue
        width, height = image_size(source)
        regions = labels_of(record, width, height)
        if regions is None:
            continue
        name = f"{record.id:06d}_{safe_name(record.file_name)}"
        if Path(name).suffix.lower() != source.suffix.lower():
            name = f"{Path(name).stem}{source.suffix.lower()}"
        target = images / name
        shutil.copyfile(source, target)
        out.append(LabelledFile(target, width, height, regions, record.id))
    return out


def class_names(items: Iterable[LabelledFile]) -> list[str]:
    """Kinds in the order first seen (sorted within ties would reorder classes between exports)."""
    names: dict[str, None] = {}
    for item in items:
        for r in item.regions:
            names.setdefault(r["kind"])
    return list(names)


def _labelled_image(item: LabelledFile) -> Any:
    from aoiflow.predict import Prediction
    from aoiflow.regions import LabelledImage, Region

    regions = [Region(id=i, polygon=[(float(x), float(y)) for x, y in r["polygon"]], box=tuple(r["box"]),
                      area=int(r["area"]), mean_score=1.0, max_score=1.0, label=r["kind"])
               for i, r in enumerate(item.regions, start=1)]
    return LabelledImage(item.path, item.width, item.height, Prediction(item.path, "ok"), regions)


def write_label_set(items: Sequence[LabelledFile], fmt: str, root: Path) -> list[str]:
    """Write ``items`` (their images already in ROOT/images) as a label set in ``fmt`` under
    ``root``; the class names. Layouts, each read back by ``aoiflow supervise train ROOT/...``:

        coco     annotations.json, images/
        yolo     data.yaml, classes.txt, labels/<stem>.txt (boxes), images/
        labelme  labelme/<stem>.json (imagePath ../images/<file>), images/
        mask     masks/<stem>.png (class indices, 0 background), masks/classes.txt, images/
    """
    from aoiflow.fileio import atomic_write_bytes, atomic_write_text

    if fmt not in EXPORT_FORMATS:
        raise LabelProblem(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    names = class_names(items)
    images = root / "images"
    if fmt == "mask":
        import cv2

        index = {n: i + 1 for i, n in enumerate(names)}
        for item in items:
            mask = np.zeros((item.height, item.width), np.uint8)
            for r in item.regions:
                cv2.fillPoly(mask, [np.round(np.asarray(r["polygon"])).astype(np.int32)], index[r["kind"]])
            _, png = cv2.imencode(".png", mask)
            atomic_write_bytes(root / "masks" / f"{item.path.stem}.png", png.tobytes())
        atomic_write_text(root / "masks" / "classes.txt", "".join(f"{n}\n" for n in names))
        atomic_write_text(root / "README.txt", "aoiflow reviewed labels as class-index masks.\n"
                          "Train: aoiflow supervise train masks --images images --out SUP\n")
        return names
    from aoiflow.labelformats import Writers

    writers = Writers(root, images, [fmt], names[0] if names else "defect",
                      stems={item.path: item.path.stem for item in items})
    for item in items:
        writers.write_image(_labelled_image(item))
    writers.finish()
    if fmt == "coco":
        shutil.move(root / "coco" / "annotations.json", root / "annotations.json")
        shutil.rmtree(root / "coco")
    elif fmt == "yolo":
        shutil.move(root / "yolo" / "labels", root / "labels")
        shutil.rmtree(root / "yolo")
        ordered = sorted(writers.class_ids, key=writers.class_ids.get)
        atomic_write_text(root / "classes.txt", "".join(f"{n}\n" for n in ordered))
        atomic_write_text(root / "data.yaml", "# aoiflow reviewed labels (boxes)\npath: .\ntrain: images\n"
                          "val: images\nnames:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(ordered)))
    return names


def zip_folder(folder: Path, target: Path) -> Path:
    """Every file under ``folder`` into the zip ``target`` (paths relative to ``folder``)."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    return target
