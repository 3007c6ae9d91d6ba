"""Generated camera frames of packaged LEDs on a tray, with defect masks, in MVTec layout.

Mirrors the reference line: 1280x1024 grey frames under coaxial light, an LED package (1.6 mm LED
in a 2.3 mm region of interest) at a random position and any rotation, uneven illumination,
sensor noise and slight blur. Five package types differ in die position, bond wires and pads; a
dark cathode mark in one corner fixes the orientation, as on real packages. Defects, each with a
pixel mask: ``plate_rift`` (thin crack across the plate; types 1-2), ``unclean`` (stains and
particles; types 1-3) and ``glue_overflow`` (low-contrast glue spilling over an edge; any type).
Deterministic for a seed.

By default all normal parts of a type are alike (grain and noise aside). ``variability`` v in
(0, 1] adds the part-to-part variation of a real line, which the type alone cannot predict: bond
wires (count, ends, bow, gauge), print marks, ragged pads and solder, die offset and size, surface
grain and lighting drift, all scaled by v. At v = 0 no extra random numbers are drawn, so the
frames are those of earlier versions, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


VARIABILITY_LEVELS = {"none": 0.0, "mild": 0.4, "strong": 1.0}


def parse_variability(value: str | float) -> float:
    """A level name (none, mild, strong) or a number from 0 (parts as designed) to 1 (strong)."""
    text = str(value).strip().lower()
    try:
        v = VARIABILITY_LEVELS[text] if text in VARIABILITY_LEVELS else float(text)
    except ValueError:
        v = float("nan")
    if not 0 <= v <= 1:  # NaN fails here too
        raise ValueError(f"variability must be none, mild, strong or a number from 0 to 1, got {value!r}")
    return v


@dataclass
class Wire:
    start: tuple[float, float]  # package pixels
    end: tuple[float, float]
    sag: float = 0.0            # sideways bow at the middle, pixels (0: straight)
    thickness: int = 2
    level: float = 0.9


@dataclass
class Part:
    """One part as drawn, in package pixels: ``nominal_part`` is the type as designed,
    ``varied_part`` a part that differs from it as parts on a real line do."""

    die: tuple[int, int, int]  # centre x, y and half side
    pads: list[np.ndarray]     # outlines (int32 polygons)
    wires: list[Wire]
    pad_level: float = 0.8
    solder: list[tuple[tuple[int, int], tuple[int, int], float, float]] = field(default_factory=list)  # ellipses
    marks: list[tuple[np.ndarray, int, float]] = field(default_factory=list)  # print: segment, width, level
    grain: float = 0.02        # ceramic grain: strength, and scale (blur sigma, pixels)
    grain_sigma: float = 3.0
    mottle: float = 0.0        # coarse shading of the surface


def _fr(v: float) -> int:
    return int(round(PKG * v))


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.int32)  # clockwise on screen


def _pad_rects(t: PackageType) -> list[np.ndarray]:
    return [_rect(_fr(x0), _fr(y0), _fr(x1), _fr(y1)) for x0, y0, x1, y1 in t.pads]


def nominal_part(kind: int) -> Part:
    t = TYPES[kind]
    cx, cy = _fr(t.die_xy[0]), _fr(t.die_xy[1])
    return Part(die=(cx, cy, _fr(t.die_size / 2)), pads=_pad_rects(t),
                wires=[Wire((cx, cy), (_fr(wx), _fr(wy))) for wx, wy in t.wires])


def varied_part(kind: int, rng: np.random.Generator, v: float) -> Part:
    """Type ``kind`` with part-to-part variation of strength ``v`` (0-1]: what the package type
    does not fix (wires, print, solder, die placement, surface) changes from part to part."""
    t = TYPES[kind]
    dx, dy = np.clip(rng.normal(0, 0.04 * v, 2), -0.1, 0.1)  # die placement tolerance
    size = t.die_size * (1 + float(np.clip(rng.normal(0, 0.08 * v), -0.15, 0.15)))
    die = (_fr(t.die_xy[0] + dx), _fr(t.die_xy[1] + dy), _fr(size / 2))
    rects = _pad_rects(t)
    return Part(die=die, pads=[_ragged(r, 3.0 * v * rng.uniform(0.3, 1), rng) for r in rects],
                wires=_varied_wires(t, die, rects, rng, v), pad_level=0.8 + float(rng.normal(0, 0.03 * v)),
                solder=[b for r in rects for b in _solder_blobs(r, rng, v)], marks=_print_marks(rng, v),
                grain=0.02 * float(np.exp(rng.normal(0, 0.45 * v))),
                grain_sigma=3.0 * float(np.exp(rng.uniform(-0.7, 0.7) * v)),
                mottle=0.03 * v * float(rng.uniform(0, 1)))


def _varied_wires(t: PackageType, die: tuple[int, int, int], pads: list[np.ndarray],
                  rng: np.random.Generator, v: float) -> list[Wire]:
    """The type's bond wires with ends moved, one dropped or one or two added, bowed, of varying gauge."""
    moved = [np.clip(np.array(end) + rng.normal(0, 0.05 * v, 2), 0.04, 0.96) for end in t.wires]
    ends = [(_fr(x), _fr(y)) for x, y in moved]
    change = int(rng.choice([-1, 1, 2])) if rng.random() < 0.6 * v else 0
    if change < 0 and ends:
        ends.pop(int(rng.integers(len(ends))))
    ends += [_extra_wire_end(pads, rng) for _ in range(max(change, 0))]
    cx, cy, half = die
    wires = []
    for ex, ey in ends:
        sx, sy = np.array((cx, cy)) + np.clip(rng.normal(0, 0.4 * half * v, 2), -0.8 * half, 0.8 * half)
        sag = float(rng.normal(0, 0.12 * np.hypot(ex - sx, ey - sy))) if rng.random() < 0.7 * v else 0.0
        gauge = int(rng.choice([1, 3])) if rng.random() < 0.6 * v else 2
        level = float(np.clip(0.9 + rng.normal(0, 0.04 * v), 0.78, 1.0))
        wires.append(Wire((float(sx), float(sy)), (float(ex), float(ey)), sag, gauge, level))
    return wires


