"""Label sets read back as per-pixel class masks, for training the supervised defect-kind model.

Six layouts are read: COCO, LabelMe, Pascal VOC, YOLO (boxes or polygons), mask PNGs and the
MVTec folder layout (``test/<kind>/`` with ``ground_truth/<kind>/`` masks or ``annotations_bbox``
boxes). Geometry is kept in corner coordinates of the actual image (pixel (x, y) spans
[x, x + 1) x [y, y + 1), as COCO and YOLO use), and a pixel belongs to a polygon or a box when its
centre lies inside. Masks are drawn only when asked for (``LabelledSample.mask``): a set of
thousands of images holds only outlines in memory.

Written with json, xml.etree, PyYAML, OpenCV and Pillow; pycocotools (BSD) only decodes COCO RLE.
Problems that spoil one file are collected in ``LabelSet.warnings`` and the file is skipped;
problems that spoil the set raise ``LabelError``, naming the file.
"""

from __future__ import annotations

import json
import math
import warnings
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml
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


# --- COCO ----------------------------------------------------------------------------------------

def _coco_shapes(ann: dict, cats: dict[int, str], path: Path, ctx: _Context) -> list[Shape]:
    """The shapes of one COCO annotation: RLE, polygons, or else its bbox."""
    try:
        label = cats[int(ann.get("category_id"))]
    except (KeyError, TypeError, ValueError):
        raise LabelError(f"{path}: annotation {ann.get('id')} has category_id {ann.get('category_id')!r}, "
                         f"which is not among the categories (ids {sorted(cats)})") from None
    seg, bbox = ann.get("segmentation"), ann.get("bbox")
    try:
        if isinstance(seg, dict) and "counts" in seg and "size" in seg:
            return [Shape(label, "rle", rle=seg)]
        if isinstance(seg, list) and seg:
            parts = seg if isinstance(seg[0], list) else [seg]
            polys = [_number_list(p).reshape(-1, 2) for p in parts if len(p) >= 6 and len(p) % 2 == 0]
            if polys:
                return [Shape(label, "polygon", p) for p in polys]
        if isinstance(bbox, list) and len(bbox) == 4:
            x, y, bw, bh = _number_list(bbox)
            return [Shape(label, "box", np.array([x, y, x + bw, y + bh]))]
    except (ValueError, TypeError) as exc:
        ctx.warn(f"{path}: annotation {ann.get('id')}: unusable geometry ({exc}); skipped")
        return []
    ctx.warn(f"{path}: annotation {ann.get('id')} has no polygon, RLE or bbox; skipped")
    return []


def _read_coco(path: Path, ctx: _Context, **_: object) -> tuple[list[LabelledSample], list[str]]:
    """COCO instances file -> samples (images without annotations are negatives), category order."""
    doc = _load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not isinstance(doc.get("categories"), list):
        raise LabelError(f"{path}: not a COCO file (expected 'images', 'annotations' and 'categories' lists)")
    try:
        cats = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
    except (KeyError, TypeError, ValueError):
        raise LabelError(f"{path}: a category has no integer 'id' or no 'name'") from None
    by_image: dict[object, list[dict]] = defaultdict(list)
    for ann in doc.get("annotations") or []:
        if isinstance(ann, dict):
            by_image[ann.get("image_id")].append(ann)
    samples, seen = [], set()
    for im in doc["images"]:
        if not isinstance(im, dict) or "id" not in im or not im.get("file_name"):
            ctx.warn(f"{path}: image entry {str(im)[:80]} has no 'id' or 'file_name'; skipped")
            continue
        seen.add(im["id"])
        name = str(im["file_name"]).replace("\\", "/")
        found = ctx.locate(path, name, [*ctx.in_images(name, Path(name).name), path.parent / name,
                                        path.parent / "images" / name])
        if found is None:
            continue
        image, hw = found
        shapes = [s for ann in by_image.get(im["id"], []) for s in _coco_shapes(ann, cats, path, ctx)]
        shapes = _fit(shapes, (im.get("height"), im.get("width")), hw, path, image, ctx)
        samples.append(LabelledSample(image, path, hw, shapes))
    orphans = [k for k in by_image if k not in seen]
    if orphans:
        ctx.warn(f"{path}: annotations name image ids not in 'images' ({', '.join(map(str, orphans[:5]))}); ignored")
    return samples, list(cats.values())


