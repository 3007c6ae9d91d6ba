"""Score a labelled test folder with a trained run: metrics, per-image scores, plots. Never trains."""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score

from aoiflow import data
from aoiflow.fileio import atomic_write_text, write_csv
from aoiflow.runs import RunError, TrainedModel
from aoiflow.config import ScoreConfig
from aoiflow.calibrate import combined_score, decide, fit_calibration, verdict
from aoiflow.scoring import minmax_score, score_batch, score_images

SCORE_FIELDS = ["path", "label", "defect_type", "R", "L", "A", "A_hat", "decision"]


@dataclass
class Evaluation:
    """Per-image results of one test run (arrays aligned with ``samples``)."""

    samples: list[data.Sample]
    images: torch.Tensor          # (N, C, S, S) in [0, 1]
    reconstructions: torch.Tensor  # (N, C, S, S)
    maps: torch.Tensor             # (N, 1, S, S)
    masks: list[np.ndarray | None]  # bool (S, S) at model resolution, None without ground truth
    r: np.ndarray
    l: np.ndarray
    a: np.ndarray
    a_hat: np.ndarray
    threshold: float
    skipped: list[tuple[Path, str]]
    ms_per_image: float
    original_sizes: list[tuple[int, int]]
    pixel_threshold: float | None
    excluded: int = 0  # test images left out on request (e.g. a parameter search's validation anomalies)


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else None


def _load_masks(samples: list[data.Sample], size: int) -> list[np.ndarray | None]:
    masks: list[np.ndarray | None] = []
    for s in samples:
        if s.label == 0:
            masks.append(np.zeros((size, size), bool))
            continue
        if s.mask_path is None:
            masks.append(None)
            continue
        try:
            masks.append(data.resize_mask(data.read_mask(s.mask_path), size))
        except data.ImageReadError as exc:
            warnings.warn(f"skipped mask {exc}", stacklevel=2)
            masks.append(None)
    return masks


def run_evaluation(model: TrainedModel, data_root: str | Path, threshold: float | None = None,
                   batch_size: int = 32, progress: bool = True,
                   exclude: set[Path] | None = None) -> Evaluation:
    """Score every image under ``DATA/test`` except those in ``exclude`` (e.g. anomalies a parameter
    search used for validation); unreadable images are reported and skipped."""
    if model.calibration is None:
        raise RunError("this run has no calibration (training did not finish); resume it with `aoiflow train --resume`")
    cfg = model.config
    all_samples = data.test_samples(data_root)
    samples = [s for s in all_samples if s.path.resolve() not in exclude] if exclude else all_samples
    n_excluded = len(all_samples) - len(samples)
    loaded = data.load_images([s.path for s in samples], model.channels, cfg.model.image_size, progress)
    size_of = dict(zip(loaded.paths, loaded.original_sizes))
    samples = [s for s in samples if s.path in size_of]
    if not samples:
        raise data.DataLayoutError(f"{data_root}: no readable test images")
    t0 = time.perf_counter()
    raw = score_images(model.generator, loaded.images, cfg.scoring, batch_size,
                       keep_maps=True, keep_reconstructions=True, progress=progress)
    ms = (time.perf_counter() - t0) * 1000 / len(samples)
    a = combined_score(raw.r, raw.l, model.calibration, cfg.scoring.lam)
    return Evaluation(
        samples, loaded.images, raw.reconstructions, raw.maps, _load_masks(samples, cfg.model.image_size),
        raw.r, raw.l, a, minmax_score(raw.r, raw.l, cfg.scoring.lam),
        model.calibration.threshold if threshold is None else threshold, loaded.skipped, ms,
        [size_of[s.path] for s in samples], model.calibration.pixel_threshold, n_excluded,
    )


def recalibrate(model: TrainedModel, data_root: str | Path, settings: ScoreConfig) -> TrainedModel:
    """The same networks with other scoring settings (score kind, window, lambda, pooling,
    percentile): normalisation and threshold are measured again on the run's held-out normals,
    which are re-read from ``data_root``. Costs one pass over those images, no training."""
    paths = [Path(data_root) / p for p in model.split["val"]]
    loaded = data.load_images(paths, model.channels, model.config.model.image_size)
    if len(loaded.images) == 0:
        raise data.DataLayoutError(f"{data_root}: none of the run's held-out normal images could be read")
    raw = score_images(model.generator, loaded.images, settings, keep_maps=True)
    config = model.config.model_copy(update={"scoring": settings})
    cal = fit_calibration(raw.r, raw.l, settings.lam, settings.false_alarm_rate, raw.maps, source="held-out normals")
    return TrainedModel(model.generator, config, model.channels, cal, model.epoch, model.split, model.data_root)


