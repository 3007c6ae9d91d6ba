"""A label set loaded once at the model size: images and class masks in memory, the split, batches.

Images are kept as uint8 (N, C, S, S) (a quarter of float32's memory: 1000 colour images at 512
px take 0.8 GB) and become floats in [0, 1] per batch. Masks are uint8 (N, S, S) class indices.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from aoiflow import data
from aoiflow.supervised.labels import LabelSet, LabelledSample, read_labels
from aoiflow.supervised.model import SupervisedError


def _key(name: str) -> str:
    """Class names that differ only in case or spacing name one class (as supervised.labels reads them)."""
    return " ".join(name.split()).casefold()


def read_label_set(labels: str | Path, images: str | Path | None = None, *, format: str | None = None,
                   include_train_good: bool = False, need_defects: bool = True) -> LabelSet:
    """``read_labels`` with each of its warnings issued once (``warnings.warn``), and, when
    ``need_defects``, a SupervisedError naming ``labels`` when no image holds a defect."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its one-line summary: each problem is issued below instead
        label_set = read_labels(labels, images, format=format, include_train_good=include_train_good)
    for message in dict.fromkeys(label_set.warnings):
        warnings.warn(f"label problem: {message}", stacklevel=2)
    if need_defects and label_set.positives() == 0:
        raise SupervisedError(f"{labels}: no labelled defects: all {len(label_set)} image(s) are without defects "
                              f"({label_set.format}); the defect-kind model needs examples of each kind")
    return label_set


def downsize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Class mask (H, W) uint8 -> (size, size): a model pixel takes a class when any source pixel
    under it has it (max pooling per class, as ``data.resize_mask`` keeps thin cracks connected);
    where classes meet, the rarer one wins. Masks smaller than ``size`` are enlarged with nearest
    neighbour."""
    mask = np.asarray(mask, np.uint8)
    if mask.shape == (size, size):
        return mask
    if mask.shape[0] < size or mask.shape[1] < size:
        t = torch.from_numpy(mask)[None, None].float()
        return F.interpolate(t, size=(size, size), mode="nearest")[0, 0].to(torch.uint8).numpy()
    classes, counts = np.unique(mask[mask > 0], return_counts=True)
    out = np.zeros((size, size), np.uint8)
    for c in classes[np.argsort(-counts, kind="stable")]:
        hit = F.adaptive_max_pool2d(torch.from_numpy(mask == c)[None, None].float(), size)[0, 0].numpy() > 0
        out[hit] = c
    return out


def sample_mask(sample: LabelledSample, size: int) -> np.ndarray:
    """A sample's class mask at (size, size): outlines drawn at that size, mask files read at
    their own size and pooled down (``downsize_mask``)."""
    if sample.mask_path is not None and sample.mask_values:
        return downsize_mask(sample.mask(), size)
    return sample.mask((size, size))


@dataclass
class SupervisedData:
    """Images and masks at the model size, aligned with ``paths``."""

    images: torch.Tensor                  # (N, C, S, S) uint8
    masks: torch.Tensor                   # (N, S, S) uint8 class indices
    paths: list[Path]
    original_sizes: list[tuple[int, int]]  # (H, W) of each file
    class_names: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def positive(self) -> np.ndarray:
        """bool (N,): the image holds a defect pixel at the model size."""
        return (self.masks.flatten(1) > 0).any(1).numpy() if len(self) else np.zeros(0, bool)

    def batch(self, index: torch.Tensor | np.ndarray | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (B, C, S, S) float in [0, 1], y (B, S, S) int64) for the images at ``index``."""
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return self.images[index].float() / 255.0, self.masks[index].long()


def class_lut(label_set: LabelSet, class_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Map the set's class indices onto ``class_names`` (by name, case and spacing ignored); its
    classes not in ``class_names`` are appended. Returns (256,) uint8 and the full name list."""
    names = list(class_names) if class_names is not None else list(label_set.class_names)
    index = {_key(n): i + 1 for i, n in enumerate(names)}
    lut = np.zeros(256, np.uint8)
    for k, name in enumerate(label_set.class_names, start=1):
        if _key(name) not in index:
            names.append(name)
            index[_key(name)] = len(names)
        lut[k] = index[_key(name)]
    return lut, names


def load_supervised_data(label_set: LabelSet, channels: int, size: int, progress: bool = False,
                         class_names: list[str] | None = None) -> SupervisedData:
    """Read every labelled image once at ``size`` (as ``data.to_model_input``) with its mask.

    ``class_names``: index the masks by these names (a trained model's), the set's own classes
    not among them appended; default the set's. Images that cannot be decoded are skipped with a
    warning naming the file, and listed in ``skipped``."""
    lut, names = class_lut(label_set, class_names)
    images, masks, paths, sizes, skipped = [], [], [], [], []
    for sample in tqdm(label_set.samples, desc="loading", unit="img", disable=not progress, leave=False):
        try:
            arr, hw = data.read_image_at(sample.image_path, size)
            mask = lut[sample_mask(sample, size)]
        except data.ImageReadError as exc:
            warnings.warn(f"skipped {exc}", stacklevel=2)
            skipped.append((exc.path, exc.problem))
            continue
        x = data.to_model_input(arr, channels, size)
        images.append((x * 255.0).round().clamp(0, 255).to(torch.uint8))
        masks.append(torch.from_numpy(np.ascontiguousarray(mask)))
        paths.append(sample.image_path)
        sizes.append(hw)
    if images:
        return SupervisedData(torch.stack(images), torch.stack(masks), paths, sizes, names, skipped)
    return SupervisedData(torch.zeros(0, channels, size, size, dtype=torch.uint8),
                          torch.zeros(0, size, size, dtype=torch.uint8), [], [], names, skipped)


def split_stratified(positive: np.ndarray, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, validation) indices, ``fraction`` of the images with defects and of
    those without held out separately; at least one image with defects on each side."""
    positive = np.asarray(positive, bool)
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    if len(pos) < 2:
        raise SupervisedError(f"need at least 2 readable images with defects (one to train on, one to validate), "
                              f"found {len(pos)}")
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for group, at_least in ((pos, 1), (neg, 0)):
        order = group[torch.randperm(len(group), generator=gen).numpy()] if len(group) else group
        n_val = min(max(at_least, round(len(group) * fraction)), max(len(group) - 1, 0))
        val += order[:n_val].tolist()
        train += order[n_val:].tolist()
    return sorted(train), sorted(val)