def _extra_wire_end(pads: list[np.ndarray], rng: np.random.Generator) -> tuple[float, float]:
    """An added bond lands on one of the pads (anywhere inside the plate on a type without pads)."""
    if not pads:
        x, y = rng.uniform(0.15, 0.85, 2) * PKG
        return float(x), float(y)
    pad = pads[int(rng.integers(len(pads)))]
    (x0, y0), (x1, y1) = pad.min(axis=0) + 4, pad.max(axis=0) - 4
    return float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))


def _ragged(rect: np.ndarray, amp: float, rng: np.random.Generator) -> np.ndarray:
    """A rectangle's outline with its edges pushed smoothly in and out by about ``amp`` pixels."""
    pts, normals = [], []
    for i in range(4):
        a, d = rect[i].astype(float), (rect[(i + 1) % 4] - rect[i]).astype(float)
        n = max(2, int(np.hypot(*d) // 6))
        pts += [a + d * k / n for k in range(n)]
        normals += [np.array([d[1], -d[0]]) / max(np.hypot(*d), 1e-9)] * n  # outward (clockwise ring)
    noise = rng.normal(0, 1, len(pts))
    noise = np.convolve(np.r_[noise[-4:], noise, noise[:4]], np.ones(9) / 9, "valid")  # smooth, closed
    noise *= amp / max(noise.std(), 1e-9)
    return np.round(np.array(pts) + np.array(normals) * noise[:, None]).astype(np.int32)


def _solder_blobs(rect: np.ndarray, rng: np.random.Generator, v: float) -> list[tuple]:
    """Solder fillets: bright blobs lying along a pad's edge, a varying number per pad."""
    blobs = []
    for _ in range(rng.poisson(1.5 * v)):
        side, s = int(rng.integers(4)), float(rng.uniform(0.1, 0.9))
        a, b = rect[side].astype(float), rect[(side + 1) % 4].astype(float)
        x, y = a + s * (b - a)
        axes = (int(rng.integers(4, 13)), int(rng.integers(3, 8)))
        angle = (0.0 if side % 2 == 0 else 90.0) + float(rng.normal(0, 15))
        blobs.append(((int(x), int(y)), axes, angle, float(rng.uniform(0.84, 0.95))))
    return blobs


def _print_marks(rng: np.random.Generator, v: float) -> list[tuple[np.ndarray, int, float]]:
    """Print on the plate (code strokes, rows of dots): number, place and direction vary."""
    marks = []
    for _ in range(rng.poisson(3 * v)):
        c = rng.uniform(0.15, 0.85, 2) * PKG
        a = rng.uniform(0, np.pi)
        d = np.array([np.cos(a), np.sin(a)])
        level = float(0.62 - rng.uniform(0.1, 0.2))
        if rng.random() < 0.6:  # a stroke of a code
            half = rng.uniform(0.02, 0.07) * PKG
            marks.append((np.array([c - half * d, c + half * d]), int(rng.integers(2, 4)), level))
        else:  # a row of dots: zero-length segments drawn wide
            step, width = rng.uniform(8, 12), int(rng.integers(4, 7))
            marks += [(np.array([c + k * step * d] * 2), width, level) for k in range(int(rng.integers(1, 5)))]
    return marks


def _pt(xy) -> tuple[int, int]:
    return int(round(xy[0] * 16)), int(round(xy[1] * 16))  # 4 fractional bits (shift=4)


def _draw_wire(pkg: np.ndarray, w: Wire) -> None:
    if not w.sag:
        cv2.line(pkg, _pt(w.start), _pt(w.end), w.level, w.thickness, cv2.LINE_AA, 4)
        return
    a, b = np.array(w.start), np.array(w.end)
    d = b - a
    c = (a + b) / 2 + np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-9) * w.sag
    s = np.linspace(0, 1, 24)[:, None]
    curve = (1 - s) ** 2 * a + 2 * s * (1 - s) * c + s ** 2 * b  # quadratic Bezier
    cv2.polylines(pkg, [np.round(curve * 16).astype(np.int32)], False, w.level, w.thickness, cv2.LINE_AA, 4)


def draw_part(part: Part, rng: np.random.Generator) -> np.ndarray:
    """The defect-free region of interest, float32 (CANON, CANON) in [0, 1], package centred."""
    img = np.full((CANON, CANON), TRAY_LEVEL, np.float32)
    off = (CANON - PKG) // 2
    pkg = np.full((PKG, PKG), 0.62 + rng.normal(0, 0.01), np.float32)
    pkg += cv2.GaussianBlur(rng.normal(0, part.grain, (PKG, PKG)).astype(np.float32), (0, 0), part.grain_sigma)
    if part.mottle:
        coarse = rng.normal(0, 1, (6, 6)).astype(np.float32)
        pkg += part.mottle * cv2.resize(coarse, (PKG, PKG), interpolation=cv2.INTER_CUBIC)
    for seg, width, level in part.marks:
        cv2.line(pkg, _pt(seg[0]), _pt(seg[1]), level, width, cv2.LINE_AA, 4)
    for pad in part.pads:
        cv2.fillPoly(pkg, [pad], part.pad_level)
    for centre, axes, angle, level in part.solder:
        cv2.ellipse(pkg, centre, axes, angle, 0, 360, level, -1, cv2.LINE_AA)
    cx, cy, half = part.die
    cv2.rectangle(pkg, (cx - half, cy - half), (cx + half, cy + half), 0.3, -1)
    cv2.rectangle(pkg, (cx - half // 3, cy - half // 3), (cx + half // 3, cy + half // 3), 0.45, -1)
    for w in part.wires:
        _draw_wire(pkg, w)
    mark = _fr(0.12)  # cathode mark: a dark triangle in the top-left corner
    cv2.fillPoly(pkg, [np.array([[0, 0], [mark, 0], [0, mark]], np.int32)], 0.18)
    img[off : off + PKG, off : off + PKG] = pkg
    return img


def render_package(kind: int, rng: np.random.Generator, variability: float = 0.0) -> np.ndarray:
    """The defect-free region of interest of a type-``kind`` part, float32 (CANON, CANON) in [0, 1].
    At ``variability`` 0 the part is as designed and no extra random numbers are drawn."""
    return draw_part(varied_part(kind, rng, variability) if variability > 0 else nominal_part(kind), rng)


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


def _lighting_drift(rng: np.random.Generator, v: float, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Per-frame lighting change beyond the usual unevenness: overall gain, more tilt, a soft hot spot."""
    gain = 1 + float(np.clip(rng.normal(0, 0.1 * v), -0.25, 0.25))
    tilt = rng.uniform(-0.25, 0.25, 2) * v
    sx, sy = rng.uniform(0, FRAME_W), rng.uniform(0, FRAME_H)
    spot = rng.uniform(-0.15, 0.15) * v * np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * (0.3 * FRAME_W) ** 2))
    return gain * (1 + tilt[0] * (xx / FRAME_W - 0.5) + tilt[1] * (yy / FRAME_H - 0.5) + spot)


def compose_frame(roi: np.ndarray, roi_mask: np.ndarray | None, rng: np.random.Generator,
                  angle: float | None = None, centre: tuple[float, float] | None = None,
                  variability: float = 0.0) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
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
    if variability > 0:
        frame *= _lighting_drift(rng, variability, xx, yy)
    frame = cv2.GaussianBlur(frame, (0, 0), 0.8)                             # slight blur
    frame += rng.normal(0, 0.012, frame.shape).astype(np.float32)             # sensor noise
    mask = None
    if roi_mask is not None:
        mask = cv2.warpAffine(roi_mask.astype(np.uint8), m, (FRAME_W, FRAME_H), flags=cv2.INTER_NEAREST) > 0
    return (np.clip(frame, 0, 1) * 255).round().astype(np.uint8), mask, m


def make_frame(kind: int, defect: str | None, rng: np.random.Generator, severity: float = 1.0,
               angle: float | None = None,
               variability: float = 0.0) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """One frame of package type ``kind`` (1-5), with a ``defect`` (or None) and its mask;
    ``variability`` (0-1) varies the part itself and the lighting (see ``varied_part``)."""
    if defect is not None and kind not in ALLOWED_TYPES[defect]:
        raise ValueError(f"{defect} never occurs on package type {kind} (allowed: {ALLOWED_TYPES[defect]})")
    roi = render_package(kind, rng, variability)
    mask = None
    if defect is not None:
        mask = DEFECT_FUNCS[defect](roi, rng, severity)
        roi = np.clip(roi, 0, 1)
    return compose_frame(roi, mask, rng, angle, variability=variability)


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    return buf.tobytes()


def make_led_dataset(root: str | Path, scale: float = 1.0, seed: int = 0, severity: float = 1.0,
                     progress: bool = True, variability: float | str = 0.0) -> Path:
    """Reference split x ``scale``: train 100 normals per type; test 60 normals per type and 100
    frames per defect kind (spread over the types it may occur on). ``variability`` (0-1, see
    ``parse_variability``) makes normal parts differ from one another; 0 gives the parts as designed."""
    from tqdm import tqdm

    variability = parse_variability(variability)
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
        frame, mask, _ = make_frame(t, defect, rng, severity, variability=variability)
        atomic_write_bytes(root / split / folder / f"{stem}.png", _png(frame))
        if mask is not None:
            atomic_write_bytes(root / "ground_truth" / folder / f"{stem}.png", _png(mask.astype(np.uint8) * 255))
    return root
