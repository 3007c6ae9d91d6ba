"""A small U-Net for per-pixel outputs, trained from scratch on the CPU.

Used twice: the synthetic-defect head over GANomaly's reconstruction (aoiflow.head) and the
supervised defect-kind model (aoiflow.supervised). Written here rather than taken from
segmentation_models_pytorch: that library needs torchvision and timm, and PyPI's torchvision does
not import beside the CPU torch this project pins; its encoders also assume pretrained ImageNet
weights, which cannot be downloaded here. A U-Net of a few blocks is all the task needs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ConvBlock(nn.Module):
    """(B, Cin, H, W) -> (B, Cout, H, W): two 3x3 convolutions, each with BatchNorm and ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UNet(nn.Module):
    """(B, in_channels, H, W) -> logits (B, out_channels, H, W); H and W divisible by 2**depth.

    ``depth`` max-pool stages, widths ``width * 2**i``; bilinear upsampling and skip connections
    on the way back up (transposed convolutions leave checkerboard marks in thin defect masks).
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        widths = [width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList([ConvBlock(in_channels, widths[0])] +
                                  [ConvBlock(widths[i], widths[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([ConvBlock(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))])
        self.out = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2**self.depth or x.shape[-2] % 2**self.depth:
            raise ValueError(f"height and width must be divisible by {2**self.depth}, got {tuple(x.shape[-2:])}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.out(x)
