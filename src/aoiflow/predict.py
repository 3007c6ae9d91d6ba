"""Score new images with a trained run: R, L, normalised A, decision and an anomaly map per image.

Library use::

    from aoiflow.predict import Inspector
    inspector = Inspector.load("runs/tile")
    for result in inspector.predict_files(["part.png"]):
        print(result.path, result.a, result.decision)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aoiflow import data
from aoiflow.fileio import CsvAppender, atomic_write, file_digest, output_stems
from aoiflow.preprocess import SkippedFrame, frame_model_input
from aoiflow.runs import RunError, TrainedModel
from aoiflow.supervised.model import SupervisedModel
from aoiflow.supervised.export import load_supervised
from aoiflow.calibrate import combined_score, verdict
from aoiflow.scoring import images_per_batch

PREDICTION_FIELDS = ["path", "status", "reason", "R", "L", "A", "threshold", "decision", "map",
                     "verdict", "kind", "confidence", "regions"]


@dataclass
class Prediction:
    """Result for one file. ``status`` is 'ok' or 'error' (then ``reason`` says why)."""

    path: Path
    status: str
    reason: str = ""
    r: float = float("nan")
    l: float = float("nan")
    a: float = float("nan")
    decision: str = ""                     # the calibrated decision: 'normal' or 'anomalous'
    anomaly_map: np.ndarray | None = None  # (H, W) float at the original image size
    original: np.ndarray | None = None     # (H, W, C) float in [0, 1]
    # The line's verdict: 'ok' or 'anomaly' from GANomaly alone; with a supervised model
    # 'defect:<kind>' or 'unknown_anomaly' for anomalous parts (aoiflow.supervised).
    verdict: str = ""
    kind: str | None = None
    confidence: float | None = None
    regions: list[dict] = field(default_factory=list)  # {"kind", "confidence", "box": [x0, y0, x1, y1], "area"}


class _TorchBackend:
    """Scores with the PyTorch generator of a run folder."""

    def __init__(self, model: TrainedModel) -> None:
        self.config, self.channels, self.calibration = model.config, model.channels, model.calibration
        self.model = model
        self.version = model.version

    def score(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
        r, l, amap, _ = self.model.score_batch(x)
        a = combined_score(r.numpy(), l.numpy(), self.calibration, self.config.scoring.lam)
        return r.numpy(), l.numpy(), a, amap


class _OnnxBackend:
    """Scores with an exported graph, ONNX Runtime or OpenVINO (R, L, A and the map come out of it)."""

    def __init__(self, path: Path, threads: int, precision: str = "f32") -> None:
        from aoiflow.export import ExportedModel, OpenVinoModel

        self.model = OpenVinoModel(path, threads, precision) if path.suffix == ".xml" else ExportedModel(path, threads)
        self.config, self.channels, self.calibration = self.model.config, self.model.channels, self.model.calibration
        self.version = f"{path.stem}@{file_digest(path)}"

    def score(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
        r, l, a, amap = self.model.score(x.numpy())
        return r, l, a, torch.from_numpy(amap)


class Inspector:
    """A trained model (run folder or exported .onnx) plus its calibration, ready to judge images."""

    def __init__(self, backend: _TorchBackend | _OnnxBackend, threshold: float | None = None,
                 supervised: SupervisedModel | None = None) -> None:
        if backend.calibration is None:
            raise RunError("the run has no calibration (training did not finish); resume it with `aoiflow train --resume`")
        self.backend = backend
        self.config = backend.config
        self.channels = backend.channels
        self.calibration = backend.calibration
        self.threshold = self.calibration.threshold if threshold is None else float(threshold)
        self.version = getattr(backend, "version", "unknown")
        self.supervised = supervised
        self.supervised_version = supervised.version if supervised is not None else None

    @classmethod
    def load(cls, source: str | Path, threshold: float | None = None, threads: int = 2,
             precision: str = "f32", supervised: str | Path | None = None) -> "Inspector":
        """``source``: a run folder (PyTorch), an exported ``.onnx`` file (ONNX Runtime) or an
        OpenVINO ``.xml`` model; ``precision='bf16'`` lets OpenVINO compute in bfloat16 where the
        CPU supports it (faster, scores differ slightly). ``supervised``: a folder written by
        ``aoiflow supervise train`` (or its model.pt, or its .onnx/.xml export from ``aoiflow
        supervise export``; ``precision`` applies to a .xml one too) for the two-stage verdict."""
        source = Path(source)
        torch.set_num_threads(threads)
        sup = load_supervised(supervised, threads, precision) if supervised is not None else None
        if source.suffix in (".onnx", ".xml"):
            return cls(_OnnxBackend(source, threads, precision), threshold, sup)
        return cls(_TorchBackend(TrainedModel.load(source)), threshold, sup)

    @property
    def map_scale(self) -> float:
        """Map value shown at full heat: twice the 99.9th percentile of normal pixels."""
        if self.calibration.pixel_threshold:
            return 2.0 * self.calibration.pixel_threshold
        return 1.0 if self.config.scoring.score == "ssim" else 0.5

    def score_tensor(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
        """(B, C, S, S) in [0, 1] at the model size -> R, L, A (B,) and map (B, 1, S, S)."""
        return self.backend.score(x)

    def predict_files(self, paths: Iterable[str | Path], batch_size: int = 16, raw: bool = False) -> Iterable[Prediction]:
        """Yield one Prediction per file, in order; unreadable files give status 'error'.

        ``raw=True``: the files are raw camera frames; the run's preprocessing turns each into its
        surface map first (frames without a usable part get status 'skipped'), and the anomaly
        map is carried back onto the frame.
        """
        if raw and not self.config.preprocess.enabled:
            raise RunError("this run was not trained on preprocessed frames, so it has no preprocessing to apply to raw frames")
        batch: list[tuple[Path, torch.Tensor, np.ndarray, object]] = []
        m = self.config.model  # with native-resolution patches, about batch_size windows at once
        batch_size = images_per_batch((m.input_size, m.input_size), m.image_size, self.config.scoring, batch_size)
        for p in map(Path, paths):
            try:
                batch.append((p, *self._read(p, raw)))
            except (data.ImageReadError, SkippedFrame) as exc:
                yield from self._flush(batch)
                batch = []
                is_read = isinstance(exc, data.ImageReadError)
                yield Prediction(p, "error" if is_read else "skipped", exc.problem if is_read else exc.reason)
                continue
            if len(batch) >= batch_size:
                yield from self._flush(batch)
                batch = []
        yield from self._flush(batch)

    def _read(self, path: Path, raw: bool) -> tuple[torch.Tensor, np.ndarray, object]:
        """(model input (C, S, S), the image at full size (H, W, C), the surface for raw frames).
        The model input is made exactly as in training and calibration (``data.load_tensor``)."""
        size = self.config.model.input_size
        if raw:
            x, frame, surface = frame_model_input(path, self.config.preprocess, self.channels, size)
            return x, data.to_channels(frame, self.channels), surface
        arr, full_hw = data.read_image_at(path, size)  # reduced on decoding when very large, as in training
        x = data.to_model_input(arr, self.channels, size)
        full = arr if arr.shape[:2] == full_hw else data.read_image(path)  # decoded again only when reduced
        return x, data.to_channels(full, self.channels), None

    def _flush(self, batch: list) -> Iterable[Prediction]:
        if not batch:
            return
        r, l, a, amap = self.score_tensor(torch.stack([x for _, x, _, _ in batch]))
        # what the kind model judges: the file, or a raw frame's surface map (only with that model)
        judged = [image if surface is None or self.supervised is None else data.to_channels(surface.image, self.channels)
                  for _, _, image, surface in batch]
        probs = self._kind_probabilities(judged)
        for i, (p, _, image, surface) in enumerate(batch):
            if surface is None:
                full = data.resize_tensor(amap[i : i + 1], image.shape[:2])[0, 0].numpy()
            else:  # back through the preprocessing warp onto the raw frame
                s = surface.image.shape[0]
                canonical = data.resize_tensor(amap[i : i + 1], s)[0, 0].numpy()
                full = surface.to_frame(canonical, image.shape[:2])
            decision = verdict(a[i], self.threshold)
            pred = Prediction(p, "ok", "", float(r[i]), float(l[i]), float(a[i]), decision, full, image,
                              verdict="anomaly" if decision == "anomalous" else "ok")
            if probs is not None:
                self._second_stage(pred, amap[i, 0].numpy(), judged[i], probs[i])
            yield pred

    def _kind_probabilities(self, judged: list[np.ndarray]) -> np.ndarray | None:
        """The supervised model's class probabilities (B, K+1, S, S) for a batch of judged images
        (the file, or the surface map of a raw frame), in one call; None without that model."""
        if self.supervised is None:
            return None
        sup = self.supervised
        x = torch.stack([data.to_model_input(img, sup.channels, sup.image_size) for img in judged])
        return sup.infer(x).numpy()

    def _second_stage(self, pred: Prediction, model_map: np.ndarray, judged: np.ndarray, probs: np.ndarray) -> None:
        """The supervised model names the defect kind (``supervised.verdict.two_stage_verdict``).
        The rule runs at GANomaly's model size, where the pixel threshold was calibrated; the
        regions come back in the pixels of the judged image (the surface map for raw frames)."""
        pred.verdict, pred.kind, pred.confidence, regions = self.supervised.verdict(
            pred.decision, model_map, self.calibration.pixel_threshold, probs)
        pred.regions = scale_regions(regions, judged.shape[0] / model_map.shape[0],
                                     judged.shape[1] / model_map.shape[1])


def scale_regions(regions: list[dict], sy: float, sx: float) -> list[dict]:
    """Region dicts (box [x0, y0, x1, y1] inclusive, area, optional polygon) from map pixels to
    image pixels, ``sy`` and ``sx`` image pixels per map pixel."""
    out = []
    for reg in regions:
        x0, y0, x1, y1 = reg["box"]
        scaled = {**reg, "box": [int(x0 * sx), int(y0 * sy), int((x1 + 1) * sx) - 1, int((y1 + 1) * sy) - 1],
                  "area": float(reg["area"]) * sx * sy}
        if reg.get("polygon"):
            scaled["polygon"] = [[float(x) * sx, float(y) * sy] for x, y in reg["polygon"]]
        out.append(scaled)
    return out


def collect_inputs(target: str | Path) -> list[Path]:
    """One image file, or every image in a folder (recursively)."""
    target = Path(target)
    if target.is_file():
        return [target]
    if not target.exists():
        raise data.DataLayoutError(f"{target}: not found")
    paths = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in data.IMAGE_SUFFIXES)
    if not paths:
        raise data.DataLayoutError(f"{target}: contains no images")
    return paths


OVERLAY_MAX_SIDE = 4096  # map PNGs are for people: a 7000-px-wide picture only costs memory


def overlay_png(original: np.ndarray, amap: np.ndarray, vmax: float, path: Path,
                regions: list[dict] | None = None) -> None:
    """Save the image (left) and the anomaly map as a heat overlay (right) side by side, shrunk
    to at most OVERLAY_MAX_SIDE pixels on its long side. ``regions`` of the supervised model
    (boxes in image pixels) are outlined on the left with their kind and confidence."""
    import cv2
    from PIL import Image

    from aoiflow.heatmap import side_by_side

    scale = min(1.0, OVERLAY_MAX_SIDE / max(original.shape[:2]))
    if scale < 1:
        size = (max(1, round(original.shape[1] * scale)), max(1, round(original.shape[0] * scale)))
        original = cv2.resize(original, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
        amap = cv2.resize(amap, size, interpolation=cv2.INTER_AREA)
    left, right = side_by_side(original, amap, vmax)
    if regions:
        left = draw_regions(np.ascontiguousarray(left), regions, scale)
    img = np.concatenate([left, right], axis=1)
    atomic_write(path, lambda p: Image.fromarray(img).save(p, format="PNG"))


def draw_regions(image: np.ndarray, regions: list[dict], scale: float = 1.0) -> np.ndarray:
    """Outline each region's box on a uint8 (H, W, 3) image with '<kind> <confidence>' above it."""
    import cv2

    thickness = max(1, round(max(image.shape[:2]) / 400))
    for reg in regions:
        x0, y0, x1, y1 = (round(v * scale) for v in reg["box"])
        cv2.rectangle(image, (x0, y0), (x1, y1), (0, 255, 255), thickness)
        text = f"{reg.get('kind', '')} {reg.get('confidence', 0):.2f}"
        cv2.putText(image, text, (x0, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thickness, (0, 255, 255),
                    thickness, cv2.LINE_AA)
    return image


def prepare_output(out: Path, ours: Iterable[str], overwrite: bool, command: str) -> None:
    """Create ``out``; refuse one that already holds files unless ``overwrite``, which then
    removes only this command's own outputs (``ours``), so two runs never mix."""
    import shutil

    if out.exists() and not out.is_dir():
        raise data.DataLayoutError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise data.DataLayoutError(f"{out}: output folder is not empty (an earlier `aoiflow {command}`?); "
                                       f"pass --overwrite to replace its results or choose another --out")
        for name in ours:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise data.DataLayoutError(f"{out}: output folder is not writable ({exc.strerror})") from None


def predict_to_folder(inspector: Inspector, target: str | Path, out_dir: str | Path, write_maps: bool = True,
                      progress: bool = True, raw: bool = False, overwrite: bool = False) -> list[Prediction]:
    """``aoiflow predict``: OUT/predictions.csv (a row per image, appended as it is judged) and
    OUT/maps/<name>_map.png. Raises DataLayoutError when not one image could be scored."""
    from tqdm import tqdm

    paths = collect_inputs(target)
    out = Path(out_dir)
    prepare_output(out, ("predictions.csv", "maps"), overwrite, "predict")
    base = Path(target) if Path(target).is_dir() else Path(target).parent
    stems = output_stems(paths, base)
    results: list[Prediction] = []
    with CsvAppender(out / "predictions.csv", PREDICTION_FIELDS) as table:
        for pred in tqdm(inspector.predict_files(paths, raw=raw), total=len(paths), desc="predict", unit="img",
                         disable=not progress):
            map_name = save_map(inspector, pred, out, stems[pred.path], raw) if write_maps else ""
            pred.original = None  # keep memory flat on big folders
            results.append(pred)
            table.add(prediction_row(pred, inspector.threshold, map_name))
    if not any(r.status == "ok" for r in results):
        first = results[0]
        raise data.DataLayoutError(f"{target}: none of the {len(results)} images could be scored "
                                   f"(e.g. {first.path}: {first.reason}); see {out / 'predictions.csv'}")
    return results


def save_map(inspector: Inspector, pred: Prediction, out: Path, stem: str, raw: bool) -> str:
    """OUT/maps/<stem>_map.png for a scored image; its name under OUT, or '' when not scored."""
    if pred.status != "ok":
        return ""
    map_name = f"maps/{stem}_map.png"
    # One colour scale for every map: full heat where pixels pass what normal images rarely reach.
    overlay_png(pred.original, pred.anomaly_map, inspector.map_scale, out / map_name, pred.regions if not raw else None)
    return map_name


def prediction_row(pred: Prediction, threshold: float, map_name: str) -> list[str]:
    """One row of predictions.csv (PREDICTION_FIELDS)."""
    return [str(pred.path), pred.status, pred.reason, _fmt(pred.r), _fmt(pred.l), _fmt(pred.a),
            _fmt(threshold), pred.decision, map_name, pred.verdict, pred.kind or "",
            "" if pred.confidence is None else _fmt(pred.confidence),
            json.dumps([{k: v for k, v in reg.items() if k != "polygon"} for reg in pred.regions])
            if pred.regions else ""]


def _fmt(v: float) -> str:
    return "" if v != v else f"{v:.6g}"
