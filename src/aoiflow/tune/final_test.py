"""The held-back test at the end of a search: no new training, only rescoring and evaluation."""

from __future__ import annotations

import shutil
from pathlib import Path

from aoiflow.config import Config
from aoiflow.tune.records import TrialResult, TuneOutcome
from aoiflow.tune.scoring_search import ImageCache
from aoiflow.tune.stages import trial_config
from aoiflow.tune.storage import SearchFolder

TEST_METRICS = ("image_auroc", "pixel_auroc", "f1_at_threshold")


class FinalTest:
    """Tests the tuned result against the untuned config on the test images no trial validated on."""

    def __init__(self, data_root: Path, folder: SearchFolder, base: Config, excluded: set[Path],
                 cache: ImageCache) -> None:
        self.data_root, self.folder, self.base = data_root, folder, base
        self.excluded, self.cache = excluded, cache

    def run(self, outcome: TuneOutcome) -> TuneOutcome:
        """Give the best trial's networks the tuned scoring (``best_run``) and test it, the untuned
        trial, and the untuned networks with their own best scoring (which splits the gain into
        scoring and training settings), on the same held-back images. Fills ``outcome.test``."""
        from aoiflow.evaluate import evaluate_run

        for label, run in self._runs(outcome).items():
            metrics, _ = evaluate_run(run, self.data_root, self.folder.out / f"test_{label}", progress=False,
                                      exclude=self.excluded)
            outcome.test[label] = {k: metrics[k] for k in TEST_METRICS}
            outcome.test[label]["counts"] = metrics["counts"]
        return outcome

    def _runs(self, outcome: TuneOutcome) -> dict[str, Path]:
        runs = {"tuned": self._rescored(outcome.best, "best_run")}
        u = outcome.baseline
        if u.state == "complete":
            runs["untuned"] = self.folder.trial_dir(u.name)
            runs["untuned_networks_tuned_scoring"] = self._rescored(u, "untuned_rescored")
        return runs

    def _rescored(self, trial: TrialResult, name: str) -> Path:
        """A run folder with ``trial``'s networks and its best scoring (calibrated again, seconds)."""
        from aoiflow.train import fit_like

        run = self.folder.out / name
        if run.exists():
            shutil.rmtree(run)  # rebuilt from the trial, so a rerun never mixes results
        config = trial_config(self.base, trial.params, trial.best_lam, trial.best_score_window)
        fit_like(self.folder.trial_dir(trial.name), self.data_root, run, config, progress=False, loader=self.cache)
        return run
