"""The discriminative head: a small U-Net that reads an image beside GANomaly's reconstruction and
says, per pixel, how likely a defect is. Not part of the reference system (preset
``ganomaly-ssim-head``); it follows the idea of DRAEM, trained from scratch on synthetic defects.

Why: a reconstruction-based map is high wherever the generator cannot reproduce the part, and
on real products normal parts vary in ways it cannot reproduce either (bond wires, texture, print),
so the top of a normal image's map is as high as a defect's. The head is shown the residual of
normal variation as "normal" and the residual of painted defects as "defect", so it learns the
difference; the image score pools its map like any other map, and calibration is unchanged.

The generator stays frozen while the head trains; training takes a fixed number of optimiser
steps (a budget in steps, not epochs, so small sets train as long as large ones).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from aoiflow import tiling
from aoiflow.augment import augment_batch
from aoiflow.budget import units_that_fit
from aoiflow.config import Config, HeadConfig, ScoreConfig
from aoiflow.model import Generator, training_autocast
from aoiflow.scoring import anomaly_map
from aoiflow.synthdefect import add_synthetic_defects
from aoiflow.unet import UNet


PROBE_STEPS = 10  # steps timed before a deadline shortens the head's training


class DefectHead(nn.Module):
    """(x, x_hat (B, C, S, S) in [0, 1], residual (B, 1, S, S)) -> defect logits (B, 1, S, S).

    ``downsample`` 2 runs the U-Net at half the model size and upsamples its logits: about a
    quarter of the work (a U-Net's full-size stages cost most), for maps a little coarser.
    """

    def __init__(self, channels: int, width: int = 16, depth: int = 3, downsample: int = 1) -> None:
        super().__init__()
        self.downsample = downsample
        self.net = UNet(2 * channels + 1, 1, width, depth)

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([x * 2 - 1, x_hat * 2 - 1, residual], 1)
        if self.downsample == 1:
            return self.net(inputs)
        logits = self.net(F.avg_pool2d(inputs, self.downsample))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_head(channels: int, settings: HeadConfig) -> DefectHead:
    return DefectHead(channels, settings.width, settings.depth, settings.downsample)


def residual_map(x: torch.Tensor, x_hat: torch.Tensor, settings: ScoreConfig) -> torch.Tensor:
    """The head's third input: the unsmoothed per-pixel dissimilarity (B, 1, S, S) of the run's
    score kind, exactly as scoring computes it."""
    return anomaly_map(x, x_hat, settings.score, settings.ssim_window)


def head_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus a soft Dice term over the batch: the Dice term keeps small
    defects (a few hundred of 16k pixels) from being drowned by the background."""
    bce = F.binary_cross_entropy_with_logits(logits, labels)
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * labels).sum() + 1) / (p.sum() + labels.sum() + 1)
    return bce + dice


