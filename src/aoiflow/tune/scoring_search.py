"""The scoring side of a trial: lambda and score SSIM window searched on one trained model's
cached reconstructions and latents (seconds, not training runs), and the image cache trials share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from aoiflow import data
from aoiflow.calibrate import combined_score, fit_calibration
from aoiflow.config import Config, ScoreConfig
from aoiflow.runs import TrainedModel
from aoiflow.recalibrate import map_stats_sample
from aoiflow.scoring import MapStats, anomaly_map, fit_map_stats, pool_map, score_images
from aoiflow.tune.settings import SearchSpace


class ImageCache:
    """A loader for ``train.fit`` that reads each (image, channels, size) once per search."""

    def __init__(self) -> None:
        self._store: dict[tuple[Path, int, int], tuple[torch.Tensor, tuple[int, int]] | str] = {}

    def __call__(self, paths: list[Path], channels: int, size: int, progress: bool = False) -> data.LoadedImages:
        self._load_missing(paths, channels, size, progress)
        tensors, ok, sizes, skipped = [], [], [], []
        for p in paths:
            entry = self._store[(p, channels, size)]
            if isinstance(entry, str):
                skipped.append((p, entry))
            else:
                tensors.append(entry[0])
                ok.append(p)
                sizes.append(entry[1])
        images = torch.stack(tensors) if tensors else torch.empty(0, channels, size, size)
        return data.LoadedImages(images, ok, sizes, skipped)

    def _load_missing(self, paths: list[Path], channels: int, size: int, progress: bool) -> None:
        missing = [p for p in paths if (p, channels, size) not in self._store]
        fresh = data.load_images(missing, channels, size, progress)
        for p, img, hw in zip(fresh.paths, fresh.images, fresh.original_sizes):
            self._store[(p, channels, size)] = (img, hw)
        for p, why in fresh.skipped:
            self._store[(p, channels, size)] = why  # a skip is remembered too: its warning shows once


@dataclass
class ScoringChoice:
    objective: float            # best validation AUROC over the scoring grid
    lam: float
    score_window: int | None    # None when the score is L1 (no window)
    base_auroc: float           # validation AUROC at the base config's own lambda and window


def search_scoring(model: TrainedModel, normals: torch.Tensor, anomalies: torch.Tensor, space: SearchSpace,
                   base: Config, train_images: torch.Tensor | None = None) -> ScoringChoice:
    """Try every (lambda, score window) on one model's cached outputs; the normals give the
    z-score statistics. Ties go to the setting nearest the base config's."""
    sc = base.scoring
    plain = sc.model_copy(update={"map_normalise": "none"})  # only reconstructions and L are cached
    cached_n = score_images(model.generator, normals, plain, keep_reconstructions=True)
    cached_a = score_images(model.generator, anomalies, plain, keep_reconstructions=True)
    (rec_n, l_n), (rec_a, l_a) = (cached_n.reconstructions, cached_n.l), (cached_a.reconstructions, cached_a.l)
    labels = np.r_[np.zeros(len(normals)), np.ones(len(anomalies))]
    windows = space.score_windows if sc.score == "ssim" else (sc.ssim_window,)
    grid: list[tuple[float, int, float]] = []
    base_auroc = float("nan")
    stats_at = _map_stats_per_window(model, train_images, sc)
    for window in sorted({*windows, sc.ssim_window}):
        stats = stats_at(window)
        r_n, r_a = _pooled_r(normals, rec_n, sc, window, stats), _pooled_r(anomalies, rec_a, sc, window, stats)
        cal = fit_calibration(r_n, l_n, 0.5, sc.false_alarm_rate)
        r_all, l_all = np.r_[r_n, r_a], np.r_[l_n, l_a]
        for lam in sorted({*space.lams, sc.lam}):
            auc = float(roc_auc_score(labels, combined_score(r_all, l_all, cal, lam)))
            if lam == sc.lam and window == sc.ssim_window:
                base_auroc = auc
            if lam in space.lams and window in windows:
                grid.append((lam, window, auc))
    nearest_first = sorted(grid, key=lambda g: (abs(g[0] - sc.lam), abs(g[1] - sc.ssim_window)))
    lam, window, best = max(nearest_first, key=lambda g: g[2])
    return ScoringChoice(best, lam, window if sc.score == "ssim" else None, base_auroc)


def _map_stats_per_window(model: TrainedModel, train_images: torch.Tensor | None, sc: ScoreConfig):
    """window -> per-position map statistics (or None without map normalisation), fitted as
    ``recalibrate.finish_model`` fits them, from the training normals reconstructed once."""
    if sc.map_normalise != "position":
        return lambda window: None
    if train_images is None:
        raise ValueError("scoring with map_normalise: position needs the training images for its statistics")
    sample = map_stats_sample(train_images)
    plain = sc.model_copy(update={"map_normalise": "none"})
    rec = score_images(model.generator, sample, plain, keep_reconstructions=True).reconstructions
    return lambda window: fit_map_stats(anomaly_map(sample, rec, sc.score, window, sc.map_sigma))


def _pooled_r(images: torch.Tensor, reconstructions: torch.Tensor, sc: ScoreConfig, window: int,
              stats: MapStats | None = None) -> np.ndarray:
    """Per-image reconstruction score at SSIM ``window``, pooled as ``sc`` says."""
    amap = anomaly_map(images, reconstructions, sc.score, window, sc.map_sigma)
    if stats is not None:
        amap = stats.apply(amap)
    return pool_map(amap, sc.pooling, sc.topk_fraction).numpy()