def pixel_auroc(ev: Evaluation) -> tuple[float | None, int]:
    """Pixel AUROC at model resolution over images with ground truth; defect images whose mask is
    empty are left out (they have nothing to localise). Returns (auroc, images used)."""
    use = [i for i, m in enumerate(ev.masks) if m is not None and (ev.samples[i].label == 0 or m.any())]
    if not any(ev.samples[i].label == 1 for i in use):
        return None, 0
    y = np.concatenate([ev.masks[i].ravel() for i in use])
    s = torch.cat([ev.maps[i].flatten() for i in use]).numpy()
    return _auroc(y.astype(np.uint8), s), len(use)


def localisation_metrics(ev: Evaluation, min_area: float = 4.0) -> dict:
    """PRO (to 30 % FPR), region precision/recall/F1 at IoU 0.1 and 0.5 and the edits-per-image
    proxy where masks exist; box precision/recall at IoU 0.5 where boxes exist. Regions come from
    images judged anomalous, at the stored pixel threshold, as ``aoiflow prelabel`` makes them."""
    from aoiflow.localisation import MatchCounts, box_iou, components, edits_needed, mask_iou, match, pro_score, read_boxes
    from aoiflow.prelabel import RegionSettings, find_regions

    out: dict = {}
    # As for pixel AUROC: a defect image with an empty mask has nothing to localise, and its
    # (defect) pixels must not count as defect-free ones.
    with_mask = [i for i, m in enumerate(ev.masks) if m is not None and (ev.samples[i].label == 0 or m.any())]
    if any(ev.samples[i].label for i in with_mask):
        out["pro_30"] = pro_score([ev.maps[i, 0].numpy() for i in with_mask], [ev.masks[i] for i in with_mask])
    if ev.pixel_threshold is None:
        return out
    settings = RegionSettings(ev.pixel_threshold, min_area)
    size = ev.maps.shape[-1]
    regions = [find_regions(ev.maps[i, 0].numpy(), settings) if decide(ev.a[i], ev.threshold) else []
               for i in range(len(ev.samples))]
    if with_mask and any(ev.samples[i].label for i in with_mask):
        counts = {0.1: MatchCounts(), 0.5: MatchCounts()}
        edits, scratch = [], []
        for i in with_mask:
            truth = components(ev.masks[i])
            ious = np.array([[mask_iou(r.mask, t) for t in truth] for r in regions[i]]).reshape(len(regions[i]), len(truth))
            for t, c in counts.items():
                c.add(len(regions[i]), len(truth), len(match(ious, t)))
            edits.append(edits_needed(ious))
            scratch.append(len(truth))
        out["regions_iou_0.1"] = counts[0.1].summary()
        out["regions_iou_0.5"] = counts[0.5].summary()
        out["edits_per_image_with_prelabels"] = float(np.mean(edits))
        out["edits_per_image_from_scratch"] = float(np.mean(scratch))
    boxed = [i for i, s in enumerate(ev.samples) if s.boxes_path is not None or s.label == 0]
    if any(ev.samples[i].boxes_path for i in boxed):
        c = MatchCounts()
        edits, scratch = [], []
        for i in boxed:
            truth = read_boxes(ev.samples[i].boxes_path) if ev.samples[i].boxes_path else []
            h, w = ev.original_sizes[i]
            sx, sy = w / size, h / size
            pred = [(int(r.box[0] * sx), int(r.box[1] * sy), int((r.box[2] + 1) * sx) - 1, int((r.box[3] + 1) * sy) - 1)
                    for r in regions[i]]
            ious = np.array([[box_iou(p, t) for t in truth] for p in pred]).reshape(len(pred), len(truth))
            c.add(len(pred), len(truth), len(match(ious, 0.5)))
            edits.append(edits_needed(ious))
            scratch.append(len(truth))
        out["boxes_iou_0.5"] = c.summary()
        out["box_edits_per_image_with_prelabels"] = float(np.mean(edits))
        out["box_edits_per_image_from_scratch"] = float(np.mean(scratch))
    return out


