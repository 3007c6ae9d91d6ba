"""Fit the supervised defect-kind model on a reviewed label set: split, steps, validation, resume.

The label set is read once at the model size; a stratified share (with / without defects) is held
out. Training runs a fixed number of optimiser steps on batches drawn from the step number and
the seed alone, so a resumed run sees the same batches. Every ``train.eval_every`` steps the
held-out images are scored (pixel mIoU over the defect kinds); the best so far is SUP/model.pt,
the latest state SUP/checkpoint.pt (atomic), one row per validation in SUP/history.csv.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from aoiflow import data
from aoiflow.augment import augment_batch
from aoiflow.fileio import write_csv
from aoiflow.runs import _safe_load, save_checkpoint
from aoiflow.supervised.config import SupervisedConfig, save_supervised_config
from aoiflow.supervised.dataset import SupervisedData, load_supervised_data, read_label_set, split_stratified
from aoiflow.supervised.metrics import class_scores, mean_score, pixel_confusion
from aoiflow.supervised.model import CHECKPOINT, CONFIG, HISTORY, MODEL, SupervisedError, SupervisedModel
from aoiflow.train import TrainingInterrupted

HISTORY_FIELDS = ["step", "loss", "val_loss", "val_miou", "lr", "seconds"]
_WARMUP = 0.1               # share of a one-cycle schedule spent rising
_START, _END = 25.0, 1e4    # one-cycle: starts at peak / 25, ends at peak / 1e4 (torch's OneCycleLR defaults)


# --- schedule ------------------------------------------------------------------------------------

def lr_factor(step: int, plan: list[list[float]]) -> float:
    """Factor on the peak rate at ``step`` (0-based). ``plan``: pieces [first step, factor there,
    end step]; the first is a one-cycle (cosine up over the first 10 %, cosine down to 1/1e4),
    each later one (a resumed run given more steps) a cosine from its factor down to 1/1e4, so
    the rate never jumps."""
    start, factor, end = next(p for p in reversed(plan) if step >= p[0])
    span = max(end - start, 1)
    t = min(max((step - start) / span, 0.0), 1.0)
    low = 1.0 / _END
    if start > 0:
        return low + (factor - low) * (1 + math.cos(math.pi * t)) / 2
    warm = max(1, round(_WARMUP * span))
    if step < warm:
        return 1.0 / _START + (1.0 - 1.0 / _START) * (1 - math.cos(math.pi * step / warm)) / 2
    t = (step - warm) / max(span - warm, 1)
    return low + (1.0 - low) * (1 + math.cos(math.pi * min(t, 1.0))) / 2


def extend_plan(plan: list[list[float]], done: int, steps: int) -> list[list[float]]:
    """The schedule of a run resumed after ``done`` steps with a new total of ``steps``."""
    if steps == plan[-1][2] or done == 0:
        return plan if done else [[0, 1.0, steps]]
    return [*plan, [done, lr_factor(done - 1, plan), steps]]


# --- loss ----------------------------------------------------------------------------------------

def class_weights(masks: torch.Tensor, n_classes: int, power: float, max_weight: float) -> torch.Tensor:
    """Cross-entropy weights (n_classes,): background 1, class k (f_background / f_k) ** power
    from the pixel frequencies f of ``masks`` (N, S, S), capped at ``max_weight``; 1 for a class
    with no pixel."""
    counts = torch.bincount(masks.flatten().long(), minlength=n_classes).double()
    w = torch.ones(n_classes, dtype=torch.float64)
    present = counts > 0
    if counts[0] > 0:
        w[present] = (counts[0] / counts[present]) ** power
    return w.clamp(1.0, max_weight).float()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                      dice_weight: float = 1.0) -> torch.Tensor:
    """Weighted cross-entropy of logits (B, K+1, S, S) against target (B, S, S) int64, plus
    ``dice_weight`` x the soft Dice loss averaged over the defect classes present in the batch
    (its pixels, not their share, count: a small defect weighs as much as a large one)."""
    loss = F.cross_entropy(logits, target, weight=weights)
    if dice_weight <= 0:
        return loss
    probs = F.softmax(logits, 1)
    present = [int(k) for k in torch.unique(target) if k > 0]
    if not present:
        return loss
    dice = []
    for k in present:
        p, y = probs[:, k], (target == k).float()
        dice.append(1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1))
    return loss + dice_weight * torch.stack(dice).mean()


# --- validation ----------------------------------------------------------------------------------

@torch.no_grad()
def validate(model: SupervisedModel, val: SupervisedData, weights: torch.Tensor | None, dice_weight: float,
             batch_size: int = 32) -> dict[str, float | None]:
    """Loss and pixel scores of the held-out images (argmax class maps, no region filtering):
    ``val_loss``, ``val_miou`` (mean IoU over the defect kinds) and ``val_iou_<kind>``."""
    was_training = model.training
    model.eval()
    n_classes = len(model.class_names) + 1
    confusion = np.zeros((n_classes, n_classes), np.int64)
    total = 0.0
    for i in range(0, len(val), batch_size):
        x, y = val.batch(range(i, min(i + batch_size, len(val))))
        logits = model(x)
        total += segmentation_loss(logits, y, weights, dice_weight).item() * len(x)
        confusion += pixel_confusion(logits.argmax(1).numpy(), y.numpy(), n_classes)
    model.train(was_training)
    scores = class_scores(confusion, model.class_names)
    row = {"val_loss": total / max(len(val), 1), "val_miou": mean_score(scores)}
    row.update({f"val_iou_{name}": scores[name]["iou"] for name in model.class_names})
    return row


# --- the run -------------------------------------------------------------------------------------

@dataclass
class SupervisedRun:
    """What a training call left in ``out``."""

    out: Path
    class_names: list[str]
    steps_done: int
    best_step: int | None
    best_miou: float | None
    history: list[dict] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    n_train: int = 0
    n_val: int = 0

    @property
    def model_path(self) -> Path:
        return self.out / MODEL


def _seed(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def _same_shape(a: SupervisedConfig, b: SupervisedConfig) -> bool:
    return all(getattr(a.model, k) == getattr(b.model, k) for k in ("image_size", "width", "depth"))


def _previous(out: Path, config: SupervisedConfig, resume: bool) -> dict | None:
    """The checkpoint to continue from, or None for a fresh run; refuses the confusing cases."""
    if not (out / CHECKPOINT).is_file():
        if resume:
            raise SupervisedError(f"{out}: nothing to resume (no {CHECKPOINT}); drop --resume to start a new "
                                  f"model there")
        if (out / MODEL).is_file():
            raise SupervisedError(f"{out}: already holds a model; choose another --out")
        return None
    if not resume:
        raise SupervisedError(f"{out}: already holds a supervised run; pass --resume to continue it or choose "
                              f"another --out")
    state = _safe_load(out / CHECKPOINT)
    if state.get("kind") != "supervised-checkpoint":
        raise SupervisedError(f"{out / CHECKPOINT}: not a supervised training checkpoint (a GANomaly run folder?)")
    if not _same_shape(SupervisedConfig.model_validate(state["config"]), config):
        raise SupervisedError(f"{out}: cannot resume with a different model shape (image size, width or depth)")
    return state


def _split(run_data: SupervisedData, previous: dict | None, config: SupervisedConfig,
           labels: Path) -> tuple[list[int], list[int]]:
    if previous is None:
        try:
            return split_stratified(run_data.positive, config.train.val_fraction, config.train.seed)
        except SupervisedError as exc:
            raise SupervisedError(f"{labels}: {exc}") from None
    where = {str(p): i for i, p in enumerate(run_data.paths)}
    train = [where[p] for p in previous["split"]["train"] if p in where]
    val = [where[p] for p in previous["split"]["val"] if p in where]
    missing = len(previous["split"]["train"]) + len(previous["split"]["val"]) - len(train) - len(val)
    if missing:
        warnings.warn(f"{missing} image(s) the run trained or validated on are not in the label set now (or not "
                      f"readable); continuing without them", stacklevel=3)
    if not train or not val:
        raise SupervisedError("the images the run was trained and validated on are no longer in the label set; "
                              "start a new run")
    return train, val


def _draw(step: int, seed: int, pos: np.ndarray, neg: np.ndarray, batch_size: int,
          positive_fraction: float) -> np.ndarray:
    """The batch of ``step``: indices drawn from (seed, step) alone, ``positive_fraction`` of them
    from ``pos`` when there are images of both kinds."""
    rng = np.random.default_rng([seed, step])
    everything = np.concatenate([pos, neg])
    if positive_fraction <= 0 or len(neg) == 0 or len(pos) == 0:
        return rng.choice(everything, min(batch_size, len(everything)), replace=False)
    n_pos = min(max(1, round(batch_size * positive_fraction)), batch_size)
    take_pos = rng.choice(pos, n_pos, replace=n_pos > len(pos))
    take_neg = rng.choice(neg, batch_size - n_pos, replace=batch_size - n_pos > len(neg))
    return np.concatenate([take_pos, take_neg])


def _train_step(model: SupervisedModel, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                weights: torch.Tensor, dice_weight: float) -> float:
    loss = segmentation_loss(model(x), y, weights, dice_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _augment(x: torch.Tensor, y: torch.Tensor, kinds: list[str],
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same transform on each image and its mask: they travel as one (B, C+1, S, S) tensor."""
    if not kinds:
        return x, y
    joint = augment_batch(torch.cat([x, y[:, None].float()], 1), kinds, generator)
    return joint[:, :-1], joint[:, -1].round().long()


