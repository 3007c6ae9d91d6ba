"""The run folder: config, checkpoint (networks, optimiser state, normalisation, threshold), history.

Layout of RUN/:
  config.yaml      the full settings used
  checkpoint.pt    latest state, written atomically every epoch (resume from here)
  history.csv      losses per epoch
  eval/            written by ``aoiflow test``
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from aoiflow.config import Config
from aoiflow.fileio import atomic_write
from aoiflow.model import Generator

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
HISTORY = "history.csv"


class RunError(ValueError):
    """A run folder is missing, incomplete or unreadable."""


@dataclass
class Calibration:
    """Statistics of held-out normal images that make scores comparable across images and runs.

    R and L are z-scored with these means/stds; ``threshold`` applies to the normalised A.
    """

    r_mean: float
    r_std: float
    l_mean: float
    l_std: float
    threshold: float
    n_images: int
    a_percentile: float
    map_high: float | None = None  # 99.9th percentile of the normals' map pixels: the display scale


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(Path(path), lambda p: torch.save(state, p))


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT
    if not Path(run_dir).is_dir():
        raise RunError(f"{run_dir}: run folder not found")
    if not path.is_file():
        raise RunError(f"{path}: no checkpoint; train first with `aoiflow train DATA --out {run_dir}`")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise RunError(f"{path}: checkpoint cannot be read ({exc})") from None


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

    @classmethod
    def load(cls, run_dir: str | Path) -> "TrainedModel":
        state = load_checkpoint(run_dir)
        config = Config.model_validate(state["config"])
        channels = int(state["channels"])
        m = config.model
        gen = Generator(m.image_size, channels, m.latent_size, m.base_width)
        gen.load_state_dict(state["generator"])
        gen.eval()
        cal = Calibration(**state["calibration"]) if state.get("calibration") else None
        return cls(gen, config, channels, cal, int(state["epoch"]), state["split"],
                   state.get("data_root"))


def calibration_dict(cal: Calibration) -> dict[str, Any]:
    return asdict(cal)
