"""Give a trained run the synthetic-defect head (``aoiflow train-head RUN``), or train it again.

The generator stays as it is; the head trains on the run's own training normals, then the map
statistics and the calibration are fitted again (the head changes the map and the score), and
RUN/model.pt and RUN/checkpoint.pt are replaced atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from aoiflow import data
from aoiflow.budget import TimeBudget
from aoiflow.config import ConfigError, save_config, with_changes
from aoiflow.head import synthetic_validation, train_head, with_steps_trained
from aoiflow.recalibrate import finish_model
from aoiflow.runs import (CHECKPOINT, CONFIG, RunError, TrainedModel, load_checkpoint, save_checkpoint,
                          save_head_validation, save_model)


def add_head(run_dir: str | Path, head_settings: dict[str, Any] | None = None, lam: float | None = None,
             progress: bool = True, augment: list[str] | None = None, precision: str | None = None,
             max_minutes: float | None = None, score: str | None = None) -> TrainedModel:
    """Train a head for ``run_dir`` with ``head_settings`` (fields of ``HeadConfig``; the run's
    own otherwise), image-score weight ``lam`` (1.0 unless given: the head's map alone),
    ``augment`` (``train.augment`` for the head's batches; the run's own unless given) and
    ``precision`` (``train.precision`` for the head's training; the run's own unless given).
    ``max_minutes``: the head trains only the steps that fit in that time (its schedule shortened
    to match), so heads of different cost compare at the same time, as a budgeted run spends it.
    ``score``: the residual the head reads and the run scores with (``scoring.score``; the run's own
    unless given)."""
    if max_minutes is not None and not max_minutes > 0:
        raise ConfigError(f"train-head: max_minutes {max_minutes}: must be above 0")
    run_dir = Path(run_dir)
    model = TrainedModel.load(run_dir)
    config = with_changes(model.config, {"head": {**(head_settings or {}), "enabled": True},
                                         "train": {"augment": augment, "precision": precision},
                                         "scoring": {"lam": 1.0 if lam is None else lam, "score": score}},
                          "train-head")
    model.config = config
    root = Path(model.data_root or "")
    if not model.data_root or not root.is_dir():
        raise RunError(f"{run_dir}: the run's training folder {model.data_root!r} is not here; the head trains on it")
    train = data.load_images([root / p for p in model.split["train"]], model.channels, config.model.input_size,
                             progress)
    val = data.load_images([root / p for p in model.split["val"]], model.channels, config.model.input_size, progress)
    if len(train.images) == 0 or len(val.images) == 0:
        raise data.DataLayoutError(f"{root}: no readable training or validation images")
    deadline = None if max_minutes is None else TimeBudget.from_minutes(max_minutes, head_share=1.0).head_deadline
    model.head, losses, steps = train_head(model.generator, train.images, config, progress, deadline=deadline)
    if steps < config.head.steps:
        config = model.config = with_steps_trained(config, steps)
    if progress:
        tqdm.write(f"head: {steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    save_head_validation(run_dir, synthetic_validation(model.generator, model.head, val.images, config))
    model = finish_model(model, train.images, val.images)
    _store(run_dir, model)
    return model


def _store(run_dir: Path, model: TrainedModel) -> None:
    save_model(run_dir, model.to_state())
    if (run_dir / CHECKPOINT).is_file():
        state = load_checkpoint(run_dir)
        state.update(config=model.config.model_dump(), calibration=model.calibration.to_dict(),
                     map_stats=model.map_stats.to_dict() if model.map_stats else None, head=model.head.state_dict())
        save_checkpoint(run_dir / CHECKPOINT, state)
    save_config(model.config, run_dir / CONFIG)
