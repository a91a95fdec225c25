"""Multi-scale Inception and Inception-ResNet blocks of TJ-Net (Tang, Wu, Shen; see
:mod:`boneage.models.tjnet`), after Szegedy et al. (Inception-v4/Inception-ResNet, 2017).

The TJ-Net paper names the kernels of each module but its Fig. 2/4 (the exact wiring) is not in
the text. Paper is silent on the branch layout and widths: chose the Inception-v4 conventions
because the paper cites that family ("IncRes (Inception ResNet)"):

- ``IncRes1`` (paper: "combine 1x1 and 3x3 kernels"): Inception-ResNet-A layout, branches
  1x1 | 1x1->3x3 | 1x1->3x3->3x3, concatenated, a linear 1x1 projection (+BN) back to the input
  width, added to the shortcut, ReLU.
- ``IncRes2`` (paper: "four branches, 1x1, 3x3, 1x3 and 3x1"): branches 1x1 | 1x1->3x3 |
  1x1->1x3 | 1x1->3x1, projection, shortcut, ReLU.
- ``Inception1`` and ``Inception2`` (paper: "four multi-scale branches, combinations of 1x1,
  3x3, 1x3, 3x1, 5x5, 1x7, 7x1"): Inception1 = 1x1 | 1x1->3x3 | 1x1->5x5 | maxpool->1x1;
  Inception2 = 1x1 | 1x1->1x3->3x1 | 1x1->1x7->7x1 | maxpool->1x1. Both take a ``stride``;
  TJ-Net uses stride 2 so that they also halve the resolution (the reduction of blocks 3/4).
  Every branch gives ``ceil(H / stride)`` so the outputs concatenate for any input size.

``shortcut=False`` drops the residual connection (TJ-Net's "no shortcuts" ablation): the block
then returns ``ReLU(projection)``.

Convolution + BN + ReLU units are torchvision's ``Conv2dNormActivation``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation


def conv_bn(in_ch: int, out_ch: int, kernel_size: int | tuple[int, int], stride: int = 1,
            act: bool = True) -> nn.Module:
    """Conv (no bias) + BN (+ ReLU), 'same' padding for odd kernels."""
    return Conv2dNormActivation(in_ch, out_ch, kernel_size, stride=stride,
                                activation_layer=nn.ReLU if act else None)


def split_channels(total: int, parts: int) -> list[int]:
    """Split ``total`` output channels into ``parts`` branch widths (remainder to the first)."""
    if total < parts:
        raise ValueError(f"need at least {parts} output channels for {parts} branches, got {total}")
    base = total // parts
    return [base + total - base * parts] + [base] * (parts - 1)


class _Concat(nn.Module):
    """Run the branches on the same input and concatenate along channels."""

    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class _Residual(nn.Module):
    """``ReLU(x * shortcut + scale * proj(concat(branches(x))))``; width preserved."""

    def __init__(self, channels: int, branches: list[nn.Module], branch_out: int,
                 shortcut: bool = True, scale: float = 1.0) -> None:
        super().__init__()
        self.mix = _Concat(branches)
        self.proj = conv_bn(branch_out, channels, 1, act=False)  # linear projection (no ReLU)
        self.shortcut = shortcut
        self.scale = scale
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.scale * self.proj(self.mix(x))
        return self.act(x + y if self.shortcut else y)


class IncRes1(_Residual):
    """Inception-ResNet module with 1x1 and 3x3 branches (TJ-Net block 3).

    Args:
        channels: input = output width.
        branch_channels: width of each branch (default ``channels // 4``, at least 4).
        shortcut: keep the residual connection (ablation flag ``incres_shortcut``).
        scale: residual branch scale (paper is silent: chose 1.0 because the projection is
            batch-normalised; Inception-ResNet-v2 uses 0.17 without BN).
    """

    def __init__(self, channels: int, branch_channels: int | None = None, shortcut: bool = True,
                 scale: float = 1.0) -> None:
        b = branch_channels or max(4, channels // 4)
        branches = [
            conv_bn(channels, b, 1),
            nn.Sequential(conv_bn(channels, b, 1), conv_bn(b, b, 3)),
            nn.Sequential(conv_bn(channels, b, 1), conv_bn(b, b + b // 2, 3),
                          conv_bn(b + b // 2, 2 * b, 3)),
        ]
        super().__init__(channels, branches, b + b + 2 * b, shortcut, scale)


class IncRes2(_Residual):
    """Inception-ResNet module with 1x1, 3x3, 1x3 and 3x1 branches (TJ-Net block 4)."""

    def __init__(self, channels: int, branch_channels: int | None = None, shortcut: bool = True,
                 scale: float = 1.0) -> None:
        b = branch_channels or max(4, channels // 4)
        branches = [
            conv_bn(channels, b, 1),
            nn.Sequential(conv_bn(channels, b, 1), conv_bn(b, b, 3)),
            nn.Sequential(conv_bn(channels, b, 1), conv_bn(b, b, (1, 3))),
            nn.Sequential(conv_bn(channels, b, 1), conv_bn(b, b, (3, 1))),
        ]
        super().__init__(channels, branches, 4 * b, shortcut, scale)


def _pool_branch(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.MaxPool2d(3, stride=stride, padding=1), conv_bn(in_ch, out_ch, 1))


class Inception1(_Concat):
    """Four branches: 1x1 | 1x1->3x3 | 1x1->5x5 | maxpool->1x1; output ``out_channels`` wide."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        c0, c1, c2, c3 = split_channels(out_channels, 4)
        super().__init__([
            conv_bn(in_channels, c0, 1, stride),
            nn.Sequential(conv_bn(in_channels, c1, 1), conv_bn(c1, c1, 3, stride)),
            nn.Sequential(conv_bn(in_channels, c2, 1), conv_bn(c2, c2, 5, stride)),
            _pool_branch(in_channels, c3, stride),
        ])


class Inception2(_Concat):
    """Four branches: 1x1 | 1x1->1x3->3x1 | 1x1->1x7->7x1 | maxpool->1x1."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        c0, c1, c2, c3 = split_channels(out_channels, 4)
        super().__init__([
            conv_bn(in_channels, c0, 1, stride),
            nn.Sequential(conv_bn(in_channels, c1, 1), conv_bn(c1, c1, (1, 3)),
                          conv_bn(c1, c1, (3, 1), stride)),
            nn.Sequential(conv_bn(in_channels, c2, 1), conv_bn(c2, c2, (1, 7)),
                          conv_bn(c2, c2, (7, 1), stride)),
            _pool_branch(in_channels, c3, stride),
        ])
