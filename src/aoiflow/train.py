"""Fit GANomaly on normal images: hold-out split, training loop, atomic checkpoints, resume, calibration."""

from __future__ import annotations

import csv
import io
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from aoiflow import data
from aoiflow.config import Config, save_config
from aoiflow.fileio import atomic_write_text
from aoiflow.losses import adversarial_loss, contextual_loss, discriminator_loss, encoder_loss
from aoiflow.model import Discriminator, Generator, build_networks, init_weights
from aoiflow.runs import CHECKPOINT, CONFIG, HISTORY, RunError, calibration_dict, load_checkpoint, save_checkpoint
from aoiflow.scoring import calibrate, score_images

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


@dataclass
class TrainState:
    generator: Generator
    discriminator: Discriminator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    sched_g: torch.optim.lr_scheduler.LambdaLR
    sched_d: torch.optim.lr_scheduler.LambdaLR


def _lr_factor(config: Config):
    epochs = config.train.epochs
    if config.train.lr_schedule == "constant":
        return lambda epoch: 1.0
    # Linear decay from 1 towards 0 over the run ('lambda' policy).
    return lambda epoch: max(0.0, 1.0 - epoch / epochs)


def _build_state(config: Config, channels: int) -> TrainState:
    m, t = config.model, config.train
    g, d = build_networks(m.image_size, channels, m.latent_size, m.base_width, t.seed)
    opt_g = torch.optim.Adam(g.parameters(), lr=t.lr, betas=(t.beta1, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=t.lr, betas=(t.beta1, 0.999))
    factor = _lr_factor(config)
    return TrainState(
        g, d, opt_g, opt_d,
        torch.optim.lr_scheduler.LambdaLR(opt_g, factor),
        torch.optim.lr_scheduler.LambdaLR(opt_d, factor),
    )


def train_step(state: TrainState, x: torch.Tensor, config: Config) -> dict[str, float]:
    """One generator update then one discriminator update on a batch (B, C, S, S) in [-1, 1]."""
    lc = config.loss
    g, d = state.generator, state.discriminator
    out = g(x)
    with torch.no_grad():
        _, feat_real = d.logits(x)
    _, feat_fake = d.logits(out.reconstruction)
    l_adv = adversarial_loss(feat_real, feat_fake)
    l_con = contextual_loss(x, out.reconstruction, lc.contextual, lc.ssim_window)
    l_enc = encoder_loss(out.latent, out.latent_hat)
    loss_g = lc.w_adv * l_adv + lc.w_con * l_con + lc.w_enc * l_enc
    state.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    state.opt_g.step()

    logit_real, _ = d.logits(x)
    logit_fake, _ = d.logits(out.reconstruction.detach())
    loss_d = discriminator_loss(logit_real, logit_fake)
    state.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    state.opt_d.step()
    if loss_d.item() < 1e-5:
        # A discriminator that wins outright gives the generator no signal: restart it (as GANomaly does).
        init_weights(d)
    return {
        "loss_g": loss_g.item(), "loss_con": l_con.item(), "loss_enc": l_enc.item(),
        "loss_adv": l_adv.item(), "loss_d": loss_d.item(),
    }


@torch.inference_mode()
def validation_loss(g: Generator, images: torch.Tensor, config: Config, batch_size: int = 32) -> float:
    """Mean contextual loss of held-out normals (images in [0, 1]) with the generator in eval mode."""
    g.eval()
    total = 0.0
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size] * 2 - 1
        rec = g(x).reconstruction
        total += contextual_loss(x, rec, config.loss.contextual, config.loss.ssim_window).item() * len(x)
    g.train()
    return total / max(1, len(images))


def _write_history(run_dir: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / HISTORY, buf.getvalue())


def _checkpoint_state(state: TrainState, config: Config, channels: int, epoch: int,
                      history: list, split: dict, calibration=None) -> dict:
    return {
        "config": config.model_dump(), "channels": channels, "epoch": epoch,
        "generator": state.generator.state_dict(), "discriminator": state.discriminator.state_dict(),
        "opt_g": state.opt_g.state_dict(), "opt_d": state.opt_d.state_dict(),
        "sched_g": state.sched_g.state_dict(), "sched_d": state.sched_d.state_dict(),
        "history": history, "split": split, "data_root": split.get("root"), "torch_rng": torch.get_rng_state(),
        "calibration": calibration_dict(calibration) if calibration else None,
    }


def _with_data_preprocessing(config: Config, data_root: Path) -> Config:
    """A folder written by ``aoiflow preprocess`` carries its settings (preprocess.yaml); the run
    records them so ``predict --raw`` can apply the same steps to raw frames."""
    from aoiflow.config import load_config

    spec = data_root / "preprocess.yaml"
    if config.preprocess.enabled or not spec.is_file():
        return config
    return config.model_copy(update={"preprocess": load_config(spec).preprocess})


