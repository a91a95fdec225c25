"""Progressive Growing GAN generator and discriminator (hand radiographs).

Paper: "Generating hand radiographs with a progressively growing GAN and interpreting its
latent space" (paper 001: PGGAN on RSNA hand radiographs, 512-d latent, 1024x1024 output,
"the same training schedule, optimizer and hyperparameters as the original implementation").
Architecture from Karras et al. (ICLR 2018) and the official code
(tkarras/progressive_growing_of_gans, networks.py ``G_paper``/``D_paper``).

What the paper leaves unsaid (taken from the official code, see REFERENCE.md):

- channels of the block at resolution ``4 * 2**level`` are ``min(8192 / 2**stage, 512)`` with
  ``stage = level + 1``, multiplied here by ``width`` (a multiplier, so tests run tiny variants);
- equalized learning rate everywhere, gain sqrt(2), toRGB gain 1, D's last dense gain 1, G's
  first dense gain sqrt(2)/4; leaky ReLU 0.2; pixelwise feature norm after every G conv and on
  the latent; nearest-neighbour 2x upsampling in G, 2x2 average pooling in D;
- minibatch standard deviation (group 4; the official 1-GPU v1 preset uses 16) in D's 4x4 block;
- fade-in: the new block's output is blended with the upsampled (G) or pooled (D) output of
  the previous resolution with weight ``alpha`` for the new path.
- Output images are linear (no tanh), in the [-1, 1] range of the data.
- Grayscale: one image channel (``img_channels``), as the radiographs are grayscale.

Both networks hold every block up to ``resolution`` from construction on; ``forward`` takes the
current ``level`` (0 = 4x4) and ``alpha``, so growing needs no change of the parameter set and a
checkpoint always has the same keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boneage.nn.equalized import SQRT2, EqualizedConv2d, EqualizedLinear, MinibatchStdDev, PixelNorm

__all__ = [
    "PGGANGenerator",
    "PGGANDiscriminator",
    "stage_channels",
    "num_levels",
    "fade_images",
    "pggan_generator",
    "pggan_discriminator",
]


def stage_channels(stage: int, width: float = 1.0, fmap_base: int = 8192, fmap_max: int = 512) -> int:
    """Feature maps of a stage: ``min(fmap_base / 2**stage, fmap_max)`` times ``width`` (at least 1)."""
    return max(1, int(round(min(fmap_base / 2.0**stage, fmap_max) * width)))


def num_levels(resolution: int) -> int:
    """Number of resolution levels from 4x4 up to ``resolution`` (a power of two >= 4)."""
    lg = math.log2(resolution)
    if resolution < 4 or lg != int(lg):
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    return int(lg) - 1


def fade_images(images: Tensor, alpha: float) -> Tensor:
    """Fade real images like the generator's output during a fade-in phase.

    ``alpha * x + (1 - alpha) * upsample(avgpool2x2(x))``: at alpha 0 the images carry only the
    previous resolution's content, at alpha 1 they are unchanged (official code, ``process_reals``).
    """
    if alpha >= 1.0:
        return images
    low = F.interpolate(F.avg_pool2d(images, 2), scale_factor=2, mode="nearest")
    return torch.lerp(low, images, alpha)


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


class GBlock(nn.Module):
    """Generator block: nearest 2x upsample, then two (3x3 conv, leaky ReLU, pixel norm)."""

    def __init__(self, in_ch: int, out_ch: int, pixel_norm: bool = True) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_ch, out_ch, 3)
        self.conv1 = EqualizedConv2d(out_ch, out_ch, 3)
        self.norm = PixelNorm() if pixel_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.norm(_lrelu(self.conv0(x)))
        return self.norm(_lrelu(self.conv1(x)))


class GInitial(nn.Module):
    """4x4 generator block: dense latent -> 4x4 maps (gain sqrt(2)/4), then a 3x3 conv."""

    def __init__(self, latent_dim: int, ch: int, pixel_norm: bool = True) -> None:
        super().__init__()
        self.ch = ch
        self.dense = EqualizedLinear(latent_dim, ch * 16, gain=SQRT2 / 4)
        self.conv = EqualizedConv2d(ch, ch, 3)
        self.norm = PixelNorm() if pixel_norm else nn.Identity()

    def forward(self, z: Tensor) -> Tensor:
        x = self.dense(z).view(-1, self.ch, 4, 4)
        x = self.norm(_lrelu(x))
        return self.norm(_lrelu(self.conv(x)))


class DBlock(nn.Module):
    """Discriminator block: two 3x3 convs with leaky ReLU, then 2x2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_ch, in_ch, 3)
        self.conv1 = EqualizedConv2d(in_ch, out_ch, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = _lrelu(self.conv0(x))
        x = _lrelu(self.conv1(x))
        return F.avg_pool2d(x, 2)


class DFinal(nn.Module):
    """4x4 discriminator block: minibatch stddev, 3x3 conv, dense, dense to one score (gain 1)."""

    def __init__(self, ch: int, hidden: int, mbstd_group: int = 4) -> None:
        super().__init__()
        self.mbstd = MinibatchStdDev(mbstd_group) if mbstd_group > 0 else nn.Identity()
        extra = 1 if mbstd_group > 0 else 0
        self.conv = EqualizedConv2d(ch + extra, ch, 3)
        self.dense0 = EqualizedLinear(ch * 16, hidden)
        self.dense1 = EqualizedLinear(hidden, 1, gain=1.0)

    def forward(self, x: Tensor) -> Tensor:
        x = _lrelu(self.conv(self.mbstd(x)))
        x = _lrelu(self.dense0(x.flatten(1)))
        return self.dense1(x).squeeze(1)


class PGGANGenerator(nn.Module):
    """Progressive generator: latent [B, latent_dim] -> image [B, C, 4*2**level, 4*2**level]."""

    def __init__(
        self,
        latent_dim: int = 512,  # paper: 512 (20 and 100 were tried and were less stable)
        resolution: int = 1024,  # final output size, a power of two
        img_channels: int = 1,  # grayscale radiographs
        width: float = 1.0,  # channel multiplier on min(8192 / 2**stage, 512)
        fmap_max: int = 512,
        normalize_latents: bool = True,  # pixel norm on the latent, as the official code
        pixel_norm: bool = True,  # ablation flag
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.max_level = num_levels(resolution) - 1
        ch = [stage_channels(level + 1, width, fmap_max=fmap_max) for level in range(self.max_level + 1)]
        self.channels = ch
        self.latent_norm = PixelNorm() if normalize_latents else nn.Identity()
        self.blocks = nn.ModuleList([GInitial(latent_dim, ch[0], pixel_norm)])
        self.blocks.extend(GBlock(ch[i - 1], ch[i], pixel_norm) for i in range(1, self.max_level + 1))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(c, img_channels, 1, gain=1.0) for c in ch)

    def forward(self, z: Tensor, level: int | None = None, alpha: float = 1.0) -> Tensor:
        """Images at level ``level`` (default: the final resolution), new block weighted by ``alpha``."""
        level = self.max_level if level is None else int(level)
        if not 0 <= level <= self.max_level:
            raise ValueError(f"level must be in [0, {self.max_level}], got {level}")
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latent must be [B, {self.latent_dim}], got {tuple(z.shape)}")
        x = self.blocks[0](self.latent_norm(z))
        for i in range(1, level + 1):
            prev = x
            x = self.blocks[i](x)
        img = self.to_rgb[level](x)
        if level > 0 and alpha < 1.0:
            low = F.interpolate(self.to_rgb[level - 1](prev), scale_factor=2, mode="nearest")
            img = torch.lerp(low, img, alpha)
        return img


class PGGANDiscriminator(nn.Module):
    """Progressive critic: image [B, C, 4*2**level, ...] -> score [B] (WGAN: unbounded)."""

    def __init__(
        self,
        resolution: int = 1024,
        img_channels: int = 1,
        width: float = 1.0,
        fmap_max: int = 512,
        mbstd_group: int = 4,  # official code 4 (its preset-v1-1gpu: 16); 0 disables the layer
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.mbstd_group = mbstd_group
        self.max_level = num_levels(resolution) - 1
        ch = [stage_channels(level + 1, width, fmap_max=fmap_max) for level in range(self.max_level + 1)]
        self.channels = ch
        self.from_rgb = nn.ModuleList(EqualizedConv2d(img_channels, c, 1) for c in ch)
        # blocks[i] maps level i to level i-1 (blocks[0] is the final 4x4 block)
        self.blocks = nn.ModuleList([DFinal(ch[0], stage_channels(0, width, fmap_max=fmap_max), mbstd_group)])
        self.blocks.extend(DBlock(ch[i], ch[i - 1]) for i in range(1, self.max_level + 1))

    def forward(self, img: Tensor, level: int | None = None, alpha: float = 1.0) -> Tensor:
        level = self.max_level if level is None else int(level)
        if not 0 <= level <= self.max_level:
            raise ValueError(f"level must be in [0, {self.max_level}], got {level}")
        size = 4 * 2**level
        if img.shape[-1] != size or img.shape[-2] != size:
            raise ValueError(
                f"discriminator at level {level} expects {size}x{size} images, got {tuple(img.shape)}")
        x = _lrelu(self.from_rgb[level](img))
        if level > 0:
            x = self.blocks[level](x)
            if alpha < 1.0:
                low = _lrelu(self.from_rgb[level - 1](F.avg_pool2d(img, 2)))
                x = torch.lerp(low, x, alpha)
            for i in range(level - 1, 0, -1):
                x = self.blocks[i](x)
        return self.blocks[0](x)


def pggan_generator(**kwargs) -> PGGANGenerator:
    """Paper scale: 512-d latent, 1024x1024 grayscale output."""
    return PGGANGenerator(**kwargs)


def pggan_discriminator(**kwargs) -> PGGANDiscriminator:
    """Paper scale: 1024x1024 grayscale input."""
    return PGGANDiscriminator(**kwargs)
