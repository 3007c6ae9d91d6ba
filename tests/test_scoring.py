import numpy as np
import pytest
import torch

from aoiflow.calibrate import combined_score, fit_calibration
from aoiflow.config import ScoreConfig
from aoiflow.model import build_networks
from aoiflow.scoring import anomaly_map, minmax_score, pool_map, score_images


def test_calibration_z_scores_and_thresholds():
    r, l = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([10.0, 10.0, 10.0, 10.0, 20.0])
    maps = (torch.arange(1001, dtype=torch.float64) / 1000).reshape(1, 1, 7, 143)
    cal = fit_calibration(r, l, lam=0.5, rate=0.4, maps=maps)
    # population statistics: R 3 +- sqrt(2), L 12 +- 4
    assert (cal.r_mean, cal.l_mean, cal.l_std) == (3.0, 12.0, 4.0) and cal.r_std == pytest.approx(2**0.5)
    # A = (z_R + z_L) / 2 = -0.96, -0.60, -0.25, (1/sqrt2 - 0.5) / 2, (sqrt2 + 2) / 2; at rate 0.4 the
    # threshold is the ceil(6 * 0.6) = 4th smallest
    assert cal.threshold == pytest.approx((2**-0.5 - 0.5) / 2)
    assert cal.pixel_threshold == pytest.approx(0.999)  # 99.9th percentile of 0, 0.001, ..., 1
    # each part contributes on its own scale: R 3 sd up moves A by 0.8 * 3
    up = combined_score(np.array([cal.r_mean + 3 * cal.r_std]), np.array([cal.l_mean]), cal, 0.8)
    assert up[0] == pytest.approx(2.4)


def test_calibration_survives_zero_spread_and_refuses_nothing():
    cal = fit_calibration(np.array([0.1]), np.array([2.0]), 0.5)
    assert np.isfinite(combined_score(np.array([0.1]), np.array([2.0]), cal, 0.5)).all()
    with pytest.raises(ValueError, match="at least one"):
        fit_calibration(np.array([]), np.array([]), 0.5)


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


def test_multiscale_ssim_map_known_answers():
    x = torch.rand(2, 1, 64, 64)
    assert anomaly_map(x, x, "ssim_multiscale").abs().max() < 1e-5   # identical: nothing anywhere
    # flat images a and b: only SSIM's luminance term is left, the same at every scale,
    # 1 - (2ab + C1) / (a^2 + b^2 + C1) with C1 = 0.01^2
    a, b = torch.full((1, 1, 64, 64), 0.3), torch.full((1, 1, 64, 64), 0.6)
    expected = 1 - (2 * 0.3 * 0.6 + 1e-4) / (0.3**2 + 0.6**2 + 1e-4)
    assert torch.allclose(anomaly_map(a, b, "ssim_multiscale"), torch.full((1, 1, 64, 64), expected), atol=1e-4)
    # a flat square wider than the window, on a texture: high over the square, and nothing far
    # from it, even at quarter size, where one window spans 44 pixels of the image
    texture = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.4
    defect = texture.clone()
    defect[..., 40:88, 40:88] = defect[..., 40:88, 40:88].mean()
    multi = anomaly_map(defect, texture, "ssim_multiscale")
    assert multi.shape == (1, 1, 128, 128)
    assert float(multi[..., 30:98, 30:98].mean()) > 0.2 and float(multi[..., :20, :20].abs().max()) < 1e-4


def test_score_config_validates():
    with pytest.raises(ValueError):
        ScoreConfig(pooling="median")
    assert ScoreConfig(score="ssim_multiscale").score == "ssim_multiscale"
    with pytest.raises(ValueError, match="ssim_multiscale"):
        ScoreConfig(score="msssim")


def test_map_smoothing_spreads_a_spike_and_keeps_its_mass():
    x = torch.zeros(1, 1, 32, 32)
    y = x.clone()
    y[0, 0, 16, 16] = 1.0
    raw = anomaly_map(x, y, "l1")
    smooth = anomaly_map(x, y, "l1", sigma=2.0)
    assert smooth.shape == raw.shape
    assert float(smooth.max()) < 0.1 and float(smooth[0, 0, 16, 16]) == float(smooth.max())
    assert float(smooth.sum()) == pytest.approx(1.0, rel=1e-4)


def _generator_with_running_stats():
    """A small generator whose BatchNorm running statistics differ from any one batch's."""
    g, _ = build_networks(32, 1, 16, 8, seed=0)
    g.train()
    with torch.no_grad():
        for _ in range(3):
            g(torch.rand(8, 1, 32, 32) * 2 - 1)
    return g


def test_scores_do_not_depend_on_the_batch_in_eval_mode():
    g = _generator_with_running_stats().eval()
    x = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    sc = ScoreConfig(ssim_window=7, map_normalise="none")
    alone, together = score_images(g, x[:1], sc, keep_maps=True), score_images(g, x, sc, keep_maps=True)
    np.testing.assert_allclose(alone.r, together.r[:1], rtol=1e-5)
    np.testing.assert_allclose(alone.l, together.l[:1], rtol=1e-5)
    torch.testing.assert_close(alone.maps, together.maps[:1])


def test_scoring_puts_the_generator_in_eval_mode():
    g = _generator_with_running_stats()  # left in train mode, e.g. straight from a training loop
    stats = {k: v.clone() for k, v in g.state_dict().items() if "running" in k}
    x = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    sc = ScoreConfig(ssim_window=7, map_normalise="none")
    alone, together = score_images(g, x[:1], sc), score_images(g, x, sc)
    assert all(torch.equal(v, g.state_dict()[k]) for k, v in stats.items())
    np.testing.assert_allclose(alone.r, together.r[:1], rtol=1e-5)
    np.testing.assert_allclose(alone.l, together.l[:1], rtol=1e-5)