# --- LabelMe -------------------------------------------------------------------------------------

def _circle(c: np.ndarray, edge: np.ndarray, n: int = 64) -> np.ndarray:
    r = float(np.linalg.norm(edge - c))
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return c + r * np.stack([np.cos(t), np.sin(t)], 1)


def _labelme_shape(raw: dict) -> Shape | str:
    """One LabelMe shape (points on pixel centres, as labelme and aoiflow's writer use) -> a
    Shape in corner coordinates, or the reason it is skipped."""
    label, kind = str(raw.get("label", "")), raw.get("shape_type") or "polygon"
    try:
        pts = _number_list(raw.get("points")).reshape(-1, 2) + 0.5
    except (ValueError, TypeError) as exc:
        return f"shape {label!r}: bad points ({exc})"
    if kind == "polygon" and len(pts) >= 3:
        return Shape(label, "polygon", pts)
    if kind == "rectangle" and len(pts) == 2:
        return Shape(label, "box", np.concatenate([pts.min(0), pts.max(0)]))
    if kind == "circle" and len(pts) == 2:
        return Shape(label, "polygon", _circle(pts[0], pts[1]))
    return f"shape {label!r}: {kind} with {len(pts)} point(s) is not an area (polygon, rectangle, circle)"


def _read_labelme(root: Path, ctx: _Context, **_: object) -> tuple[list[LabelledSample], None]:
    """A folder of LabelMe .json files (or one file) -> samples."""
    files = [root] if root.is_file() else sorted(root.rglob("*.json"))
    samples, problems = [], []
    for f in files:
        try:
            doc = _load_json(f)
            if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
                raise LabelError(f"{f}: not a LabelMe file (no 'shapes' list)")
            if not doc.get("imagePath"):
                raise LabelError(f"{f}: no 'imagePath'")
        except LabelError as exc:
            problems.append(str(exc))
            ctx.warn(f"{exc}; skipped")
            continue
        ref = str(doc["imagePath"]).replace("\\", "/")
        found = ctx.locate(f, ref, [f.parent / ref, *ctx.in_images(Path(ref).name), f.parent / Path(ref).name])
        if found is None:
            continue
        shapes = []
        for raw in doc["shapes"]:
            s = _labelme_shape(raw if isinstance(raw, dict) else {})
            if isinstance(s, str):
                ctx.warn(f"{f}: {s}; skipped")
            else:
                shapes.append(s)
        shapes = _fit(shapes, (doc.get("imageHeight"), doc.get("imageWidth")), found[1], f, found[0], ctx)
        samples.append(LabelledSample(found[0], f, found[1], shapes))
    if not samples and problems:
        raise LabelError(f"{root}: no usable LabelMe file; first problem: {problems[0]}")
    return samples, None


# --- Pascal VOC ----------------------------------------------------------------------------------

def _voc_box(obj: ET.Element) -> Shape | str:
    """One VOC <object> (1-based inclusive pixel bounds) -> a box in corner coordinates."""
    label = (obj.findtext("name") or "").strip()
    try:
        x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax"))
    except (TypeError, ValueError):
        return f"object {label!r} has no numeric <bndbox>"
    return Shape(label, "box", np.array([min(x0, x1) - 1, min(y0, y1) - 1, max(x0, x1), max(y0, y1)]))


