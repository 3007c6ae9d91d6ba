"""Anomaly scores and maps from a trained GANomaly generator.

For an image x (values in [0, 1]) with reconstruction x_hat and latents z, z_hat:
  R(x) = mean per-pixel dissimilarity: |x - x_hat| (L1) or 1 - SSIM(x, x_hat) (SSIM)
  L(x) = mean (z - z_hat)^2
  A(x) = lam * (R - mu_R) / sd_R + (1 - lam) * (L - mu_L) / sd_L
with mu/sd measured on held-out normal images at the end of training (see aoiflow.calibrate),
so one new image gets a stable score without seeing any test set. The paper's min-max
normalised score A_hat = minmax(lam * R + (1 - lam) * L) over a scored set is also given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from aoiflow import tiling
from aoiflow.config import ScoreConfig
from aoiflow.model import Generator
from aoiflow.calibrate import Calibration, combined_score  # noqa: F401  (combined_score: re-exported)
from aoiflow.ssim import gaussian_blur, ssim_map

ScoreKind = Literal["l1", "ssim", "ssim_multiscale"]
MULTISCALE_FACTORS = (1, 2, 4)  # the image at full, half and quarter size


@dataclass
class RawScores:
    """Per-image R and L (N,), and optionally maps (N, 1, S, S) and reconstructions (N, C, S, S) in [0, 1]."""

    r: np.ndarray
    l: np.ndarray
    maps: torch.Tensor | None = None
    reconstructions: torch.Tensor | None = None


def anomaly_map(x: torch.Tensor, x_hat: torch.Tensor, kind: ScoreKind, window: int = 11,
                sigma: float = 0.0) -> torch.Tensor:
    """Per-pixel dissimilarity of (B, C, H, W) images in [0, 1] -> (B, 1, H, W), channel-averaged,
    optionally Gaussian-smoothed with ``sigma`` pixels."""
    if kind == "l1":
        amap = (x - x_hat).abs().mean(1, keepdim=True)
    elif kind == "ssim":
        amap = _ssim_residual(x, x_hat, window)
    elif kind == "ssim_multiscale":
        amap = multiscale_ssim_map(x, x_hat, window)
    else:
        raise ValueError(f"score must be 'l1', 'ssim' or 'ssim_multiscale', got {kind!r}")
    return gaussian_blur(amap, sigma)


def multiscale_ssim_map(x: torch.Tensor, x_hat: torch.Tensor, window: int = 11) -> torch.Tensor:
    """(B, C, H, W) pair -> (B, 1, H, W): 1 - SSIM at each of ``MULTISCALE_FACTORS`` (images
    average-pooled by the factor, maps upsampled back), averaged. One window then covers 11, 22 and
    44 pixels of the image, so a defect wider than the window still differs in structure at some
    scale. A map, not Wang et al.'s MS-SSIM index (a product of per-scale terms for one number)."""
    maps = [_ssim_residual(x, x_hat, window)]
    for f in MULTISCALE_FACTORS[1:]:
        m = _ssim_residual(F.avg_pool2d(x, f), F.avg_pool2d(x_hat, f), window)
        maps.append(F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False))
    return torch.stack(maps).mean(0)


def _ssim_residual(x: torch.Tensor, x_hat: torch.Tensor, window: int) -> torch.Tensor:
    """1 - SSIM of (B, C, H, W) images, averaged over channels -> (B, 1, H, W)."""
    return (1.0 - ssim_map(x, x_hat, window)).mean(1, keepdim=True)


def pool_map(amap: torch.Tensor, pooling: str = "mean", topk_fraction: float = 0.01) -> torch.Tensor:
    """(B, 1, H, W) map -> R (B,): the mean of all pixels, or of the highest ``topk_fraction``."""
    flat = amap.flatten(1)
    if pooling == "mean":
        return flat.mean(1)
    if pooling == "topk":
        k = max(1, round(flat.shape[1] * topk_fraction))
        return flat.topk(k, dim=1).values.mean(1)
    raise ValueError(f"pooling must be 'mean' or 'topk', got {pooling!r}")


@dataclass
class MapStats:
    """Per-position mean and spread (S, S) of training normals' maps. For aligned parts a map
    pixel is judged against what normal parts show at that place: where normal parts vary (bond
    wires, print, the border of a resized tile) a high value is expected, where they never vary
    it is not."""

    mean: torch.Tensor
    std: torch.Tensor

    def apply(self, amap: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) map -> the same map in units of the normals' spread at each position."""
        return (amap - self.mean) / self.std

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor] | None) -> "MapStats | None":
        return cls(d["mean"].float(), d["std"].float()) if d else None


def fit_map_stats(maps: torch.Tensor) -> MapStats:
    """From normal maps (N, 1, S, S). The spread is floored at a quarter of its mean, so a
    position where normals never vary (a flat background) does not turn noise into alarms."""
    if len(maps) < 2:
        raise ValueError("per-position map statistics need at least 2 normal images")
    mean, std = maps[:, 0].mean(0), maps[:, 0].std(0)
    return MapStats(mean, std.clamp_min(0.25 * float(std.mean()) + 1e-6))


