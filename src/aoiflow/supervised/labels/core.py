"""The shared part of the label readers: geometry, samples and sets, finding images, fitting
shapes to their image. See ``aoiflow.supervised.labels`` for the conventions."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from aoiflow import data
from aoiflow.fileio import output_stems

FORMATS = ("coco", "labelme", "voc", "yolo", "mask", "mvtec")
# DeepPCB's box type column (its README), for ``read_labels(..., box_types=DEEPPCB_TYPES)``.
DEEPPCB_TYPES = {1: "open", 2: "short", 3: "mousebite", 4: "spur", 5: "spurious copper", 6: "pin-hole"}
MASK_SUFFIXES = {".png", ".bmp", ".tif", ".tiff"}
_BACKGROUND_NAMES = {"background", "_background_", "__background__"}
_MAX_INDEX = 32     # mask values up to this are class indices; a larger maximum means a 0/255 mask
_OUT_TOL = 1.0      # pixels a point may stray outside the image unreported (hand clicks on the edge)
_SHIFT = 8          # fixed-point bits for cv2.fillPoly: outlines keep 1/256-pixel precision
_TIE = 0.01         # see _fill_polygon


class LabelError(ValueError):
    """A label set that cannot be used; ``str()`` names the file and the problem."""


# --- geometry ------------------------------------------------------------------------------------

def _signed_area(pts: np.ndarray) -> float:
    """Shoelace area of a polygon (N, 2); its sign tells the winding."""
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _inset(pts: np.ndarray, d: float) -> np.ndarray:
    """Move every edge of a polygon (N, 2) ``d`` inwards (mitred corners, spikes capped)."""
    keep = np.linalg.norm(pts - np.roll(pts, -1, 0), axis=1) > 1e-9
    pts = pts[keep]
    area = _signed_area(pts) if len(pts) >= 3 else 0.0
    if area == 0.0:
        return pts
    e = np.roll(pts, -1, 0) - pts                      # edge k runs from point k to k + 1
    n = np.stack([-e[:, 1], e[:, 0]], 1) / np.linalg.norm(e, axis=1, keepdims=True)
    n *= math.copysign(1.0, area)                      # inward unit normals
    prev = np.roll(n, 1, 0)                            # the normal of the edge ending at point k
    cos = np.maximum((prev * n).sum(1, keepdims=True), -0.75)
    return pts + d * (prev + n) / (1.0 + cos)


def _fill_polygon(out: np.ndarray, pts: np.ndarray, value: int) -> None:
    """Fill a polygon given in corner coordinates: pixels whose centre is inside (or on) it.

    cv2.fillPoly keeps every pixel whose centre lies within about half a pixel of the outline, a
    half-pixel dilation; moving the outline (half a pixel less ``_TIE``) inwards first makes it the
    centre rule, exact for axis-aligned edges as for boxes. A shape under a pixel wide collapses
    to its middle line, which fillPoly still draws, so hairline cracks are kept."""
    centre = _inset(pts, 0.5 - _TIE) - 0.5
    if len(centre) == 0:
        return
    fixed = np.round(centre * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(out, [fixed], int(value), lineType=cv2.LINE_8, shift=_SHIFT)


def _centre_range(a: float, b: float, n: int) -> tuple[int, int]:
    """Slice of the pixels whose centre lies in [a, b] (corner coordinates), within [0, n)."""
    lo, hi = math.ceil(a - 0.5), math.floor(b - 0.5) + 1
    if hi <= lo:  # thinner than a pixel: keep the pixel under its middle rather than lose it
        lo = math.floor((a + b) / 2)
        hi = lo + 1
    return min(max(lo, 0), n), min(max(hi, 0), n)


def _rle_tools():
    """pycocotools.mask, imported only when a set holds RLE."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise LabelError("COCO RLE segmentations need pycocotools (pip install pycocotools)") from None
    return mask_utils


def _coco_rle(rle: dict) -> dict:
    """A COCO RLE (compressed or a list of counts) in pycocotools' compressed form."""
    mask_utils = _rle_tools()
    if isinstance(rle["counts"], list):
        h, w = rle["size"]
        return mask_utils.frPyObjects(rle, h, w)
    return rle