def _read_voc(root: Path, ctx: _Context, **_: object) -> tuple[list[LabelledSample], None]:
    """A folder of Pascal VOC .xml files (or one file) -> samples."""
    files = [root] if root.is_file() else sorted(root.rglob("*.xml"))
    samples, problems = [], []
    for f in files:
        try:
            ann = ET.parse(f).getroot()
            if ann.tag != "annotation" or not (ann.findtext("filename") or ann.findtext("path")):
                raise ET.ParseError("not a VOC <annotation> with a <filename>")
        except (ET.ParseError, OSError) as exc:
            problems.append(f"{f}: malformed VOC XML ({exc})")
            ctx.warn(f"{problems[-1]}; skipped")
            continue
        name = (ann.findtext("filename") or "").strip()
        stored = (ann.findtext("path") or "").strip()
        stem = Path(name or stored).stem
        candidates = [*ctx.in_images(name), f.parent / name if name else None, Path(stored) if stored else None,
                      ctx.by_stem(stem), ctx.by_stem(f.stem)]
        found = ctx.locate(f, name or stored, candidates)
        if found is None:
            continue
        shapes = []
        for obj in ann.iter("object"):
            s = _voc_box(obj)
            if isinstance(s, str):
                ctx.warn(f"{f}: {s}; skipped")
            else:
                shapes.append(s)
        shapes = _fit(shapes, (ann.findtext("size/height"), ann.findtext("size/width")), found[1], f, found[0], ctx)
        samples.append(LabelledSample(found[0], f, found[1], shapes))
    if not samples and problems:
        raise LabelError(f"{root}: no usable VOC file; first problem: {problems[0]}")
    return samples, None


# --- YOLO ----------------------------------------------------------------------------------------

def _names_file(path: Path) -> list[str]:
    """classes.txt: one name a line; a leading background entry is dropped."""
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return names[1:] if names and names[0].lower() in _BACKGROUND_NAMES else names


