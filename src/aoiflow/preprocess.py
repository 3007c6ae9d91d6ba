"""Raw camera frame -> canonical surface map of the part.

1. grey-scale; threshold (Otsu or a fixed value) to find the part;
2. the part's outer contour and its rotated rectangle; rotate and crop to an axis-aligned view of
   the region of interest (the part plus a margin), optionally turned so a dark corner mark sits
   top-left (resolves the 90-degree ambiguity of a square part);
3. gamma correction applied separately inside and outside the part, each mapping its mean
   brightness to a target.

Frames with no part, several parts, or a part cut by the frame border are skipped with a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from aoiflow import data
from aoiflow.config import PreprocessConfig
from aoiflow.fileio import atomic_write_bytes, write_csv

OUTLINE_FIELDS = ["file", "status", "reason", "x0", "y0", "x1", "y1", "x2", "y2", "x3", "y3",
                  "angle_deg", "gamma_inside", "gamma_outside"]


class SkippedFrame(ValueError):
    """No usable part in a frame; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass
class SurfaceMap:
    """A preprocessed frame.

    image: (S, S) float32 in [0, 1]; inside: (S, S) bool, the part; corners: (4, 2) part corners
    in frame pixels, clockwise from the canonical top-left; angle_deg: counter-clockwise rotation
    of the part in the frame; matrix: 3x3 frame -> canonical transform.
    """

    image: np.ndarray
    inside: np.ndarray
    corners: np.ndarray
    angle_deg: float
    gamma_inside: float
    gamma_outside: float
    matrix: np.ndarray

    def warp_mask(self, mask: np.ndarray) -> np.ndarray:
        """Carry a frame-sized mask (H, W) into the canonical view (nearest neighbour)."""
        s = self.image.shape[0]
        return cv2.warpPerspective(mask.astype(np.uint8), self.matrix, (s, s), flags=cv2.INTER_NEAREST) > 0

    def to_frame(self, canonical: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
        """Carry a canonical-view map (S, S) back onto the frame's pixel grid (0 outside the view)."""
        h, w = frame_hw
        return cv2.warpPerspective(canonical.astype(np.float32), self.matrix, (w, h),
                                   flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def to_grey_uint8(frame: np.ndarray) -> np.ndarray:
    """(H, W[, C]) float in [0, 1] or uint8 -> (H, W) uint8 grey."""
    if frame.dtype != np.uint8:
        frame = (np.clip(frame, 0, 1) * 255).round().astype(np.uint8)
    if frame.ndim == 3:
        frame = frame[..., 0] if frame.shape[2] == 1 else cv2.cvtColor(frame[..., :3], cv2.COLOR_RGB2GRAY)
    return frame


def find_part(grey: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """The part's outer contour (N, 1, 2) and its filled mask (H, W) uint8; SkippedFrame if none."""
    h, w = grey.shape
    smooth = cv2.GaussianBlur(grey, (0, 0), 2)
    if float(smooth.std()) < 2.0:
        raise SkippedFrame("no part found (the frame has no contrast)")
    mode = cv2.THRESH_BINARY_INV if cfg.dark_part else cv2.THRESH_BINARY
    if cfg.threshold == "otsu":
        _, binary = cv2.threshold(smooth, 0, 255, mode | cv2.THRESH_OTSU)
    else:
        _, binary = cv2.threshold(smooth, int(cfg.threshold), 255, mode)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    big = sorted((c for c in contours if cv2.contourArea(c) >= cfg.min_part_fraction * h * w),
                 key=cv2.contourArea, reverse=True)
    if not big:
        raise SkippedFrame("no part found")
    if len(big) > 1 and cv2.contourArea(big[1]) > 0.25 * cv2.contourArea(big[0]):
        raise SkippedFrame(f"several parts found ({len(big)})")
    part = big[0]
    if cv2.contourArea(part) > 0.9 * h * w:
        raise SkippedFrame("no part found (the threshold separates no part from the background)")
    x, y, bw, bh = cv2.boundingRect(part)
    if x <= 1 or y <= 1 or x + bw >= w - 1 or y + bh >= h - 1:
        raise SkippedFrame("part cut by the frame border")
    mask = np.zeros_like(grey)
    cv2.drawContours(mask, [part], -1, 255, -1)
    return part, mask


def _ordered_corners(contour: np.ndarray) -> np.ndarray:
    """Rotated-rectangle corners, clockwise (image y down) from the top-left of the de-rotated view."""
    (cx, cy), _, _ = rect = cv2.minAreaRect(contour)
    pts = cv2.boxPoints(rect)
    pts = pts[np.argsort(np.arctan2(pts[:, 1] - cy, pts[:, 0] - cx))]  # clockwise on screen

    def edge_angle(k: int) -> float:
        dx, dy = pts[(k + 1) % 4] - pts[k]
        return abs(_wrap(math.atan2(dy, dx)))

    # Of the four cyclic starts, take the one whose top edge is closest to horizontal, pointing right.
    return np.roll(pts, -min(range(4), key=edge_angle), axis=0)


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _transform(corners: np.ndarray, margin: float, size: int) -> np.ndarray:
    centre = corners.mean(axis=0)
    grown = centre + (corners - centre) * (1 + 2 * margin)
    dst = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float32) - 0.5
    return cv2.getPerspectiveTransform(grown.astype(np.float32), dst)


def _corner_darkness(view: np.ndarray, inside: np.ndarray) -> list[float]:
    """Mean brightness right at each corner of the part (TL, TR, BR, BL) in the canonical view.

    The patch is small (6 % of the part's side) so it samples the orientation mark itself, not
    pads or dies that may sit near a corner.
    """
    ys, xs = np.nonzero(inside)
    if len(xs) == 0:
        return [0.0] * 4
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    p = max(2, int(0.06 * min(x1 - x0, y1 - y0)))
    boxes = [(y0, x0), (y0, x1 - p + 1), (y1 - p + 1, x1 - p + 1), (y1 - p + 1, x0)]
    return [float(view[y : y + p, x : x + p].mean()) for y, x in boxes]


def _gamma(region: np.ndarray, target: float) -> float:
    if region.size == 0:
        return 1.0
    m = float(np.clip(region.mean(), 1e-3, 1 - 1e-3))
    return float(np.clip(math.log(target) / math.log(m), 0.2, 5.0))


def preprocess_frame(frame: np.ndarray, cfg: PreprocessConfig) -> SurfaceMap:
    """Frame (H, W[, C]) -> SurfaceMap. Raises SkippedFrame when no single whole part is found."""
    grey = to_grey_uint8(frame)
    contour, part_mask = find_part(grey, cfg)
    corners = _ordered_corners(contour)
    size = cfg.size
    matrix = _transform(corners, cfg.margin, size)
    view = cv2.warpPerspective(grey, matrix, (size, size), flags=cv2.INTER_LINEAR).astype(np.float32) / 255
    inside = cv2.warpPerspective(part_mask, matrix, (size, size), flags=cv2.INTER_NEAREST) > 0
    if cfg.orient == "dark_corner":
        k = int(np.argmin(_corner_darkness(view, inside)))
        if k:
            corners = np.roll(corners, -k, axis=0)
            matrix = _transform(corners, cfg.margin, size)
            view = cv2.warpPerspective(grey, matrix, (size, size), flags=cv2.INTER_LINEAR).astype(np.float32) / 255
            inside = cv2.warpPerspective(part_mask, matrix, (size, size), flags=cv2.INTER_NEAREST) > 0
    g_in, g_out = _gamma(view[inside], cfg.target_inside), _gamma(view[~inside], cfg.target_outside)
    out = np.where(inside, np.power(view, g_in), np.power(view, g_out)).astype(np.float32)
    top = corners[1] - corners[0]
    angle = -math.degrees(math.atan2(top[1], top[0]))
    return SurfaceMap(out, inside, corners, angle, g_in, g_out, matrix)


def frame_model_input(path: Path, cfg: PreprocessConfig, channels: int, size: int):
    """A raw frame file -> (model input (C, size, size), the frame (H, W, C), its SurfaceMap):
    what ``predict --raw`` and ``calibrate --raw`` feed the model. Raises ImageReadError or
    SkippedFrame."""
    frame = data.read_image(path)
    surface = preprocess_frame(frame, cfg)
    return data.to_model_input(surface.image[..., None], channels, size), frame, surface


def _outline_row(rel: str, sm: SurfaceMap | None, status: str, reason: str = "") -> list[str]:
    if sm is None:
        return [rel, status, reason] + [""] * 11
    xy = [f"{v:.2f}" for pt in sm.corners for v in pt]
    return [rel, status, reason, *xy, f"{sm.angle_deg:.3f}", f"{sm.gamma_inside:.4f}", f"{sm.gamma_outside:.4f}"]


def _png(arr: np.ndarray) -> bytes:
    return cv2.imencode(".png", arr)[1].tobytes()


def _mask_for(raw: Path, rel: Path) -> tuple[Path, Path] | None:
    """(mask file, its output path) for a frame at test/<kind>/<stem> in an MVTec tree."""
    if len(rel.parts) == 3 and rel.parts[0] == "test":
        # the names data reading accepts (.png/.bmp, with or without _mask), so no mask is lost here
        mask = data._find_mask(raw / "ground_truth" / rel.parts[1], rel.stem)
        if mask is not None:
            return mask, Path("ground_truth") / rel.parts[1] / f"{rel.stem}.png"
    return None


def preprocess_folder(raw_dir: str | Path, out_dir: str | Path, cfg: PreprocessConfig, progress: bool = True) -> dict:
    """Preprocess every frame under ``raw_dir`` (keeping sub-folders; masks under ground_truth/
    follow their frames) into ``out_dir``; writes outlines.csv and preprocess.yaml."""
    from tqdm import tqdm

    from aoiflow.config import Config, save_config

    raw, out = Path(raw_dir), Path(out_dir)
    if not raw.is_dir():
        raise data.DataLayoutError(f"{raw}: folder not found")
    frames = sorted(p for p in raw.rglob("*") if p.is_file() and p.suffix.lower() in data.IMAGE_SUFFIXES
                    and "ground_truth" not in p.relative_to(raw).parts)
    if not frames:
        raise data.DataLayoutError(f"{raw}: contains no images")
    rows, counts = [], {"ok": 0, "skipped": 0, "error": 0}
    for path in tqdm(frames, desc="preprocess", unit="frame", disable=not progress):
        rel = path.relative_to(raw)
        try:
            sm = preprocess_frame(data.read_image(path), cfg)
        except data.ImageReadError as exc:
            rows.append(_outline_row(str(rel), None, "error", exc.problem))
            counts["error"] += 1
            continue
        except SkippedFrame as exc:
            rows.append(_outline_row(str(rel), None, "skipped", exc.reason))
            counts["skipped"] += 1
            continue
        atomic_write_bytes(out / rel.with_suffix(".png"), _png((sm.image * 255).round().astype(np.uint8)))
        mask = _mask_for(raw, rel)
        if mask:
            warped = sm.warp_mask(data.read_mask(mask[0]))
            atomic_write_bytes(out / mask[1], _png(warped.astype(np.uint8) * 255))
        rows.append(_outline_row(str(rel), sm, "ok"))
        counts["ok"] += 1
        if len(rows) % 100 == 0:
            _write_outlines(out, rows)
    _write_outlines(out, rows)
    save_config(Config(preprocess=cfg.model_copy(update={"enabled": True})), out / "preprocess.yaml")
    return counts


def _write_outlines(out: Path, rows: list[list[str]]) -> None:
    write_csv(out / "outlines.csv", OUTLINE_FIELDS, rows)
