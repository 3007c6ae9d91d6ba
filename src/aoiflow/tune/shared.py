"""One search shared by many workers through an Optuna RDB storage (``aoiflow tune --storage URL``).

Every worker (any machine, its own local ``--out``) runs the same command with the same
``--storage`` and ``--study``; the stage studies live in that database and each worker takes the
next trial of the current stage until the stage has its budget, waits for the stage's last trials
(run elsewhere) to finish, and moves on: stage 2 and 3 need stage 1's results.

Exactly the budget, and no trial twice:

- Optuna creates trials one at a time under a lock on the study row, so trial numbers are dense
  and final when a trial appears. A new trial's *slot* is how many non-retry trials come before
  it; slot >= budget means the stage is full, and the trial is pruned without running.
- A worker that dies mid-trial stops sending heartbeats; after the grace period any worker's
  ``fail_stale_trials`` fails the trial and Optuna's RetryHeartbeatStaleTrialCallback queues a
  copy (same parameters, ``failed_trial`` = the original) that one worker pops atomically. A
  retry keeps its original's slot. Ctrl-C on a worker counts as dying (``WorkerStopped``).
- A slot is done when a trial of it has a result (complete, or failed in training), or when its
  retries are spent (MAX_RETRY: a trial that kills every worker it runs on must not stop the search).

Each worker writes its own trials.csv, best.yaml and final test from the shared results; trial
folders stay with the worker that trained them, and a worker that concludes trains again the two
it reads (best, untuned) when they ran elsewhere (training is deterministic for a seed).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from aoiflow.tune.records import TrialResult
from aoiflow.tune.settings import TuneError
from aoiflow.tune.stages import base_params, sampler_seed

if TYPE_CHECKING:
    import optuna

    from aoiflow.tune.search import StagedSearch
    from aoiflow.tune.storage import SearchFolder
    from aoiflow.tune.trials import TrialRunner

MAX_RETRY = 2  # a slot whose trial stopped its worker 1 + MAX_RETRY times counts as failed
RESULT, ERROR = "aoiflow_result", "aoiflow_error"


class WorkerStopped(BaseException):
    """Ctrl-C in a shared search. Not an Exception nor a KeyboardInterrupt, so Optuna's optimize
    does not mark the trial failed: it stays running, its heartbeat stops, and after the grace
    period another worker (or this one, started again) retries it."""


class _TrialFailed(Exception):
    """A trial whose training or scoring failed; its result is stored, the search goes on."""


@dataclass(frozen=True)
class Cooperation:
    """Where the shared studies are: an SQLAlchemy URL, the search's name in it, and the
    heartbeat (seconds) after three of which a silent worker's trial is retried."""

    storage: str
    study: str
    heartbeat: int = 60

    def study_name(self, stage: int) -> str:
        return f"{self.study}.stage{stage}"

    @cached_property
    def rdb(self) -> "optuna.storages.RDBStorage":
        return open_storage(self.storage, self.heartbeat)

    def describe(self) -> str:
        import sqlalchemy as sa

        return f"study {self.study!r} in {sa.make_url(self.storage).render_as_string(hide_password=True)}"


def storage_url(text: str) -> str:
    """An SQLAlchemy URL from ``--storage``; a bare postgresql:// uses psycopg 3 (aoiflow[service])."""
    import sqlalchemy as sa

    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError:
        raise TuneError(f"--storage {text!r}: not a database URL (e.g. postgresql://user:pass@host/db)") from None
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def open_storage(url: str, heartbeat: int) -> "optuna.storages.RDBStorage":
    """Optuna's RDB storage with heartbeats and retries of stale trials. Workers starting together
    on an empty database race to create Optuna's tables; the losers try again."""
    import warnings

    import optuna
    import sqlalchemy as sa
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    # heartbeats, fail_stale_trials and PartialFixedSampler are "experimental" since Optuna 2.x
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    shown = sa.make_url(url).render_as_string(hide_password=True)
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                engine_kwargs={"pool_pre_ping": True})
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, RuntimeError) as exc:  # tables half made
            problem = exc
            time.sleep(0.5 + attempt)
        except (sa.exc.OperationalError, sa.exc.ArgumentError, ImportError, ValueError) as exc:
            problem = exc
            break
    first = str(getattr(problem, "orig", problem)).strip().splitlines()[0]
    if "compatible with the table schema" in first:  # Optuna read someone else's alembic_version
        first += "; another application's tables share the schema (the aoiflow service store has an " \
                 "alembic_version too): give the search a database or schema of its own"
    raise TuneError(f"--storage {shown}: cannot use the database ({first})") from None