def _yaml_names(path: Path) -> tuple[list[str] | None, dict]:
    """'names' of a YOLO data.yaml (a list, or a dict id -> name) and the whole document."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: malformed YAML ({exc})") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, dict):
        try:
            ids = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise LabelError(f"{path}: 'names' keys must be class ids (0, 1, ...)") from None
        names = [ids.get(i, f"class_{i}") for i in range(max(ids, default=-1) + 1)]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    elif names is not None:
        raise LabelError(f"{path}: 'names' must be a list or a mapping id -> name")
    return names, doc if isinstance(doc, dict) else {}


def _yolo_setup(root: Path, ctx: _Context) -> tuple[Path, list[str] | None, str]:
    """The folder of .txt files, the class names and where they came from; finds the images
    (``images/`` beside the labels or data.yaml's 'path') when none were given."""
    label_dir = root / "labels" if (root / "labels").is_dir() else root
    yamls = [p for n in ("data.yaml", "dataset.yaml", "data.yml") for p in (root / n, root.parent / n) if p.is_file()]
    names, doc, origin = None, {}, ""
    if yamls:
        names, doc = _yaml_names(yamls[0])
        origin = str(yamls[0])
    if names is None:
        for p in (root / "classes.txt", label_dir / "classes.txt", root.parent / "classes.txt"):
            if p.is_file():
                names, origin = _names_file(p), str(p)
                break
    if ctx.images is None:
        stated = Path(str(doc.get("path", ""))) if doc.get("path") else None
        train = stated / str(doc.get("train", "")) if stated else None
        for c in (root / "images", root.parent / "images", train, stated):
            if c is not None and c.is_dir():
                ctx.images = c
                break
        else:
            raise LabelError(f"{root}: YOLO labels need the image folder (pass images=); none found beside them")
    return label_dir, names, origin


def _yolo_line(values: list[float], hw: tuple[int, int]) -> tuple[str, np.ndarray] | None:
    """Normalised ``cx cy w h`` or ``x1 y1 x2 y2 ...`` -> (kind, corner coordinates in pixels)."""
    h, w = hw
    if len(values) == 4:
        cx, cy, bw, bh = values
        return "box", np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
    if len(values) >= 6 and len(values) % 2 == 0:
        return "polygon", np.array(values, np.float64).reshape(-1, 2) * (w, h)
    return None


def _read_yolo(root: Path, ctx: _Context, **_: object) -> tuple[list[LabelledSample], list[str]]:
    """YOLO .txt files (boxes or polygons, one object a line) + class names -> samples.
    An empty .txt is a negative; a class id beyond the names is an error naming file and line."""
    label_dir, names, origin = _yolo_setup(root, ctx)
    if names is None:
        ctx.warn(f"{root}: no data.yaml or classes.txt; classes named class_<id>")
    glob = label_dir.rglob if label_dir != root else label_dir.glob
    files = sorted(p for p in glob("*.txt") if p.name != "classes.txt")
    samples, used = [], set()
    for f in files:
        image = ctx.by_stem(f.stem)
        found = ctx.locate(f, f"{f.stem}.*", [image]) if image else None
        if found is None:
            if image is None:
                ctx.warn(f"{f}: no image named {f.stem}.* in {ctx.images}; skipped")
            continue
        shapes = []
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                values = [float(v) for v in parts]
                if not all(map(math.isfinite, values)):
                    raise ValueError
            except ValueError:
                ctx.warn(f"{f}:{n}: not a line of finite numbers; skipped")
                continue
            cid = values[0]
            if cid != int(cid) or cid < 0 or (names is not None and cid >= len(names)):
                known = f"ids 0..{len(names) - 1} in {origin}" if names else "ids >= 0"
                raise LabelError(f"{f}:{n}: class id {parts[0]} is not a known class ({known})")
            geometry = _yolo_line(values[1:], found[1])
            if geometry is None:
                ctx.warn(f"{f}:{n}: expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...', "
                         f"got {len(values) - 1} numbers; skipped")
                continue
            label = names[int(cid)] if names else f"class_{int(cid)}"
            used.add(int(cid))
            shapes.append(Shape(label, *geometry))
        shapes = _fit(shapes, (None, None), found[1], f, found[0], ctx)
        samples.append(LabelledSample(found[0], f, found[1], shapes))
    return samples, names if names is not None else [f"class_{i}" for i in sorted(used)]


# --- mask PNGs -----------------------------------------------------------------------------------

def _read_masks(root: Path, ctx: _Context, **_: object) -> tuple[list[LabelledSample], list[str] | None]:
    """A folder of mask images named like the images (``x.png`` or ``x_mask.png``).

    0 is background. Masks whose values stay within 0..32 hold class indices (names from
    classes.txt, else ``class_<k>``); others are 0/255 masks, one class (the first name in
    classes.txt, else "defect"), any value > 127 being defect."""
    if ctx.images is None:
        raise LabelError(f"{root}: mask labels need the image folder (pass images=)")
    names = _names_file(root / "classes.txt") if (root / "classes.txt").is_file() else None
    scanned = []
    for f in sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in MASK_SUFFIXES):
        stem = f.stem
        image = ctx.by_stem(stem) or (ctx.by_stem(stem.removesuffix("_mask")) if stem.endswith("_mask") else None)
        if image is None:
            ctx.warn(f"{f}: no image named {stem.removesuffix('_mask')}.* in {ctx.images}; skipped")
            continue
        found = ctx.locate(f, image.name, [image])
        try:
            values = _read_mask_values(f)
        except data.ImageReadError as exc:
            ctx.warn(f"{exc}; skipped")
            continue
        if found is not None:
            scanned.append((f, found, values.shape, np.unique(values)))
    indexed = any(1 < v.max() <= _MAX_INDEX for *_, v in scanned)
    binary_name = names[0] if names else ("class_1" if indexed else "defect")
    samples = []
    for f, (image, hw), mhw, values in scanned:
        sample = LabelledSample(image, f, hw, mask_path=f, mask_binary=values.max() > _MAX_INDEX)
        if sample.mask_binary:
            sample.mask_values = {255: binary_name} if (values > 127).any() else {}
        else:
            sample.mask_values = {int(v): _index_name(int(v), names, indexed, binary_name, f) for v in values if v > 0}
        _check_mask_size(f, mhw, image, hw, ctx)
        samples.append(sample)
    # Without classes.txt, class_<k> in the order of k (class_10 after class_2).
    by_value = sorted({(v, n) for s in samples for v, n in s.mask_values.items()})
    return samples, names or [n for _, n in by_value]


