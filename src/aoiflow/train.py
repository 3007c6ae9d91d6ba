"""Fit GANomaly on normal images: hold-out split, training loop, atomic checkpoints, resume, calibration."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from aoiflow import data, distributed
from aoiflow.config import Config, save_config
from aoiflow.fileio import write_csv
from aoiflow.losses import adversarial_loss, contextual_loss, discriminator_loss, encoder_loss
from aoiflow.model import Discriminator, Generator, add_spectral_norm, build_networks, init_weights, training_autocast
from aoiflow.runs import (CHECKPOINT, CONFIG, HISTORY, RunError, TrainedModel, load_checkpoint, save_checkpoint,
                          save_head_validation, save_model)
from aoiflow import tiling
from aoiflow.augment import augment_batch
from aoiflow.budget import TimeBudget, calibration_reserve, units_that_fit
from aoiflow.head import synthetic_validation, train_head, with_steps_trained
from aoiflow.recalibrate import MAP_STATS_IMAGES, finish_model

HISTORY_FIELDS = ["epoch", "loss_g", "loss_con", "loss_enc", "loss_adv", "loss_d", "val_con", "lr", "seconds"]


def seed_everything(seed: int, threads: int) -> None:
    """Seed Python, NumPy and torch; limit torch to ``threads`` CPU threads."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def split_holdout(paths: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic split of normal images into (train, validation); at least one of each."""
    if len(paths) < 2:
        where = f"{paths[0].parent}: " if paths else ""
        raise data.DataLayoutError(f"{where}need at least 2 normal training images to hold one out, found {len(paths)}")
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(1, round(len(paths) * fraction)), len(paths) - 1)
    val = sorted(paths[i] for i in order[:n_val])
    train = sorted(paths[i] for i in order[n_val:])
    return train, val


class TrainingInterrupted(RunError):
    """Ctrl-C during training; ``str()`` says what was saved and how to continue."""


@dataclass
class TrainState:
    generator: Generator
    discriminator: Discriminator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    # Learning-rate schedule as linear pieces [first epoch, factor there, epoch where it reaches 0]:
    # one piece for a fresh run; extending a run adds a piece that starts at the rate last used,
    # so the rate never jumps up (rebuilding one decay over the new total would).
    lr_pieces: list[list[float]]
    # Set by aoiflow.distributed while several processes train: the networks wrapped in DDP.
    g_step: Callable | None = None
    d_step: Callable | None = None
    # train.generator_ema: the moving average of the generator, the one the run keeps
    generator_ema: AveragedModel | None = None

    @property
    def kept_generator(self) -> Generator:
        """The generator that validation, the head, calibration and model.pt use."""
        return self.generator_ema.module if self.generator_ema is not None else self.generator


def lr_factor(epoch: int, pieces: list[list[float]]) -> float:
    """Factor on the base learning rate in ``epoch`` (0-based) under the linear pieces."""
    start, factor, end = next(p for p in reversed(pieces) if epoch >= p[0])
    return max(0.0, factor * (1.0 - (epoch - start) / max(end - start, 1)))


def _lr_pieces(config: Config) -> list[list[float]]:
    if config.train.lr_schedule == "constant":
        return [[0, 1.0, float("inf")]]
    return [[0, 1.0, config.train.epochs]]  # linear decay from 1 towards 0 ('lambda' policy)


def extend_lr_pieces(pieces: list[list[float]], done: int, epochs: int) -> list[list[float]]:
    """The schedule for a run resumed after ``done`` epochs with a new total of ``epochs``."""
    last_end = pieces[-1][2]
    if done == 0 or epochs == last_end or last_end == float("inf"):
        return pieces
    return [*pieces, [done, lr_factor(done - 1, pieces), epochs]]


def _set_lr(state: TrainState, base_lr: float, epoch: int) -> float:
    lr = base_lr * lr_factor(epoch, state.lr_pieces)
    for opt in (state.opt_g, state.opt_d):
        for group in opt.param_groups:
            group["lr"] = lr
    return lr


