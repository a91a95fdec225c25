"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018, arXiv:1807.06521).

A channel gate followed by a spatial gate, as in the official code (Jongchan/attention-module):

- channel gate: a shared MLP ``C -> C/r -> C`` applied to the average- and max-pooled
  vectors, the two results summed, then a sigmoid; the input is scaled per channel;
- spatial gate: ``[mean, max]`` over channels (2 maps), a 7x7 convolution without bias,
  batch norm, sigmoid; the input is scaled per position.

Why written here rather than taken from ``timm.layers.CbamModule``: timm marks its CBAM as
experimental (it may be removed), and TJ-Net's figures need the attention maps themselves
(``last_channel_scale`` / ``last_spatial_scale``), which timm does not expose. The layer is
numerically identical to timm's (same pooling order ``[mean, max]`` and parameter layout);
``tests/test_tjnet_modules.py`` checks this by copying weights across. The official code
concatenates ``[max, mean]``: that is a permutation of the 7x7 conv's two input channels,
the same family of functions.
"""

from __future__ import annotations

import torch
from torch import nn


def reduced_channels(channels: int, reduction: int = 16, min_channels: int = 1) -> int:
    """Hidden width of the channel-gate MLP: ``channels / reduction``, at least ``min_channels``."""
    return max(min_channels, int(round(channels / reduction)))


class ChannelGate(nn.Module):
    """Channel attention: ``x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``."""

    def __init__(self, channels: int, reduction: int = 16, rd_channels: int | None = None,
                 act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        rd = rd_channels or reduced_channels(channels, reduction)
        # 1x1 convolutions are the shared MLP applied to [B, C, 1, 1] vectors (as in timm).
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=False)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=False)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The channel scale vector, [B, C, 1, 1] in (0, 1)."""
        avg = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        mx = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))
        return torch.sigmoid(avg + mx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)


class SpatialGate(nn.Module):
    """Spatial attention: ``x * sigmoid(BN(conv7x7([mean_c(x), max_c(x)])))``."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial scale matrix, [B, 1, H, W] in (0, 1)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)


class CBAM(nn.Module):
    """Channel gate then spatial gate. Keeps the last scales for attention figures.

    Args:
        channels: number of input (= output) channels.
        reduction: channel-gate MLP reduction ratio r (16 in the CBAM paper).
        rd_channels: explicit hidden width of the MLP (overrides ``reduction``).
        spatial_kernel_size: spatial-gate kernel (7 in the CBAM paper and TJ-Net: "1x7x7").
        keep_maps: store ``last_channel_scale`` and ``last_spatial_scale`` (detached) on each
            forward, for heat-map figures.
    """

    def __init__(self, channels: int, reduction: int = 16, rd_channels: int | None = None,
                 spatial_kernel_size: int = 7, keep_maps: bool = False) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction, rd_channels)
        self.spatial = SpatialGate(spatial_kernel_size)
        self.keep_maps = keep_maps
        self.last_channel_scale: torch.Tensor | None = None
        self.last_spatial_scale: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.channel.scale(x)
        x = x * c
        s = self.spatial.scale(x)
        if self.keep_maps:
            self.last_channel_scale, self.last_spatial_scale = c.detach(), s.detach()
        return x * s