def compute_metrics(ev: Evaluation) -> dict:
    labels = np.array([s.label for s in ev.samples])
    decisions = decide(ev.a, ev.threshold).astype(int)
    per_type = {}
    for kind in sorted({s.defect_type for s in ev.samples if s.label == 1}):
        sel = np.array([s.label == 0 or s.defect_type == kind for s in ev.samples])
        per_type[kind] = {
            "image_auroc": _auroc(labels[sel], ev.a[sel]),
            "count": int(sum(s.defect_type == kind for s in ev.samples)),
            "recall_at_threshold": float(decisions[labels == 1][[s.defect_type == kind for s in ev.samples if s.label == 1]].mean()),
        }
    pix, n_pix = pixel_auroc(ev)
    return {
        "image_auroc": _auroc(labels, ev.a),
        "image_auroc_R_only": _auroc(labels, ev.r),
        "image_auroc_L_only": _auroc(labels, ev.l),
        "pixel_auroc": pix,
        "pixel_auroc_images": n_pix,
        "threshold": ev.threshold,
        "f1_at_threshold": float(f1_score(labels, decisions, zero_division=0)),
        "false_positive_rate_at_threshold": float(decisions[labels == 0].mean()) if (labels == 0).any() else None,
        "recall_at_threshold": float(decisions[labels == 1].mean()) if (labels == 1).any() else None,
        "per_defect_type": per_type,
        "localisation": localisation_metrics(ev),
        "counts": {"normal": int((labels == 0).sum()), "anomalous": int((labels == 1).sum()),
                   "skipped": len(ev.skipped)},
        "skipped": [{"path": str(p), "reason": why} for p, why in ev.skipped],
        "ms_per_image": ev.ms_per_image,
    }


def _score_rows(ev: Evaluation) -> list[list[object]]:
    return [[s.path, s.label, s.defect_type, f"{ev.r[i]:.6g}", f"{ev.l[i]:.6g}", f"{ev.a[i]:.6g}",
             f"{ev.a_hat[i]:.6g}", verdict(ev.a[i], ev.threshold)] for i, s in enumerate(ev.samples)]


def _json_ready(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_ready(v) for v in obj]
    return obj


def scoring_ms(model: TrainedModel, batch: int = 1, calls: int = 30) -> float:
    """Median ms per image to score a batch of ``batch`` images (R, L and the map), PyTorch path."""
    import statistics

    s = model.config.model.image_size
    x = torch.rand(batch, model.channels, s, s)
    for _ in range(3):
        score_batch(model.generator, x, model.config.scoring)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        score_batch(model.generator, x, model.config.scoring)
        times.append((time.perf_counter() - t0) * 1000 / batch)
    return statistics.median(times)


def read_exclude_list(path: str | Path, data_root: str | Path) -> set[Path]:
    """Paths to leave out of a test, one per line, absolute or relative to ``data_root``."""
    path = Path(path)
    if not path.is_file():
        raise data.DataLayoutError(f"{path}: exclude list not found")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return {(Path(data_root) / ln).resolve() for ln in lines}


def evaluate_run(run_dir: str | Path, data_root: str | Path, out_dir: str | Path | None = None,
                 threshold: float | None = None, progress: bool = True,
                 exclude: set[Path] | None = None, threads: int | None = None) -> tuple[dict, Evaluation]:
    """Score ``DATA/test`` (less ``exclude``) once and write metrics.json, scores.csv, roc.png,
    score_hist.png, panel.png and report.html to RUN/eval (or ``out_dir``); returns the metrics
    and the scores."""
    from aoiflow import report

    model = TrainedModel.load(run_dir)
    torch.set_num_threads(threads or model.config.train.threads)
    ev = run_evaluation(model, data_root, threshold, progress=progress, exclude=exclude)
    metrics = compute_metrics(ev)
    metrics.update(run=str(run_dir), data=str(data_root), preset=model.config.preset, epoch=model.epoch,
                   excluded=ev.excluded)
    out = Path(out_dir) if out_dir else Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "scores.csv", SCORE_FIELDS, _score_rows(ev))
    atomic_write_text(out / "metrics.json", json.dumps(_json_ready(metrics), indent=2))
    labels = np.array([s.label for s in ev.samples])
    report.roc_plot(labels, ev.a, out / "roc.png", title=f"{model.config.preset or 'run'}")
    report.histogram_plot(labels, ev.a, ev.threshold, out / "score_hist.png")
    report.panel_plot(ev, out / "panel.png")
    report.html_report(out, _json_ready(metrics), f"aoiflow evaluation: {model.config.preset or Path(run_dir).name}")
    return metrics, ev


def evaluate(run_dir: str | Path, data_root: str | Path, out_dir: str | Path | None = None,
             threshold: float | None = None, progress: bool = True, exclude: set[Path] | None = None,
             threads: int | None = None) -> dict:
    """``aoiflow test``: ``evaluate_run`` without the per-image scores; returns the metrics."""
    return evaluate_run(run_dir, data_root, out_dir, threshold, progress, exclude, threads)[0]
