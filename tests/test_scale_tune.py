"""One parameter search shared by two worker processes through the real PostgreSQL at
$AOIFLOW_TEST_PG_URL (a fresh schema per test): every slot of every stage runs exactly once, and
the trial of a worker killed mid-trial is retried by the other."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from typer.testing import CliRunner

from aoiflow.cli import app
from aoiflow.config import save_config
from aoiflow.tune import SearchSpace, TuneSettings, storage_url
from aoiflow.tune.shared import RESULT, Cooperation, check_settings, open_storage
from aoiflow.tune.storage import settings_record

BUDGET = (2, 2, 1)
STUDY = "line7"


def _worker(data: Path, config: Path, out: Path, url: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "aoiflow.cli", "tune", str(data), "--config", str(config), "--out", str(out),
           "--stage-trials", ",".join(map(str, BUDGET)), "--image-sizes", "32", "--latent-sizes", "16,32",
           "--val-fraction", "0.34", "--threads", "1", "--storage", url, "--study", STUDY, "--heartbeat", "1",
           "--quiet"]
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _trials(storage) -> dict[int, list]:
    names = set(optuna.get_all_study_names(storage))
    return {s: optuna.load_study(study_name=f"{STUDY}.stage{s}", storage=storage).get_trials()
            for s in (1, 2, 3) if f"{STUDY}.stage{s}" in names}


def _caught_mid_trial(storage, worker: str):
    """A running trial of ``worker`` whose settings are drawn (it is training), once the worker
    has finished a trial already; else None."""
    mine = [t for ts in _trials(storage).values() for t in ts if t.user_attrs.get("worker") == worker]
    finished = any(RESULT in t.user_attrs for t in mine)
    running = [t for t in mine if t.state == optuna.trial.TrialState.RUNNING and len(t.params) == 6
               and RESULT not in t.user_attrs]
    return running[0] if finished and running else None


def _wait_for(probe, seconds: float, proc: subprocess.Popen, log: Path):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if (found := probe()) is not None:
            return found
        assert proc.poll() is None, f"the worker ended before it was caught mid-trial:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)
    pytest.fail(f"no trial caught mid-training within {seconds} s")


def test_two_workers_share_a_search_and_a_killed_workers_trial_is_retried(tile_subset, tmp_path, tiny_config,
                                                                          pg_schema_url):
    # trials of a few seconds: a waiting worker polls every 0.5 s, so it takes the second slot of
    # stage 2 while the other trains (with 1-second trials, a loaded CI machine let one worker take
    # every slot after stage 1, and the other was never caught mid-trial)
    base = tiny_config.model_copy(update={"train": tiny_config.train.model_copy(update={"epochs": 4})})
    save_config(base, tmp_path / "base.yaml")
    logs = {name: tmp_path / f"{name}.log" for name in "ab"}
    # both start on an empty schema: they race to create Optuna's tables
    a = _worker(tile_subset, tmp_path / "base.yaml", tmp_path / "a", pg_schema_url, logs["a"])
    b = _worker(tile_subset, tmp_path / "base.yaml", tmp_path / "b", pg_schema_url, logs["b"])
    storage = open_storage(pg_schema_url, heartbeat=1)
    host = socket.gethostname()
    try:
        victim = _wait_for(lambda: _caught_mid_trial(storage, f"{host}:{a.pid}"), 180, a, logs["a"])
        os.kill(a.pid, signal.SIGKILL)  # the machine is gone: no clean-up, no goodbye to the database
        a.wait()
        assert b.wait(timeout=300) == 0, logs["b"].read_text()
    finally:
        for p in (a, b):
            p.kill()

    trials = _trials(storage)
    stage_of_victim = next(s for s, ts in trials.items() if any(t._trial_id == victim._trial_id for t in ts))
    for stage, budget in zip((1, 2, 3), BUDGET):
        ran = [t for t in trials[stage] if RESULT in t.user_attrs]
        # the requested count, each slot exactly once (no trial ran twice, none was lost)
        assert sorted(t.user_attrs["slot"] for t in ran) == list(range(budget)), stage
        assert all(t.user_attrs[RESULT]["state"] == "complete" for t in ran)
    # the killed worker's trial: failed by the heartbeat, run again with its settings by the other worker
    dead = next(t for t in trials[stage_of_victim] if t._trial_id == victim._trial_id)
    assert dead.state == optuna.trial.TrialState.FAIL and RESULT not in dead.user_attrs
    retry = next(t for t in trials[stage_of_victim] if t.system_attrs.get("failed_trial") == dead.number)
    assert RESULT in retry.user_attrs and retry.params == dead.params
    assert retry.user_attrs["slot"] == dead.user_attrs["slot"]
    assert retry.user_attrs["worker"] == f"{host}:{b.pid}"
    # both workers did trials
    workers = {t.user_attrs["worker"] for ts in trials.values() for t in ts if RESULT in t.user_attrs}
    assert workers == {f"{host}:{a.pid}", f"{host}:{b.pid}"}
    # the surviving worker's own files hold the whole search and its conclusion
    with open(tmp_path / "b" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(BUDGET) and len({r["name"] for r in rows}) == sum(BUDGET)
    assert sum(r["baseline"] == "True" for r in rows) == 1
    assert (tmp_path / "b" / "best.yaml").is_file() and (tmp_path / "b" / "summary.md").is_file()


def test_a_worker_with_other_settings_is_refused(tile_subset, tmp_path, tiny_config, pg_schema_url):
    base = tiny_config.model_copy(update={"train": tiny_config.train.model_copy(update={"epochs": 1})})
    save_config(base, tmp_path / "base.yaml")
    # the first worker's settings, as `aoiflow tune` records them before its first trial
    first = settings_record(tile_subset, base, SearchSpace(image_sizes=(32,), latent_sizes=(16,)),
                            TuneSettings(stage_trials=(3, 2, 2)))
    check_settings(Cooperation(storage_url(pg_schema_url), STUDY), first)
    res = CliRunner().invoke(app, ["tune", str(tile_subset), "--config", str(tmp_path / "base.yaml"),
                                   "--image-sizes", "32", "--latent-sizes", "16", "--storage", pg_schema_url,
                                   "--study", STUDY, "--quiet", "--out", str(tmp_path / "w"),
                                   "--stage-trials", "4,2,2"])
    assert res.exit_code == 2
    assert f"study '{STUDY}'" in res.output and "was started with different settings" in res.output
    assert "aoiflow:aoiflow@" not in res.output  # the password is not printed