class ScoringGraph(nn.Module):
    """Image in, verdict inputs out, in one module (what gets exported).

    forward(x): x (B, C, S, S) in [0, 1] -> R (B,), L (B,), A (B,), map (B, 1, S, S).
    A uses the calibration's normalisation, stored as buffers so it travels with the graph.
    """

    def __init__(self, generator: Generator, settings: ScoreConfig, calibration: Calibration,
                 map_stats: MapStats | None = None, head: nn.Module | None = None) -> None:
        super().__init__()
        self.generator = generator.eval()
        self.head = head.eval() if head is not None else None
        self.settings = settings
        stats = [calibration.r_mean, calibration.r_std, calibration.l_mean, calibration.l_std]
        self.register_buffer("stats", torch.tensor(stats, dtype=torch.float32))
        self.map_stats = _required_stats(settings, map_stats, head)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        r, l, amap, _ = _score(self.generator, x, self.settings, self.map_stats, self.head)
        lam = self.settings.lam
        a = lam * (r - self.stats[0]) / self.stats[1] + (1.0 - lam) * (l - self.stats[2]) / self.stats[3]
        return r, l, a, amap


def _required_stats(settings: ScoreConfig, map_stats: MapStats | None,
                    head: nn.Module | None = None) -> MapStats | None:
    """The map statistics to apply: none when a head makes the map (its map is a probability)."""
    if head is not None or settings.map_normalise != "position":
        return None
    if map_stats is None:
        raise ValueError("scoring.map_normalise is 'position' but the run has no per-position map statistics")
    return map_stats


def _score(generator: Generator, x: torch.Tensor, settings: ScoreConfig, map_stats: MapStats | None = None,
           head: nn.Module | None = None):
    patch = generator.image_size
    if x.shape[-2:] == (patch, patch):
        amap, l, x_hat = _window_scores(generator, x, settings, head)
    else:  # native-resolution patches (aoiflow.tiling): score windows, stitch maps back
        grid = tiling.Grid.over(x.shape[-2], x.shape[-1], patch, tiling.default_stride(patch, settings.patch_stride))
        amap, l, x_hat = _window_scores(generator, tiling.split(x, grid), settings, head)
        amap, x_hat, l = tiling.stitch(amap, grid), tiling.stitch(x_hat, grid), tiling.per_image_max(l, grid)
    if map_stats is not None:
        amap = map_stats.apply(amap)
    r = pool_map(amap, settings.pooling, settings.topk_fraction)
    return r, l, amap, x_hat


def _window_scores(generator: Generator, x: torch.Tensor, settings: ScoreConfig, head: nn.Module | None):
    """Model-size windows (B, C, S, S) -> map (B, 1, S, S), L (B,), reconstruction (B, C, S, S)."""
    out = generator(x * 2.0 - 1.0)
    x_hat = (out.reconstruction + 1.0) * 0.5
    if head is not None:  # the head's defect probability, smoothed like a residual map
        residual = anomaly_map(x, x_hat, settings.score, settings.ssim_window)
        amap = gaussian_blur(torch.sigmoid(head(x, x_hat, residual)), settings.map_sigma)
    else:
        amap = anomaly_map(x, x_hat, settings.score, settings.ssim_window, settings.map_sigma)
    l = (out.latent - out.latent_hat).pow(2).flatten(1).mean(1)
    return amap, l, x_hat


@torch.inference_mode()
def score_batch(
    generator: Generator, x: torch.Tensor, settings: ScoreConfig, map_stats: MapStats | None = None,
    head: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score (B, C, S, S) images in [0, 1] -> R (B,), L (B,), map (B, 1, S, S), x_hat (B, C, S, S).
    Puts the networks in eval mode: BatchNorm must use its running statistics, so an image scores
    the same alone or in a batch, and scoring never changes the model. With a ``head`` (aoiflow.head)
    the map is its defect probability instead of the residual."""
    generator.eval()
    if head is not None:
        head.eval()
    return _score(generator, x, settings, _required_stats(settings, map_stats, head), head)


def score_images(
    generator: Generator,
    images: torch.Tensor,
    settings: ScoreConfig,
    batch_size: int = 32,
    keep_maps: bool = False,
    keep_reconstructions: bool = False,
    progress: bool = False,
    map_stats: MapStats | None = None,
    head: nn.Module | None = None,
) -> RawScores:
    """Score (N, C, S, S) images in [0, 1] in batches (the generator is put in eval mode)."""
    from tqdm import tqdm

    rs, ls, maps, recs = [], [], [], []
    batch_size = images_per_batch(images.shape[-2:], generator.image_size, settings, batch_size)
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc="scoring", unit="batch", disable=not progress, leave=False):
        r, l, amap, x_hat = score_batch(generator, images[i : i + batch_size], settings, map_stats, head)
        rs.append(r)
        ls.append(l)
        if keep_maps:
            maps.append(amap)
        if keep_reconstructions:
            recs.append(x_hat)
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    r_all = torch.cat(rs).numpy() if rs else np.zeros(0)
    l_all = torch.cat(ls).numpy() if ls else np.zeros(0)
    return RawScores(r_all, l_all, cat(maps), cat(recs))


def images_per_batch(size: tuple[int, int], patch: int, settings: ScoreConfig, windows: int) -> int:
    """Images per batch so that a batch holds about ``windows`` model-size windows."""
    if tuple(size) == (patch, patch):
        return windows
    grid = tiling.Grid.over(size[0], size[1], patch, tiling.default_stride(patch, settings.patch_stride))
    return max(1, windows // grid.count)


def minmax_score(r: np.ndarray, l: np.ndarray, lam: float) -> np.ndarray:
    """The paper's A_hat: lam * R + (1 - lam) * L min-max scaled over the scored set, in [0, 1]."""
    a = lam * np.asarray(r) + (1.0 - lam) * np.asarray(l)
    span = a.max() - a.min() if len(a) else 0.0
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)
