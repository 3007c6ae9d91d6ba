"""A search folder on disk: its settings record (``tune.json``), the validation list, one Optuna
study per stage in SQLite (``study.db``), the trial folders with their ``result.json``, and the
lock that keeps a second search out. Resuming is reading these back."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from aoiflow.config import Config
from aoiflow.fileio import atomic_write_text
from aoiflow.tune.records import TrialResult, trial_name
from aoiflow.tune.settings import SearchSpace, TuneError, TuneSettings

if TYPE_CHECKING:
    from aoiflow.tune.shared import Cooperation, SharedStudy

STAGES = (1, 2, 3)


def settings_record(data_root: Path, base: Config, space: SearchSpace, settings: TuneSettings) -> dict:
    """What a resumed search must repeat exactly, as stored in ``tune.json``."""
    return {"data": str(data_root.resolve()), "base_config": base.model_dump(mode="json"),
            "space": asdict(space), "settings": asdict(settings)}


class SearchFolder:
    """Where one search keeps everything; ``trial_dir(name)`` is the run folder ``train.fit`` writes.
    With ``shared`` the stage studies and the trial results live in that RDB storage instead of
    study.db, so several workers (each with its own folder) run one search (``tune.shared``)."""

    def __init__(self, out: Path, shared: Cooperation | None = None) -> None:
        self.out = out
        self.table_path = out / "trials.csv"
        self.shared = shared
        self._shared_studies: dict[int, SharedStudy] = {}

    def claim(self, record: dict, resume: bool) -> None:
        """Start a search here, or check that a resumed one has the settings it began with."""
        record_path = self.out / "tune.json"
        record = json.loads(json.dumps(record))  # as it reads back from JSON (tuples become lists)
        if record_path.is_file():
            if not resume:
                raise TuneError(f"{self.out}: already holds a search; pass --resume to continue it or choose another --out")
            stored = json.loads(record_path.read_text())
            changed = [k for k in record if stored.get(k) != record[k]]
            if changed:
                raise TuneError(f"{self.out}: cannot resume with different {', '.join(changed)}; "
                                "repeat the original command with --resume")
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record_path, json.dumps(record, indent=1))

    def write_validation_list(self, data_root: Path, excluded: set[Path]) -> None:
        """The test images set aside for validation, as ``aoiflow test --exclude`` reads them."""
        rel = lambda p: str(p.resolve().relative_to(data_root.resolve()))  # noqa: E731
        atomic_write_text(self.out / "validation_anomalies.txt",
                          "# test images set aside for validation; aoiflow test --exclude this file\n"
                          + "".join(f"{rel(p)}\n" for p in sorted(excluded)))

    def trial_dir(self, name: str) -> Path:
        return self.out / "trials" / name

    def study(self, stage: int) -> StageStudy | SharedStudy:
        if self.shared is not None:
            from aoiflow.tune.shared import SharedStudy

            if stage not in self._shared_studies:  # opened once: each open reads the database
                self._shared_studies[stage] = SharedStudy(self.shared, stage)
            return self._shared_studies[stage]
        return StageStudy(f"sqlite:///{(self.out / 'study.db').resolve()}", stage)

    def save_result(self, result: TrialResult) -> None:
        atomic_write_text(self.trial_dir(result.name) / "result.json", json.dumps(asdict(result), indent=1))

    def results(self, stage: int) -> list[TrialResult]:
        """The stage's finished trials (complete or failed), in trial order."""
        if self.shared is not None:
            return self.study(stage).results()
        out = []
        for number in self.study(stage).finished_numbers():
            path = self.trial_dir(trial_name(stage, number)) / "result.json"
            if path.is_file():
                out.append(TrialResult(**json.loads(path.read_text())))
        return out

    def all_results(self) -> list[TrialResult]:
        return [r for s in STAGES for r in self.results(s)]


class StageStudy:
    """One stage's Optuna study (``stage<N>`` in ``study.db``): trials asked, told, and found
    interrupted. Parameters come back as ints, as every searched setting is one."""

    def __init__(self, storage: str, stage: int) -> None:
        import optuna

        self._study = optuna.create_study(study_name=f"stage{stage}", storage=storage, direction="maximize",
                                          load_if_exists=True)

    def trial_count(self) -> int:
        return len(self._study.get_trials(deepcopy=False))

    def finished_numbers(self) -> list[int]:
        from optuna.trial import TrialState

        return [t.number for t in self._study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))]

    def interrupted(self) -> list[tuple[int, dict[str, int]]]:
        """Trials still marked running: the search stopped during them."""
        from optuna.trial import TrialState

        return [(t.number, _ints(t.params)) for t in self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]

    def enqueue(self, params: dict[str, int]) -> None:
        self._study.enqueue_trial(params)

    def ask(self, distributions: dict, seed: int) -> tuple[int, dict[str, int]]:
        import optuna

        self._study.sampler = optuna.samplers.RandomSampler(seed=seed)
        trial = self._study.ask(distributions)
        return trial.number, _ints(trial.params)

    def tell(self, result: TrialResult) -> None:
        if result.state == "complete":
            self._study.tell(result.trial, result.objective)
        else:
            self.drop(result.trial)

    def drop(self, number: int) -> None:
        """Mark a trial failed: it ran and failed, or it never ran and costs no budget."""
        from optuna.trial import TrialState

        self._study.tell(number, state=TrialState.FAIL)


def _ints(params: dict) -> dict[str, int]:
    return {k: int(v) for k, v in params.items()}


class SearchLock:
    """Refuse a second search in the same folder at the same time (SQLite would survive it; the
    trial folders would not)."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise TuneError(f"{self.path.parent}: another aoiflow tune is running in this folder") from None
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()