def _index_name(v: int, names: list[str] | None, indexed: bool, binary_name: str, f: Path) -> str:
    if names is not None:
        if v > len(names):
            raise LabelError(f"{f}: mask value {v} has no class name ({len(names)} names in classes.txt)")
        return names[v - 1]
    return f"class_{v}" if indexed else binary_name


def _check_mask_size(f: Path, mhw: tuple[int, int], image: Path, hw: tuple[int, int], ctx: _Context) -> None:
    if tuple(mhw) != tuple(hw):
        ctx.warn(f"{f}: mask is {mhw[1]}x{mhw[0]} but {image} is {hw[1]}x{hw[0]}; resized nearest-neighbour")


# --- MVTec layout --------------------------------------------------------------------------------

def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}.png", f"{stem}_mask.png", f"{stem}.bmp", f"{stem}_mask.bmp"):
        if (gt_dir / name).is_file():
            return gt_dir / name
    return None


def _box_file(path: Path, kind: str, box_types: Mapping[int, str] | None, ctx: _Context) -> list[Shape]:
    """``x1 y1 x2 y2 [type]`` lines (inclusive pixel bounds, DeepPCB style) -> boxes; the class is
    ``box_types[type]`` when given, else the kind."""
    shapes = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.replace(",", " ").split()
        try:
            x0, y0, x1, y1 = (float(v) for v in parts[:4])
            label = box_types[int(float(parts[4]))] if box_types else kind
        except (ValueError, IndexError, KeyError):
            if parts:
                ctx.warn(f"{path}:{n}: expected 'x1 y1 x2 y2{' type' if box_types else ''}' with a known type; skipped")
            continue
        shapes.append(Shape(label, "box", np.array([min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1])))
    return shapes


def _mvtec_defect(root: Path, kind: str, image: Path, hw: tuple[int, int], ctx: _Context,
                  box_types: Mapping[int, str] | None) -> LabelledSample | None:
    """A test/<kind> image with its mask (class = kind) or its boxes; None (warned) without either."""
    mask = _find_mask(root / "ground_truth" / kind, image.stem)
    if mask is not None:
        try:
            values = _read_mask_values(mask)
        except data.ImageReadError as exc:
            ctx.warn(f"{exc}; {image} skipped")
            return None
        _check_mask_size(mask, values.shape, image, hw, ctx)
        if not (values > 127).any():
            ctx.warn(f"{mask}: mask of {image} is empty; the image counts as a negative")
        return LabelledSample(image, mask, hw, mask_path=mask, mask_values={255: kind} if (values > 127).any() else {})
    boxes = root / "annotations_bbox" / kind / f"{image.stem}.txt"
    if boxes.is_file():
        shapes = _fit(_box_file(boxes, kind, box_types, ctx), (None, None), hw, boxes, image, ctx)
        return LabelledSample(image, boxes, hw, shapes)
    ctx.warn(f"{image}: a {kind!r} image with no mask in {root / 'ground_truth' / kind} and no boxes; skipped")
    return None


def _read_mvtec(root: Path, ctx: _Context, include_train_good: bool = False, box_types: Mapping[int, str] | None = None,
                **_: object) -> tuple[list[LabelledSample], list[str] | None]:
    """ROOT/test/<kind>/ images; class = kind, ``good`` (and train/good when asked) = negatives."""
    test = root / "test"
    if not test.is_dir():
        raise LabelError(f"{test}: missing; expected ROOT/test/good and ROOT/test/<defect kind>")
    folders = [d for d in sorted(test.iterdir()) if d.is_dir()]
    if include_train_good:
        folders.append(root / "train" / data.NORMAL_LABEL)
    samples = []
    for folder in folders:
        if not folder.is_dir():
            ctx.warn(f"{folder}: missing; no training normals included")
            continue
        for image in data.list_images(folder):
            try:
                hw = _image_size(image)
            except data.ImageReadError as exc:
                ctx.warn(f"{exc}; skipped")
                continue
            if folder.name == data.NORMAL_LABEL:
                samples.append(LabelledSample(image, folder, hw))
            elif (s := _mvtec_defect(root, folder.name, image, hw, ctx, box_types)) is not None:
                samples.append(s)
    return samples, list(box_types.values()) if box_types else None


