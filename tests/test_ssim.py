import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from aoiflow.ssim import SSIMLoss, gaussian_window, ssim, ssim_map


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


def test_even_window_is_symmetric_and_normalised():
    g = gaussian_window(8)
    assert g.shape == (8,) and float(g.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(g, g.flip(0))


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
