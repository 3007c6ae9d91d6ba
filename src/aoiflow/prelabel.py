"""Anomaly maps -> defect regions -> label files a person confirms or fixes.

A region is a connected set of map pixels above the pixel threshold (by default the 99.9th
percentile of the held-out normals' map pixels, stored in the run), at least ``min_area`` pixels
of the model input, described by a simplified polygon, a box, its area and its mean/max score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from aoiflow import data, labelformats
from aoiflow.fileio import atomic_write_bytes, output_stems
from aoiflow.predict import Inspector, Prediction, collect_inputs, prepare_output
from aoiflow.regions import LabelledImage, Region  # also imported from here by callers
from aoiflow.runs import RunError

FORMATS = ("labelme", "voc", "coco", "yolo", "mask")


@dataclass
class RegionSettings:
    """How a map becomes regions. ``min_area`` is in model-input pixels, so it means the same
    for every original image size; ``simplify`` is the polygon tolerance in original pixels."""

    threshold: float
    min_area: float = 4.0
    opening: int = 0          # morphological opening radius (original pixels): removes thin specks
    closing: int = 0          # closing radius: joins fragments of one defect
    simplify: float = 1.0
    label: str = "defect"


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def find_regions(amap: np.ndarray, settings: RegionSettings, pixels_per_model_pixel: float = 1.0) -> list[Region]:
    """Connected regions of ``amap`` (H, W) above the threshold, largest first.

    ``pixels_per_model_pixel`` (map pixels covered by one model-input pixel) converts
    ``settings.min_area`` from model pixels to map pixels.
    """
    binary = (amap > settings.threshold).astype(np.uint8)
    if settings.opening:
        binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, _disk(settings.opening))
    if settings.closing:
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, _disk(settings.closing))
    min_pixels = max(1.0, settings.min_area * pixels_per_model_pixel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    regions: list[Region] = []
    for k in range(1, count):
        area = int(stats[k, cv2.CC_STAT_AREA])
        if area < min_pixels:
            continue
        mask = labels == k
        x, y, w, h = (int(stats[k, i]) for i in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
        values = amap[mask]
        region = Region(0, _polygon(mask, settings.simplify, (x, y, x + w - 1, y + h - 1)),
                        (x, y, x + w - 1, y + h - 1), area, float(values.mean()), float(values.max()),
                        settings.label, mask)
        regions.append(region)
    regions.sort(key=lambda r: -r.area)
    for i, r in enumerate(regions, start=1):
        r.id = i
    return regions


def _polygon(mask: np.ndarray, tolerance: float, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    """Outer contour of a region, simplified (Douglas-Peucker); a box outline for tiny regions."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if contours:
        contour = max(contours, key=cv2.contourArea)
        approx = cv2.approxPolyDP(contour, tolerance, True)[:, 0, :] if tolerance > 0 else contour[:, 0, :]
        if len(approx) >= 3 and cv2.contourArea(approx.astype(np.float32)) > 0:
            # Contour points sit on pixel centres; push them out half a pixel so the polygon covers
            # the region's pixels rather than cutting through its border pixels.
            centre = approx.mean(axis=0)
            grown = approx + 0.5 * np.sign(approx - centre)
            return [(float(px), float(py)) for px, py in grown]
    x0, y0, x1, y1 = box
    return [(x0 - 0.5, y0 - 0.5), (x1 + 0.5, y0 - 0.5), (x1 + 0.5, y1 + 0.5), (x0 - 0.5, y1 + 0.5)]


def default_region_settings(inspector: Inspector, pixel_threshold: float | None = None, **kw) -> RegionSettings:
    """Region settings with the run's stored pixel threshold unless one is given."""
    if pixel_threshold is None:
        pixel_threshold = inspector.calibration.pixel_threshold
        if pixel_threshold is None:
            raise RunError("the run stores no pixel threshold (it was trained with an older aoiflow); recalibrate it "
                           "with `aoiflow train DATA --out RUN --resume` or pass --pixel-threshold")
    return RegionSettings(threshold=float(pixel_threshold), **kw)