# --- detection and the class table ---------------------------------------------------------------

def _json_kind(path: Path) -> str:
    """'coco' or 'labelme' for one .json file, from its keys (a text search: COCO files can be large)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise LabelError(f"{path}: cannot be read ({exc})") from None
    return "coco" if '"categories"' in text and '"images"' in text else "labelme"


def _is_yolo_folder(path: Path) -> bool:
    names = {p.name for p in path.iterdir() if p.is_file()}
    return (path / "labels").is_dir() or bool(names & {"data.yaml", "dataset.yaml", "data.yml"}) \
        or any(n.endswith(".txt") and n != "classes.txt" for n in names)


def _detect(path: Path) -> tuple[str, Path]:
    """(format, what to read) from what is on disk."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return _json_kind(path), path
        if suffix == ".xml":
            return "voc", path
        if suffix in (".yaml", ".yml"):
            return "yolo", path.parent
        raise LabelError(f"{path}: cannot tell the label format from this file; pass format= ({', '.join(FORMATS)})")
    if (path / "test").is_dir() and any((path / d).is_dir() for d in ("ground_truth", "annotations_bbox", "train",
                                                                       "test/good")):
        return "mvtec", path
    if (path / "annotations.json").is_file():
        return "coco", path / "annotations.json"
    present = [f for f in ("labelme", "voc", "coco", "yolo", "mask") if (path / f).is_dir()]
    if len(present) == 1:  # an aoiflow prelabel output with one format
        return _detect(path / present[0])
    if present:
        raise LabelError(f"{path}: holds labels in several formats ({', '.join(present)}); "
                         f"pass one of its folders, e.g. {path / present[0]}")
    files = sorted(p for p in path.iterdir() if p.is_file())
    jsons = [p for p in files if p.suffix.lower() == ".json"]
    if len(jsons) == 1 and _json_kind(jsons[0]) == "coco":
        return "coco", jsons[0]
    if jsons:
        return "labelme", path
    if any(p.suffix.lower() == ".xml" for p in files):
        return "voc", path
    if _is_yolo_folder(path):
        return "yolo", path
    if any(p.suffix.lower() in MASK_SUFFIXES for p in files):
        return "mask", path
    raise LabelError(f"{path}: no label files found (COCO or LabelMe .json, VOC .xml, YOLO .txt, mask .png, "
                     f"or an MVTec test/ folder)")


def _target(fmt: str, path: Path) -> Path:
    """What a forced format reads: the COCO file inside a folder, else the path itself."""
    if fmt == "coco" and path.is_dir():
        jsons = [path / "annotations.json"] if (path / "annotations.json").is_file() else sorted(path.glob("*.json"))
        if len(jsons) != 1:
            raise LabelError(f"{path}: expected one COCO .json file (annotations.json), found {len(jsons)}")
        return jsons[0]
    if fmt in ("yolo", "mask", "mvtec") and not path.is_dir():
        raise LabelError(f"{path}: {fmt} labels are a folder")
    return path


def _key(name: str) -> str:
    """Class names that differ only in case or spacing name one class."""
    return " ".join(name.split()).casefold()


