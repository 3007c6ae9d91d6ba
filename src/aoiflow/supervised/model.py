"""The supervised defect-kind model: a U-Net over the image, one output per defect kind plus background.

Layout of SUP/ (written by ``aoiflow supervise train``):
  config.yaml      the settings used (``SupervisedConfig``)
  model.pt         the best model on the validation images, for inference (``SupervisedModel.load``)
  checkpoint.pt    the latest training state, written atomically at each validation (resume from here)
  history.csv      training loss, validation loss and mIoU per validation
  eval/            written by ``aoiflow supervise test``

Files are plain tensors and values, read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from aoiflow.data import resize_tensor, to_model_input
from aoiflow.fileio import file_digest
from aoiflow.runs import RunError, _safe_load, save_checkpoint
from aoiflow.supervised.config import SupervisedConfig
from aoiflow.supervised.verdict import class_regions, region_dicts, two_stage_verdict
from aoiflow.unet import UNet

SUP_FORMAT = "aoiflow-supervised/1"
MODEL = "model.pt"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
HISTORY = "history.csv"


def check_images(x: torch.Tensor, channels: int) -> None:
    """ValueError unless ``x`` is a batch of images (B, ``channels``, H, W)."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"expected images (B, {channels}, H, W) in [0, 1], got shape {tuple(x.shape)}")


class SupervisedError(RunError):
    """A supervised model folder or its training input cannot be used; ``str()`` names the file."""


class SupervisedModel(nn.Module):
    """(B, C, S, S) images in [0, 1] -> logits (B, K+1, S, S): background, then ``class_names``.

    ``S`` = ``config.model.image_size``; ``C`` = ``channels`` (1 grey, 3 colour). Wraps
    ``UNet(C, K+1, width, depth)``; inputs are mapped to [-1, 1] inside.
    """

    def __init__(self, class_names: Sequence[str], channels: int, config: SupervisedConfig | None = None) -> None:
        super().__init__()
        if not class_names:
            raise ValueError("a supervised model needs at least one defect class")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (colour), got {channels}")
        self.class_names = [str(n) for n in class_names]
        self.channels = int(channels)
        self.config = config or SupervisedConfig()
        m = self.config.model
        self.net = UNet(self.channels, len(self.class_names) + 1, m.width, m.depth)
        self.version = "unsaved"  # '<folder name>@<digest of model.pt>' once loaded

    @property
    def image_size(self) -> int:
        return self.config.model.image_size

    def _check(self, x: torch.Tensor) -> None:
        check_images(x, self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [0, 1] -> logits (B, K+1, S, S)."""
        self._check(x)
        return self.net(x * 2 - 1)

    @torch.inference_mode()
    def infer(self, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> class probabilities (B, K+1, S, S), in eval mode. Images of
        another size are resized to S first (as ``data.to_model_input`` does)."""
        self._check(x)
        was_training = self.training
        self.eval()
        try:
            x = resize_tensor(x.float(), self.image_size)
            out = [F.softmax(self(x[i:i + batch_size]), 1) for i in range(0, len(x), batch_size)]
            return torch.cat(out) if out else x.new_zeros(0, len(self.class_names) + 1, *x.shape[-2:])
        finally:
            self.train(was_training)

    def infer_image(self, image: np.ndarray) -> np.ndarray:
        """One image (H, W, C) float in [0, 1] (``data.read_image``) -> probabilities (K+1, S, S)."""
        x = to_model_input(image, self.channels, self.image_size)[None]
        return self.infer(x)[0].numpy()

    def predict_regions(self, probs: np.ndarray | torch.Tensor, original_size: tuple[int, int] | None = None,
                        polygons: bool = False) -> list[dict]:
        """Probabilities (K+1, S, S) -> regions ``{"kind", "confidence", "box", "area"}`` (and
        ``"polygon"``), largest first: connected areas of each kind of the class map, at least
        ``infer.min_region_area`` model pixels, mean probability of their kind at least
        ``infer.min_confidence``. Box (inclusive [x0, y0, x1, y1]) and area in the pixels of
        ``original_size`` (H, W), the original image (default: the probabilities' own)."""
        ic = self.config.infer
        labels, regions = class_regions(probs, ic.min_region_area, ic.min_confidence)
        return region_dicts(regions, self.class_names, labels, original_size, polygons)

    def verdict(self, decision: str, anomaly_map: np.ndarray, pixel_threshold: float | None,
                probs: np.ndarray | torch.Tensor,
                min_cover: float = 0.5) -> tuple[str, str | None, float | None, list[dict]]:
        """``verdict.two_stage_verdict`` with this model's classes and ``infer`` settings; ``probs``
        (K+1, S, S) from ``infer``, ``anomaly_map`` (H, W) at the original size."""
        ic = self.config.infer
        return two_stage_verdict(decision, anomaly_map, pixel_threshold, probs, self.class_names, ic.min_confidence,
                                 min_cover, min_area=ic.min_region_area)

    def to_state(self, **extra: Any) -> dict[str, Any]:
        """What inference needs (no optimiser state): SUP/model.pt; ``extra`` plain values are kept."""
        return {"format": SUP_FORMAT, "class_names": list(self.class_names), "channels": self.channels,
                "config": self.config.model_dump(), "weights": self.net.state_dict(), **extra}

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write the model atomically to ``path`` (a file, or a folder for ``folder/model.pt``)."""
        path = Path(path)
        path = path / MODEL if path.is_dir() or not path.suffix else path
        save_checkpoint(path, self.to_state(**extra))
        return path

    @classmethod
    def from_state(cls, state: dict[str, Any], source: Path | str = "model") -> "SupervisedModel":
        if not isinstance(state, dict) or state.get("format") != SUP_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise SupervisedError(f"{source}: not a supervised defect model (format {found!r}, expected "
                                  f"{SUP_FORMAT!r}); train one with `aoiflow supervise train`")
        try:
            config = SupervisedConfig.model_validate(state["config"])
            model = cls(state["class_names"], int(state["channels"]), config)
            model.net.load_state_dict(state["weights"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise SupervisedError(f"{source}: damaged supervised model ({exc})") from None
        return model.eval()

    @classmethod
    def load(cls, path: str | Path) -> "SupervisedModel":
        """A model from SUP/ (its model.pt) or from a model file, in eval mode, ``version`` set."""
        path = Path(path)
        file = path / MODEL if path.is_dir() else path
        if not file.is_file():
            hint = " (training has not finished a validation yet?)" if (path / CHECKPOINT).is_file() else ""
            raise SupervisedError(f"{file}: supervised model not found{hint}; train one with "
                                  f"`aoiflow supervise train LABELS --out {path}`")
        model = cls.from_state(_safe_load(file), file)
        model.version = f"{file.resolve().parent.name}@{file_digest(file)}"
        return model
