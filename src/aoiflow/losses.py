"""GANomaly training losses on images in [-1, 1].

contextual: L1 or SSIM (1 - SSIM) between x and its reconstruction;
encoder: L2 between z = E1(x) and z_hat = E2(x_hat);
adversarial: L2 between discriminator features of x and x_hat (feature matching);
discriminator: binary cross-entropy, real -> 1 (or 1 - smoothing), reconstruction -> 0.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from aoiflow.ssim import ssim


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (x + 1.0) * 0.5


def contextual_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: Literal["l1", "ssim"], window: int = 11) -> torch.Tensor:
    """Scalar contextual loss between (B, C, H, W) images in [-1, 1]."""
    if kind == "l1":
        return F.l1_loss(x_hat, x)
    if kind == "ssim":
        return 1.0 - ssim(to_unit(x), to_unit(x_hat), window).mean()
    raise ValueError(f"contextual loss must be 'l1' or 'ssim', got {kind!r}")


def encoder_loss(z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
    """Mean squared error between latent codes (B, Z, 1, 1)."""
    return F.mse_loss(z_hat, z)


def adversarial_loss(feat_real: torch.Tensor, feat_fake: torch.Tensor) -> torch.Tensor:
    """Feature matching: mean squared error between discriminator features."""
    return F.mse_loss(feat_fake, feat_real)


def discriminator_loss(logit_real: torch.Tensor, logit_fake: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """BCE with real labelled 1 - ``smoothing`` and reconstructions labelled 0 (on logits, for
    stability). One-sided smoothing keeps a winning discriminator's gradients from vanishing."""
    real = F.binary_cross_entropy_with_logits(logit_real, torch.full_like(logit_real, 1.0 - smoothing))
    fake = F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
    return 0.5 * (real + fake)
