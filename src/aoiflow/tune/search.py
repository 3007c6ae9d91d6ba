"""The three stages run in order: ask each stage's study for settings around its anchors, run the
trial, tell the study, and pick the best trial at the end. Resuming finishes an interrupted trial
and asks for the rest, seeded per trial so the sequence matches an uninterrupted search."""

from __future__ import annotations

from collections.abc import Callable

from aoiflow.config import Config
from aoiflow.runs import TrainedModel
from aoiflow.tune.records import TrialResult, TuneOutcome
from aoiflow.tune.reports import write_table
from aoiflow.tune.settings import SearchSpace, TuneError, TuneSettings
from aoiflow.tune.stages import base_params, sampler_seed, stage_anchors, stage_distributions, trial_config
from aoiflow.tune.storage import STAGES, SearchFolder, StageStudy
from aoiflow.tune.trials import TrialRunner
from aoiflow.tune.validation import ValidationSet, auroc_standard_error


class StagedSearch:
    """Runs (or resumes) the trials of all three stages in ``folder``."""

    def __init__(self, folder: SearchFolder, runner: TrialRunner, base: Config, space: SearchSpace,
                 settings: TuneSettings, progress: bool, log: Callable[[str], None]) -> None:
        self.folder, self.runner = folder, runner
        self.base, self.space, self.settings = base, space, settings
        self.progress, self.log = progress, log
        self.train_ssim = base.loss.contextual == "ssim"

    def run(self) -> list[TrialResult]:
        from tqdm import tqdm

        total = sum(self.settings.stage_trials)
        done = len(self.folder.all_results())
        with tqdm(total=total, initial=done, desc="tune", unit="trial", disable=not self.progress) as bar:
            for stage in STAGES:
                self._run_stage(stage, bar)
        return self.folder.all_results()

    def _run_stage(self, stage: int, bar) -> None:
        if self.folder.shared is not None:  # one of many workers on a shared storage
            from aoiflow.tune.shared import SharedStage

            return SharedStage(self, stage).run(bar)
        study = self.folder.study(stage)
        budget = self.settings.stage_trials[stage - 1]
        if stage == 1 and not study.trial_count():
            study.enqueue(base_params(self.base))  # the untuned config is trial 0: the yardstick
        anchors = self._anchors(stage)
        drawn_keys = set(self._distributions(stage, anchors[0]))
        for number, params in study.interrupted():
            if set(params) == drawn_keys:
                self._finish(study, stage, number, params, bar)
            else:  # stopped while its settings were drawn: it never ran and costs no budget
                study.drop(number)
        while (done := len(self.folder.results(stage))) < budget:
            seed = sampler_seed(self.settings.seed, stage, study.trial_count())
            number, params = study.ask(self._distributions(stage, anchors[done % len(anchors)]), seed)
            self._finish(study, stage, number, params, bar)

    def _anchors(self, stage: int) -> list[dict[str, int]]:
        earlier = [r for s in range(1, stage) for r in self.folder.results(s)]
        anchors = stage_anchors(stage, self.base, earlier, self.settings.top_few)
        if not anchors:
            raise TuneError(f"stage {stage}: every earlier trial failed; see {self.folder.table_path}")
        return anchors

    def _distributions(self, stage: int, anchor: dict[str, int]) -> dict:
        return stage_distributions(stage, self.space, anchor, self.train_ssim)

    def _finish(self, study: StageStudy, stage: int, number: int, params: dict[str, int], bar) -> None:
        """Run one trial, record it everywhere, and say how it went."""
        baseline = stage == 1 and number == 0
        result = self.runner.run(stage, number, params, baseline)
        self.folder.save_result(result)
        study.tell(result)
        self._report(result, bar)

    def _report(self, result: TrialResult | None, bar) -> None:
        """trials.csv and the bar from every finished trial (other workers' too); a line for ``result``."""
        results = self.folder.all_results()
        write_table(self.folder.table_path, results)
        best = max((r.objective for r in results if r.state == "complete"), default=float("nan"))
        bar.n = len(results)
        bar.set_postfix(stage=results[-1].stage if results else 1, best=f"{best:.3f}")
        if result is not None:
            self.log(_trial_line(result, best))


def _trial_line(result: TrialResult, best: float) -> str:
    what = " ".join(f"{k}={v}" for k, v in result.params.items())
    verdict = (f"val AUROC {result.objective:.3f} (lambda {result.best_lam}, window {result.best_score_window})"
               if result.state == "complete" else f"failed: {result.error}")
    untuned = " (untuned)" if result.baseline else ""
    return (f"stage {result.stage} trial {result.trial}{untuned}: {what} -> {verdict}, "
            f"{result.seconds:.0f}s; best so far {best:.3f}")


def best_trial(results: list[TrialResult]) -> TrialResult:
    """The completed trial with the best objective; ties go to the earlier one."""
    return max((r for r in results if r.state == "complete"), key=lambda r: (r.objective, -r.stage, -r.trial))


def conclude(results: list[TrialResult], base: Config, validation: ValidationSet,
             folder: SearchFolder) -> TuneOutcome:
    """The best trial (ties go to the earlier one), its full config, and how precise its objective is."""
    complete = [r for r in results if r.state == "complete"]
    best, baseline = best_trial(results), next(r for r in results if r.baseline)
    config = trial_config(base, best.params, best.best_lam, best.best_score_window)
    stage_best = {s: max((r.objective for r in complete if r.stage == s), default=float("nan")) for s in STAGES}
    n_normal = len(TrainedModel.load(folder.trial_dir(best.name)).split["val"]) + len(validation.extra_normals)
    se = auroc_standard_error(best.objective, len(validation.anomalies), n_normal)
    return TuneOutcome(results, best, baseline, config, validation.description, stage_best, se)
