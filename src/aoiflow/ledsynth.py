"""Generated camera frames of packaged LEDs on a tray, with defect masks, in MVTec layout.

Mirrors the reference line: 1280x1024 grey frames under coaxial light, an LED package (1.6 mm LED
in a 2.3 mm region of interest) at a random position and any rotation, uneven illumination,
sensor noise and slight blur. Five package types differ in die position, bond wires and pads; a
dark cathode mark in one corner fixes the orientation, as on real packages. Defects, each with a
pixel mask: ``plate_rift`` (thin crack across the plate; types 1-2), ``unclean`` (stains and
particles; types 1-3) and ``glue_overflow`` (low-contrast glue spilling over an edge; any type).
Deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from aoiflow.fileio import atomic_write_bytes

FRAME_W, FRAME_H = 1280, 1024
TRAY_LEVEL = 0.18
CANON = 512  # canonical rendering size of the region of interest (2.3 mm)
PKG = round(CANON * 1.6 / 2.3)  # the LED package side inside it (1.6 mm)
DEFECT_KINDS = ("plate_rift", "unclean", "glue_overflow")
ALLOWED_TYPES = {"plate_rift": (1, 2), "unclean": (1, 2, 3), "glue_overflow": (1, 2, 3, 4, 5)}
N_TYPES = 5


@dataclass
class PackageType:
    die_xy: tuple[float, float]         # die centre, fraction of the package side
    die_size: float
    wires: tuple[tuple[float, float], ...]  # bond-wire end points (fractions)
    pads: tuple[tuple[float, float, float, float], ...]  # x0, y0, x1, y1 fractions


TYPES = {
    1: PackageType((0.5, 0.5), 0.22, ((0.15, 0.2), (0.85, 0.8)), ((0.05, 0.1, 0.3, 0.3), (0.7, 0.7, 0.95, 0.9))),
    2: PackageType((0.4, 0.55), 0.2, ((0.85, 0.15),), ((0.65, 0.05, 0.95, 0.3),)),
    3: PackageType((0.6, 0.4), 0.25, ((0.15, 0.85), (0.85, 0.85)), ((0.05, 0.7, 0.3, 0.95), (0.7, 0.7, 0.95, 0.95))),
    4: PackageType((0.5, 0.35), 0.18, ((0.2, 0.8), (0.5, 0.85), (0.8, 0.8)), ((0.1, 0.7, 0.9, 0.92),)),
    5: PackageType((0.5, 0.5), 0.3, (), ((0.05, 0.05, 0.25, 0.95), (0.75, 0.05, 0.95, 0.95))),
}


def _fr(v: float) -> int:
    return int(round(PKG * v))


def render_package(kind: int, rng: np.random.Generator) -> np.ndarray:
    """The defect-free region of interest, float32 (CANON, CANON) in [0, 1], package centred."""
    t = TYPES[kind]
    img = np.full((CANON, CANON), TRAY_LEVEL, np.float32)
    off = (CANON - PKG) // 2
    pkg = np.full((PKG, PKG), 0.62 + rng.normal(0, 0.01), np.float32)
    pkg += cv2.GaussianBlur(rng.normal(0, 0.02, (PKG, PKG)).astype(np.float32), (0, 0), 3)  # ceramic grain
    for x0, y0, x1, y1 in t.pads:
        cv2.rectangle(pkg, (_fr(x0), _fr(y0)), (_fr(x1), _fr(y1)), 0.8, -1)
    cx, cy = _fr(t.die_xy[0]), _fr(t.die_xy[1])
    half = _fr(t.die_size / 2)
    cv2.rectangle(pkg, (cx - half, cy - half), (cx + half, cy + half), 0.3, -1)
    cv2.rectangle(pkg, (cx - half // 3, cy - half // 3), (cx + half // 3, cy + half // 3), 0.45, -1)
    for wx, wy in t.wires:
        cv2.line(pkg, (cx, cy), (_fr(wx), _fr(wy)), 0.9, 2, cv2.LINE_AA)
    mark = _fr(0.12)  # cathode mark: a dark triangle in the top-left corner
    cv2.fillPoly(pkg, [np.array([[0, 0], [mark, 0], [0, mark]], np.int32)], 0.18)
    img[off : off + PKG, off : off + PKG] = pkg
    return img


def _plate_rift(img: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    off = (CANON - PKG) // 2
    side = rng.integers(0, 2)
    pts = []
    for i, s in enumerate(np.linspace(0.05, 0.95, 8)):
        j = 0.5 + rng.normal(0, 0.08) + (rng.uniform(-0.3, 0.3) if i == 0 else 0)
        x, y = (s, j) if side else (j, s)
        pts.append((off + _fr(x), off + _fr(y)))
    mask = np.zeros_like(img, np.uint8)
    cv2.polylines(mask, [np.array(pts, np.int32)], False, 1, max(1, int(round(2 * severity))))
    img[mask > 0] -= 0.25 * severity
    return mask > 0


def _unclean(img: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    off = (CANON - PKG) // 2
    mask = np.zeros_like(img, bool)
    for _ in range(rng.integers(1, 3)):  # stains
        blob = np.zeros_like(img)
        c = (off + rng.integers(PKG // 6, PKG * 5 // 6), off + rng.integers(PKG // 6, PKG * 5 // 6))
        axes = (int(rng.integers(12, 35) * severity), int(rng.integers(8, 25) * severity))
        cv2.ellipse(blob, c, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        blob = cv2.GaussianBlur(blob, (0, 0), 4)
        img -= 0.14 * severity * blob
        mask |= blob > 0.3
    for _ in range(rng.integers(2, 6)):  # particles
        c = (off + rng.integers(10, PKG - 10), off + rng.integers(10, PKG - 10))
        r = int(rng.integers(2, 5))
        cv2.circle(img, c, r, float(img[c[1], c[0]] - 0.3 * severity), -1, cv2.LINE_AA)
        cv2.circle(mask.view(np.uint8), c, r + 1, 1, -1)
    return mask


def _glue_overflow(img: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    off = (CANON - PKG) // 2
    blob = np.zeros_like(img)
    edge = rng.integers(0, 4)
    along = off + int(rng.uniform(0.2, 0.8) * PKG)
    pos = [off, off + PKG][edge % 2]
    c = (along, pos) if edge < 2 else (pos, along)
    axes = (int(rng.integers(25, 50) * severity), int(rng.integers(15, 30) * severity))
    angle = 0.0 if edge < 2 else 90.0
    cv2.ellipse(blob, c, axes, angle, 0, 360, 1.0, -1)
    blob = cv2.GaussianBlur(blob, (0, 0), 6)
    # Glue is translucent: it lowers local contrast and adds a soft sheen, barely changing the mean.
    local = cv2.GaussianBlur(img, (0, 0), 8)
    img[:] = img * (1 - 0.6 * blob) + (local + 0.05 * severity) * 0.6 * blob
    return blob > 0.3


DEFECT_FUNCS = {"plate_rift": _plate_rift, "unclean": _unclean, "glue_overflow": _glue_overflow}


def _tray(rng: np.random.Generator) -> np.ndarray:
    base = np.full((FRAME_H, FRAME_W), TRAY_LEVEL, np.float32)
    base += cv2.resize(rng.normal(0, 0.03, (16, 20)).astype(np.float32), (FRAME_W, FRAME_H), interpolation=cv2.INTER_CUBIC)
    return base


def compose_frame(roi: np.ndarray, roi_mask: np.ndarray | None, rng: np.random.Generator,
                  angle: float | None = None, centre: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Place the ROI on a tray frame; returns (uint8 frame, bool mask or None, 2x3 ROI->frame matrix)."""
    angle = float(rng.uniform(-180, 180)) if angle is None else angle
    margin = CANON * 0.75
    centre = centre or (float(rng.uniform(margin, FRAME_W - margin)), float(rng.uniform(margin, FRAME_H - margin)))
    m = cv2.getRotationMatrix2D((CANON / 2, CANON / 2), angle, 1.0)
    m[:, 2] += np.array(centre) - CANON / 2
    frame = _tray(rng)
    body = np.zeros((CANON, CANON), np.float32)
    off = (CANON - PKG) // 2
    body[off : off + PKG, off : off + PKG] = 1
    alpha = cv2.warpAffine(body, m, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR)
    if roi_mask is not None:  # defects reaching past the package (glue) are blended in softly
        soft = cv2.GaussianBlur(roi_mask.astype(np.float32), (0, 0), 3)
        alpha = np.maximum(alpha, cv2.warpAffine(soft, m, (FRAME_W, FRAME_H)))
    warped = cv2.warpAffine(roi, m, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR)
    frame = frame * (1 - alpha) + warped * alpha
    yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W].astype(np.float32)
    g = rng.uniform(-0.25, 0.25, 2)
    frame *= 1 + g[0] * (xx / FRAME_W - 0.5) + g[1] * (yy / FRAME_H - 0.5)  # uneven illumination
    frame = cv2.GaussianBlur(frame, (0, 0), 0.8)                             # slight blur
    frame += rng.normal(0, 0.012, frame.shape).astype(np.float32)             # sensor noise
    mask = None
    if roi_mask is not None:
        mask = cv2.warpAffine(roi_mask.astype(np.uint8), m, (FRAME_W, FRAME_H), flags=cv2.INTER_NEAREST) > 0
    return (np.clip(frame, 0, 1) * 255).round().astype(np.uint8), mask, m