def _same_shape(a: Config, b: Config) -> bool:
    keep = ("image_size", "latent_size", "base_width")
    return all(getattr(a.model, k) == getattr(b.model, k) for k in keep)


ImageLoader = Callable[[list[Path], int, int, bool], data.LoadedImages]


def fit(data_root: str | Path, run_dir: str | Path, config: Config, resume: bool = False, progress: bool = True,
        loader: ImageLoader = data.load_images) -> Path:
    """Train on ``DATA/train/good`` and write the run folder; returns the checkpoint path.

    A fraction ``config.train.val_fraction`` of the normal images is held out: it gives the
    per-epoch validation loss and, at the end, the calibration (normalisation + threshold).
    ``loader(paths, channels, size, progress)`` reads the images (a caching loader lets a
    parameter search read each image once).
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    config = _with_data_preprocessing(config, Path(data_root))
    t = config.train
    seed_everything(t.seed, t.threads)
    ckpt_path = run_dir / CHECKPOINT

    previous = None
    if ckpt_path.exists():
        if not resume:
            raise RunError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
        previous = load_checkpoint(run_dir)
        old = Config.model_validate(previous["config"])
        if not _same_shape(old, config):
            raise RunError(f"{run_dir}: cannot resume with a different model shape (image/latent size or width)")

    all_paths = data.train_images(data_root)
    if previous:
        split = previous["split"]
        root = Path(data_root)
        train_paths = [root / p for p in split["train"]]
        val_paths = [root / p for p in split["val"]]
        channels = int(previous["channels"])
    else:
        train_paths, val_paths = split_holdout(all_paths, t.val_fraction, t.seed)
        channels = config.model.channels or data.detect_channels(all_paths)
        split = {"root": str(Path(data_root).resolve()),
                 "train": [str(p.relative_to(data_root)) for p in train_paths],
                 "val": [str(p.relative_to(data_root)) for p in val_paths]}
    size = config.model.image_size
    train_set = loader(train_paths, channels, size, progress)
    val_set = loader(val_paths, channels, size, progress)
    if len(train_set.images) == 0 or len(val_set.images) == 0:
        raise data.DataLayoutError(f"{data_root}: no readable training or validation images")

    state = _build_state(config, channels)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if previous:
        state.generator.load_state_dict(previous["generator"])
        state.discriminator.load_state_dict(previous["discriminator"])
        state.opt_g.load_state_dict(previous["opt_g"])
        state.opt_d.load_state_dict(previous["opt_d"])
        state.sched_g.load_state_dict(previous["sched_g"])
        state.sched_d.load_state_dict(previous["sched_d"])
        history = list(previous["history"])
        start_epoch = int(previous["epoch"])
        if "torch_rng" in previous:
            torch.set_rng_state(previous["torch_rng"])

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / CONFIG)
    x_all = train_set.images * 2 - 1
    n = len(x_all)
    state.generator.train()
    state.discriminator.train()
    for epoch in range(start_epoch, t.epochs):
        t0 = time.perf_counter()
        # Order depends only on (seed, epoch), so a resumed run sees the same batches.
        order = torch.randperm(n, generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch))
        sums: dict[str, float] = {}
        bar = tqdm(range(0, n, t.batch_size), desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch",
                   disable=not progress, leave=False)
        for i in bar:
            losses = train_step(state, x_all[order[i : i + t.batch_size]], config)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(g=f"{losses['loss_g']:.3f}", con=f"{losses['loss_con']:.3f}",
                            enc=f"{losses['loss_enc']:.4f}", adv=f"{losses['loss_adv']:.4f}", d=f"{losses['loss_d']:.3f}")
        steps = len(range(0, n, t.batch_size))
        row = {k: v / steps for k, v in sums.items()}
        row.update(epoch=epoch + 1, val_con=validation_loss(state.generator, val_set.images, config),
                   lr=state.opt_g.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        history.append(row)
        state.sched_g.step()
        state.sched_d.step()
        save_checkpoint(ckpt_path, _checkpoint_state(state, config, channels, epoch + 1, history, split))
        _write_history(run_dir, history)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{t.epochs}  loss_g {row['loss_g']:.4f}  con {row['loss_con']:.4f}  "
                       f"val_con {row['val_con']:.4f}  d {row['loss_d']:.3f}  {row['seconds']:.1f}s")

    state.generator.eval()
    sc = config.scoring
    val_scores = score_images(state.generator, val_set.images, sc, keep_maps=True)
    calibration = calibrate(val_scores.r, val_scores.l, sc.lam, sc.threshold_percentile, val_scores.maps)
    save_checkpoint(ckpt_path, _checkpoint_state(state, config, channels, max(start_epoch, t.epochs), history, split, calibration))
    return ckpt_path


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