@dataclass
class Shape:
    """One labelled area of an image in corner coordinates of the actual image.

    ``points``: (N, 2) float (x, y) for a polygon, (4,) x0, y0, x1, y1 for a box; ``rle``: a COCO
    run-length encoding with its own ``size`` [h, w]. ``cls`` (1-based) is set when the class list
    of the whole set is known."""

    label: str
    kind: str  # "polygon", "box" or "rle"
    points: np.ndarray | None = None
    rle: dict | None = field(default=None, repr=False)
    cls: int = 0

    def area(self) -> float:
        """Area in image pixels."""
        if self.kind == "box":
            x0, y0, x1, y1 = self.points
            return max(0.0, x1 - x0) * max(0.0, y1 - y0)
        if self.kind == "polygon":
            return abs(_signed_area(self.points)) if len(self.points) >= 3 else 0.0
        return float(_rle_tools().area(_coco_rle(self.rle)))

    def draw(self, out: np.ndarray, sx: float, sy: float) -> None:
        """Paint ``cls`` into ``out`` (H, W) uint8; (sx, sy) scale image coordinates to ``out``."""
        h, w = out.shape
        if self.kind == "box":
            x0, y0, x1, y1 = self.points * (sx, sy, sx, sy)
            c0, c1 = _centre_range(x0, x1, w)
            r0, r1 = _centre_range(y0, y1, h)
            out[r0:r1, c0:c1] = self.cls
        elif self.kind == "polygon":
            _fill_polygon(out, self.points * (sx, sy), self.cls)
        else:
            m = _rle_tools().decode(_coco_rle(self.rle))
            if m.shape != out.shape:
                m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
            out[m > 0] = self.cls


# --- samples and sets ----------------------------------------------------------------------------

def _read_mask_values(path: Path) -> np.ndarray:
    """A mask file as uint8 (H, W) values: palette indices for palette PNGs, the largest channel
    for colour ones, the high byte for 16-bit ones."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise data.ImageReadError(path, f"not a readable mask image ({exc})") from None
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    if arr.size and arr.max() > 255:
        arr = arr // 256
    return arr.astype(np.uint8)


@dataclass
class LabelledSample:
    """One labelled image: where it is, which label file said so, and how to draw its mask.

    ``size`` is the image's (H, W); ``source`` is the label file (for MVTec negatives, their
    ``good`` folder). The mask is drawn from ``shapes`` and/or the mask file ``mask_path`` each
    time ``mask`` is called; nothing is cached."""

    image_path: Path
    source: Path
    size: tuple[int, int]
    shapes: list[Shape] = field(default_factory=list)
    mask_path: Path | None = None
    # Pixel value -> class name for the mask file. Binary masks hold {255: name}: any value > 127.
    mask_values: dict[int, str] = field(default_factory=dict, repr=False)
    mask_binary: bool = True
    lut: np.ndarray | None = field(default=None, repr=False)  # (256,) uint8: mask value -> class index

    @property
    def positive(self) -> bool:
        """True when the sample holds any defect (shapes or a non-empty mask)."""
        return bool(self.shapes) or bool(self.mask_values)

    def mask(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """uint8 (H, W) class indices, 0 = background, k = ``class_names[k - 1]``; at ``shape``
        (H, W) when given, else at the image size. Geometry is scaled, mask files resized with
        nearest neighbour. Larger shapes are drawn first, so a small defect inside a large one stays."""
        h, w = self.size
        oh, ow = (h, w) if shape is None else (int(shape[0]), int(shape[1]))
        if oh < 1 or ow < 1:
            raise ValueError(f"mask shape must be two positive sizes (H, W), got {shape}")
        out = np.zeros((oh, ow), np.uint8)
        if self.mask_path is not None and self.mask_values:
            out = self.lut[_read_mask_values(self.mask_path)]
            if out.shape != (oh, ow):
                out = cv2.resize(out, (ow, oh), interpolation=cv2.INTER_NEAREST)
        for s in sorted(self.shapes, key=lambda s: -s.area()):
            s.draw(out, ow / w, oh / h)
        return out


@dataclass
class LabelSet:
    """Everything read from one label set: class names (index k + 1 in masks), samples, warnings."""

    class_names: list[str]
    samples: list[LabelledSample]
    warnings: list[str]
    format: str

    def __len__(self) -> int:
        return len(self.samples)

    def positives(self) -> int:
        return sum(s.positive for s in self.samples)

    def negatives(self) -> int:
        return len(self.samples) - self.positives()

    def summary(self) -> str:
        """One line: format, image counts, classes, warnings."""
        text = (f"{self.format}: {len(self.samples)} images ({self.positives()} with defects, "
                f"{self.negatives()} without), {len(self.class_names)} class(es): {', '.join(self.class_names)}")
        return text + (f"; {len(self.warnings)} warning(s)" if self.warnings else "")


# --- finding images ------------------------------------------------------------------------------

def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header only; ImageReadError naming the file when it cannot be read."""
    if not path.is_file():
        raise data.ImageReadError(path, "file not found")
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise data.ImageReadError(path, f"not a readable image ({exc})") from None
    return h, w


