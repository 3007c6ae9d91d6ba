import numpy as np
import pytest
import torch

from aoiflow.config import ScoreConfig
from aoiflow.scoring import anomaly_map, calibrate, combined_score, minmax_score, pool_map


def test_calibration_z_scores_and_threshold():
    rng = np.random.default_rng(0)
    r, l = rng.normal(0.2, 0.01, 200), rng.normal(5.0, 2.0, 200)
    cal = calibrate(r, l, lam=0.8, percentile=99)
    a = combined_score(r, l, cal, 0.8)
    assert abs(a.mean()) < 1e-9
    assert (a > cal.threshold).mean() == pytest.approx(0.01, abs=0.006)
    # each part contributes on its own scale: R 3 sd up moves A by 0.8 * 3
    up = combined_score(np.array([cal.r_mean + 3 * cal.r_std]), np.array([cal.l_mean]), cal, 0.8)
    assert up[0] == pytest.approx(2.4)


def test_calibration_survives_zero_spread_and_refuses_nothing():
    cal = calibrate(np.array([0.1]), np.array([2.0]), 0.5, 99)
    assert np.isfinite(combined_score(np.array([0.1]), np.array([2.0]), cal, 0.5)).all()
    with pytest.raises(ValueError, match="at least one"):
        calibrate(np.array([]), np.array([]), 0.5, 99)


def test_minmax_score_is_the_papers_a_hat():
    a_hat = minmax_score(np.array([1.0, 2.0, 3.0]), np.array([10.0, 10.0, 40.0]), lam=0.5)
    np.testing.assert_allclose(a_hat, [0.0, 0.5 / 16, 1.0])


def test_maps_and_pooling():
    x = torch.zeros(2, 3, 20, 20)
    y = x.clone()
    y[1, :, :2, :2] = 1.0  # a 4-pixel defect in image 1
    l1 = anomaly_map(x, y, "l1")
    assert l1.shape == (2, 1, 20, 20) and float(l1[1, 0, 0, 0]) == 1.0
    assert anomaly_map(x, x, "ssim").abs().max() < 1e-5
    mean = pool_map(l1, "mean")
    top = pool_map(l1, "topk", 0.01)  # top 4 of 400 pixels
    assert float(mean[1]) == pytest.approx(4 / 400) and float(top[1]) == pytest.approx(1.0)
    assert float(top[0]) == 0.0


def test_score_config_validates():
    with pytest.raises(ValueError):
        ScoreConfig(pooling="median")


def test_map_smoothing_spreads_a_spike_and_keeps_its_mass():
    x = torch.zeros(1, 1, 32, 32)
    y = x.clone()
    y[0, 0, 16, 16] = 1.0
    raw = anomaly_map(x, y, "l1")
    smooth = anomaly_map(x, y, "l1", sigma=2.0)
    assert smooth.shape == raw.shape
    assert float(smooth.max()) < 0.1 and float(smooth[0, 0, 16, 16]) == float(smooth.max())
    assert float(smooth.sum()) == pytest.approx(1.0, rel=1e-4)
