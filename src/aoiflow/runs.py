"""The run folder: config, checkpoint (networks, optimiser state, normalisation, threshold), history.

Layout of RUN/:
  config.yaml      the full settings used
  checkpoint.pt    latest training state, written atomically every epoch (resume from here)
  model.pt         the finished, calibrated model for inference (generator + calibration, no
                   optimiser state: a fraction of the checkpoint's size)
  history.csv      losses per epoch
  eval/            written by ``aoiflow test``
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aoiflow.calibrate import Calibration
from aoiflow.config import Config
from aoiflow.fileio import atomic_write, atomic_write_text, file_digest
from aoiflow.head import DefectHead, build_head
from aoiflow.model import Generator
from aoiflow.scoring import MapStats, RawScores, score_batch, score_images

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
MODEL_FORMAT = "aoiflow-model/1"
CONFIG = "config.yaml"
HISTORY = "history.csv"
HEAD_VALIDATION = "head_validation.json"  # aoiflow.head.synthetic_validation of the run's head


class RunError(ValueError):
    """A run folder is missing, incomplete or unreadable."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(Path(path), lambda p: torch.save(state, p))


def save_model(run_dir: Path, state: dict[str, Any]) -> None:
    save_checkpoint(Path(run_dir) / MODEL, state)


def save_head_validation(run_dir: Path, result: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / HEAD_VALIDATION, json.dumps(result, indent=1) + "\n")


def load_head_validation(run_dir: Path) -> dict[str, Any] | None:
    """The head's synthetic validation, if the run has a head and it was measured."""
    path = Path(run_dir) / HEAD_VALIDATION
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not readable JSON ({exc}); train the head again to rewrite it") from None


def _safe_load(path: Path) -> dict[str, Any]:
    """torch.load limited to tensors and plain values: a checkpoint from someone else cannot run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise RunError(f"{path}: refused: the file holds Python objects other than tensors and plain values, and "
                       f"loading those could run code ({first})") from None
    except Exception as exc:  # torch raises many types for a damaged file
        raise RunError(f"{path}: checkpoint cannot be read ({exc})") from None


def _check_run_folder(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: run folder not found")
    if (run_dir / "train" / "good").is_dir():
        raise RunError(f"{run_dir}: this is a data folder (it has train/good), not a run folder; train a run on it "
                       f"with `aoiflow train {run_dir} --out RUN` and pass RUN")


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """The resumable training state (networks, optimisers, history) of a run folder."""
    run_dir = Path(run_dir)
    _check_run_folder(run_dir)
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise RunError(f"{path}: no checkpoint; train first with `aoiflow train DATA --out {run_dir}`")
    return _safe_load(path)


def load_model_state(run_dir: str | Path) -> dict[str, Any]:
    """The finished model (RUN/model.pt); runs from before model.pt existed fall back to the checkpoint."""
    run_dir = Path(run_dir)
    _check_run_folder(run_dir)
    if (run_dir / MODEL).is_file():
        return _safe_load(run_dir / MODEL)
    state = load_checkpoint(run_dir)
    if state.get("generator_ema"):  # train.generator_ema: the average is the run's generator
        state["generator"] = {k.removeprefix("module."): v for k, v in state["generator_ema"].items()
                              if k.startswith("module.")}
    return state


def _version(run_dir: Path) -> str:
    path = run_dir / MODEL if (run_dir / MODEL).is_file() else run_dir / CHECKPOINT
    return f"{run_dir.resolve().name}@{file_digest(path)}"


@dataclass
class TrainedModel:
    """Everything scoring needs from a run: the generator (eval mode), config, channels, calibration."""

    generator: Generator
    config: Config
    channels: int
    calibration: Calibration | None
    epoch: int
    split: dict[str, list[str]]  # file names of train/val images relative to the data root
    data_root: str | None = None  # the folder the run was trained on
    map_stats: MapStats | None = None  # per-position statistics of normal maps (map_normalise: position)
    head: DefectHead | None = None  # the synthetic-defect head (aoiflow.head), when the run has one
    version: str = "unsaved"  # '<run folder name>@<digest of the file loaded>': recorded with every verdict

    @classmethod
    def load(cls, run_dir: str | Path) -> "TrainedModel":
        state = load_model_state(run_dir)
        config = Config.model_validate(state["config"])
        channels = int(state["channels"])
        m = config.model
        gen = Generator(m.image_size, channels, m.latent_size, m.base_width)
        gen.load_state_dict(state["generator"])
        gen.eval()
        cal = Calibration.from_dict(state["calibration"]) if state.get("calibration") else None
        head = None
        if state.get("head"):
            head = build_head(channels, config.head)
            head.load_state_dict(state["head"])
            head.eval()
        return cls(gen, config, channels, cal, int(state["epoch"]), state["split"],
                   state.get("data_root"), MapStats.from_dict(state.get("map_stats")), head, _version(Path(run_dir)))

    def to_state(self) -> dict[str, Any]:
        """What inference needs and nothing else (no discriminator, no optimiser state): model.pt."""
        return {"format": MODEL_FORMAT, "config": self.config.model_dump(), "channels": self.channels,
                "epoch": self.epoch, "generator": self.generator.state_dict(), "split": self.split,
                "data_root": self.data_root, "calibration": self.calibration.to_dict() if self.calibration else None,
                "map_stats": self.map_stats.to_dict() if self.map_stats else None,
                "head": self.head.state_dict() if self.head is not None else None}

    def score(self, images: torch.Tensor, **kw: Any) -> RawScores:
        """Score (N, C, S, S) images in [0, 1] with this run's settings (``scoring.score_images``)."""
        return score_images(self.generator, images, self.config.scoring, map_stats=self.map_stats, head=self.head,
                            **kw)

    def score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, S, S) in [0, 1] -> R, L (B,), map (B, 1, S, S), x_hat (``scoring.score_batch``)."""
        return score_batch(self.generator, x, self.config.scoring, self.map_stats, self.head)
