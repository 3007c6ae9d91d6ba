"""One trial: train a model with the trial's settings, then search its scoring on the cached outputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from aoiflow.config import Config
from aoiflow.runs import TrainedModel
from aoiflow.tune.records import TrialResult, trial_name
from aoiflow.tune.scoring_search import ImageCache, search_scoring
from aoiflow.tune.settings import SearchSpace
from aoiflow.tune.stages import trial_config
from aoiflow.tune.validation import ValidationSet


class TrialRunner:
    """Trains trials into ``trial_dir(name)`` and judges them on the validation set. A trial
    caught mid-training continues from its checkpoint."""

    def __init__(self, data_root: Path, trial_dir: Callable[[str], Path], base: Config, space: SearchSpace,
                 validation: ValidationSet, cache: ImageCache) -> None:
        self.data_root, self.trial_dir = data_root, trial_dir
        self.base, self.space, self.validation, self.cache = base, space, validation, cache

    def run(self, stage: int, number: int, params: dict[str, int], baseline: bool) -> TrialResult:
        result = TrialResult(stage, number, params, "running", baseline)
        run_dir = self.trial_dir(trial_name(stage, number))
        t0 = time.perf_counter()
        try:
            config = trial_config(self.base, params)
            t_train = time.perf_counter()
            self.train(run_dir, config)
            result.train_seconds = time.perf_counter() - t_train
            self._score(result, run_dir, config)
            result.state = "complete"
        except (ValueError, RuntimeError) as exc:  # a diverged or impossible trial must not end the search
            from aoiflow.train import TrainingInterrupted

            if isinstance(exc, TrainingInterrupted):  # Ctrl-C in training stops the search, not the trial
                raise KeyboardInterrupt from None
            result.state, result.error = "fail", f"{type(exc).__name__}: {exc}"
        result.seconds = time.perf_counter() - t0
        return result

    def train(self, run_dir: Path, config: Config) -> None:
        from aoiflow.train import fit  # looked up per trial (and kept off import time): tests replace it

        fit(self.data_root, run_dir, config, resume=(run_dir / "checkpoint.pt").exists(), progress=False,
            loader=self.cache)

    def _score(self, result: TrialResult, run_dir: Path, config: Config) -> None:
        """Fill in the objective: the best validation AUROC over the scoring grid."""
        model = TrainedModel.load(run_dir)
        size, ch = config.model.image_size, model.channels
        normal_paths = [self.data_root / p for p in model.split["val"]] + self.validation.extra_normals
        normals = self.cache(normal_paths, ch, size).images
        anomalies = self.cache(self.validation.anomalies, ch, size).images
        train = self.cache([self.data_root / p for p in model.split["train"]], ch, size).images
        choice = search_scoring(model, normals, anomalies, self.space, self.base, train)
        result.objective, result.best_lam = choice.objective, choice.lam
        result.best_score_window, result.val_auroc_base_scoring = choice.score_window, choice.base_auroc
