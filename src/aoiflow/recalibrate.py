"""The calibration stage applied to a model: ``finish_model`` at the end of training, and
``aoiflow calibrate``, which fits a run's calibration again from normal images, without retraining.

For a new lighting, a new camera, a stricter false-alarm target, or simply more normals than the
training hold-out had. The networks stay; the z-score statistics, the image threshold and the
pixel threshold are replaced in RUN/model.pt (and RUN/checkpoint.pt), and RUN/calibration.json
keeps every calibration with its source, so a change can be traced and undone.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from aoiflow import data
from aoiflow.calibrate import Calibration, CalibrationError, fit_calibration
from aoiflow.config import save_config
from aoiflow.fileio import atomic_write_text
from aoiflow.preprocess import SkippedFrame, frame_model_input
from aoiflow.runs import (
    CHECKPOINT,
    CONFIG,
    RunError,
    TrainedModel,
    load_checkpoint,
    save_checkpoint,
    save_model,
)
from aoiflow.scoring import fit_map_stats, score_images

HISTORY_FILE = "calibration.json"


MAP_STATS_IMAGES = 256  # training normals that set the per-position map statistics


def map_stats_sample(train_images: torch.Tensor) -> torch.Tensor:
    """The training normals (evenly spread, at most about MAP_STATS_IMAGES) that set the map statistics."""
    return train_images[:: max(1, len(train_images) // MAP_STATS_IMAGES)]


def finish_model(model: TrainedModel, train_images: torch.Tensor, val_images: torch.Tensor) -> TrainedModel:
    """The trained generator made ready to judge: per-position map statistics from training normals
    (when the scoring asks for them), then the calibration from the held-out normals. Fitting the
    map statistics on other normals than the calibration keeps the threshold's rate guarantee."""
    sc = model.config.scoring
    model.generator.eval()
    if sc.map_normalise == "position" and model.head is None:  # a head's map is a probability already
        plain = sc.model_copy(update={"map_normalise": "none"})
        model.map_stats = fit_map_stats(score_images(model.generator, map_stats_sample(train_images), plain,
                                                     keep_maps=True).maps)
    else:
        model.map_stats = None
    val = model.score(val_images, keep_maps=True)
    model.calibration = fit_calibration(val.r, val.l, sc.lam, sc.false_alarm_rate, val.maps, source="held-out normals")
    return model


def _held_out_normals(model: TrainedModel) -> list[Path]:
    root = Path(model.data_root or "")
    if not model.data_root or not root.is_dir():
        raise RunError(f"the run's training folder {model.data_root!r} is not here; pass a folder of normal images")
    return [root / p for p in model.split["val"]]


def _inputs(model: TrainedModel, paths: list[Path], raw: bool,
            progress: bool) -> tuple[torch.Tensor, list[tuple[Path, str]]]:
    """Model inputs (N, C, S, S) for the normals, through the run's preprocessing when ``raw``."""
    size = model.config.model.input_size
    if not raw:
        loaded = data.load_images(paths, model.channels, size, progress)
        return loaded.images, loaded.skipped
    if not model.config.preprocess.enabled:
        raise RunError("this run was not trained on preprocessed frames, so it has no preprocessing for --raw")
    tensors, skipped = [], []
    for path in paths:
        try:
            tensors.append(frame_model_input(path, model.config.preprocess, model.channels, size)[0])
        except data.ImageReadError as exc:
            skipped.append((path, exc.problem))
        except SkippedFrame as exc:
            skipped.append((path, exc.reason))
    images = torch.stack(tensors) if tensors else torch.empty(0, model.channels, size, size)
    return images, skipped


def recalibrate_run(run_dir: str | Path, normals: list[Path] | None = None, rate: float | None = None,
                    raw: bool = False, progress: bool = True) -> tuple[Calibration, list[tuple[Path, str]]]:
    """Calibrate ``run_dir`` from ``normals`` (default: the run's own held-out normals) for the
    false-alarm ``rate`` (default: the run's). Returns the new calibration and the files skipped."""
    run_dir = Path(run_dir)
    model = TrainedModel.load(run_dir)
    sc = model.config.scoring
    rate = sc.false_alarm_rate if rate is None else rate
    paths = normals if normals is not None else _held_out_normals(model)
    source = "the run's held-out normals" if normals is None else f"{len(paths)} images given"
    images, skipped = _inputs(model, paths, raw, progress)
    if len(images) == 0:
        raise data.DataLayoutError(f"none of the {len(paths)} normal images could be used "
                                   f"(e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else "no normal images given")
    scores = model.score(images, keep_maps=True, progress=progress)
    try:
        cal = fit_calibration(scores.r, scores.l, sc.lam, rate, scores.maps, source=source)
    except CalibrationError as exc:
        raise RunError(str(exc)) from None
    _store(run_dir, model, cal)
    return cal, skipped


def _store(run_dir: Path, model: TrainedModel, cal: Calibration) -> None:
    """The new calibration (and the rate in the scoring config) into model.pt, checkpoint.pt and
    config.yaml; appended to calibration.json."""
    config = model.config.model_copy(deep=True)
    config.scoring.false_alarm_rate = cal.target_rate
    save_model(run_dir, replace(model, config=config, calibration=cal).to_state())
    if (run_dir / CHECKPOINT).is_file():
        state = load_checkpoint(run_dir)
        state["calibration"], state["config"] = cal.to_dict(), config.model_dump()
        save_checkpoint(run_dir / CHECKPOINT, state)
    save_config(config, run_dir / CONFIG)
    history_path = run_dir / HISTORY_FILE
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **cal.to_dict()})
    atomic_write_text(history_path, json.dumps(history, indent=1))
