import math

import pytest
import torch

from aoiflow.losses import adversarial_loss, contextual_loss, discriminator_loss, encoder_loss


def test_contextual_l1_is_mean_absolute_error():
    x = torch.zeros(2, 1, 16, 16)
    y = torch.full_like(x, 0.5)
    assert float(contextual_loss(x, y, "l1")) == 0.5


def test_contextual_ssim_of_flat_images_has_a_closed_form():
    # flat images have no variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1) for grey levels a, b in [0, 1]
    x = torch.rand(2, 1, 24, 24) * 2 - 1
    assert abs(float(contextual_loss(x, x.clone(), "ssim", 9))) < 1e-6
    c1 = 0.01**2
    # float64: in float32, E[x^2] - E[x]^2 of a flat image leaves ~1e-7, visible beside C2 = 9e-4
    x = torch.cat([torch.full((1, 1, 24, 24), -1.0), torch.zeros(1, 1, 24, 24)]).double()  # grey 0 and 0.5
    y = torch.cat([torch.full((1, 1, 24, 24), 1.0), torch.full((1, 1, 24, 24), 0.5)]).double()  # grey 1, 0.75
    black_white = c1 / (1 + c1)
    mid = (2 * 0.5 * 0.75 + c1) / (0.5**2 + 0.75**2 + c1)
    assert float(contextual_loss(x, y, "ssim", 9)) == pytest.approx(1 - (black_white + mid) / 2, abs=1e-9)


def test_encoder_and_feature_matching_are_mean_squared_errors():
    z = torch.zeros(2, 10, 1, 1)
    assert float(encoder_loss(z, z + 2)) == 4.0
    f = torch.ones(2, 8, 4, 4)
    assert float(adversarial_loss(f, 3 * f)) == 4.0


def test_discriminator_loss_is_the_mean_of_both_cross_entropies():
    # real labelled 1 costs log(1 + e^-logit), a reconstruction labelled 0 costs log(1 + e^logit)
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([0.0, -3.0])
    expected = 0.5 * ((math.log(2) + math.log(1 + math.exp(-2))) / 2 + (math.log(2) + math.log(1 + math.exp(-3))) / 2)
    assert float(discriminator_loss(real, fake)) == pytest.approx(expected, rel=1e-6)
    sure = torch.full((4,), 40.0)  # far past exp's float32 range: stays finite (computed on logits)
    assert float(discriminator_loss(-sure, sure)) == pytest.approx(40.0, rel=1e-6)
