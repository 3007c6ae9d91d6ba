"""Native-resolution patches: split an image into overlapping model-size windows, and put the
per-window outputs back together at full size.

Resizing a 640-pixel PCB to the model's 128 pixels leaves a 10-pixel defect two pixels wide; a
window of the full-resolution image keeps it ten. Training takes random windows (``random_crops``);
scoring slides windows with overlap (``split``) and ``stitch`` keeps, of each window's output, only
the part nearer its centre than any other window's centre, so every pixel is judged with context
on all sides (a reconstruction is worst at its window's border) and no seam averages two outputs.

Every position is a Python int fixed by the image size, so the graph exports to ONNX as plain
slices and concatenations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start offsets of windows of ``patch`` covering ``size`` pixels, ``stride`` apart; the last
    window ends at the edge. ``window_starts(640, 128, 96)`` -> [0, 96, ..., 480, 512]."""
    if patch <= 0 or stride <= 0:
        raise ValueError(f"patch and stride must be positive, got {patch} and {stride}")
    if size < patch:
        raise ValueError(f"an image side of {size} px is smaller than the {patch} px window")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def default_stride(patch: int, stride: int = 0) -> int:
    """``stride`` when set, else three quarters of the window (a quarter of overlap each side)."""
    return stride if stride > 0 else max(1, patch * 3 // 4)


@dataclass(frozen=True)
class Grid:
    """Where the windows of one image size lie: start offsets along each axis."""

    patch: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def over(cls, height: int, width: int, patch: int, stride: int) -> "Grid":
        return cls(patch, tuple(window_starts(height, patch, stride)), tuple(window_starts(width, patch, stride)))

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def height(self) -> int:
        return self.ys[-1] + self.patch

    @property
    def width(self) -> int:
        return self.xs[-1] + self.patch


def _cuts(starts: tuple[int, ...], patch: int) -> list[tuple[int, int]]:
    """For each window along one axis, the [lo, hi) range of image pixels it is kept for: the
    boundary between two windows lies in the middle of their overlap."""
    edges = [0] + [(b + a + patch) // 2 for a, b in zip(starts, starts[1:])] + [starts[-1] + patch]
    return list(zip(edges[:-1], edges[1:]))


def split(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B, C, H, W) -> (B * P, C, p, p) windows, image-major (all windows of image 0 first)."""
    p = grid.patch
    windows = [x[:, :, y:y + p, x0:x0 + p] for y in grid.ys for x0 in grid.xs]
    return torch.stack(windows, 1).reshape(-1, x.shape[1], p, p)


def stitch(windows: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B * P, C, p, p) per-window outputs -> (B, C, H, W): each pixel from the window whose
    centre is nearest."""
    p = grid.patch
    w = windows.reshape(-1, grid.count, windows.shape[1], p, p)
    rows = []
    for i, (y, (y0, y1)) in enumerate(zip(grid.ys, _cuts(grid.ys, p))):
        pieces = [w[:, i * len(grid.xs) + j, :, y0 - y:y1 - y, x0 - x:x1 - x]
                  for j, (x, (x0, x1)) in enumerate(zip(grid.xs, _cuts(grid.xs, p)))]
        rows.append(torch.cat(pieces, -1))
    return torch.cat(rows, -2)


def per_image_max(values: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B * P,) per-window values -> (B,): the largest window of each image."""
    return values.reshape(-1, grid.count).amax(1)


def random_crops(x: torch.Tensor, patch: int, generator: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, p, p): one window per image at a random place (seeded)."""
    b, _, h, w = x.shape
    if h == patch and w == patch:
        return x
    ys = torch.randint(0, h - patch + 1, (b,), generator=generator).tolist()
    xs = torch.randint(0, w - patch + 1, (b,), generator=generator).tolist()
    return torch.stack([x[i, :, y:y + patch, x0:x0 + patch] for i, (y, x0) in enumerate(zip(ys, xs))])


def grid_windows(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * P, C, p, p) windows with little overlap (stride = patch): a fixed
    sample of every part of the image, for validation losses."""
    if x.shape[-1] == patch and x.shape[-2] == patch:
        return x
    return split(x, Grid.over(x.shape[-2], x.shape[-1], patch, patch))
