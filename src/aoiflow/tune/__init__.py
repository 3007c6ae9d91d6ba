"""Three-stage random parameter search for GANomaly (``aoiflow tune``).

Stage 1 samples the whole training space at random (loss weights on a coarse grid); stage 2
samples a narrower range at finer steps around the best stage-1 trial; stage 3 refines the best
few trials of stages 1-2 even more tightly. Every trial trains one model; the scoring side
(lambda, score SSIM window, and the z-score normalisation they imply) is then searched on that
model's cached reconstructions and latents, which costs seconds, not training runs.

The objective is image AUROC on a validation set that the final test never sees: the run's
normals held out from ``train/good`` plus labelled anomalies (a ``--val`` folder, or a stated
fraction of the test anomalies, which are then left out of the final test).

Optuna keeps the study in SQLite (``DIR/study.db``, one study per stage), so an interrupted
search resumes where it stopped; a trial caught mid-training continues from its checkpoint. With
``--storage URL`` the studies live in that database instead and many workers share the search
(``shared``).

Modules: ``settings`` (what may vary, how the search runs), ``validation`` (the validation set),
``stages`` (stage spaces and anchors, pure), ``scoring_search`` (a trial's cached scoring search),
``trials`` (training one trial), ``storage`` (the folder, its SQLite studies and lock),
``search`` (the stages in order), ``reports`` (files for people), ``final_test`` (the held-back test),
``shared`` (one search over many workers).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aoiflow import data
from aoiflow.config import Config
from aoiflow.tune.final_test import FinalTest
from aoiflow.tune.records import TrialResult, TuneOutcome
from aoiflow.tune.reports import TRIAL_FIELDS, write_best_config, write_objective_plot, write_summary
from aoiflow.tune.scoring_search import ImageCache, ScoringChoice, search_scoring
from aoiflow.tune.search import StagedSearch, conclude
from aoiflow.tune.settings import STAGE_SHARES, SearchSpace, TuneError, TuneSettings, split_trials
from aoiflow.tune.shared import Cooperation, WorkerStopped, bring_home, check_settings, storage_url
from aoiflow.tune.stages import base_params, stage_anchors, stage_distributions, trial_config
from aoiflow.tune.storage import SearchFolder, SearchLock, settings_record
from aoiflow.tune.trials import TrialRunner
from aoiflow.tune.validation import ValidationSet, auroc_standard_error, validation_set

__all__ = [
    "Cooperation", "ImageCache", "STAGE_SHARES", "ScoringChoice", "SearchSpace", "TRIAL_FIELDS", "TrialResult",
    "TuneError", "TuneOutcome", "TuneSettings", "ValidationSet", "WorkerStopped", "auroc_standard_error",
    "base_params", "search_scoring", "split_trials", "stage_anchors", "stage_distributions", "storage_url",
    "trial_config", "tune", "validation_set", "write_summary",
]


def tune(data_root: str | Path, out: str | Path, base: Config, space: SearchSpace = SearchSpace(),
         settings: TuneSettings = TuneSettings(), resume: bool = False, progress: bool = True,
         log: Callable[[str], None] | None = None, shared: Cooperation | None = None) -> TuneOutcome:
    """Run (or resume) the three-stage search in ``out`` and test its result; see the module doc.
    ``shared``: be one of many workers of a search kept in an RDB storage (``tune.shared``)."""
    import optuna
    from tqdm import tqdm

    log = log or tqdm.write  # prints above the progress bar instead of through it

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data_root, folder = Path(data_root), SearchFolder(Path(out), shared)
    with SearchLock(folder.out):
        validation = _open_search(data_root, folder, base, space, settings, resume)
        log(f"validation: {validation.description}")
        cache = ImageCache()
        runner = TrialRunner(data_root, folder.trial_dir, base, space, validation, cache)
        results = StagedSearch(folder, runner, base, space, settings, progress, log).run()
        if shared is not None:
            bring_home(runner, folder, results)
        write_objective_plot(folder.out / "objective.png", results)
        outcome = conclude(results, base, validation, folder)
        write_best_config(folder.out / "best.yaml", outcome.best_config, outcome.best, data_root)
        FinalTest(data_root, folder, base, validation.excluded_from_test, cache).run(outcome)
        write_summary(folder.out, outcome)
        return outcome


def _open_search(data_root: Path, folder: SearchFolder, base: Config, space: SearchSpace,
                 settings: TuneSettings, resume: bool) -> ValidationSet:
    """Check everything before any training: settings, DATA, the folder (new, or resumable with
    the same settings); then fix the validation set and write down what the test leaves out."""
    space.check()
    settings.check()
    data.train_images(data_root)  # fail early, naming the folder, when DATA is wrong
    folder.claim(settings_record(data_root, base, space, settings), resume)
    if folder.shared is not None:
        check_settings(folder.shared, settings_record(data_root, base, space, settings))
    validation = validation_set(data_root, settings)
    folder.write_validation_list(data_root, validation.excluded_from_test)
    return validation