def check_settings(coop: Cooperation, record: dict) -> None:
    """The first worker writes the search's settings to the stage-1 study; the others must match
    (the data path may differ between machines)."""
    import json

    import optuna

    record = json.loads(json.dumps({k: v for k, v in record.items() if k != "data"}))
    study = optuna.create_study(study_name=coop.study_name(1), storage=coop.rdb, direction="maximize",
                                load_if_exists=True)
    if "aoiflow_settings" not in study.user_attrs:
        study.set_user_attr("aoiflow_settings", record)
    stored = optuna.load_study(study_name=coop.study_name(1), storage=coop.rdb).user_attrs["aoiflow_settings"]
    changed = [k for k in record if stored.get(k) != record[k]]
    if changed:
        raise TuneError(f"{coop.describe()} was started with different {', '.join(changed)}; "
                        "run every worker with the same settings, or choose another --study")


# --- one stage's study -------------------------------------------------------------------------

def _is_retry(trial: Any) -> bool:
    return "failed_trial" in trial.system_attrs


def _slot(trial: Any, trials: list) -> int:
    """How many non-retry trials precede the trial (or, for a retry, its original)."""
    origin = trial.system_attrs.get("failed_trial", trial.number)
    return sum(1 for t in trials if t.number < origin and not _is_retry(t))


class SharedStudy:
    """One stage's study in the shared storage: trials, slots and the results stored with them."""

    def __init__(self, coop: Cooperation, stage: int) -> None:
        import optuna

        self.stage = stage
        self.study = optuna.create_study(study_name=coop.study_name(stage), storage=coop.rdb,
                                         direction="maximize", load_if_exists=True)

    def trials(self) -> list:
        return self.study.get_trials(deepcopy=False)

    def has_room(self, budget: int) -> bool:
        """A retry waits, or the stage has fewer trials than its budget."""
        from optuna.trial import TrialState

        trials = self.trials()
        return any(t.state == TrialState.WAITING for t in trials) or sum(not _is_retry(t) for t in trials) < budget

    def done(self) -> dict[int, TrialResult]:
        """The finished slots and their results (trials beyond the budget never run, so have none)."""
        trials = self.trials()
        out: dict[int, TrialResult] = {}
        for t in sorted(trials, key=lambda t: t.number):
            result = self._result(t)
            if result is not None:
                out[_slot(t, trials)] = result
        return out

    def results(self) -> list[TrialResult]:
        """The finished trials, in trial order."""
        return sorted(self.done().values(), key=lambda r: r.trial)

    def _result(self, t: Any) -> TrialResult | None:
        from optuna.trial import TrialState

        if t.state == TrialState.PRUNED:  # never ran: beyond the budget, or its original had finished
            return None
        if RESULT in t.user_attrs:
            return TrialResult(**t.user_attrs[RESULT])
        if t.state != TrialState.FAIL:
            return None
        params = {k: int(v) for k, v in t.params.items()}
        if ERROR in t.user_attrs:  # the worker itself failed (not the training): no retry
            return TrialResult(self.stage, t.number, params, "fail", error=t.user_attrs[ERROR])
        stops = len(t.system_attrs.get("retry_history", [])) + 1
        if stops > MAX_RETRY:  # retries spent
            return TrialResult(self.stage, t.number, params, "fail",
                               error=f"the workers running it stopped {stops} times")
        return None  # stale: its retry holds the slot

    def fail_stale(self) -> None:
        import optuna

        optuna.storages.fail_stale_trials(self.study)


