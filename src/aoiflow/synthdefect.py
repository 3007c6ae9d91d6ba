"""Synthetic defects painted onto normal images, for the discriminative head (aoiflow.head).

A head that only ever sees normal parts cannot learn what a defect looks like; one that sees
normal parts with made-up defects learns the difference between "the reconstruction misses a
normal feature" and "something foreign is here" without any real defect image. The defects are
deliberately generic, so the head is not tuned to one product:
  - blobs from smooth random noise (stains, holes, glue), and thin random polylines (cracks,
    scratches, broken tracks), as masks;
  - filled with another normal image moved elsewhere (foreign structure), the same image
    shifted (a misplaced feature: spur, short, missing copper), a brightness and contrast
    change, a smooth random texture, or a blurred copy (smear);
  - blended at a random strength, so faint defects are seen as well as strong ones.
The label is the part of the mask where the image visibly changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.nn import functional as F

FILLS = ("other", "shift", "intensity", "texture", "blur")
VISIBLE = 0.03  # mean channel change that counts as a visible defect pixel (images in [0, 1])


def noise_field(size: int, cells: int, rng: np.random.Generator) -> torch.Tensor:
    """(S, S) smooth random field: a ``cells`` x ``cells`` grid of uniform noise upsampled bicubically.
    Written here (value noise, a few lines) rather than adding a Perlin-noise package."""
    grid = torch.from_numpy(rng.random((1, 1, cells, cells), dtype=np.float32))
    return F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)[0, 0]


MIN_AREA = 0.003  # smallest blob, share of the image


def blob_mask(size: int, rng: np.random.Generator, max_area: float = 0.06) -> torch.Tensor:
    """(S, S) 0/1 mask of one or a few blobs covering 0.3 % to ``max_area`` of the image
    (log-uniform in area, so small blobs stay common as ``max_area`` grows)."""
    if not MIN_AREA < max_area < 1:
        raise ValueError(f"max_area {max_area}: expected between {MIN_AREA} and 1")
    cells = int(rng.choice([4, 6, 8, 12]))
    field = noise_field(size, cells, rng) + 0.5 * noise_field(size, cells * 2, rng)
    share = math.exp(rng.uniform(math.log(MIN_AREA), math.log(max_area)))
    return (field >= torch.quantile(field.flatten(), 1.0 - share)).float()


def scratch_mask(size: int, rng: np.random.Generator) -> torch.Tensor:
    """(S, S) 0/1 mask of a thin random polyline (1-3 px wide at 128 px) of 2-5 segments."""
    mask = np.zeros((size, size), np.uint8)
    points = [rng.uniform(0, size, 2)]
    for _ in range(int(rng.integers(2, 6))):
        step = rng.normal(0, size / 6, 2)
        points.append(np.clip(points[-1] + step, 0, size - 1))
    width = max(1, round(rng.uniform(1, 3) * size / 128))
    cv2.polylines(mask, [np.round(np.array(points)).astype(np.int32)], False, 1, width)
    return torch.from_numpy(mask).float()


def _fill(x: torch.Tensor, i: int, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """What image ``i`` of the batch (B, C, S, S) shows inside its defect: (C, S, S) in [0, 1]."""
    img, size = x[i], x.shape[-1]
    if kind == "other":
        j = int(rng.integers(len(x)))
        shift = tuple(int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
        return torch.rot90(x[j].roll(shift, (1, 2)), int(rng.integers(4)), (1, 2))
    if kind == "shift":
        shift = tuple(int(v) * int(rng.choice([-1, 1])) for v in rng.integers(max(2, size // 40), size // 8, 2))
        return img.roll(shift, (1, 2))
    if kind == "intensity":
        return (img * rng.uniform(0.4, 1.6) + rng.uniform(-0.35, 0.35)).clamp(0, 1)
    if kind == "texture":
        noise = noise_field(size, int(rng.choice([8, 16, 32])), rng)
        tex = (noise - noise.mean()) * rng.uniform(0.5, 2.0) + rng.uniform(0.1, 0.9)
        return tex.clamp(0, 1).expand_as(img)
    if kind == "blur":
        k = 2 * int(rng.integers(2, 5)) + 1
        return F.avg_pool2d(img[None], k, 1, k // 2, count_include_pad=False)[0]
    raise ValueError(f"unknown fill {kind!r}; expected one of {FILLS}")


def add_synthetic_defects(x: torch.Tensor, rng: np.random.Generator, share: float = 0.5,
                          max_area: float = 0.06, fills: Sequence[str] = FILLS) -> tuple[torch.Tensor, torch.Tensor]:
    """Paint defects on about ``share`` of a batch of normal images; blobs cover up to ``max_area``,
    each filled with one of ``fills`` (a subset of ``FILLS``) drawn at random.

    x: (B, C, S, S) in [0, 1] -> (images with defects (B, C, S, S), labels (B, 1, S, S) in {0, 1});
    images left normal have an all-zero label.
    """
    out = x.clone()
    labels = torch.zeros(len(x), 1, *x.shape[-2:])
    size = x.shape[-1]
    for i in range(len(x)):
        if rng.random() >= share:
            continue
        mask = scratch_mask(size, rng) if rng.random() < 0.3 else blob_mask(size, rng, max_area)
        strength = rng.uniform(0.4, 1.0)
        fill = _fill(x, i, str(rng.choice(fills)), rng)
        blended = x[i] * (1 - strength * mask) + fill * strength * mask
        out[i] = blended
        labels[i, 0] = mask * ((blended - x[i]).abs().mean(0) > VISIBLE).float()
    return out, labels
