"""The records a search keeps: one trial's result (``trials/<name>/result.json``) and the outcome."""

from __future__ import annotations

from dataclasses import dataclass, field

from aoiflow.config import Config


@dataclass
class TrialResult:
    stage: int
    trial: int
    params: dict[str, int]
    state: str
    baseline: bool = False
    objective: float | None = None
    best_lam: float | None = None
    best_score_window: int | None = None
    val_auroc_base_scoring: float | None = None
    train_seconds: float | None = None
    seconds: float | None = None
    error: str = ""

    @property
    def name(self) -> str:
        return trial_name(self.stage, self.trial)


def trial_name(stage: int, number: int) -> str:
    """The trial's folder under ``trials/``, e.g. ``s2-004``."""
    return f"s{stage}-{number:03d}"


@dataclass
class TuneOutcome:
    trials: list[TrialResult]
    best: TrialResult
    baseline: TrialResult
    best_config: Config
    validation: str
    stage_best: dict[int, float] = field(default_factory=dict)
    standard_error: float = float("nan")  # of the best validation AUROC, for this validation set's size
    test: dict[str, dict] = field(default_factory=dict)
