"""Anomaly maps -> defect regions -> label files a person confirms or fixes.

A region is a connected set of map pixels above the pixel threshold (by default the 99.9th
percentile of the held-out normals' map pixels, stored in the run), at least ``min_area`` pixels
of the model input, described by a simplified polygon, a box, its area and its mean/max score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from aoiflow import data, labelformats
from aoiflow.fileio import atomic_write_bytes, output_stems
from aoiflow.predict import Inspector, Prediction, collect_inputs, prepare_output
from aoiflow.regions import LabelledImage, Region, RegionSettings, find_regions
from aoiflow.runs import RunError

FORMATS = ("labelme", "voc", "coco", "yolo", "mask")


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
    size = inspector.config.model.input_size
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
