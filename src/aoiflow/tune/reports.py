"""What a search writes for people: trials.csv, objective.png, best.yaml, summary.md and summary.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from aoiflow.config import Config, save_config
from aoiflow.fileio import atomic_write_text, write_csv
from aoiflow.tune.records import TrialResult, TuneOutcome

TRIAL_FIELDS = ["stage", "trial", "name", "state", "baseline", "w_con", "w_enc", "w_adv", "latent_size", "image_size",
                "train_window", "objective", "best_lam", "best_score_window", "val_auroc_base_scoring",
                "train_seconds", "seconds", "error"]


def write_table(path: Path, results: list[TrialResult]) -> None:
    """trials.csv: one row per finished trial, its settings spread into columns."""
    write_csv(path, TRIAL_FIELDS, [{**asdict(r), **r.params, "name": r.name} for r in results])


def write_objective_plot(path: Path, results: list[TrialResult]) -> None:
    from aoiflow import report  # matplotlib: loaded only when a search ends

    report.objective_plot(results, path)


def write_best_config(path: Path, config: Config, best: TrialResult, data_root: Path) -> None:
    """best.yaml, headed by where it came from and the training budget its trials had."""
    save_config(config, path, header=(
        f"aoiflow tune on {data_root}: trial {best.name}, validation AUROC {best.objective:.3f}\n"
        f"each trial trained {config.train.epochs} epochs; raise train.epochs (or pass --epochs) for production"))


def write_summary(out: Path, outcome: TuneOutcome) -> None:
    """summary.json and summary.md: stage bests, the chosen settings, tuned vs untuned on the test."""
    b, u = outcome.best, outcome.baseline
    summary = {"validation": outcome.validation, "stage_best_objective": outcome.stage_best,
               "best_objective_standard_error": outcome.standard_error,
               "best_trial": asdict(b), "untuned_trial": asdict(u), "test": outcome.test}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    atomic_write_text(out / "summary.md", summary_markdown(outcome))


def summary_markdown(outcome: TuneOutcome) -> str:
    def fmt(v) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    b, u = outcome.best, outcome.baseline
    rows = "\n".join(f"| stage {s} | {fmt(v)} |" for s, v in outcome.stage_best.items())
    t, n = outcome.test.get("tuned", {}), outcome.test.get("untuned", {})
    r = outcome.test.get("untuned_networks_tuned_scoring", {})
    return f"""# aoiflow tune

Validation: {outcome.validation}.
Objective: image AUROC on that validation set, at the best lambda / score window for each trained model.

| stage | best validation AUROC |
|---|---|
{rows}

Best trial {b.name}: {b.params}, lambda {b.best_lam}, score window {b.best_score_window}
(validation AUROC {fmt(b.objective)}, standard error {fmt(outcome.standard_error)}: trials closer than about
twice that cannot be told apart on this validation set; being the maximum over all trials and scoring
settings, it is optimistic, and the test rows below are the unbiased figures). Untuned trial {u.name}: validation AUROC {fmt(u.val_auroc_base_scoring)}
at its own scoring, {fmt(u.objective)} with the scoring searched.

| on the held-back test images | image AUROC | pixel AUROC | F1 at threshold |
|---|---|---|---|
| tuned (best.yaml) | {fmt(t.get('image_auroc'))} | {fmt(t.get('pixel_auroc'))} | {fmt(t.get('f1_at_threshold'))} |
| untuned | {fmt(n.get('image_auroc'))} | {fmt(n.get('pixel_auroc'))} | {fmt(n.get('f1_at_threshold'))} |
| untuned networks, their best lambda / window | {fmt(r.get('image_auroc'))} | {fmt(r.get('pixel_auroc'))} | {fmt(r.get('f1_at_threshold'))} |

Files: trials.csv (every trial), objective.png, best.yaml (`aoiflow train DATA --config best.yaml`),
best_run/ (the best trial's networks with the tuned scoring), untuned_rescored/, and a test report for each
row (test_<row>/report.html).
"""
