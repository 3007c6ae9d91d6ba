"""Stage planning, as pure functions: what each stage may sample, around which anchors, and how
a trial's settings become a Config.

Stage 1 samples the whole space around the base config; stage 2 narrows around the best trial so
far; stage 3 narrows further around the best few (``TuneSettings.top_few``).
"""

from __future__ import annotations

from typing import Any

from aoiflow.config import Config
from aoiflow.tune.records import TrialResult
from aoiflow.tune.settings import SearchSpace

WEIGHTS = ("w_con", "w_enc", "w_adv")


def _categorical(values, extra=None):
    import optuna

    return optuna.distributions.CategoricalDistribution(sorted({*values, *([extra] if extra is not None else [])}))


def _ints_around(value: int, radius: int, lo: int, hi: int):
    import optuna

    return optuna.distributions.IntDistribution(max(lo, value - radius), min(hi, value + radius))


def _neighbours(values: tuple[int, ...], value: int) -> list[int]:
    ordered = sorted({*values, value})
    i = ordered.index(value)
    return ordered[max(0, i - 1) : i + 2]


def stage_distributions(stage: int, space: SearchSpace, anchor: dict[str, int], train_ssim: bool) -> dict:
    """Optuna distributions for one trial. Stage 1: the whole space (``anchor`` = the base config,
    so its values are always allowed). Stage 2: weights within +-10 at step 1, the neighbouring
    latent sizes, window +-2, image size fixed. Stage 3: weights +-3, latent and size fixed, window +-1."""
    if stage == 1:
        return _whole_space(space, anchor, train_ssim)
    lo, hi = space.weight_range
    radius, window_radius = (10, 2) if stage == 2 else (3, 1)
    dists = {w: _ints_around(int(anchor[w]), radius, lo, hi) for w in WEIGHTS}
    # A fixed value is a one-point integer range: Optuna refuses categorical choices that change
    # between trials of one study, and stage 3 moves between anchors of different sizes.
    if stage == 2:
        dists["latent_size"] = _categorical(_neighbours(space.latent_sizes, anchor["latent_size"]))
    else:
        dists["latent_size"] = _ints_around(int(anchor["latent_size"]), 0, 1, 4096)
    dists["image_size"] = _ints_around(int(anchor["image_size"]), 0, 32, 256)
    if train_ssim:
        w_lo, w_hi = min(space.train_windows), max(space.train_windows)
        dists["train_window"] = _ints_around(int(anchor["train_window"]), window_radius, w_lo, w_hi)
    return dists


def _whole_space(space: SearchSpace, anchor: dict[str, int], train_ssim: bool) -> dict:
    dists = {w: _categorical(space.weights, anchor[w]) for w in WEIGHTS}
    dists["latent_size"] = _categorical(space.latent_sizes, anchor["latent_size"])
    dists["image_size"] = _categorical(space.image_sizes, anchor["image_size"])
    if train_ssim:
        dists["train_window"] = _categorical(space.train_windows, anchor["train_window"])
    return dists


def stage_anchors(stage: int, base: Config, earlier: list[TrialResult], top_few: int) -> list[dict[str, int]]:
    """The settings a stage samples around: the base config for stage 1; the best completed
    earlier trial for stage 2; the best ``top_few`` distinct ones for stage 3 (ties go to the
    earlier trial). Empty when every earlier trial failed."""
    if stage == 1:
        return [base_params(base)]
    complete = [r for r in earlier if r.state == "complete"]
    ranked = sorted(complete, key=lambda r: (-r.objective, r.stage, r.trial))
    unique: list[dict[str, int]] = []
    for r in ranked:
        if r.params not in unique:
            unique.append(r.params)
    return unique[: 1 if stage == 2 else top_few]


def sampler_seed(seed: int, stage: int, number: int) -> int:
    """A seed per trial, so the sequence is the same whether or not the search was interrupted."""
    return seed * 10_000 + stage * 1_000 + number


def base_params(config: Config) -> dict[str, int]:
    """The training settings a trial varies, as they stand in ``config``."""
    params = {"w_con": config.loss.w_con, "w_enc": config.loss.w_enc, "w_adv": config.loss.w_adv,
              "latent_size": config.model.latent_size, "image_size": config.model.image_size}
    params = {k: int(round(v)) for k, v in params.items()}
    if config.loss.contextual == "ssim":
        params["train_window"] = config.loss.ssim_window
    return params


def trial_config(base: Config, params: dict[str, Any], lam: float | None = None,
                 score_window: int | None = None) -> Config:
    """``base`` with a trial's training settings (and, given them, its scoring settings)."""
    raw = base.model_dump()
    raw["loss"].update(w_con=float(params["w_con"]), w_enc=float(params["w_enc"]), w_adv=float(params["w_adv"]))
    raw["model"].update(latent_size=int(params["latent_size"]), image_size=int(params["image_size"]))
    if "train_window" in params:
        raw["loss"]["ssim_window"] = int(params["train_window"])
    if lam is not None:
        raw["scoring"]["lam"] = float(lam)
    if score_window is not None:
        raw["scoring"]["ssim_window"] = int(score_window)
    return Config.model_validate(raw)
