import numpy as np
import pytest
import torch

from aoiflow.model import Discriminator, Generator, build_networks


@pytest.mark.parametrize("size", [32, 64, 128, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_for_every_size_and_channel_count(size, channels):
    g, d = build_networks(size, channels, latent_size=20, base_width=4, seed=0)
    x = torch.rand(2, channels, size, size) * 2 - 1
    with torch.no_grad():
        out = g(x)
    assert out.reconstruction.shape == x.shape
    assert out.latent.shape == out.latent_hat.shape == (2, 20, 1, 1)
    with torch.no_grad():
        prob, feats = d(x)
    assert prob.shape == (2,) and feats.shape == (2, 4 * size // 8, 4, 4)  # width doubles per stage


@pytest.mark.parametrize("size", [16, 48, 512])
def test_rejects_sizes_that_are_not_supported(size):
    with pytest.raises(ValueError, match="power of two"):
        Generator(size, 1, 10)


def test_same_seed_same_weights_different_seed_different_weights():
    g1, _ = build_networks(32, 1, 8, 4, seed=1)
    g2, _ = build_networks(32, 1, 8, 4, seed=1)
    g3, _ = build_networks(32, 1, 8, 4, seed=2)
    p1, p2, p3 = (next(g.parameters()) for g in (g1, g2, g3))
    assert torch.equal(p1, p2) and not torch.equal(p1, p3)


def test_discriminator_head_reads_the_returned_features():
    torch.manual_seed(0)
    d = Discriminator(32, 1, 4).eval()
    x = torch.stack([-torch.ones(1, 32, 32), torch.ones(1, 32, 32), torch.rand(1, 32, 32) * 2 - 1])
    with torch.no_grad():
        d.encoder.head.weight.zero_()
        assert torch.equal(d(x)[0], torch.full((3,), 0.5))  # logit 0 -> probability one half
        d.encoder.head.weight.fill_(0.05)  # the 4x4 head then sums its features: logit = 0.05 * sum
        prob, feats = d(x)
        logit, _ = d.logits(x)
    expected = 0.05 * feats.double().sum((1, 2, 3)).numpy()
    np.testing.assert_allclose(logit.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(prob.numpy(), 1 / (1 + np.exp(-expected)), rtol=1e-5)
    assert expected.std() > 1e-3  # the images give different logits: the check is not about constants


def test_generator_is_encoder_decoder_encoder():
    """z = E1(x), x_hat = D(z), z_hat = E2(x_hat), with E2 a second network (GANomaly's wiring)."""
    g, _ = build_networks(32, 1, 8, 4, seed=0)
    g.eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        out = g(x)
        assert torch.equal(out.latent, g.encoder1(x))
        assert torch.equal(out.reconstruction, g.decoder(out.latent))
        assert torch.equal(out.latent_hat, g.encoder2(out.reconstruction))
        g.encoder2.head.weight.mul_(2)  # E2 has its own weights: z moves not, z_hat doubles
        again = g(x)
    assert torch.equal(again.latent, out.latent)
    torch.testing.assert_close(again.latent_hat, 2 * out.latent_hat)