@torch.no_grad()
def _generator_inputs(generator: Generator, x: torch.Tensor, scoring: ScoreConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """What the head reads beside ``x`` (B, C, S, S) in [0, 1]: the frozen generator's
    reconstruction (B, C, S, S) and the residual (B, 1, S, S)."""
    x_hat = ((generator.reconstruct(_channels_last(x * 2 - 1)) + 1) * 0.5).contiguous()
    return x_hat, residual_map(x, x_hat, scoring)


CACHE_BYTES = 1 << 30  # largest set of reconstructions kept in memory for the head's training


class CleanInputs:
    """The frozen generator's reconstruction and residual of every training image, made once.

    About half of each head batch is left unpainted, and those images are the stored ones
    unchanged, so their generator pass (a third of a step's work on the magnetic tile) can be
    looked up instead. Only for batches drawn straight from the stored images: patches and
    augmentation make every batch new.
    """

    def __init__(self, generator: Generator, images: torch.Tensor, scoring: ScoreConfig, batch: int = 32) -> None:
        x_hats, residuals = zip(*(_generator_inputs(generator, images[i:i + batch], scoring)
                                  for i in range(0, len(images), batch)))
        self.x_hat, self.residual = torch.cat(x_hats), torch.cat(residuals)

    @staticmethod
    def usable(images: torch.Tensor, config: Config) -> bool:
        whole_images = images.shape[-1] == images.shape[-2] == config.model.image_size
        n, c, h, w = images.shape
        size_in_bytes = 4 * n * (c + 1) * h * w  # reconstructions and residuals, float32
        return whole_images and not config.train.augment and size_in_bytes <= CACHE_BYTES


@torch.no_grad()
def _head_inputs(generator: Generator, clean: torch.Tensor, x: torch.Tensor, idx: torch.Tensor,
                 scoring: ScoreConfig, cache: CleanInputs | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reconstruction and residual of batch ``x`` (``clean`` before painting, drawn at
    ``idx``): looked up for the images painting left unchanged, computed for the others."""
    if cache is None:
        return _generator_inputs(generator, x, scoring)
    x_hat, residual = cache.x_hat[idx].clone(), cache.residual[idx].clone()
    painted = (x != clean).flatten(1).any(1)
    if painted.any():
        x_hat[painted], residual[painted] = _generator_inputs(generator, x[painted], scoring)
    return x_hat, residual


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def flip_together(batch: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Tensors (B, *, H, W) of one batch, each sample flipped left-right and/or top-bottom at
    random, the same way in every tensor. After the generator pass, so a flipped sample needs no
    new reconstruction (the triple stays consistent: a pixel's image, reconstruction and label
    move together), unlike ``train.augment``, which reconstructs every augmented image again."""
    n = batch[0].shape[0]
    for dim in (-1, -2):
        chosen = (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1)
        batch = tuple(torch.where(chosen, t.flip(dim), t) for t in batch)
    return batch


@contextmanager
def channels_last_while(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in channels-last memory for a ``with`` block, then put back: the frozen generator's
    reconstruction during the head's training, 10 % faster on two CPU cores (39.7 -> 35.7 ms for
    8 tiles at 128 px), while saved weights and export keep the usual layout."""
    net.to(memory_format=torch.channels_last)
    try:
        yield net
    finally:
        net.to(memory_format=torch.contiguous_format)


def train_head(generator: Generator, images: torch.Tensor, config: Config, progress: bool = True,
               head: DefectHead | None = None,
               deadline: float | None = None) -> tuple[DefectHead, list[float], int]:
    """Train a head on normal ``images`` (N, C, S, S) in [0, 1] with painted defects; the generator
    is frozen (eval mode). ``deadline`` (a ``time.perf_counter()`` value): after timing the first
    steps, train only as many of ``head.steps`` as fit before it, the schedule shortened to match.
    Returns the head (eval mode), the loss of every 50 steps and the steps trained."""
    if head is None:
        with torch.random.fork_rng():  # the head's initial weights drawn under the run's seed
            torch.manual_seed(config.train.seed)
            head = build_head(images.shape[1], config.head)
    generator.eval()
    # channels-last while training: 1.19x faster forward and backward of the head on two CPU cores
    # (180 -> 152 ms a step at 128 px, batch 16); both put back afterwards, so saving and export
    # see no change
    head = head.to(memory_format=torch.channels_last).train()
    with channels_last_while(generator):
        cache = CleanInputs(generator, images, config.scoring) if CleanInputs.usable(images, config) else None
        losses, steps = _optimise(head, generator, images, config, cache, deadline, progress)
    return head.to(memory_format=torch.contiguous_format).eval(), losses, steps


def _optimise(head: DefectHead, generator: Generator, images: torch.Tensor, config: Config,
              cache: CleanInputs | None, deadline: float | None, progress: bool) -> tuple[list[float], int]:
    """The head's optimiser steps (``train_head``): the loss of every 50 steps and the steps taken."""
    hc, seed = config.head, config.train.seed
    rng = np.random.default_rng(seed + 7919)
    torch_gen = torch.Generator().manual_seed(seed + 7919)
    opt = torch.optim.Adam(head.parameters(), lr=hc.lr)
    sched = _one_cycle(opt, hc.lr, hc.steps)
    losses, running = [], []
    steps, t0 = hc.steps, time.perf_counter()
    bar = tqdm(total=steps, desc="head", unit="step", disable=not progress, leave=False)
    step = 0
    while step < steps:
        if deadline is not None and step == PROBE_STEPS:
            steps = units_that_fit(step, (time.perf_counter() - t0) / step, deadline - time.perf_counter(), hc.steps)
            if step < steps < hc.steps:  # (at ``steps == step`` the loop ends here: no schedule needed)
                sched = _one_cycle(opt, hc.lr, steps, done=step)
            if steps < hc.steps:
                bar.total = steps
                if progress:
                    tqdm.write(f"train.max_minutes: the head trains {steps} steps instead of {hc.steps}")
        idx = torch.from_numpy(rng.choice(len(images), min(hc.batch_size, len(images)), replace=False))
        x = tiling.random_crops(images[idx], config.model.image_size, torch_gen)  # no-op without patches
        x = augment_batch(x, config.train.augment, torch_gen)
        clean = x
        x, labels = add_synthetic_defects(clean, rng, hc.defect_share, hc.max_defect_area, hc.fills)
        x_hat, residual = _head_inputs(generator, clean, x, idx, config.scoring, cache)
        if hc.flips:
            x, x_hat, residual, labels = flip_together((x, x_hat, residual, labels), torch_gen)
        # train.precision bf16: only the head's forward (1.5x faster forward and backward with
        # AVX-512 BF16, 118 -> 75 ms a step at 128 px, batch 16); the frozen generator and the SSIM
        # residual stay fp32, as at inference
        with training_autocast(config.train.precision):
            logits = head(*(_channels_last(t) for t in (x, x_hat, residual)))
        loss = head_loss(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        step += 1
        bar.update(1)
        if step % 50 == 0 or step == steps:
            losses.append(float(np.mean(running)))
            running = []
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return losses, steps


def with_steps_trained(config: Config, steps: int) -> Config:
    """``config`` recording the head steps a deadline let ``train_head`` train, so the run's
    config.yaml says what it trained (the configured steps are only the upper limit)."""
    return config.model_copy(update={"head": config.head.model_copy(update={"steps": steps})})


@torch.no_grad()
def synthetic_validation(generator: Generator, head: DefectHead, val_images: torch.Tensor, config: Config,
                         batch: int = 32) -> dict[str, float]:
    """How well the head finds painted defects on held-out normals it never trained on: pixel
    AUROC inside the painted images, and image AUROC (the map's maximum) of painted against clean.
    Seeded, so runs compare; it judges fit (steps, width, resolution), not the defect prior, since
    the painted defects come from the same generator the head trained on."""
    from sklearn.metrics import roc_auc_score  # only here: scoring at inference never needs it

    rng = np.random.default_rng(12345)
    torch_gen = torch.Generator().manual_seed(12345)
    clean = tiling.random_crops(val_images, config.model.image_size, torch_gen)
    painted, labels = add_synthetic_defects(clean, rng, 0.999, config.head.max_defect_area,
                                            config.head.fills)
    generator.eval()
    head.eval()

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            out.append(torch.sigmoid(head(xb, *_generator_inputs(generator, xb, config.scoring))))
        return torch.cat(out)

    p_painted, p_clean = probabilities(painted), probabilities(clean)
    has_defect = labels.flatten(1).amax(1) > 0
    truth = labels[has_defect].flatten().numpy()
    pixel = float(roc_auc_score(truth, p_painted[has_defect].flatten().numpy())) if 0 < truth.mean() < 1 else float("nan")
    peaks = torch.cat([p_clean.flatten(1).amax(1), p_painted[has_defect].flatten(1).amax(1)]).numpy()
    image = float(roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(int(has_defect.sum()))], peaks))
    return {"pixel_auroc": pixel, "image_auroc": image, "images": len(clean)}


def _one_cycle(opt: torch.optim.Optimizer, lr: float, total: int, done: int = 0) -> torch.optim.lr_scheduler.OneCycleLR:
    """A one-cycle schedule over ``total`` steps, advanced past the ``done`` already taken."""
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping a fresh schedule to catch up is intended
        for _ in range(done):
            sched.step()
    return sched