def _class_table(samples: list[LabelledSample], order: list[str] | None,
                 ctx: _Context) -> tuple[dict[str, int], list[str]]:
    """Key -> 1-based class index, and the display names in index order: order of first appearance in
    ``order`` (COCO categories, data.yaml), alphabetical otherwise; variants reported."""
    variants: dict[str, dict[str, Path | None]] = defaultdict(dict)
    for name in order or []:
        variants[_key(name)].setdefault(name, None)
    for s in samples:
        for name in [sh.label for sh in s.shapes] + list(s.mask_values.values()):
            variants[_key(name)].setdefault(name, s.source)
    variants.pop("", None)
    ranked = {k: i for i, k in enumerate(dict.fromkeys(_key(n) for n in order or []))}
    keys = sorted(variants, key=lambda k: (ranked.get(k, len(ranked)), k))
    if len(keys) > 255:
        raise LabelError(f"{len(keys)} classes: masks hold at most 255 (uint8)")
    for k in keys:
        if len(variants[k]) > 1:
            seen = ", ".join(f"{n!r}" + (f" ({src})" if src else "") for n, src in variants[k].items())
            ctx.warn(f"class names {seen} differ only in case or spacing; read as one class "
                     f"{' '.join(next(iter(variants[k])).split())!r}")
    return {k: i for i, k in enumerate(keys, start=1)}, [" ".join(next(iter(variants[k])).split()) for k in keys]


def _finish(fmt: str, samples: list[LabelledSample], order: list[str] | None, ctx: _Context) -> LabelSet:
    """Class indices into every shape and mask lookup table; shapes with no class name dropped."""
    index, names = _class_table(samples, order, ctx)
    for s in samples:
        if any(not _key(sh.label) for sh in s.shapes):
            ctx.warn(f"{s.source}: a shape with no class name; skipped")
            s.shapes = [sh for sh in s.shapes if _key(sh.label)]
        for sh in s.shapes:
            sh.cls = index[_key(sh.label)]
        if s.mask_values:
            s.lut = np.zeros(256, np.uint8)
            for v, name in s.mask_values.items():
                if s.mask_binary:
                    s.lut[128:] = index[_key(name)]
                else:
                    s.lut[v] = index[_key(name)]
    return LabelSet(names, samples, ctx.warnings, fmt)


_READERS: dict[str, Callable[..., tuple[list[LabelledSample], list[str] | None]]] = {
    "coco": _read_coco, "labelme": _read_labelme, "voc": _read_voc, "yolo": _read_yolo,
    "mask": _read_masks, "mvtec": _read_mvtec,
}


def read_labels(labels: str | Path, images: str | Path | None = None, *, format: str | None = None,
                include_train_good: bool = False, box_types: Mapping[int, str] | None = None) -> LabelSet:
    """Read a label set, its format detected from what is on disk unless ``format`` is given.

    ``labels``: a COCO .json (or a folder with annotations.json), a folder of LabelMe .json, VOC
    .xml, YOLO .txt (with data.yaml or classes.txt) or mask PNGs, or an MVTec-layout folder.
    ``images``: where the images are (needed for YOLO and masks; by file name for the others when
    the label's own reference is missing). ``include_train_good``: MVTec train/good as negatives.
    ``box_types``: MVTec annotations_bbox type column -> class name (e.g. ``DEEPPCB_TYPES``).
    Raises LabelError when the set is unusable or empty; per-file problems go to ``warnings``.
    """
    path = Path(labels)
    if not path.exists():
        raise LabelError(f"{path}: label file or folder not found")
    root = Path(images) if images is not None else None
    if root is not None and not root.is_dir():
        raise LabelError(f"{root}: image folder not found")
    if format is not None and format not in FORMATS:
        raise LabelError(f"unknown label format {format!r}; choose from {', '.join(FORMATS)}")
    fmt, target = _detect(path) if format is None else (format, _target(format, path))
    ctx = _Context(root)
    samples, order = _READERS[fmt](target, ctx, include_train_good=include_train_good, box_types=box_types)
    if not samples:
        first = f"; first problem: {ctx.warnings[0]}" if ctx.warnings else ""
        raise LabelError(f"{path}: no labelled images found ({fmt}){first}")
    result = _finish(fmt, samples, order, ctx)
    if result.warnings:
        warnings.warn(f"{path}: {len(result.warnings)} label problem(s), see LabelSet.warnings; first: "
                      f"{result.warnings[0]}", stacklevel=2)
    return result
