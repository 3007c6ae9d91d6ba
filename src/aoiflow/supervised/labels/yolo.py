"""YOLO .txt files: normalised boxes or polygons, class names from data.yaml or classes.txt."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml

from aoiflow.supervised.labels.core import LabelError, LabelledSample, Shape, _Context, _fit, _names_file


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