def _build_state(config: Config, channels: int) -> TrainState:
    m, t = config.model, config.train
    g, d = build_networks(m.image_size, channels, m.latent_size, m.base_width, t.seed)
    if t.spectral_norm:
        add_spectral_norm(d)
    opt_g = torch.optim.Adam(g.parameters(), lr=t.lr, betas=(t.beta1, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=t.lr, betas=(t.beta1, 0.999))
    if t.precision == "bf16":  # oneDNN's bfloat16 convolutions are fastest channels-last (train_speed.py)
        g.to(memory_format=torch.channels_last)
        d.to(memory_format=torch.channels_last)
    # torch's AveragedModel: an EMA of the weights and of BatchNorm's running statistics
    ema = AveragedModel(g, multi_avg_fn=get_ema_multi_avg_fn(t.generator_ema), use_buffers=True) \
        if t.generator_ema else None
    return TrainState(g, d, opt_g, opt_d, _lr_pieces(config), generator_ema=ema)


def train_step(state: TrainState, x: torch.Tensor, config: Config, share: float = 1.0) -> dict[str, float]:
    """One generator update then one discriminator update on a batch (B, C, S, S) in [-1, 1].
    ``share``: this process's weight when several train one global batch (aoiflow.distributed)."""
    lc = config.loss
    g, d = state.generator, state.discriminator
    d_logits = state.d_step or d.logits
    with training_autocast(config.train.precision):
        out = (state.g_step or g)(x)
        with torch.no_grad():
            _, feat_real = d.logits(x)
        _, feat_fake = d.logits(out.reconstruction)
    # Losses in fp32: SSIM's variance terms lose too much in bfloat16.
    l_adv = adversarial_loss(feat_real.float(), feat_fake.float())
    l_con = contextual_loss(x, out.reconstruction.float(), lc.contextual, lc.ssim_window)
    l_enc = encoder_loss(out.latent.float(), out.latent_hat.float())
    loss_g = lc.w_adv * l_adv + lc.w_con * l_con + lc.w_enc * l_enc
    state.opt_g.zero_grad(set_to_none=True)
    (loss_g * share).backward()
    state.opt_g.step()
    if state.generator_ema is not None:
        state.generator_ema.update_parameters(g)

    with training_autocast(config.train.precision):
        logit_real, _ = d_logits(x)
        logit_fake, _ = d_logits(out.reconstruction.detach())
    loss_d = discriminator_loss(logit_real.float(), logit_fake.float(), config.train.label_smoothing)
    state.opt_d.zero_grad(set_to_none=True)
    (loss_d * share).backward()
    state.opt_d.step()
    losses = distributed.batch_mean({"loss_g": loss_g, "loss_con": l_con, "loss_enc": l_enc, "loss_adv": l_adv,
                                     "loss_d": loss_d}, share)
    if losses["loss_d"] < 1e-5:
        # A discriminator that wins outright gives the generator no signal: restart it (as GANomaly does).
        init_weights(d)
        distributed.same_everywhere(d)
    return losses


@torch.inference_mode()
def validation_loss(g: Generator, images: torch.Tensor, config: Config, batch_size: int = 32) -> float:
    """Mean contextual loss of held-out normals (images in [0, 1]) with the generator in eval mode."""
    g.eval()
    total = 0.0
    for i in range(0, len(images), batch_size):
        # with patches on (model.canvas) the loss is over a fixed grid of model-size windows
        x = tiling.grid_windows(images[i : i + batch_size], config.model.image_size) * 2 - 1
        rec = g(x).reconstruction
        n = len(images[i : i + batch_size])
        total += contextual_loss(x, rec, config.loss.contextual, config.loss.ssim_window).item() * n
    g.train()
    return total / max(1, len(images))


def _write_history(run_dir: Path, rows: list[dict[str, float]]) -> None:
    write_csv(run_dir / HISTORY, HISTORY_FIELDS, rows)


def _checkpoint_state(state: TrainState, config: Config, channels: int, epoch: int,
                      history: list, split: dict) -> dict:
    return {
        "config": config.model_dump(), "channels": channels, "epoch": epoch,
        "generator": state.generator.state_dict(), "discriminator": state.discriminator.state_dict(),
        "opt_g": state.opt_g.state_dict(), "opt_d": state.opt_d.state_dict(),
        "lr_pieces": state.lr_pieces,
        "generator_ema": state.generator_ema.state_dict() if state.generator_ema is not None else None,
        "history": history, "split": split, "data_root": split.get("root"), "torch_rng": torch.get_rng_state(),
        "calibration": None,
    }


def _with_data_preprocessing(config: Config, data_root: Path) -> Config:
    """A folder written by ``aoiflow preprocess`` carries its settings (preprocess.yaml); the run
    records them so ``predict --raw`` can apply the same steps to raw frames."""
    from aoiflow.config import load_config

    spec = data_root / "preprocess.yaml"
    if config.preprocess.enabled or not spec.is_file():
        return config
    return config.model_copy(update={"preprocess": load_config(spec).preprocess})


def _with_step_budget(config: Config, n_train: int, progress: bool) -> Config:
    """More epochs where ``train.min_steps`` asks for more optimiser steps than the epochs give;
    the run records the epochs it trains, so resuming it gives the same schedule."""
    t = config.train
    per_epoch = math.ceil(n_train / t.batch_size)
    epochs = max(t.epochs, math.ceil(t.min_steps / per_epoch))
    if epochs == t.epochs:
        return config
    if progress:
        tqdm.write(f"{n_train} training images at batch {t.batch_size} make {per_epoch} steps an epoch: training "
                   f"{epochs} epochs instead of {t.epochs} to reach train.min_steps = {t.min_steps}")
    return config.model_copy(update={"train": t.model_copy(update={"epochs": epochs})})


def _same_shape(a: Config, b: Config) -> bool:
    keep = ("image_size", "latent_size", "base_width", "canvas")
    return all(getattr(a.model, k) == getattr(b.model, k) for k in keep)


ImageLoader = Callable[[list[Path], int, int, bool], data.LoadedImages]


def _resume_from(run_dir: Path, config: Config, resume: bool) -> dict | None:
    """The checkpoint to continue from, or None for a fresh run; refuses the confusing cases."""
    if not (run_dir / CHECKPOINT).exists():
        if resume:
            raise RunError(f"{run_dir}: nothing to resume (no {CHECKPOINT}); drop --resume to start a new run there")
        return None
    if not resume:
        raise RunError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
    previous = load_checkpoint(run_dir)
    before = Config.model_validate(previous["config"])
    if not _same_shape(before, config):
        raise RunError(f"{run_dir}: cannot resume with a different model shape (image/latent size or width)")
    for setting in ("spectral_norm", "generator_ema"):  # the networks kept differ; the EMA's decay may change
        was, now = getattr(before.train, setting), getattr(config.train, setting)
        if bool(was) != bool(now):
            raise RunError(f"{run_dir}: cannot resume with train.{setting} {'on' if now else 'off'}: the run was "
                           f"trained with it {'on' if was else 'off'}; start a new run to change it")
    return previous


def _restore(state: TrainState, previous: dict, config: Config) -> tuple[list[dict[str, float]], int]:
    """Load networks, optimisers, schedule and RNG from a checkpoint; returns (history, epochs done)."""
    state.generator.load_state_dict(previous["generator"])
    state.discriminator.load_state_dict(previous["discriminator"])
    state.opt_g.load_state_dict(previous["opt_g"])
    state.opt_d.load_state_dict(previous["opt_d"])
    if state.generator_ema is not None and previous.get("generator_ema"):
        state.generator_ema.load_state_dict(previous["generator_ema"])
    done = int(previous["epoch"])
    old = Config.model_validate(previous["config"])
    pieces = previous.get("lr_pieces") or _lr_pieces(old)  # runs saved before the pieces existed
    state.lr_pieces = extend_lr_pieces([list(p) for p in pieces], done, config.train.epochs)
    if "torch_rng" in previous:
        torch.set_rng_state(previous["torch_rng"])
    return list(previous["history"]), done


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def fit(data_root: str | Path, run_dir: str | Path, config: Config, resume: bool = False, progress: bool = True,
        loader: ImageLoader = data.load_images) -> Path:
    """Train on ``DATA/train/good`` and write the run folder; returns the checkpoint path.

    A fraction ``config.train.val_fraction`` of the normal images is held out: it gives the
    per-epoch validation loss and, at the end, the calibration (normalisation + threshold).
    ``loader(paths, channels, size, progress)`` reads the images (a caching loader lets a
    parameter search read each image once). Ctrl-C raises TrainingInterrupted after saying
    what is kept: every finished epoch is in the checkpoint.
    """
    run_dir = Path(run_dir)
    budget = TimeBudget.from_minutes(config.train.max_minutes, config.head.budget_share if config.head.enabled else 0.0)
    config = _with_data_preprocessing(config, Path(data_root))
    seed_everything(config.train.seed, config.train.threads)
    previous = distributed.from_main(_resume_from, run_dir, config, resume)  # rank 0's run folder

    all_paths = data.train_images(data_root)
    if previous:
        split = previous["split"]
        root = Path(data_root)
        train_paths = [root / p for p in split["train"]]
        val_paths = [root / p for p in split["val"]]
        channels = int(previous["channels"])
    else:
        train_paths, val_paths = split_holdout(all_paths, config.train.val_fraction, config.train.seed)
        channels = config.model.channels or data.detect_channels(all_paths)
        split = {"root": str(Path(data_root).resolve()),
                 "train": [str(p.relative_to(data_root)) for p in train_paths],
                 "val": [str(p.relative_to(data_root)) for p in val_paths]}
    config = _with_step_budget(config, len(train_paths), progress)
    t = config.train
    size = config.model.input_size
    train_set = loader(train_paths, channels, size, progress)
    val_set = loader(val_paths, channels, size, progress)
    if len(train_set.images) == 0 or len(val_set.images) == 0:
        raise data.DataLayoutError(f"{data_root}: no readable training or validation images")

    state = _build_state(config, channels)
    history, start_epoch = _restore(state, previous, config) if previous else ([], 0)
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / CONFIG)
    if previous and progress:
        tqdm.write(f"resuming {run_dir} from epoch {start_epoch} of {t.epochs}")

    def save(epochs_done: int) -> None:
        if not distributed.is_main():
            return
        save_checkpoint(run_dir / CHECKPOINT, _checkpoint_state(state, config, channels, epochs_done, history, split))
        _write_history(run_dir, history)

    epoch_seconds: list[float] = []

    def replan(epochs_done: int, epoch_s: float, val_s: float) -> int:
        """The epochs to train in all, shortened to fit train.max_minutes (aoiflow.budget)."""
        nonlocal config
        if not budget.active:
            return config.train.epochs
        epoch_seconds.append(epoch_s)
        if not budget.reserve:
            budget.reserve = _calibration_reserve(config, len(train_set.images), len(val_set.images), val_s)
        mean_s = sum(epoch_seconds) / len(epoch_seconds)
        epochs = distributed.from_main(units_that_fit, epochs_done, mean_s, budget.ganomaly_left(), config.train.epochs)
        if epochs < config.train.epochs:
            if progress:
                tqdm.write(f"train.max_minutes = {config.train.max_minutes:g}: {epochs} epochs instead of "
                           f"{config.train.epochs} ({mean_s:.1f} s each)")
            config = _with_epochs(config, epochs)
            state.lr_pieces = extend_lr_pieces(state.lr_pieces, epochs_done, epochs)
            if distributed.is_main():
                save_config(config, run_dir / CONFIG)
        return config.train.epochs

    distributed.replicate(state)  # under torchrun: DDP over the processes
    try:
        _train_epochs(state, train_set.images, val_set.images, config, start_epoch, history, save, progress, replan)
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted_message(data_root, run_dir, len(history), config.train.epochs)) from None
    distributed.release(state)
    if not distributed.is_main():  # rank 0 calibrates and writes the model
        return run_dir / CHECKPOINT

    done = max(start_epoch, config.train.epochs)  # config: the epochs a time budget chose
    model = TrainedModel(state.kept_generator, config, channels, None, done, split, split.get("root"))
    if config.head.enabled:
        deadline = budget.head_deadline if budget.active else None
        model.head, _, steps = train_head(model.generator, train_set.images, config, progress, deadline=deadline)
        if steps < config.head.steps:
            config = model.config = with_steps_trained(config, steps)
            save_config(config, run_dir / CONFIG)
        save_head_validation(run_dir, synthetic_validation(model.generator, model.head, val_set.images, config))
    model = finish_model(model, train_set.images, val_set.images)
    if progress:
        tqdm.write(f"calibration: {model.calibration.summary()}")
    save_checkpoint(run_dir / CHECKPOINT, {**_checkpoint_state(state, config, channels, done, history, split),
                                           "calibration": model.calibration.to_dict(),
                                           "map_stats": model.map_stats.to_dict() if model.map_stats else None,
                                           "head": model.head.state_dict() if model.head is not None else None})
    save_model(run_dir, model.to_state())
    return run_dir / CHECKPOINT


