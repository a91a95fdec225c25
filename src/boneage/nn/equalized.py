"""Progressive-GAN layers: equalized learning rate, pixelwise feature norm, minibatch stddev.

Karras et al., "Progressive Growing of GANs for Improved Quality, Stability, and Variation"
(ICLR 2018); details from the official code (tkarras/progressive_growing_of_gans, networks.py).

Written by hand because neither timm nor torchvision ships them: the equalized layers keep
N(0, 1) weights and multiply by ``gain / sqrt(fan_in)`` at run time, so Adam's per-parameter
step sizes act on every layer at the same scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SQRT2 = math.sqrt(2.0)


class EqualizedConv2d(nn.Module):
    """Conv2d whose N(0, 1) weight is scaled by ``gain / sqrt(in_channels * k * k)`` in forward."""

    def __init__(
        self,
        in_channels: int,  # input feature maps
        out_channels: int,  # output feature maps
        kernel_size: int,  # square kernel; padding keeps the spatial size ("same")
        gain: float = SQRT2,  # He gain for leaky-ReLU layers; 1 for toRGB
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, scale={self.scale:.4g}"


class EqualizedLinear(nn.Module):
    """Linear layer whose N(0, 1) weight is scaled by ``gain / sqrt(in_features)`` in forward."""

    def __init__(self, in_features: int, out_features: int, gain: float = SQRT2, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)

    def extra_repr(self) -> str:
        o, i = self.weight.shape
        return f"{i}, {o}, scale={self.scale:.4g}"


class PixelNorm(nn.Module):
    """Pixelwise feature vector normalisation: ``x / sqrt(mean_c(x^2) + eps)`` at every position."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


def _group_size(batch: int, group_size: int) -> int:
    """Largest divisor of ``batch`` not above ``group_size`` (the official code asserts divisibility)."""
    g = max(1, min(group_size, batch))
    while batch % g:
        g -= 1
    return g


class MinibatchStdDev(nn.Module):
    """Append the mean over features of the per-group standard deviation as extra feature map(s).

    As in the official ``minibatch_stddev_layer``: split the batch into groups of ``group_size``,
    take the std over each group per feature and position, average it over features and
    positions, and tile it as ``num_new_features`` new channels. Paper is silent on batches not
    divisible by the group: chose the largest divisor of the batch below ``group_size`` because
    the last batch of an epoch may be short.
    """

    def __init__(self, group_size: int = 4, num_new_features: int = 1, eps: float = 1e-8) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_new_features = num_new_features
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = _group_size(n, self.group_size)
        f = self.num_new_features
        if c % f:
            raise ValueError(f"MinibatchStdDev: {c} channels are not divisible by num_new_features={f}")
        y = x.float().reshape(g, -1, f, c // f, h, w)  # [G, M, F, C/F, H, W]
        y = y - y.mean(dim=0)
        y = (y.pow(2).mean(dim=0) + self.eps).sqrt()  # [M, F, C/F, H, W]
        y = y.mean(dim=(2, 3, 4))  # [M, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w).to(x.dtype)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)
