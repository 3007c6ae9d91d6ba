import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from aoiflow.ssim import SSIMLoss, gaussian_window, ssim, ssim_map, window_sigma


def test_matches_scikit_image_inside_the_border():
    rng = np.random.default_rng(0)
    a = rng.random((48, 40)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    _, ref = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, full=True)
    ours = ssim_map(torch.tensor(a)[None, None], torch.tensor(b)[None, None], 11)[0, 0].numpy()
    assert ours.shape == a.shape
    np.testing.assert_allclose(ours[5:-5, 5:-5], ref[5:-5, 5:-5], atol=1e-6)


@pytest.mark.parametrize("window", [8, 9, 10, 11, 12, 13, 14])
def test_every_window_keeps_shape_and_identity(window):
    x = torch.rand(2, 3, 33, 31)
    m = ssim_map(x, x.clone(), window)
    assert m.shape == x.shape
    torch.testing.assert_close(m, torch.ones_like(m))
    assert float(ssim(x, torch.rand_like(x), window).max()) < 0.2


def _direct_ssim(a: np.ndarray, b: np.ndarray, k: int, sigma: float) -> np.ndarray:
    """Reference SSIM map, one pixel at a time: explicit k x k window, reflected indices, and
    variances as weighted mean squared deviations (the module uses E[x^2] - E[x]^2 and convolutions)."""
    lo, hi = (k - 1) // 2, k // 2  # an even window reaches one pixel further down/right
    taps = np.array([math.exp(-((i - (k - 1) / 2) ** 2) / (2 * sigma**2)) for i in range(k)])
    w = np.outer(taps, taps) / np.outer(taps, taps).sum()

    def reflect(i: int, n: int) -> int:
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    out = np.empty_like(a)
    for y in range(a.shape[0]):
        for x in range(a.shape[1]):
            rows = [reflect(y + d, a.shape[0]) for d in range(-lo, hi + 1)]
            cols = [reflect(x + d, a.shape[1]) for d in range(-lo, hi + 1)]
            pa, pb = a[np.ix_(rows, cols)], b[np.ix_(rows, cols)]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            out[y, x] = (2 * ma * mb + 1e-4) * (2 * cov + 9e-4) / ((ma**2 + mb**2 + 1e-4) * (va + vb + 9e-4))
    return out


@pytest.mark.parametrize("window", [8, 10, 12, 14])
def test_even_windows_match_a_direct_computation(window):
    rng = np.random.default_rng(window)
    a = rng.random((17, 15))
    b = np.clip(a + rng.normal(0, 0.15, a.shape), 0, 1)
    ours = ssim_map(torch.tensor(a)[None, None], torch.tensor(b)[None, None], window)[0, 0].numpy()
    np.testing.assert_allclose(ours, _direct_ssim(a, b, window, 1.5 * window / 11), atol=1e-12)


def test_gaussian_window_taps_are_known():
    # 4 taps at sigma 1: offsets -1.5, -0.5, 0.5, 1.5 from the centre
    e = [math.exp(-1.125), math.exp(-0.125), math.exp(-0.125), math.exp(-1.125)]
    torch.testing.assert_close(gaussian_window(4, 1.0, torch.float64), torch.tensor(e, dtype=torch.float64) / sum(e))
    assert window_sigma(11) == 1.5 and window_sigma(8) == pytest.approx(12 / 11) and window_sigma(14) == pytest.approx(21 / 11)


def _smooth_pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = F.avg_pool2d(torch.rand(2, 1, 52, 52, generator=g), 5, 1)[..., :48, :48]  # structure at several scales
    return x, (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def test_window_11_is_unchanged_and_larger_windows_now_differ():
    x, y = _smooth_pair()
    assert torch.equal(ssim_map(x, y, 11), ssim_map(x, y, 11, sigma=1.5))  # sigma 1.5 exactly, as before
    fixed = [float(ssim(x, y, w, sigma=1.5).mean()) for w in (11, 12, 13, 14)]
    tied = [float(ssim(x, y, w).mean()) for w in (11, 12, 13, 14)]
    # with sigma fixed the extra taps weigh almost nothing: the search repeated one window
    assert max(abs(a - b) for a, b in zip(fixed, fixed[1:])) < 2e-3
    # tied to the window, each step widens the Gaussian and moves SSIM clearly (smoother -> higher here)
    assert all(b - a > 5e-3 for a, b in zip(tied, tied[1:]))


def test_loss_has_gradients_and_orders_noise_levels():
    x = torch.rand(1, 1, 32, 32)
    small = (x + 0.02 * torch.randn_like(x)).clamp(0, 1).requires_grad_()
    big = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    loss = SSIMLoss(10)(x, small)
    loss.backward()
    assert small.grad is not None and small.grad.abs().sum() > 0
    assert loss.item() < SSIMLoss(10)(x, big).item()


def test_rejects_mismatched_or_tiny_inputs():
    with pytest.raises(ValueError, match="one shape"):
        ssim_map(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 15))
    with pytest.raises(ValueError, match="too small"):
        ssim_map(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), 11)
