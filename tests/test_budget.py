"""train.max_minutes: a wall-clock cap that shortens the planned epochs and head steps."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aoiflow.budget import SAFETY, TimeBudget, calibration_reserve, units_that_fit
from aoiflow.cli import app
from aoiflow.config import ConfigError, build_config, load_config
from aoiflow.runs import TrainedModel, load_checkpoint
from aoiflow.synth import make_surface_dataset
from aoiflow.train import fit


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory):
    return make_surface_dataset(tmp_path_factory.mktemp("surf"), n_train=24, n_test_good=4, n_per_defect=2, size=48)


def test_units_that_fit_known_answers():
    # 35 s left at 10 s an epoch (planned as 10.5 s): 3 more after the 2 done.
    assert units_that_fit(2, 10.0, 35.0, planned=30) == 5
    assert units_that_fit(2, 10.0, 35.0, planned=4) == 4          # never more than planned
    assert units_that_fit(3, 10.0, -5.0, planned=30) == 3         # out of time: stop where it is
    assert units_that_fit(0, 10.0, 1.0, planned=30) == 1          # at least one unit runs
    assert units_that_fit(5, 1.0, 1000.0, planned=8) == 8
    assert units_that_fit(1, 1.0, 10 * SAFETY - 1e-9, planned=100) == 10  # 9 more: 10 would need 10.5 s


def test_budget_split_between_ganomaly_head_and_calibration():
    b = TimeBudget(seconds=100.0, head_share=0.4, start=1000.0, reserve=10.0)
    assert b.active and not TimeBudget(0.0).active
    assert b.ganomaly_left(now=1000.0) == pytest.approx(54.0)   # (100 - 10) * 0.6
    assert b.head_left(now=1054.0) == pytest.approx(36.0)       # the rest before the reserve
    assert TimeBudget(seconds=60.0, start=0.0).ganomaly_left(now=20.0) == pytest.approx(40.0)  # no head: all of it


def test_calibration_reserve_scales_with_images_windows_and_head():
    # 2 s for 10 validation images -> 0.2 s each; 50 images, 4x the windows, a head doubling it.
    assert calibration_reserve(2.0, 10, 50, 4.0, with_head=True) == pytest.approx(80.0)
    assert calibration_reserve(2.0, 10, 50, 1.0, with_head=False) == pytest.approx(10.0)
    assert calibration_reserve(2.0, 0, 50, 1.0, with_head=False) == 0.0


def test_a_budget_that_binds_stops_after_the_first_epoch_and_records_it(surfaces, tmp_path, tiny_config):
    cfg = tiny_config.model_copy(deep=True)
    cfg.train.epochs, cfg.train.max_minutes = 5, 1e-4  # 6 ms: spent before the first epoch ends
    fit(surfaces, tmp_path / "run", cfg, progress=False)
    model = TrainedModel.load(tmp_path / "run")
    assert model.epoch == 1 and model.config.train.epochs == 1
    assert load_config(tmp_path / "run" / "config.yaml").train.epochs == 1  # the run says what it trained
    ckpt = load_checkpoint(tmp_path / "run")
    assert len(ckpt["history"]) == 1 and ckpt["config"]["train"]["epochs"] == 1
    # the schedule was replanned to end at the shortened run
    assert ckpt["lr_pieces"][-1][2] == 1
    assert np.isfinite(model.calibration.threshold)


def test_a_budget_that_does_not_bind_trains_exactly_as_without(surfaces, tmp_path, tiny_config):
    fit(surfaces, tmp_path / "plain", tiny_config, progress=False)
    capped = tiny_config.model_copy(deep=True)
    capped.train.max_minutes = 60
    fit(surfaces, tmp_path / "capped", capped, progress=False)
    a, b = load_checkpoint(tmp_path / "plain"), load_checkpoint(tmp_path / "capped")
    assert b["config"]["train"]["epochs"] == 2
    for k in a["generator"]:
        torch.testing.assert_close(a["generator"][k], b["generator"][k], rtol=0, atol=0)


def test_the_head_is_shortened_to_the_time_left(surfaces, tmp_path, tiny_config):
    cfg = build_config("ganomaly-ssim-head", overrides={
        **{k: v for k, v in tiny_config.model_dump().items() if k in ("model", "loss")},
        "train": {**tiny_config.train.model_dump(), "epochs": 3, "max_minutes": 1e-4},
        "scoring": {"ssim_window": 7}, "head": {"steps": 200, "batch_size": 4, "width": 4, "depth": 1}})
    fit(surfaces, tmp_path / "run", cfg, progress=False)
    model = TrainedModel.load(tmp_path / "run")
    # out of time after GANomaly's first epoch; the head stops after its timed probe steps
    assert model.config.train.epochs == 1
    assert model.config.head.steps == 10 and model.head is not None
    assert load_config(tmp_path / "run" / "config.yaml").head.steps == 10


def test_max_minutes_flag_and_bad_values(surfaces, tmp_path):
    with pytest.raises(ConfigError, match="max_minutes"):
        build_config(None, overrides={"train": {"max_minutes": -1}})
    r = CliRunner().invoke(app, ["train", str(surfaces), "--out", str(tmp_path / "bad"), "--max-minutes", "-2"])
    assert r.exit_code != 0 and "--max-minutes" in r.output
