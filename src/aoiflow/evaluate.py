"""Score a labelled test folder with a trained run: metrics, per-image scores, plots. Never trains.

The test set's tensors (images, reconstructions, maps, masks) stay in this module: the pixel
metrics and the example panel are computed here, and callers get small records (``Evaluation``
of ``ImageResult``) and the metrics dict.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score

from aoiflow import data, report
from aoiflow.calibrate import combined_score, decide, verdict
from aoiflow.recalibrate import finish_model
from aoiflow.config import ScoreConfig
from aoiflow.fileio import atomic_write_text, write_csv
from aoiflow.localisation import MatchCounts, box_iou, components, edits_needed, mask_iou, match, pro_score, read_boxes
from aoiflow.regions import Region, RegionSettings, find_regions
from aoiflow.runs import RunError, TrainedModel
from aoiflow.scoring import minmax_score

SCORE_FIELDS = ["path", "label", "defect_type", "R", "L", "A", "A_hat", "decision"]


@dataclass(frozen=True)
class ImageResult:
    """One scored test image."""

    path: Path
    label: int                       # 0 normal, 1 anomalous
    defect_type: str
    r: float
    l: float
    a: float                         # normalised anomaly score
    a_hat: float                     # the paper's min-max score over the test set
    decision: str                    # "anomalous" or "normal" at the evaluation's threshold
    original_size: tuple[int, int]   # (H, W) of the file


@dataclass
class Evaluation:
    """Per-image results of one test run and how they were judged; no images or maps."""

    per_image: list[ImageResult]
    threshold: float
    skipped: list[tuple[Path, str]]
    ms_per_image: float
    pixel_threshold: float | None
    excluded: int = 0  # test images left out on request (e.g. a parameter search's validation anomalies)

    @property
    def labels(self) -> np.ndarray:
        return np.array([x.label for x in self.per_image], int)

    @property
    def a(self) -> np.ndarray:
        return np.array([x.a for x in self.per_image], float)


@dataclass
class ScoredTestSet:
    """A scored test set at model resolution (S), aligned with ``samples``: what the pixel
    metrics and the example panel need. Used within this module; callers get ``evaluation``."""

    samples: list[data.Sample]
    images: torch.Tensor            # (N, C, S, S) in [0, 1]
    reconstructions: torch.Tensor   # (N, C, S, S)
    maps: np.ndarray                # (N, S, S)
    masks: list[np.ndarray | None]  # bool (S, S); None without ground truth
    evaluation: Evaluation


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, scores)) if len(set(np.asarray(labels).tolist())) == 2 else None


def load_masks(samples: Sequence[data.Sample], size: int) -> list[np.ndarray | None]:
    """Ground truth as bool (size, size): empty for normal images, None where a defect image has
    no (readable) mask."""
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


def _image_results(samples: list[data.Sample], r: np.ndarray, l: np.ndarray, a: np.ndarray, a_hat: np.ndarray,
                   threshold: float, sizes: list[tuple[int, int]]) -> list[ImageResult]:
    return [ImageResult(s.path, s.label, s.defect_type, float(r[i]), float(l[i]), float(a[i]), float(a_hat[i]),
                        verdict(a[i], threshold), sizes[i]) for i, s in enumerate(samples)]


def score_test_set(model: TrainedModel, data_root: str | Path, threshold: float | None = None,
                   batch_size: int = 32, progress: bool = True, exclude: set[Path] | None = None) -> ScoredTestSet:
    """Score every image under ``DATA/test`` except those in ``exclude`` (e.g. anomalies a parameter
    search used for validation); unreadable images are reported and skipped."""
    if model.calibration is None:
        raise RunError("this run has no calibration (training did not finish); resume it with `aoiflow train --resume`")
    cfg = model.config
    all_samples = data.test_samples(data_root)
    samples = [s for s in all_samples if s.path.resolve() not in exclude] if exclude else all_samples
    n_excluded = len(all_samples) - len(samples)
    loaded = data.load_images([s.path for s in samples], model.channels, cfg.model.input_size, progress)
    size_of = dict(zip(loaded.paths, loaded.original_sizes))
    samples = [s for s in samples if s.path in size_of]
    if not samples:
        raise data.DataLayoutError(f"{data_root}: no readable test images")
    t0 = time.perf_counter()
    raw = model.score(loaded.images, batch_size=batch_size, keep_maps=True, keep_reconstructions=True,
                      progress=progress)
    ms = (time.perf_counter() - t0) * 1000 / len(samples)
    a = combined_score(raw.r, raw.l, model.calibration, cfg.scoring.lam)
    threshold = model.calibration.threshold if threshold is None else threshold
    per_image = _image_results(samples, raw.r, raw.l, a, minmax_score(raw.r, raw.l, cfg.scoring.lam), threshold,
                               [size_of[s.path] for s in samples])
    ev = Evaluation(per_image, threshold, loaded.skipped, ms, model.calibration.pixel_threshold, n_excluded)
    return ScoredTestSet(samples, loaded.images, raw.reconstructions, raw.maps[:, 0].numpy(),
                         load_masks(samples, cfg.model.input_size), ev)


def recalibrate(model: TrainedModel, data_root: str | Path, settings: ScoreConfig) -> TrainedModel:
    """The same networks with other scoring settings (score kind, window, lambda, pooling, map
    normalisation, rate): statistics and threshold are measured again on the run's held-out
    normals (and its training normals for per-position statistics), re-read from ``data_root``.
    Costs one pass over those images, no training."""
    root, size = Path(data_root), model.config.model.input_size
    val = data.load_images([root / p for p in model.split["val"]], model.channels, size)
    if len(val.images) == 0:
        raise data.DataLayoutError(f"{data_root}: none of the run's held-out normal images could be read")
    train = (data.load_images([root / p for p in model.split["train"]], model.channels, size).images
             if settings.map_normalise == "position" else val.images[:0])
    config = model.config.model_copy(update={"scoring": settings})
    return finish_model(replace(model, config=config, calibration=None, map_stats=None), train, val.images)


# ---- image level ---------------------------------------------------------------------------------

def _per_defect_type(ev: Evaluation, decisions: np.ndarray) -> dict:
    """Per defect type: image AUROC against all normal images, its count and recall."""
    labels, a = ev.labels, ev.a
    kinds = np.array([x.defect_type for x in ev.per_image])
    out = {}
    for kind in sorted(set(kinds[labels == 1].tolist())):
        sel = (labels == 0) | (kinds == kind)
        out[kind] = {"image_auroc": _auroc(labels[sel], a[sel]), "count": int((kinds == kind).sum()),
                     "recall_at_threshold": float(decisions[(labels == 1) & (kinds == kind)].mean())}
    return out


def image_metrics(ev: Evaluation) -> dict:
    """Image AUROC (of A, R and L), F1, recall and false-positive rate at the threshold (a score
    equal to it is normal), per defect type, counts, skipped files and speed."""
    labels, a = ev.labels, ev.a
    decisions = decide(a, ev.threshold).astype(int)
    return {
        "image_auroc": _auroc(labels, a),
        "image_auroc_R_only": _auroc(labels, np.array([x.r for x in ev.per_image])),
        "image_auroc_L_only": _auroc(labels, np.array([x.l for x in ev.per_image])),
        "threshold": ev.threshold,
        "f1_at_threshold": float(f1_score(labels, decisions, zero_division=0)),
        "false_positive_rate_at_threshold": float(decisions[labels == 0].mean()) if (labels == 0).any() else None,
        "recall_at_threshold": float(decisions[labels == 1].mean()) if (labels == 1).any() else None,
        "per_defect_type": _per_defect_type(ev, decisions),
        "counts": {"normal": int((labels == 0).sum()), "anomalous": int((labels == 1).sum()),
                   "skipped": len(ev.skipped)},
        "skipped": [{"path": str(p), "reason": why} for p, why in ev.skipped],
        "ms_per_image": ev.ms_per_image,
    }


# ---- pixel level ---------------------------------------------------------------------------------

def _check_aligned(n: int, **per_image: Sequence) -> None:
    """Every per-image input holds one entry per map."""
    uneven = {name: len(v) for name, v in per_image.items() if len(v) != n}
    if uneven:
        raise ValueError(f"expected one entry per map ({n} maps), got {uneven}")


def _localisable(masks: Sequence[np.ndarray | None], labels: Sequence[int]) -> list[int]:
    """Images whose ground truth can judge a map: normal ones, and defect ones with a non-empty
    mask (an empty one has nothing to localise, and its defect pixels must not count as
    defect-free)."""
    return [i for i, m in enumerate(masks) if m is not None and (labels[i] == 0 or m.any())]


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                labels: Sequence[int]) -> tuple[float | None, int]:
    """Pixel AUROC of maps (H, W) against bool masks (H, W) over the localisable images (see
    ``_localisable``). Returns (auroc, images used); (None, 0) without an annotated defect."""
    _check_aligned(len(maps), masks=masks, labels=labels)
    use = _localisable(masks, labels)
    if not any(labels[i] == 1 for i in use):
        return None, 0
    y = np.concatenate([masks[i].ravel() for i in use])
    s = np.concatenate([np.asarray(maps[i]).ravel() for i in use])
    return _auroc(y.astype(np.uint8), s), len(use)


def region_metrics(regions: Sequence[list[Region]], masks: Sequence[np.ndarray | None], use: list[int]) -> dict:
    """Region precision/recall/F1 at IoU 0.1 and 0.5 and the edits-per-image proxy, over images
    ``use``, each region's mask against the connected parts of its image's ground truth."""
    counts = {0.1: MatchCounts(), 0.5: MatchCounts()}
    edits, scratch = [], []
    for i in use:
        truth = components(masks[i])
        ious = np.array([[mask_iou(r.mask, t) for t in truth] for r in regions[i]]).reshape(len(regions[i]), len(truth))
        for t, c in counts.items():
            c.add(len(regions[i]), len(truth), len(match(ious, t)))
        edits.append(edits_needed(ious))
        scratch.append(len(truth))
    return {"regions_iou_0.1": counts[0.1].summary(), "regions_iou_0.5": counts[0.5].summary(),
            "edits_per_image_with_prelabels": float(np.mean(edits)),
            "edits_per_image_from_scratch": float(np.mean(scratch))}


def _box_in_original(region: Region, map_shape: tuple[int, int], original_size: tuple[int, int]) -> tuple[int, ...]:
    """A region's inclusive box from map pixels to the original image's pixels."""
    (h, w), (mh, mw) = original_size, map_shape
    sx, sy = w / mw, h / mh
    x0, y0, x1, y1 = region.box
    return int(x0 * sx), int(y0 * sy), int((x1 + 1) * sx) - 1, int((y1 + 1) * sy) - 1


def box_metrics(regions: Sequence[list[Region]], box_files: Sequence[Path | None], use: list[int],
                map_shape: tuple[int, int], original_sizes: Sequence[tuple[int, int]]) -> dict:
    """Box precision/recall/F1 at IoU 0.5 and the edits-per-image proxy over images ``use``, region
    boxes scaled to each original (H, W) against the boxes in its file (none without a file)."""
    c = MatchCounts()
    edits, scratch = [], []
    for i in use:
        truth = read_boxes(box_files[i]) if box_files[i] else []
        pred = [_box_in_original(r, map_shape, original_sizes[i]) for r in regions[i]]
        ious = np.array([[box_iou(p, t) for t in truth] for p in pred]).reshape(len(pred), len(truth))
        c.add(len(pred), len(truth), len(match(ious, 0.5)))
        edits.append(edits_needed(ious))
        scratch.append(len(truth))
    return {"boxes_iou_0.5": c.summary(), "box_edits_per_image_with_prelabels": float(np.mean(edits)),
            "box_edits_per_image_from_scratch": float(np.mean(scratch))}


def localisation_metrics(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], labels: Sequence[int],
                         judged: Sequence[bool], pixel_threshold: float | None,
                         box_files: Sequence[Path | None] | None = None,
                         original_sizes: Sequence[tuple[int, int]] | None = None, min_area: float = 4.0) -> dict:
    """PRO (to 30 % FPR) where masks exist; with a pixel threshold, region and box metrics too
    (``region_metrics``, ``box_metrics``). Regions come from the images ``judged`` anomalous, as
    ``aoiflow prelabel`` makes them. ``maps``: (H, W) each; ``original_sizes``: (H, W) of the files
    (default: the maps' size); ``box_files``: a box file per image or None."""
    n = len(maps)
    box_files = list(box_files) if box_files is not None else [None] * n
    original_sizes = list(original_sizes) if original_sizes is not None else [np.shape(m) for m in maps]
    _check_aligned(n, masks=masks, labels=labels, judged=judged, box_files=box_files, original_sizes=original_sizes)
    out: dict = {}
    with_mask = _localisable(masks, labels)
    has_defect_mask = any(labels[i] for i in with_mask)
    if has_defect_mask:
        out["pro_30"] = pro_score([np.asarray(maps[i]) for i in with_mask], [masks[i] for i in with_mask])
    if pixel_threshold is None:
        return out
    settings = RegionSettings(pixel_threshold, min_area)
    regions = [find_regions(np.asarray(maps[i]), settings) if judged[i] else [] for i in range(n)]
    if has_defect_mask:
        out.update(region_metrics(regions, masks, with_mask))
    boxed = [i for i in range(n) if box_files[i] is not None or labels[i] == 0]
    if any(box_files[i] for i in boxed):
        out.update(box_metrics(regions, box_files, boxed, np.shape(maps[0]), original_sizes))
    return out


def compute_metrics(scored: ScoredTestSet) -> dict:
    """Image metrics of the records, pixel AUROC and localisation of the maps."""
    ev = scored.evaluation
    labels = ev.labels.tolist()
    pix, n_pix = pixel_auroc(scored.maps, scored.masks, labels)
    localisation = localisation_metrics(
        scored.maps, scored.masks, labels, decide(ev.a, ev.threshold), ev.pixel_threshold,
        [s.boxes_path for s in scored.samples], [x.original_size for x in ev.per_image])
    return {**image_metrics(ev), "pixel_auroc": pix, "pixel_auroc_images": n_pix, "localisation": localisation}


# ---- outputs -------------------------------------------------------------------------------------

def image_hwc(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor -> (H, W, C) array, as the report's panels take images."""
    return t.permute(1, 2, 0).numpy()


def _example_indices(per_image: list[ImageResult], per_kind: int = 1, max_rows: int = 8) -> list[int]:
    """The highest-scoring image of each defect type plus the median normal image."""
    rows: list[int] = []
    for kind in sorted({x.defect_type for x in per_image}):
        idx = sorted((i for i, x in enumerate(per_image) if x.defect_type == kind), key=lambda i: per_image[i].a)
        rows += [idx[len(idx) // 2]] if kind == "good" else idx[-per_kind:]
    return rows[:max_rows]


def _panel_rows(scored: ScoredTestSet) -> list[report.PanelRow]:
    """The example images of the evaluation report, as arrays the report draws."""
    per_image = scored.evaluation.per_image
    rows = []
    for i in _example_indices(per_image):
        x = per_image[i]
        rows.append(report.PanelRow(f"{x.defect_type}: {x.path.name}", image_hwc(scored.images[i]),
                                    image_hwc(scored.reconstructions[i]), (scored.maps[i],), scored.masks[i], x.a))
    return rows


def _score_rows(ev: Evaluation) -> list[list[object]]:
    return [[x.path, x.label, x.defect_type, f"{x.r:.6g}", f"{x.l:.6g}", f"{x.a:.6g}", f"{x.a_hat:.6g}", x.decision]
            for x in ev.per_image]


def _json_ready(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_ready(v) for v in obj]
    return obj


def _write_plots(scored: ScoredTestSet, out: Path, title: str) -> None:
    """roc.png, score_hist.png and panel.png; the panel's map scale spans every test map."""
    ev = scored.evaluation
    report.roc_plot(ev.labels, ev.a, out / "roc.png", title=title)
    report.histogram_plot(ev.labels, ev.a, ev.threshold, out / "score_hist.png")
    vmax = float(scored.maps.max()) if scored.maps.size else 1.0
    report.panel_plot(_panel_rows(scored), out / "panel.png", (report.MapColumn("map", "map value", vmax),))


def scoring_ms(model: TrainedModel, batch: int = 1, calls: int = 30) -> float:
    """Median ms per image to score a batch of ``batch`` images (R, L and the map), PyTorch path.
    With native-resolution patches a batch holds about ``batch`` windows (``score_images``)."""
    s = model.config.model.input_size
    x = torch.rand(batch, model.channels, s, s)
    for _ in range(3):
        model.score(x, batch_size=batch)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        model.score(x, batch_size=batch)
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
    and the per-image records."""
    model = TrainedModel.load(run_dir)
    torch.set_num_threads(threads or model.config.train.threads)
    scored = score_test_set(model, data_root, threshold, progress=progress, exclude=exclude)
    ev = scored.evaluation
    metrics = compute_metrics(scored)
    metrics.update(run=str(run_dir), data=str(data_root), preset=model.config.preset, epoch=model.epoch,
                   excluded=ev.excluded, calibration=model.calibration.to_dict())
    out = Path(out_dir) if out_dir else Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "scores.csv", SCORE_FIELDS, _score_rows(ev))
    atomic_write_text(out / "metrics.json", json.dumps(_json_ready(metrics), indent=2))
    _write_plots(scored, out, f"{model.config.preset or 'run'}")
    report.html_report(out, _json_ready(metrics), f"aoiflow evaluation: {model.config.preset or Path(run_dir).name}")
    return metrics, ev


def evaluate(run_dir: str | Path, data_root: str | Path, out_dir: str | Path | None = None,
             threshold: float | None = None, progress: bool = True, exclude: set[Path] | None = None,
             threads: int | None = None) -> dict:
    """``aoiflow test``: ``evaluate_run`` without the per-image records; returns the metrics."""
    return evaluate_run(run_dir, data_root, out_dir, threshold, progress, exclude, threads)[0]