def make_frame(kind: int, defect: str | None, rng: np.random.Generator, severity: float = 1.0,
               angle: float | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """One frame of package type ``kind`` (1-5), with a ``defect`` (or None) and its mask."""
    if defect is not None and kind not in ALLOWED_TYPES[defect]:
        raise ValueError(f"{defect} never occurs on package type {kind} (allowed: {ALLOWED_TYPES[defect]})")
    roi = render_package(kind, rng)
    mask = None
    if defect is not None:
        mask = DEFECT_FUNCS[defect](roi, rng, severity)
        roi = np.clip(roi, 0, 1)
    return compose_frame(roi, mask, rng, angle)


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    return buf.tobytes()


def make_led_dataset(root: str | Path, scale: float = 1.0, seed: int = 0, severity: float = 1.0,
                     progress: bool = True) -> Path:
    """Reference split x ``scale``: train 100 normals per type; test 60 normals per type and 100
    frames per defect kind (spread over the types it may occur on)."""
    from tqdm import tqdm

    root = Path(root)
    rng = np.random.default_rng(seed)
    jobs: list[tuple[str, str, int, str | None]] = []
    n_train, n_test, n_def = (max(1, round(n * scale)) for n in (100, 60, 100))
    for t in range(1, N_TYPES + 1):
        jobs += [("train", "good", t, None)] * n_train + [("test", "good", t, None)] * n_test
    for d in DEFECT_KINDS:
        allowed = ALLOWED_TYPES[d]
        jobs += [("test", d, allowed[i % len(allowed)], d) for i in range(n_def)]
    counters: dict[tuple[str, str], int] = {}
    for split, folder, t, defect in tqdm(jobs, desc="frames", unit="frame", disable=not progress):
        k = counters[(split, folder)] = counters.get((split, folder), 0) + 1
        stem = f"type{t}_{k:04d}"
        frame, mask, _ = make_frame(t, defect, rng, severity)
        atomic_write_bytes(root / split / folder / f"{stem}.png", _png(frame))
        if mask is not None:
            atomic_write_bytes(root / "ground_truth" / folder / f"{stem}.png", _png(mask.astype(np.uint8) * 255))
    return root
