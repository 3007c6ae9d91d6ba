"""A folder of mask images named like the images: class indices, or 0/255 for one class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aoiflow import data
from aoiflow.supervised.labels.core import (_MAX_INDEX, MASK_SUFFIXES, LabelError, LabelledSample, _Context,
                                            _names_file, _read_mask_values)


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
