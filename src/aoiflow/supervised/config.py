"""Settings of the supervised defect-kind model: one typed object, YAML load/save, flag overrides.

Precedence as for ``aoiflow train``: defaults < YAML file < explicit overrides (CLI flags); a bad
value is blamed on the flag that set it, else on the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

# The general config's YAML and merge helpers: one way of reading settings files in aoiflow.
from aoiflow.config import ConfigError, _Section, _deep_merge, _describe, _drop_none, _has_path, _read_yaml


class SupervisedModelConfig(_Section):
    """Network shape. ``channels=None``: grey or colour, detected from the training images."""

    image_size: int = 128
    width: int = Field(16, ge=4, le=128)   # channels of the U-Net's first stage
    depth: int = Field(3, ge=1, le=5)      # pooling stages (any power-of-two size >= 32 divides by 2**5)
    channels: Literal[1, 3] | None = None

    @field_validator("image_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v < 32 or v > 512 or v & (v - 1):
            raise ValueError(f"image_size must be a power of two from 32 to 512, got {v}")
        return v


class SupervisedTrainConfig(_Section):
    """A budget in optimiser steps (not epochs: a set of 40 images trains as long as one of 4000)."""

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-3, gt=0)              # peak of a one-cycle schedule
    seed: int = 0
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    threads: int = Field(2, ge=1)
    eval_every: int = Field(100, ge=1)         # steps between validations (and checkpoints)
    # Transforms applied to image and mask together (aoiflow.augment): only those that keep a
    # part a valid part of the product (a part with an orientation mark must not be flipped).
    augment: list[Literal["hflip", "vflip", "rot90", "shift"]] = []
    # Share of each batch drawn from images with defects (when the set has both kinds); 0 = draw
    # uniformly. Keeps a set of many normals and few defects from teaching "always background".
    positive_fraction: float = Field(0.5, ge=0, le=1)
    # Cross-entropy class weights (f_background / f_k) ** power from the training masks' pixel
    # frequencies, at most max_class_weight; 0 = unweighted. Rare, small defects need the weight.
    class_weight_power: float = Field(0.5, ge=0, le=1)
    max_class_weight: float = Field(50.0, ge=1)
    dice_weight: float = Field(1.0, ge=0)      # soft Dice over the defect classes, added to the CE


class SupervisedInferConfig(_Section):
    """How class probabilities become regions."""

    min_region_area: float = Field(4.0, ge=0)        # model-input pixels
    min_confidence: float = Field(0.5, ge=0, le=1)   # a region's mean class probability


class SupervisedConfig(_Section):
    model: SupervisedModelConfig = SupervisedModelConfig()
    train: SupervisedTrainConfig = SupervisedTrainConfig()
    infer: SupervisedInferConfig = SupervisedInferConfig()


def build_supervised_config(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                            flags: dict[str, str] | None = None) -> SupervisedConfig:
    """Merge defaults < YAML file < ``overrides`` (nested like the config, ``None`` values ignored)
    and validate. ``flags`` names the flag behind an override (``{"train.steps": "--steps"}``) so a
    bad value reads ``--steps: ...``; one from the file reads ``FILE: train.steps: ...``."""
    raw = _read_yaml(Path(config_file)) if config_file else {}
    given = _drop_none(overrides or {})
    raw = _deep_merge(raw, given)
    blamed = {path: flag for path, flag in (flags or {}).items() if _has_path(given, path)}
    source = str(config_file) if config_file else "settings"
    try:
        return SupervisedConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(err, source, blamed) for err in exc.errors())) from None


def load_supervised_config(path: str | Path) -> SupervisedConfig:
    """A complete or partial supervised config from YAML."""
    return build_supervised_config(path)


def save_supervised_config(config: SupervisedConfig, path: str | Path, header: str = "") -> None:
    """Write the config as YAML atomically, after ``header`` lines written as YAML comments."""
    from aoiflow.fileio import atomic_write_text

    comment = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(Path(path), comment + yaml.safe_dump(config.model_dump(), sort_keys=False))
