"""Label files for the regions found by ``prelabel``: LabelMe, Pascal VOC, COCO, YOLO, masks.

Written with the standard library (json, xml.etree): labelme itself is GPL, globox and pylabel
handle boxes but not polygons with our per-region scores, and pascal-voc-writer is unmaintained;
the formats are small and their readers (labelme, pycocotools, ultralytics, CVAT) are what the
tests check against. Every file is written atomically; the COCO file is written once, at the end.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from aoiflow.fileio import atomic_write_bytes, atomic_write_text, output_stems
from aoiflow.regions import LabelledImage, Region


def _corner_points(item: LabelledImage, r: Region) -> list[tuple[float, float]]:
    """Polygon in the COCO/YOLO convention (pixel i spans [i, i + 1)), clipped to the image."""
    return [(min(max(x + 0.5, 0.0), item.width), min(max(y + 0.5, 0.0), item.height)) for x, y in r.polygon]


def labelme_json(item: LabelledImage, image_ref: str) -> dict:
    """LabelMe annotation (polygons), opened by labelme with the image beside it."""
    return {
        "version": "5.5.0", "flags": {},
        "shapes": [{"label": r.label, "group_id": None,
                    "points": [[min(max(x, 0.0), item.width - 1.0), min(max(y, 0.0), item.height - 1.0)] for x, y in r.polygon],
                    "description": f"aoiflow region {r.id}: mean {r.mean_score:.4f}, max {r.max_score:.4f}, area {r.area}",
                    "shape_type": "polygon", "flags": {}} for r in item.regions],
        "imagePath": image_ref, "imageData": None, "imageHeight": item.height, "imageWidth": item.width,
    }


def voc_xml(item: LabelledImage, channels: int) -> str:
    """Pascal VOC annotation (boxes, 1-based inclusive pixel coordinates)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = item.path.parent.name
    ET.SubElement(root, "filename").text = item.path.name
    ET.SubElement(root, "path").text = str(item.path)
    size = ET.SubElement(root, "size")
    for tag, v in (("width", item.width), ("height", item.height), ("depth", channels)):
        ET.SubElement(size, tag).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    for r in item.regions:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = r.label
        ET.SubElement(obj, "pose").text = "Unspecified"
        touches = r.box[0] == 0 or r.box[1] == 0 or r.box[2] == item.width - 1 or r.box[3] == item.height - 1
        ET.SubElement(obj, "truncated").text = str(int(touches))
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), r.box):
            ET.SubElement(box, tag).text = str(v + 1)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def yolo_lines(item: LabelledImage, class_ids: dict[str, int], polygons: bool) -> str:
    """YOLO txt: ``class cx cy w h`` normalised, or ``class x1 y1 x2 y2 ...`` for segmentation."""
    lines = []
    for r in item.regions:
        c = class_ids[r.label]
        if polygons:
            pts = " ".join(f"{x / item.width:.6f} {y / item.height:.6f}" for x, y in _corner_points(item, r))
            lines.append(f"{c} {pts}")
        else:
            x0, y0, x1, y1 = r.box
            cx, cy = (x0 + x1 + 1) / 2 / item.width, (y0 + y1 + 1) / 2 / item.height
            w, h = (x1 - x0 + 1) / item.width, (y1 - y0 + 1) / item.height
            lines.append(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def region_mask(item: LabelledImage) -> np.ndarray:
    """uint8 (H, W): 255 inside any region (filled polygons), 0 elsewhere."""
    mask = np.zeros((item.height, item.width), np.uint8)
    for r in item.regions:
        if r.mask is not None:
            mask[r.mask] = 255
        else:
            cv2.fillPoly(mask, [np.round(np.array(r.polygon)).astype(np.int32)], 255)
    return mask


class Writers:
    """Writes each requested format as images are labelled, and the folder-level files at the end."""

    def __init__(self, out: Path, base: Path, formats: list[str], default_label: str, yolo_polygons: bool = False,
                 stems: dict[Path, str] | None = None) -> None:
        self.out, self.base, self.formats = out, base, formats
        self.class_ids = {default_label: 0}
        self.yolo_polygons = yolo_polygons
        self.stems = stems or {}
        self.coco_images: list[dict] = []
        self.coco_annotations: list[dict] = []

    def stem(self, path: Path) -> str:
        """The file stem for an input image's label files: unique within the batch (``fileio.output_stems``)."""
        return self.stems.get(path) or output_stems([path], self.base)[path]

    def write_image(self, item: LabelledImage) -> None:
        stem = self.stem(item.path)
        for r in item.regions:
            self.class_ids.setdefault(r.label, len(self.class_ids))
        channels = item.prediction.original.shape[2] if item.prediction.original is not None else 1
        if "labelme" in self.formats:
            target = self.out / "labelme" / f"{stem}.json"
            ref = Path(_relpath(item.path, target.parent))
            atomic_write_text(target, json.dumps(labelme_json(item, str(ref)), indent=1))
        if "voc" in self.formats:
            atomic_write_text(self.out / "voc" / f"{stem}.xml", voc_xml(item, channels))
        if "yolo" in self.formats:
            atomic_write_text(self.out / "yolo" / "labels" / f"{stem}.txt",
                              yolo_lines(item, self.class_ids, self.yolo_polygons))
        if "mask" in self.formats:
            ok, png = cv2.imencode(".png", region_mask(item))
            atomic_write_bytes(self.out / "mask" / f"{stem}.png", png.tobytes())
        if "coco" in self.formats:
            self._add_coco(item)

    def _add_coco(self, item: LabelledImage) -> None:
        image_id = len(self.coco_images) + 1
        self.coco_images.append({"id": image_id, "file_name": str(item.path.relative_to(self.base))
                                 if item.path.is_relative_to(self.base) else item.path.name,
                                 "width": item.width, "height": item.height})
        for r in item.regions:
            x0, y0, x1, y1 = r.box
            self.coco_annotations.append({
                "id": len(self.coco_annotations) + 1, "image_id": image_id,
                "category_id": self.class_ids[r.label] + 1,
                "segmentation": [[round(v, 2) for xy in _corner_points(item, r) for v in xy]],
                "area": float(r.area), "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1], "iscrowd": 0,
                "score": round(r.max_score, 6),
            })

    def finish(self) -> None:
        names = sorted(self.class_ids, key=self.class_ids.get)
        if "coco" in self.formats:
            coco = {"info": {"description": "aoiflow pre-labels"}, "licenses": [],
                    "images": self.coco_images, "annotations": self.coco_annotations,
                    "categories": [{"id": i + 1, "name": n, "supercategory": "defect"} for i, n in enumerate(names)]}
            atomic_write_text(self.out / "coco" / "annotations.json", json.dumps(coco))
        if "yolo" in self.formats:
            yaml_text = (f"# aoiflow pre-labels; point 'path' at your image folder\npath: {self.base.resolve()}\n"
                         f"train: .\nval: .\nnames:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
            atomic_write_text(self.out / "yolo" / "data.yaml", yaml_text)


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())
