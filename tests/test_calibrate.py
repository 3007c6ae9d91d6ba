"""Calibration: conformal thresholds with known answers, rates that hold, old runs, `aoiflow calibrate`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from aoiflow.calibrate import (
    Calibration,
    conformal_rank,
    conformal_threshold,
    decide,
    fit_calibration,
    normals_needed,
    rate_bounds,
)
from aoiflow.cli import app
from aoiflow.config import Config
from aoiflow.predict import Inspector, predict_to_folder
from aoiflow.runs import MODEL, TrainedModel
from aoiflow.train import fit


@pytest.mark.parametrize("n, rate, k", [(99, 0.01, 99), (199, 0.01, 198), (9, 0.1, 9), (49, 0.1, 45),
                                        (7, 0.01, 7), (999, 0.001, 999), (1000, 0.5, 501)])
def test_conformal_rank(n, rate, k):
    assert conformal_rank(n, rate) == k


def test_threshold_is_the_kth_smallest_score():
    scores = np.random.default_rng(0).permutation(np.arange(99.0))
    assert conformal_threshold(scores, 0.01)[:2] == (98.0, pytest.approx(0.01))
    assert conformal_threshold(scores, 0.1)[0] == 89.0  # k = ceil(100 * 0.9) = 90 -> the value 89


def test_rate_bound_matches_the_closed_form():
    # With k = n the rate is Beta(1, n) distributed, whose 95th percentile is 1 - 0.05 ** (1 / n).
    expected, upper = rate_bounds(99, 99)
    assert expected == pytest.approx(0.01) and upper == pytest.approx(1 - 0.05 ** (1 / 99))


def test_normals_needed():
    assert (normals_needed(0.01), normals_needed(0.001), normals_needed(0.05)) == (99, 999, 19)


def test_a_score_equal_to_the_threshold_is_normal():
    assert decide(np.array([1.0, 2.0, 3.0]), 2.0).tolist() == [False, False, True]


def test_realised_false_alarm_rate_holds_on_simulated_normals():
    """4000 calibrations of 49 normals each (R and L correlated, skewed); one new normal per
    calibration. Conformal theory: exactly (50 - 45) / 50 = 10 % of new normals are flagged."""
    rng = np.random.default_rng(1)
    flagged = []
    for _ in range(4000):
        r = rng.gamma(2.0, size=50)
        l = 0.5 * r + rng.gamma(1.0, size=50)
        cal = fit_calibration(r[:49], l[:49], lam=0.8, rate=0.1)
        flagged.append(bool(decide(0.8 * (r[49] - cal.r_mean) / cal.r_std + 0.2 * (l[49] - cal.l_mean) / cal.l_std,
                                   cal.threshold)))
    assert cal.expected_rate == pytest.approx(0.1)
    assert np.mean(flagged) == pytest.approx(0.1, abs=0.015)  # 3 standard errors of 4000 draws


def test_the_old_percentile_rule_broke_the_target_with_few_normals():
    """What the issue saw: 7 normals, '99th percentile' -> about 12 % of new normals flagged.
    The conformal threshold cannot do better with 7 (the maximum: 1/8), and says so."""
    rng = np.random.default_rng(2)
    cal = fit_calibration(rng.normal(size=7), rng.normal(size=7), lam=1.0, rate=0.01)
    assert cal.expected_rate == pytest.approx(1 / 8)
    assert "needs at least 99 normal images" in cal.summary()


def test_runs_saved_before_calibration_was_a_stage_still_load():
    old = {"r_mean": 1.0, "r_std": 2.0, "l_mean": 0.0, "l_std": 1.0, "threshold": 3.0, "n_images": 10,
           "a_percentile": 99.0, "map_high": 0.25}
    cal = Calibration.from_dict(old)
    assert (cal.target_rate, cal.pixel_threshold, cal.threshold) == (pytest.approx(0.01), 0.25, 3.0)
    assert Config.model_validate({"scoring": {"threshold_percentile": 99.9}}).scoring.false_alarm_rate == 0.001


@pytest.fixture(scope="module")
def run_and_data(module_tile_subset, module_tiny_config, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    fit(module_tile_subset, run, module_tiny_config, progress=False)
    return module_tile_subset, run


def test_calibrate_command_sets_the_threshold_from_new_normals(run_and_data, tmp_path):
    root, trained = run_and_data
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    normals = root / "test" / "good"  # 4 images the run never saw
    result = CliRunner().invoke(app, ["calibrate", str(run), str(normals), "--false-alarm-rate", "0.2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "from 4 normal images: expected false-alarm rate 20.00%" in result.output
    # k = ceil(5 * 0.8) = 4 of 4: the threshold is the largest of the four normals' scores, so
    # predicting those same images flags none of them, and the stored state says the same.
    results = predict_to_folder(Inspector.load(run), normals, tmp_path / "pred", progress=False)
    assert [r.decision for r in results] == ["normal"] * 4
    assert max(r.a for r in results) == pytest.approx(Inspector.load(run).threshold, abs=1e-9)
    model = TrainedModel.load(run)
    assert model.calibration.n_images == 4 and model.config.scoring.false_alarm_rate == 0.2
    history = json.loads((run / "calibration.json").read_text())
    assert len(history) == 1 and history[0]["source"] == "4 images given"


def test_calibrate_from_the_runs_own_normals_for_another_rate(run_and_data, tmp_path):
    _, trained = run_and_data
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = TrainedModel.load(run).calibration
    result = CliRunner().invoke(app, ["calibrate", str(run), "--false-alarm-rate", "0.5", "--quiet"])
    assert result.exit_code == 0, result.output
    after = TrainedModel.load(run).calibration
    # Same 3 held-out normals, same statistics; k = ceil(4 * 0.5) = 2 instead of 3.
    assert (after.r_mean, after.l_std, after.n_images) == (pytest.approx(before.r_mean), pytest.approx(before.l_std), 3)
    assert after.threshold < before.threshold and after.expected_rate == pytest.approx(0.5)


def test_calibrate_refuses_bad_input(run_and_data, tmp_path):
    _, run = run_and_data
    empty = tmp_path / "junk"
    empty.mkdir()
    (empty / "a.png").write_bytes(b"")
    result = CliRunner().invoke(app, ["calibrate", str(run), str(empty), "--quiet"])
    assert result.exit_code == 2 and "none of the 1 normal images could be used" in result.output
    result = CliRunner().invoke(app, ["calibrate", str(run), "--false-alarm-rate", "1.5"])
    assert result.exit_code == 2 and "--false-alarm-rate 1.5" in result.output
    assert (run / MODEL).is_file()
