"""Pascal VOC .xml files: boxes (1-based inclusive pixel bounds)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from aoiflow.supervised.labels.core import LabelError, LabelledSample, Shape, _Context, _fit


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
