"""Augmentations that keep a normal part normal, for small training sets.

Which ones are safe depends on the product (a part with a fixed orientation mark must not be
flipped; a texture may be), so each is a setting (``train.augment``):
  hflip, vflip  mirror left-right / top-bottom;
  rot90         turn by a multiple of 90 degrees (square model inputs);
  shift         move by up to 1/16 of the side, the border filled by reflection.
Every sample of a batch draws its own transforms from a seeded generator, so a run (and a resumed
run) sees the same batches. Written here rather than taken from torchvision, whose PyPI build does
not import beside the pinned torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("hflip", "vflip", "rot90", "shift")


def augment_batch(x: torch.Tensor, kinds: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """(B, C, S, S) -> the same shape, each sample transformed by a random draw of ``kinds``."""
    if not kinds:
        return x
    out = x.clone()
    for i in range(len(x)):
        out[i] = _one(x[i], kinds, generator)
    return out


def _coin(generator: torch.Generator) -> bool:
    return bool(torch.randint(0, 2, (1,), generator=generator))


def _one(img: torch.Tensor, kinds: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """(C, S, S) -> (C, S, S)."""
    if "hflip" in kinds and _coin(generator):
        img = img.flip(-1)
    if "vflip" in kinds and _coin(generator):
        img = img.flip(-2)
    if "rot90" in kinds:
        img = torch.rot90(img, int(torch.randint(0, 4, (1,), generator=generator)), dims=(-2, -1))
    if "shift" in kinds:
        img = _shift(img, generator)
    return img


def _shift(img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    side = img.shape[-1]
    pad = max(1, side // 16)
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
    padded = F.pad(img[None], (pad, pad, pad, pad), mode="reflect")[0]
    return padded[:, dy : dy + img.shape[-2], dx : dx + side]