class _Context:
    """The image folder, its index by stem, and the warnings collected while reading."""

    def __init__(self, images: Path | None) -> None:
        self.images = images
        self.warnings: list[str] = []
        self._stems: dict[str, Path] | None = None

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def by_stem(self, stem: str) -> Path | None:
        """The image named ``stem``: aoiflow's flat output name (``good__x``) or a plain, unique stem."""
        if self.images is None:
            return None
        if self._stems is None:
            paths = sorted(p for p in self.images.rglob("*") if p.suffix.lower() in data.IMAGE_SUFFIXES and p.is_file())
            plain: dict[str, list[Path]] = defaultdict(list)
            for p in paths:
                plain[p.stem].append(p)
            self._stems = {k: v[0] for k, v in plain.items() if len(v) == 1}
            self._stems.update({name: p for p, name in output_stems(paths, self.images).items()})
        return self._stems.get(stem)

    def locate(self, source: Path, named: str, candidates: list[Path | None]) -> tuple[Path, tuple[int, int]] | None:
        """The first candidate that is a readable image, with its (H, W); else a warning naming
        the label file and the image, and None."""
        for c in candidates:
            if c is not None and c.is_file():
                try:
                    return c, _image_size(c)
                except data.ImageReadError as exc:
                    self.warn(f"{source}: its image {exc}; skipped")
                    return None
        where = f" (looked beside it{f' and in {self.images}' if self.images else ''})"
        self.warn(f"{source}: names image {named}, which is missing{where}; skipped")
        return None

    def in_images(self, *names: str) -> list[Path | None]:
        return [self.images / n for n in names] if self.images is not None else []


def _fit(shapes: list[Shape], declared: tuple, actual: tuple[int, int], source: Path, image: Path,
         ctx: _Context) -> list[Shape]:
    """Scale shapes drawn for an image of the declared (H, W) to the actual image, clip them to it,
    and drop those left with no area; each problem is a warning naming the files."""
    h, w = actual
    try:
        dh, dw = (float(v) if v not in (None, "") else 0.0 for v in declared)
    except (TypeError, ValueError):
        dh = dw = 0.0
    if dh > 0 and dw > 0 and (round(dh), round(dw)) != (h, w):
        ctx.warn(f"{source}: says {image} is {dw:g}x{dh:g} but it is {w}x{h}; shapes scaled to fit")
        for s in shapes:
            if s.points is not None:
                s.points = (s.points.reshape(-1, 2) * (w / dw, h / dh)).reshape(s.points.shape)
    kept, outside = [], False
    for s in shapes:
        if s.kind == "rle":
            if tuple(s.rle["size"]) != (h, w):
                ctx.warn(f"{source}: an RLE of {image} is {s.rle['size'][1]}x{s.rle['size'][0]} but the image "
                         f"is {w}x{h}; resized nearest-neighbour")
            kept.append(s)
            continue
        p = s.points.reshape(-1, 2)
        if (p < -_OUT_TOL).any() or (p[:, 0] > w + _OUT_TOL).any() or (p[:, 1] > h + _OUT_TOL).any():
            outside = True
        s.points = np.clip(p, 0.0, (w, h)).reshape(s.points.shape)
        if s.area() <= 0:
            ctx.warn(f"{source}: a {s.kind} of class {s.label!r} has no area inside {image} ({w}x{h}); skipped")
            continue
        kept.append(s)
    if outside:
        ctx.warn(f"{source}: shapes reach outside {image} ({w}x{h}); clipped to the image")
    return kept


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LabelError(f"{path}: malformed JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: cannot be read ({exc})") from None


def _number_list(values: object) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("coordinates are not all finite numbers")
    return arr


def _names_file(path: Path) -> list[str]:
    """classes.txt: one name a line; a leading background entry is dropped."""
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return names[1:] if names and names[0].lower() in _BACKGROUND_NAMES else names