def _with_epochs(config: Config, epochs: int) -> Config:
    return config.model_copy(update={"train": config.train.model_copy(update={"epochs": epochs})})


def _calibration_reserve(config: Config, n_train: int, n_val: int, val_s: float) -> float:
    """Seconds to keep for ``finish_model`` (aoiflow.budget.calibration_reserve): the held-out
    normals, plus the map-statistics sample where the scoring normalises per position."""
    per_position = config.scoring.map_normalise == "position" and not config.head.enabled
    n = n_val + (len(range(0, n_train, max(1, n_train // MAP_STATS_IMAGES))) if per_position else 0)
    ratio = 1.0
    if config.model.canvas:
        c, p = config.model.canvas, config.model.image_size
        ratio = (tiling.Grid.over(c, c, p, tiling.default_stride(p, config.scoring.patch_stride)).count
                 / tiling.Grid.over(c, c, p, p).count)
    return calibration_reserve(val_s, n_val, n, ratio, config.head.enabled)


def _interrupted_message(data_root: str | Path, run_dir: Path, done: int, epochs: int) -> str:
    if done == 0:
        return f"interrupted before the first epoch finished; nothing was saved in {run_dir}"
    return (f"interrupted: {done} of {epochs} epochs finished and are saved in {run_dir / CHECKPOINT}; "
            f"continue with `aoiflow train {data_root} --out {run_dir} --resume`")


def _train_epochs(state: TrainState, train_images: torch.Tensor, val_images: torch.Tensor, config: Config,
                  start_epoch: int, history: list[dict[str, float]], save: Callable[[int], None],
                  progress: bool, replan: Callable[[int, float, float], int] | None = None) -> None:
    """The epoch loop; ``save(epochs_done)`` after each epoch. Appends a row per epoch to ``history``.
    ``replan(epochs_done, epoch_seconds, validation_seconds)`` may shorten the run (a time budget)."""
    t = config.train
    x_all = train_images * 2 - 1
    n = len(x_all)
    steps = len(range(0, n, t.batch_size))
    state.generator.train()
    state.discriminator.train()
    clock = _EtaClock(steps * (t.epochs - start_epoch), t.epochs - start_epoch, progress)
    epochs, epoch = t.epochs, start_epoch
    while epoch < epochs:
        t0 = time.perf_counter()
        lr = _set_lr(state, t.lr, epoch)
        # Order depends only on (seed, epoch), so a resumed run sees the same batches.
        shuffle = torch.Generator().manual_seed(t.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=shuffle)
        sums: dict[str, float] = {}
        bar = tqdm(range(0, n, t.batch_size), desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                   disable=not progress, leave=False)
        for i in bar:
            batch = tiling.random_crops(x_all[order[i : i + t.batch_size]], config.model.image_size, shuffle)
            batch = augment_batch(batch, t.augment, shuffle)
            if t.precision == "bf16":
                batch = batch.contiguous(memory_format=torch.channels_last)
            local, share = distributed.shard(batch)  # this process's rows (all of them in one process)
            losses = train_step(state, local, config, share)
            clock.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(g=f"{losses['loss_g']:.3f}", con=f"{losses['loss_con']:.3f}",
                            enc=f"{losses['loss_enc']:.4f}", adv=f"{losses['loss_adv']:.4f}", d=f"{losses['loss_d']:.3f}")
        row = {k: v / steps for k, v in sums.items()}
        t_val = time.perf_counter()
        val_con = distributed.mean_over_rows(lambda part: validation_loss(state.kept_generator, part, config),
                                             val_images)
        val_s = time.perf_counter() - t_val
        row.update(epoch=epoch + 1, val_con=val_con,
                   lr=lr, seconds=time.perf_counter() - t0)
        history.append(row)
        epoch += 1
        if replan is not None:
            epochs = replan(epoch, row["seconds"], val_s)
        save(epoch)
        if progress:
            tqdm.write(f"epoch {epoch}/{epochs}  loss_g {row['loss_g']:.4f}  con {row['loss_con']:.4f}  "
                       f"val_con {row['val_con']:.4f}  d {row['loss_d']:.3f}  {row['seconds']:.1f}s")


class _EtaClock:
    """Times the first few optimiser steps and says once how long the whole run will take."""

    def __init__(self, total_steps: int, epochs: int, progress: bool, probe_steps: int = 5) -> None:
        self.total, self.epochs, self.progress = total_steps, epochs, progress
        self.probe = min(probe_steps, total_steps)
        self.done = 0
        self.t0 = time.perf_counter()

    def step(self) -> None:
        self.done += 1
        if self.done == self.probe and self.progress and self.total > self.probe:
            per_step = (time.perf_counter() - self.t0) / self.done
            tqdm.write(f"expected training time: about {_duration(per_step * self.total)} for {self.epochs} epochs "
                       f"({self.total} steps at {per_step * 1000:.0f} ms, timed on the first {self.done})")


def same_training(a: Config, b: Config) -> bool:
    """True when two configs train identical networks (they may differ only in scoring)."""
    return all(getattr(a, k) == getattr(b, k) for k in ("model", "loss", "train", "preprocess"))


def fit_like(source_run: str | Path | None, data_root: str | Path, run_dir: str | Path, config: Config,
             progress: bool = True, loader: ImageLoader = data.load_images) -> Path:
    """Give ``run_dir`` the networks of ``source_run`` when its training settings are the same
    (e.g. GANomaly-SSIM-L1 and -SSIM-SSIM train identically and differ only in scoring), then
    calibrate for ``config``'s scoring; otherwise train from scratch. Training is deterministic
    for a seed, so the result equals training again. An unfinished ``run_dir`` is resumed."""
    import shutil

    source = load_checkpoint(source_run) if source_run and (Path(source_run) / CHECKPOINT).is_file() else None
    run_dir = Path(run_dir)
    done = source is not None and source.get("calibration") is not None
    if done and same_training(Config.model_validate(source["config"]), _with_data_preprocessing(config, Path(data_root))) \
            and not (run_dir / CHECKPOINT).exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(source_run) / CHECKPOINT, run_dir / CHECKPOINT)
        if (Path(source_run) / HISTORY).is_file():
            shutil.copyfile(Path(source_run) / HISTORY, run_dir / HISTORY)
        return fit(data_root, run_dir, config, resume=True, progress=progress, loader=loader)
    return fit(data_root, run_dir, config, resume=(run_dir / CHECKPOINT).exists(), progress=progress, loader=loader)
