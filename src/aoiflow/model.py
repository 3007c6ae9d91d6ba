"""GANomaly networks (DCGAN-style): generator = encoder -> decoder -> encoder, and a discriminator.

All modules take and return tensors only. Images are (B, C, S, S) in [-1, 1] with S a power of
two from 32 to 256; latent codes are (B, Z, 1, 1).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm


def _pyramid_depth(image_size: int) -> int:
    """Number of stride-2 stages that take ``image_size`` down to 4x4."""
    if image_size < 32 or image_size > 256 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two from 32 to 256, got {image_size}")
    return image_size.bit_length() - 3  # 32 -> 3 ... 256 -> 6


class Encoder(nn.Module):
    """(B, C, S, S) -> (B, Z, 1, 1) through 4x4 stride-2 convs, BatchNorm and LeakyReLU(0.2).

    ``features(x)`` returns the last 4x4 feature map (B, W * 2**(d-1), 4, 4), used by the
    discriminator for feature matching.
    """

    def __init__(self, image_size: int, channels: int, latent_size: int, base_width: int = 64) -> None:
        super().__init__()
        depth = _pyramid_depth(image_size)
        layers: list[nn.Module] = [
            nn.Conv2d(channels, base_width, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = base_width
        for _ in range(depth - 1):
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width * 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width *= 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, latent_size, 4, 1, 0, bias=False)
        self.feature_width = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Decoder(nn.Module):
    """(B, Z, 1, 1) -> (B, C, S, S) through 4x4 transposed convs, BatchNorm, ReLU and a Tanh output."""

    def __init__(self, image_size: int, channels: int, latent_size: int, base_width: int = 64) -> None:
        super().__init__()
        depth = _pyramid_depth(image_size)
        width = base_width * 2 ** (depth - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_size, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        for _ in range(depth - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(inplace=True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


@dataclass
class GeneratorOutput:
    """reconstruction (B, C, S, S); latent z = E1(x) and latent_hat = E2(x_hat), each (B, Z, 1, 1)."""

    reconstruction: torch.Tensor
    latent: torch.Tensor
    latent_hat: torch.Tensor


class Generator(nn.Module):
    """GANomaly generator: x -> z = E1(x) -> x_hat = D(z) -> z_hat = E2(x_hat)."""

    def __init__(self, image_size: int, channels: int, latent_size: int, base_width: int = 64) -> None:
        super().__init__()
        self.image_size = image_size  # the window it sees; larger images are scored in windows
        self.encoder1 = Encoder(image_size, channels, latent_size, base_width)
        self.decoder = Decoder(image_size, channels, latent_size, base_width)
        self.encoder2 = Encoder(image_size, channels, latent_size, base_width)

    def forward(self, x: torch.Tensor) -> GeneratorOutput:
        z = self.encoder1(x)
        x_hat = self.decoder(z)
        return GeneratorOutput(x_hat, z, self.encoder2(x_hat))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [-1, 1] -> x_hat = D(E1(x)), the same as ``forward``'s reconstruction
        without E2: all the head reads (17 % less work at 128 px, width 32)."""
        return self.decoder(self.encoder1(x))


class Discriminator(nn.Module):
    """Real/fake classifier. ``forward`` -> (probability (B,), features (B, F, 4, 4))."""

    def __init__(self, image_size: int, channels: int, base_width: int = 64) -> None:
        super().__init__()
        self.encoder = Encoder(image_size, channels, 1, base_width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder.features(x)
        logit = self.encoder.head(feats).flatten()
        return torch.sigmoid(logit), feats

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``forward`` but returns raw logits, for a numerically stable BCE."""
        feats = self.encoder.features(x)
        return self.encoder.head(feats).flatten(), feats


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0.
    A spectrally normalised conv gets its raw weight initialised (the normalised one is derived)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            weight = m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight
            nn.init.normal_(weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def add_spectral_norm(net: nn.Module) -> nn.Module:
    """Spectrally normalise every convolution of ``net`` in place (torch's parametrisation: one
    power iteration a forward pass), which bounds how fast a discriminator can outrun the generator."""
    for m in list(net.modules()):
        if isinstance(m, nn.Conv2d) and not parametrize.is_parametrized(m, "weight"):
            spectral_norm(m)
    return net


def build_networks(image_size: int, channels: int, latent_size: int, base_width: int, seed: int) -> tuple[Generator, Discriminator]:
    """Create and initialise both networks deterministically from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    state = torch.random.get_rng_state()
    torch.random.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    try:
        g = Generator(image_size, channels, latent_size, base_width)
        d = Discriminator(image_size, channels, base_width)
        init_weights(g)
        init_weights(d)
    finally:
        torch.random.set_rng_state(state)
    return g, d


def training_autocast(precision: str) -> torch.autocast:
    """bfloat16 matrix work while training where ``train.precision`` is ``'bf16'`` (fast on CPUs
    with AMX / AVX-512 BF16); weights stay fp32, and callers compute their losses in fp32."""
    if precision == "bf16" and not _native_bf16():
        warnings.warn("train.precision bf16: this CPU has no native bfloat16 (AVX-512 BF16 or AMX), so "
                      "training will be slower than in fp32, not faster", stacklevel=2)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


@functools.cache
def _native_bf16() -> bool:
    try:  # oneDNN's own check; a private function, so a torch without it counts as "unknown: yes"
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True