def label_images(inspector: Inspector, paths: Iterable[Path], settings: RegionSettings,
                 only_anomalous: bool = True, raw: bool = False,
                 label_of: Callable[[Path, Region], str] | None = None) -> Iterable[LabelledImage | Prediction]:
    """Yield a LabelledImage per readable file (regions only where the image is judged anomalous),
    or the failed Prediction for an unreadable one. ``raw``: the files are raw frames, preprocessed
    as the run was, and regions come out in frame pixels. ``label_of(path, region)`` names classes."""
    size = inspector.config.model.image_size
    for pred in inspector.predict_files(paths, raw=raw):
        if pred.status != "ok":
            yield pred
            continue
        h, w = pred.anomaly_map.shape
        judged = pred.decision == "anomalous" or not only_anomalous
        # Raw frames: the model saw only the warped surface map, whose footprint on the frame is
        # where the carried-back map is defined.
        footprint = float((pred.anomaly_map != 0).sum()) if raw else float(h * w)
        regions = find_regions(pred.anomaly_map, settings, footprint / (size * size)) if judged else []
        for r in regions:
            r.label = label_of(pred.path, r) if label_of else r.label
        yield LabelledImage(pred.path, w, h, pred, regions)


def folder_label(path: Path, region: Region) -> str:
    """Class = the image's folder name (``test/<defect kind>/x.png`` -> ``<defect kind>``)."""
    return path.parent.name


def review_sheet(item: LabelledImage, path: Path, vmax: float) -> None:
    """PNG: the image | the map over it with region outlines, ids and scores."""
    from aoiflow.heatmap import side_by_side

    left, right = side_by_side(item.prediction.original, item.prediction.anomaly_map, vmax)
    thick = max(1, round(max(item.width, item.height) / 300))
    for r in item.regions:
        pts = np.round(np.array(r.polygon)).astype(np.int32)
        cv2.polylines(right, [pts], True, (0, 255, 0), thick)
        cv2.putText(right, f"{r.id}:{r.max_score:.2f}", (r.box[0], max(12, r.box[1] - 3)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, (0, 255, 0), thick)
    p = item.prediction
    banner = f"A={p.a:.2f} {p.decision}, {len(item.regions)} region(s)"
    sheet = np.concatenate([left, right], axis=1)
    sheet = np.concatenate([np.full((22 * thick, sheet.shape[1], 3), 255, np.uint8), sheet], axis=0)
    cv2.putText(sheet, banner, (4, 16 * thick), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick, (0, 0, 0), thick)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    atomic_write_bytes(path, png.tobytes())


def prelabel_folder(inspector: Inspector, target: str | Path, out_dir: str | Path, formats: Iterable[str],
                    settings: RegionSettings, review: bool = True, progress: bool = True,
                    raw: bool = False, label_from_folder: bool = False, yolo_segments: bool = False,
                    overwrite: bool = False) -> dict:
    """``aoiflow prelabel``: label files for every image under ``target`` in each format."""
    from tqdm import tqdm

    formats = list(formats)
    for f in formats:
        if f not in FORMATS:
            raise ValueError(f"unknown label format {f!r}; choose from {', '.join(FORMATS)}")
    out = Path(out_dir)
    paths = collect_inputs(target)
    prepare_output(out, (*FORMATS, "review"), overwrite, "prelabel")
    try:
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise data.DataLayoutError(f"{out}: output folder is not writable ({exc.strerror})") from None
    base = Path(target) if Path(target).is_dir() else Path(target).parent
    items: list[LabelledImage] = []
    errors: list[tuple[Path, str]] = []
    writer = labelformats.Writers(out, base, formats, settings.label, yolo_polygons=yolo_segments,
                                  stems=output_stems(paths, base))
    label_of = folder_label if label_from_folder else None
    for item in tqdm(label_images(inspector, paths, settings, raw=raw, label_of=label_of), total=len(paths), desc="prelabel",
                     unit="img", disable=not progress):
        if isinstance(item, Prediction):
            errors.append((item.path, item.reason))
            continue
        writer.write_image(item)
        if review:
            review_sheet(item, out / "review" / f"{writer.stem(item.path)}.png", inspector.map_scale)
        item.prediction.original = None
        item.prediction.anomaly_map = None
        for r in item.regions:
            r.mask = None
        items.append(item)
    writer.finish()
    return {"images": len(items), "regions": sum(len(i.regions) for i in items),
            "anomalous": sum(i.prediction.decision == "anomalous" for i in items),
            "errors": [(str(p), why) for p, why in errors]}
