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
    assert float(out.reconstruction.abs().max()) <= 1.0  # Tanh output
    with torch.no_grad():
        prob, feats = d(x)
    assert prob.shape == (2,) and feats.shape[-2:] == (4, 4)
    assert ((prob >= 0) & (prob <= 1)).all()


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


def test_discriminator_logits_agree_with_probabilities():
    d = Discriminator(32, 1, 4).eval()
    x = torch.rand(3, 1, 32, 32)
    prob, _ = d(x)
    logit, _ = d.logits(x)
    torch.testing.assert_close(prob, torch.sigmoid(logit))
