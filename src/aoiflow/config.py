"""One typed settings object for aoiflow, the three reference presets, and YAML load/save.

Precedence when building a config: preset < YAML file < explicit overrides (CLI flags).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PRESET_NAMES = ("ganomaly-l1-l1", "ganomaly-ssim-l1", "ganomaly-ssim-ssim", "ganomaly-ssim-head")
REFERENCE_PRESETS = PRESET_NAMES[:3]  # the published system's three; the head preset goes beyond it
DEFAULT_PRESET = "ganomaly-ssim-ssim"  # what `train` and `tune` use without --preset or --config


class _Section(BaseModel):
    # Unknown keys are almost always typos in a YAML file: refuse them loudly.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Network shape. ``channels=None`` means: detect grey vs colour from the training images."""

    image_size: int = 128
    channels: Literal[1, 3] | None = None
    latent_size: int = Field(100, ge=1, le=4096)
    base_width: int = Field(64, ge=4, le=512)
    # Native-resolution patches (aoiflow.tiling): images are resized to ``canvas`` x ``canvas``
    # instead of ``image_size``; the networks train on random ``image_size`` crops of it and
    # score it by sliding window, so a defect of a few pixels keeps its pixels. 0 = off.
    canvas: int = Field(0, ge=0, le=4096)

    @field_validator("image_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v < 32 or v > 256 or v & (v - 1):
            raise ValueError(f"image_size must be a power of two from 32 to 256, got {v}")
        return v

    @model_validator(mode="after")
    def _canvas_holds_a_patch(self) -> "ModelConfig":
        if self.canvas and self.canvas < self.image_size:
            raise ValueError(f"canvas must be 0 (off) or at least image_size ({self.image_size}), got {self.canvas}")
        return self

    @property
    def input_size(self) -> int:
        """The side images are read at: the canvas when patches are on, else the model size."""
        return self.canvas or self.image_size


class LossConfig(_Section):
    """Training losses: contextual (L1 or SSIM), encoder (L2 on latents), adversarial (feature matching)."""

    contextual: Literal["l1", "ssim"] = "ssim"
    w_con: float = Field(50.0, gt=0)
    w_enc: float = Field(1.0, ge=0)
    w_adv: float = Field(1.0, ge=0)
    ssim_window: int = Field(11, ge=3, le=31)


class TrainConfig(_Section):
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    lr_schedule: Literal["lambda", "constant"] = "lambda"
    seed: int = 0
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    threads: int = Field(2, ge=1)
    # At least this many optimiser steps: a small set (60-100 normals) gets more epochs rather
    # than stopping after a few dozen steps with the mean image learnt (0 = epochs alone).
    min_steps: int = Field(0, ge=0)
    # Transforms that keep this product's normal parts normal (aoiflow.augment): hflip, vflip,
    # rot90, shift. None by default: a part with an orientation mark must not be flipped.
    augment: list[Literal["hflip", "vflip", "rot90", "shift"]] = []
    # 'bf16': convolutions in bfloat16 autocast (fast on CPUs with AMX / AVX-512 BF16; see
    # benchmarks/train_speed.py); weights, losses and scoring stay fp32.
    precision: Literal["fp32", "bf16"] = "fp32"
    # A wall-clock cap on the whole training call (images, epochs, head, calibration; aoiflow.budget):
    # the planned epochs and head steps shrink to fit once they are timed. 0 = no cap.
    max_minutes: float = Field(0, ge=0)
    # GAN stabilisation (aoiflow.train; all off by default, as in the reference):
    # a moving average of the generator's weights with this decay (0 = off) is what the run keeps;
    generator_ema: float = Field(0, ge=0, lt=1)
    # spectral normalisation of the discriminator's convolutions;
    spectral_norm: bool = False
    # the discriminator's target for real images is 1 - label_smoothing (one-sided smoothing); its
    # loss then cannot fall near 0, so the restart of a discriminator that wins outright never fires.
    label_smoothing: float = Field(0, ge=0, le=0.3)


class ScoreConfig(_Section):
    """How R(x), L(x) and A(x) = lam*R + (1-lam)*L are computed and turned into a decision."""

    # 'ssim_multiscale': 1 - SSIM averaged over the image at full, half and quarter size
    # (aoiflow.scoring.multiscale_ssim_map), for defects larger than the SSIM window
    score: Literal["l1", "ssim", "ssim_multiscale"] = "ssim"
    lam: float = Field(0.8, ge=0, le=1)
    ssim_window: int = Field(11, ge=3, le=31)
    # How the map becomes R: 'mean' over all pixels (the paper), or the mean of the top
    # `topk_fraction` of pixels, which keeps a small defect from being averaged away.
    pooling: Literal["mean", "topk"] = "topk"
    # Gaussian smoothing of the anomaly map (sigma in model-input pixels; 0 = none): turns
    # speckle into coherent regions for localisation and pre-labels.
    map_sigma: float = Field(2.0, ge=0, le=16)
    topk_fraction: float = Field(0.01, gt=0, le=1)
    # 'position': each map pixel in units of the spread that training normals' maps show at that
    # position (scoring.MapStats), so places where normal parts vary stop looking like defects.
    map_normalise: Literal["none", "position"] = "position"
    # The share of normal parts the line may flag: the image threshold is set so that new normal
    # images exceed it at most this often (aoiflow.calibrate; 99 normals are needed for 1 %).
    false_alarm_rate: float = Field(0.01, gt=0, lt=1)
    # With model.canvas: the step between scoring windows in pixels (0 = three quarters of the
    # patch). Each window keeps only its central part, so a pixel is judged with context.
    patch_stride: int = Field(0, ge=0, le=4096)

    @model_validator(mode="before")
    @classmethod
    def _old_percentile(cls, values: Any) -> Any:
        """Runs and files from before calibration was its own stage give a percentile instead."""
        if isinstance(values, dict) and "threshold_percentile" in values:
            values = dict(values)
            percentile = values.pop("threshold_percentile")
            if isinstance(percentile, (int, float)) and 0 < percentile < 100:
                values.setdefault("false_alarm_rate", round(1.0 - percentile / 100.0, 12))
        return values


class HeadConfig(_Section):
    """The discriminative head (aoiflow.head): a small U-Net over image and reconstruction,
    trained on synthetic defects after GANomaly; its map replaces the residual map. Not in the
    reference system; off except in the ``ganomaly-ssim-head`` preset."""

    enabled: bool = False
    steps: int = Field(1500, ge=1)         # optimiser steps (the generator is frozen meanwhile)
    batch_size: int = Field(16, ge=2)
    lr: float = Field(2e-3, gt=0)          # peak of a one-cycle schedule
    width: int = Field(16, ge=4, le=128)   # U-Net width of the first stage
    depth: int = Field(3, ge=1, le=5)      # U-Net pooling stages
    downsample: Literal[1, 2] = 2          # 2: the U-Net runs at half the model size (4x less work)
    defect_share: float = Field(0.5, gt=0, lt=1)  # share of training images given a painted defect
    # Largest painted blob, share of the image (log-uniform from 0.3 %). 0.5 rather than 0.06: on
    # the tile run's held-out normals, a head trained with blobs up to half the image found painted
    # defects better at every size, small ones included (benchmarks/head_ablation.py, docs/results.md).
    max_defect_area: float = Field(0.5, gt=0.003, lt=1)
    # flip each training sample's image, reconstruction, residual and label together, at random:
    # more kinds of normal for the head at no cost in generator passes
    flips: bool = False
    # what a painted defect shows (aoiflow.synthdefect.FILLS): another normal image, the same image
    # shifted, a brightness change, a random texture, a blurred copy
    fills: list[Literal["other", "shift", "intensity", "texture", "blur"]] = Field(
        default_factory=lambda: ["other", "shift", "intensity", "texture", "blur"], min_length=1)
    # the head's share of train.max_minutes (after calibration): its steps, not GANomaly's epochs,
    # are what a 30-minute budget is short of (docs/results.md, "Training to a time budget")
    budget_share: float = Field(0.7, gt=0, lt=1)


class PreprocessConfig(_Section):
    """Raw frame -> canonical surface map (see aoiflow.preprocess). ``enabled`` is set on a run
    trained on preprocessed data, so ``predict --raw`` applies the same steps to raw frames."""

    enabled: bool = False
    threshold: Literal["otsu"] | int = "otsu"
    dark_part: bool = False       # the part is darker than its background
    margin: float = Field(0.22, ge=0, le=1)  # added on each side, fraction of the part's side
    size: int = Field(256, ge=16, le=4096)
    orient: Literal["none", "dark_corner"] = "dark_corner"
    target_inside: float = Field(0.5, gt=0, lt=1)
    target_outside: float = Field(0.2, gt=0, lt=1)
    min_part_fraction: float = Field(0.005, gt=0, lt=1)

    @field_validator("threshold")
    @classmethod
    def _threshold_range(cls, v):
        if isinstance(v, int) and not 0 <= v <= 255:
            raise ValueError(f"a fixed threshold must be 0-255, got {v}")
        return v


class Config(_Section):
    preset: str | None = None
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    scoring: ScoreConfig = ScoreConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    head: HeadConfig = HeadConfig()


_PRESETS: dict[str, dict[str, Any]] = {
    "ganomaly-l1-l1": {
        "model": {"image_size": 64, "latent_size": 100},
        "loss": {"contextual": "l1", "w_con": 1, "w_enc": 1, "w_adv": 20},
        "scoring": {"score": "l1", "lam": 0.5},
    },
    "ganomaly-ssim-l1": {
        "model": {"image_size": 128, "latent_size": 100},
        "loss": {"contextual": "ssim", "w_con": 50, "w_enc": 1, "w_adv": 1, "ssim_window": 11},
        "scoring": {"score": "l1", "lam": 0.8},
    },
    "ganomaly-ssim-ssim": {
        "model": {"image_size": 128, "latent_size": 100},
        "loss": {"contextual": "ssim", "w_con": 50, "w_enc": 1, "w_adv": 1, "ssim_window": 11},
        "scoring": {"score": "ssim", "lam": 0.8, "ssim_window": 11},
    },
    # Beyond the reference: SSIM-SSIM plus the synthetic-defect head (aoiflow.head). The image
    # score is the head's map alone (lam 1): the latent distance L adds little once the head
    # reads the reconstruction itself.
    "ganomaly-ssim-head": {
        "model": {"image_size": 128, "latent_size": 100},
        "loss": {"contextual": "ssim", "w_con": 50, "w_enc": 1, "w_adv": 1, "ssim_window": 11},
        "scoring": {"score": "ssim", "lam": 1.0, "ssim_window": 11, "map_normalise": "none"},
        "head": {"enabled": True},
    },
}


class ConfigError(ValueError):
    """A config value or file is wrong; the message names the file and the field."""


def preset_dict(name: str) -> dict[str, Any]:
    """Return the raw settings of a named preset (a fresh copy)."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return {"preset": name, **copy.deepcopy(_PRESETS[name])}


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def _validate(raw: dict[str, Any], source: str, flags: dict[str, str]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(err, source, flags) for err in exc.errors())) from None


def _describe(err: Any, source: str, flags: dict[str, str]) -> str:
    """One problem, blamed on the flag that set the field, else on ``source`` and the field."""
    field = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    for path, flag in flags.items():
        # a union type reports below the field (preprocess.threshold.int): match the prefix too
        if field == path or field.startswith(path + "."):
            return f"{flag}: {msg}"
    return f"{source}: {field}: {msg}"


def build_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
) -> Config:
    """Merge preset < YAML file < overrides and validate.

    ``overrides`` is nested like the config (``{"train": {"epochs": 5}}``); ``None`` values are
    ignored so CLI flags that were not given do not override anything. ``flags`` names the
    command-line flag behind an override (``{"train.epochs": "--epochs"}``): a bad value from a
    flag is reported as ``--epochs: ...``, one from the file as ``FILE: train.epochs: ...``.
    """
    file_raw = _read_yaml(Path(config_file)) if config_file else {}
    name = preset or file_raw.get("preset")
    raw = preset_dict(name) if name else {}
    raw = _deep_merge(raw, file_raw)
    if preset:
        raw["preset"] = preset
    given = _drop_none(overrides or {})
    raw = _deep_merge(raw, given)
    # a flag that was not given left the file's value in place: only given flags take the blame
    blamed = {path: flag for path, flag in (flags or {}).items() if _has_path(given, path)}
    return _validate(raw, str(config_file) if config_file else "settings", blamed)


def with_changes(config: Config, changes: dict[str, Any], source: str) -> Config:
    """``config`` with nested ``changes`` applied and checked like any other setting: a bad value
    is a ConfigError naming ``source`` and the field (``train-head: head.width: ...``)."""
    return _validate(_deep_merge(config.model_dump(), _drop_none(changes)), source, {})


def _has_path(d: dict[str, Any], dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(d, dict) or key not in d:
            return False
        d = d[key]
    return True


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def load_config(path: str | Path) -> Config:
    """Load a complete or partial config from YAML (a ``preset:`` key is honoured)."""
    return build_config(config_file=path)


def save_config(config: Config, path: str | Path, header: str = "") -> None:
    """Write the config as YAML atomically, after ``header`` lines written as YAML comments."""
    from aoiflow.fileio import atomic_write_text

    comment = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(Path(path), comment + yaml.safe_dump(config.model_dump(), sort_keys=False))
