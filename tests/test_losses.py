import torch

from aoiflow.losses import adversarial_loss, contextual_loss, discriminator_loss, encoder_loss


def test_contextual_l1_is_mean_absolute_error():
    x = torch.zeros(2, 1, 16, 16)
    y = torch.full_like(x, 0.5)
    assert float(contextual_loss(x, y, "l1")) == 0.5


def test_contextual_ssim_is_zero_for_identical_and_positive_otherwise():
    x = torch.rand(2, 1, 24, 24) * 2 - 1
    assert abs(float(contextual_loss(x, x.clone(), "ssim", 9))) < 1e-5
    assert float(contextual_loss(x, -x, "ssim", 9)) > 0.5


def test_encoder_and_feature_matching_are_mean_squared_errors():
    z = torch.zeros(2, 10, 1, 1)
    assert float(encoder_loss(z, z + 2)) == 4.0
    f = torch.ones(2, 8, 4, 4)
    assert float(adversarial_loss(f, 3 * f)) == 4.0


def test_discriminator_loss_small_when_right_large_when_wrong():
    sure = torch.full((4,), 20.0)
    assert float(discriminator_loss(sure, -sure)) < 1e-6
    assert float(discriminator_loss(-sure, sure)) > 10