def _interrupted(labels: Path, out: Path, done: int, steps: int, images: str | Path | None, format: str | None,
                 include_train_good: bool) -> str:
    if done == 0:
        return f"interrupted before the first validation; nothing was saved in {out}"
    parts = [f"aoiflow supervise train {labels}", f"--images {images}" if images else "",
             f"--format {format}" if format else "", "--include-train-good" if include_train_good else "",
             f"--out {out} --resume"]
    again = " ".join(p for p in parts if p)
    return (f"interrupted: {done} of {steps} steps are saved in {out / CHECKPOINT} (the best so far in "
            f"{out / MODEL}); continue with `{again}`")


def fit_supervised(labels: str | Path, out: str | Path, config: SupervisedConfig | None = None, *,
                   images: str | Path | None = None, format: str | None = None, include_train_good: bool = False,
                   resume: bool = False, progress: bool = True) -> SupervisedRun:
    """Train on the label set ``labels`` (any form ``read_labels`` reads; ``images``, ``format``
    and ``include_train_good`` as there) and write SUP = ``out``.

    Label problems are warned once each; unreadable images are skipped with a warning naming the
    file. A set without defects raises SupervisedError naming ``labels``. Ctrl-C raises
    TrainingInterrupted saying what is saved and how to continue (``resume=True``)."""
    config = config or SupervisedConfig()
    out, labels = Path(out), Path(labels)
    t = config.train
    _seed(t.seed, t.threads)
    previous = _previous(out, config, resume)
    label_set = read_label_set(labels, images, format=format, include_train_good=include_train_good)
    if previous is not None and list(previous["class_names"]) != label_set.class_names:
        raise SupervisedError(f"{labels}: its classes {label_set.class_names} differ from those the run in {out} "
                              f"was started with {list(previous['class_names'])}; start a new run")
    paths = [s.image_path for s in label_set.samples]
    channels = int(previous["channels"]) if previous else (config.model.channels or data.detect_channels(paths))
    config = config.model_copy(update={"model": config.model.model_copy(update={"channels": channels})})
    run_data = load_supervised_data(label_set, channels, config.model.image_size, progress)
    if not run_data.positive.any():
        raise SupervisedError(f"{labels}: none of the images with defects could be read (or their defects vanish "
                              f"at {config.model.image_size} px)")
    train_idx, val_idx = _split(run_data, previous, config, labels)
    split = {"train": [str(run_data.paths[i]) for i in train_idx], "val": [str(run_data.paths[i]) for i in val_idx]}
    n_classes = len(label_set.class_names) + 1
    weights = class_weights(run_data.masks[train_idx], n_classes, t.class_weight_power, t.max_class_weight)
    val_data = SupervisedData(run_data.images[val_idx], run_data.masks[val_idx],
                              [run_data.paths[i] for i in val_idx], [run_data.original_sizes[i] for i in val_idx],
                              run_data.class_names)

    with torch.random.fork_rng():
        torch.manual_seed(t.seed)
        model = SupervisedModel(label_set.class_names, channels, config)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    plan: list[list[float]] = [[0, 1.0, t.steps]]
    history: list[dict] = []
    done, best_step, best_miou = 0, None, None
    if previous is not None:
        model.net.load_state_dict(previous["weights"])
        opt.load_state_dict(previous["optimizer"])
        done, history = int(previous["step"]), list(previous["history"])
        best_step, best_miou = previous.get("best_step"), previous.get("best_miou")
        plan = extend_plan([list(p) for p in previous["plan"]], done, t.steps)
    out.mkdir(parents=True, exist_ok=True)
    save_supervised_config(config, out / CONFIG, header=f"aoiflow supervised model; classes: "
                                                        f"{', '.join(label_set.class_names)}")
    fields = HISTORY_FIELDS + [f"val_iou_{n}" for n in label_set.class_names]
    result = SupervisedRun(out, label_set.class_names, done, best_step, best_miou, history, run_data.skipped,
                           len(train_idx), len(val_idx))
    if progress and previous is not None:
        tqdm.write(f"resuming {out} from step {done} of {t.steps}")
    if done >= t.steps:
        return result

    positive = run_data.positive
    pos = np.array([i for i in train_idx if positive[i]], np.int64)
    neg = np.array([i for i in train_idx if not positive[i]], np.int64)

    def save(step: int) -> None:
        state = {"kind": "supervised-checkpoint", **model.to_state(), "optimizer": opt.state_dict(), "step": step,
                 "plan": plan, "history": history, "split": split, "best_step": result.best_step,
                 "best_miou": result.best_miou, "labels": str(labels)}
        save_checkpoint(out / CHECKPOINT, state)
        write_csv(out / HISTORY, fields, history)

    model.train()
    bar = tqdm(range(done, t.steps), desc="supervised", unit="step", disable=not progress, leave=False,
               initial=done, total=t.steps)
    running: list[float] = []
    t0 = time.perf_counter()
    try:
        for step in bar:
            lr = t.lr * lr_factor(step, plan)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = run_data.batch(_draw(step, t.seed, pos, neg, t.batch_size, t.positive_fraction))
            x, y = _augment(x, y, list(t.augment), torch.Generator().manual_seed(t.seed * 100_003 + step))
            running.append(_train_step(model, opt, x, y, weights, t.dice_weight))
            bar.set_postfix(loss=f"{running[-1]:.3f}")
            if (step + 1) % t.eval_every == 0 or step + 1 == t.steps:
                row = {"step": step + 1, "loss": float(np.mean(running)), **validate(model, val_data, weights,
                                                                                     t.dice_weight),
                       "lr": lr, "seconds": time.perf_counter() - t0}
                history.append(row)
                running, t0 = [], time.perf_counter()
                score = row["val_miou"] if row["val_miou"] is not None else 0.0
                better = result.best_miou is None or score > result.best_miou
                if better:
                    result.best_step, result.best_miou = step + 1, score
                    model.save(out / MODEL, step=step + 1, val_miou=score)
                save(step + 1)
                result.steps_done = step + 1
                if progress:
                    iou = "  ".join(f"{n} {row[f'val_iou_{n}']:.3f}" for n in label_set.class_names
                                    if row[f"val_iou_{n}"] is not None)
                    tqdm.write(f"step {step + 1}/{t.steps}  loss {row['loss']:.4f}  val_loss {row['val_loss']:.4f}  "
                               f"val mIoU {score:.3f}{' (best)' if better else ''}  {iou}")
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted(labels, out, result.steps_done, t.steps, images, format,
                                               include_train_good)) from None
    finally:
        bar.close()
    return result
