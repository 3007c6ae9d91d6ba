"""Which format a label set is in, the class table across its files, and ``read_labels``."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from aoiflow.supervised.labels.coco import _read_coco
from aoiflow.supervised.labels.core import FORMATS, MASK_SUFFIXES, LabelError, LabelledSample, LabelSet, _Context
from aoiflow.supervised.labels.labelme import _read_labelme
from aoiflow.supervised.labels.masks import _read_masks
from aoiflow.supervised.labels.mvtec import _read_mvtec
from aoiflow.supervised.labels.voc import _read_voc
from aoiflow.supervised.labels.yolo import _read_yolo


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
