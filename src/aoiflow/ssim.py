"""SSIM with a Gaussian window of any size, odd or even.

Written here because the well-kept implementations (kornia, pytorch-msssim, scikit-image) all
reject even window sizes, and the reference search space needs windows 8-14. Even windows are
padded one pixel more on the bottom/right so the map keeps the input's size.

The Gaussian's sigma grows with the window (``window_sigma``): with sigma fixed at 1.5 the taps
beyond about 3 sigma weigh almost nothing, so windows 11-14 gave nearly the same SSIM and a search
over the window repeated itself. Window 11 keeps sigma 1.5 exactly (the usual SSIM setting).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_C1 = 0.01**2
_C2 = 0.03**2


def window_sigma(size: int) -> float:
    """Sigma of an SSIM window of ``size`` taps: 1.5 * size / 11, so the Gaussian always spans
    the same number of sigmas (about +-3.3) and window 11 keeps the standard 1.5 exactly."""
    return 1.5 * size / 11


def gaussian_window(size: int, sigma: float | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps, centred between taps when size is even. Shape (size,).
    ``sigma`` defaults to ``window_sigma(size)``."""
    if size < 2:
        raise ValueError(f"SSIM window must be at least 2 pixels, got {size}")
    sigma = window_sigma(size) if sigma is None else sigma
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, C, H, W) with a window of 2 * ceil(3 * sigma) + 1 taps, 'same' size."""
    if sigma <= 0:
        return x
    size = 2 * int(math.ceil(3 * sigma)) + 1
    size = min(size, 2 * (min(x.shape[-2:]) // 2) - 1)  # reflect padding needs the window inside the image
    return _blur(x, gaussian_window(size, sigma, x.dtype).to(x.device))


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with 'same' output size and reflect padding."""
    k = g.numel()
    lo, hi = (k - 1) // 2, k // 2
    c = x.shape[1]
    x = F.pad(x, (lo, hi, lo, hi), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float | None = None, data_range: float = 1.0
) -> torch.Tensor:
    """Per-pixel SSIM between ``x`` and ``y`` (B, C, H, W) -> (B, C, H, W), values in [-1, 1].

    Inputs must share a shape, be at least ``window_size // 2 + 1`` pixels on each side, and lie
    in [0, data_range]. ``sigma`` defaults to ``window_sigma(window_size)``.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim_map expects two (B, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) <= window_size // 2:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are too small for an SSIM window of {window_size}")
    g = gaussian_window(window_size, sigma, x.dtype).to(x.device)
    c1, c2 = _C1 * data_range**2, _C2 * data_range**2
    mu_x, mu_y = _blur(x, g), _blur(y, g)
    # One blur call for the three second moments keeps the graph small (and exportable).
    moments = _blur(torch.cat([x * x, y * y, x * y], dim=1), g)
    exx, eyy, exy = moments.chunk(3, dim=1)
    var_x = exx - mu_x * mu_x
    var_y = eyy - mu_y * mu_y
    cov = exy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return num / den


def ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float | None = None,
         data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image: (B, C, H, W) x2 -> (B,)."""
    return ssim_map(x, y, window_size, sigma, data_range).flatten(1).mean(1)


class SSIMLoss(nn.Module):
    """1 - mean SSIM over the batch, for inputs in [0, data_range]."""

    def __init__(self, window_size: int = 11, sigma: float | None = None, data_range: float = 1.0) -> None:
        super().__init__()
        self.window_size, self.sigma, self.data_range = window_size, sigma, data_range

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1.0 - ssim(x, y, self.window_size, self.sigma, self.data_range).mean()