def _suggest(trial: "optuna.Trial", distributions: dict) -> dict[str, int]:
    """The trial's value of each distribution (a retry's stored values come back unchanged)."""
    from optuna.distributions import CategoricalDistribution

    params = {}
    for name, d in distributions.items():
        if isinstance(d, CategoricalDistribution):
            params[name] = int(trial.suggest_categorical(name, d.choices))
        else:
            params[name] = int(trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log))
    return params


class SharedStage:
    """Runs one stage as one of many workers; returns when every slot of the stage is done."""

    def __init__(self, search: StagedSearch, stage: int, poll: float | None = None) -> None:
        self.search, self.stage = search, stage
        self.study: SharedStudy = search.folder.study(stage)
        self.budget = search.settings.stage_trials[stage - 1]
        self.anchors = search._anchors(stage)
        self.poll = poll if poll is not None else min(5.0, search.folder.shared.heartbeat / 2)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, bar) -> None:
        self.bar = bar
        seen = len(self.study.done())
        while (done := len(self.study.done())) < self.budget:
            if done > seen:  # trials other workers finished meanwhile
                self.search._report(None, bar)
                seen = done
            if self.study.has_room(self.budget):
                self.study.study.optimize(self._objective, n_trials=1, catch=(_TrialFailed,))
            else:  # the last trials run elsewhere: wait for them, retrying those whose worker died
                self.study.fail_stale()
                time.sleep(self.poll)
        self.search._report(None, bar)

    def _objective(self, trial: "optuna.Trial") -> float:
        import optuna

        trials = self.study.trials()
        me = next(t for t in trials if t.number == trial.number)
        slot = _slot(me, trials)
        if slot >= self.budget or RESULT in me.user_attrs:
            # another worker took the last slot first; or this retries a trial whose worker died
            # after storing its result (the retry copied it), which is done
            trial.set_user_attr("aoiflow_unused", "the stage had its trials")
            raise optuna.TrialPruned()
        trial.set_user_attr("slot", slot)
        trial.set_user_attr("worker", self.worker)
        params = self._params(trial, slot)
        try:
            result = self.search.runner.run(self.stage, trial.number, params, self.stage == 1 and slot == 0)
        except KeyboardInterrupt:
            raise WorkerStopped(f"stopped during trial {trial.number} of stage {self.stage}; another worker "
                                f"retries it once its heartbeat is {3 * self.search.folder.shared.heartbeat} s "
                                "old") from None
        except Exception as exc:  # not the trial's fault (disk, database): kept, not retried
            trial.set_user_attr(ERROR, f"{type(exc).__name__}: {exc}")
            raise
        self.search.folder.save_result(result)
        trial.set_user_attr(RESULT, asdict(result))
        self.search._report(result, self.bar)
        if result.state != "complete":
            raise _TrialFailed(result.error)
        return float(result.objective)

    def _params(self, trial: "optuna.Trial", slot: int) -> dict[str, int]:
        """The slot's settings: seeded per slot, around the slot's anchor; slot 0 of stage 1 is
        the untuned config (the yardstick)."""
        import optuna

        sampler = optuna.samplers.RandomSampler(seed=sampler_seed(self.search.settings.seed, self.stage, slot))
        if self.stage == 1 and slot == 0:
            sampler = optuna.samplers.PartialFixedSampler(base_params(self.search.base), sampler)
        self.study.study.sampler = sampler
        return _suggest(trial, self.search._distributions(self.stage, self.anchors[slot % len(self.anchors)]))


def bring_home(runner: TrialRunner, folder: SearchFolder, results: list[TrialResult]) -> None:
    """Train here the trials the conclusion reads (the best and the untuned one) where another
    worker trained them: the same settings and seed give the same networks."""
    from aoiflow.tune.search import best_trial
    from aoiflow.tune.stages import trial_config

    wanted = [best_trial(results), *(r for r in results if r.baseline and r.state == "complete")]
    for r in wanted:
        run_dir = folder.trial_dir(r.name)
        if not (run_dir / "model.pt").is_file():
            runner.train(run_dir, trial_config(runner.base, r.params))
