"""BAPGAN: bone age progression/regression GAN (and its CAAE base).

Nakazawa, Han, Hasei, Nakahara, Ozaki, "BAPGAN: GAN-based bone age progression of femur and
phalange X-ray images" (ISBI 2022), extending the Conditional Adversarial AutoEncoder of
Zhang, Song, Qi, "Age progression/regression by conditional adversarial autoencoder", CVPR 2017.

Four networks (the system owns losses and optimizers):

- ``Encoder`` E: image -> z (``z_dim`` = 50, tanh);
- ``Generator`` G: z + tiled age label -> image (tanh, [-1, 1]);
- ``IdentityDiscriminator`` D_id: z vs the uniform prior on [-1, 1] (``sample_prior``);
- ``ImageDiscriminator`` D_img, conditioned on the age label, carrying the age discriminator
  D_age as a second head (the paper's multi-task D_img/D_age, Fig. 2).

Taken from the official CAAE code (ZZUTK/Face-Aging-CAAE; the paper leaves them out):
5x5 kernels; E = stride-2 convs 64-128-256-512-1024 + ReLU without batch norm, FC to z, tanh;
G = FC to 1024x4x4 + ReLU, stride-2 transposed convs 512-256-128-64-32 + ReLU, stride-1
transposed conv to 16 (ReLU) and to C (tanh); D_id = FC 64-32-16 with batch norm and ReLU, one
logit; D_img = stride-2 convs 16-32-64-128 with batch norm and ReLU, the label maps
concatenated after the first conv only, FC 1024 (leaky ReLU 0.2), one logit; labels tiled
``z_dim // n_groups`` times and mapped from [0, 1] to [-1, +1] before concatenation.

What the BAPGAN paper leaves unsaid, and what we chose:

- "6 age classes" in the text vs five intervals [0-3] [4-7] [8-11] [12-15] [16-19] and 5-dim
  smoothed labels in its examples: the intervals are the truth, ``n_groups = 5``.
- Where D_age branches off D_img: D_img sees the label and D_age must not (it would read the
  answer), so they share the unconditioned first conv (the stem) and split after it; each
  branch has the CAAE convs 32-64-128 and FC 1024, D_age ending in ``n_groups`` logits.
- Smoothed labels (e.g. [0, .2, .6, .2, 0]) are mapped to [-1, 1] by ``2 l - 1`` like one-hot ones.
- Which layers get self-attention ("designated" layers): the layer whose output is
  ``image_size / 4`` on a side (32x32 at 128) in G, in the D_img branch and in the D_age
  branch, SAGAN's choice of a mid-resolution map; variant: see ``boneage.nn.attention``.
- Spectral norm "after each convolutional layer in D_id/D_img/D_age": D_id has only linear
  layers (CAAE), so its linear layers get it; in D_img/D_age every conv and linear layer
  (and the attention's 1x1 convs). Batch norm of the CAAE discriminators is kept.
- Other sizes: E/G use ``log2(image_size) - 2`` levels (4x4 bottleneck), D four convs, so
  ``image_size`` is a power of two >= 32; channels scale with ``width`` (min 1, and >= 8 where
  attention needs C // 8).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from boneage.nn.attention import SelfAttention2d

__all__ = [
    "BAPGAN", "Encoder", "Generator", "IdentityDiscriminator", "ImageDiscriminator",
    "sample_prior", "tile_label", "create_bapgan", "VARIANTS",
]


def _ch(channels: int, width: float, minimum: int = 1) -> int:
    return max(minimum, int(round(channels * width)))


def _levels(image_size: int) -> int:
    """Stride-2 levels between ``image_size`` and a 4x4 map."""
    if image_size < 32 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 32 (e.g. 32, 64, 128), got {image_size}")
    return int(math.log2(image_size)) - 2


def _maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    return _spectral_norm(module) if enabled else module


def sample_prior(n: int, z_dim: int = 50, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` samples of the identity prior p(z): uniform on [-1, 1]^z_dim."""
    u = torch.rand(n, z_dim, device=device, dtype=dtype, generator=generator)
    return u * 2.0 - 1.0


def tile_label(label: torch.Tensor, z_dim: int = 50) -> torch.Tensor:
    """CAAE label code: [B, G] in [0, 1] -> [B, G * (z_dim // G)] in [-1, 1], each entry repeated."""
    if label.dim() != 2:
        raise ValueError(f"label must be [B, n_groups], got shape {tuple(label.shape)}")
    reps = max(1, z_dim // label.shape[1])
    return (label * 2.0 - 1.0).repeat_interleave(reps, dim=1)


# --------------------------------------------------------------------------- blocks

class ConvBlock(nn.Sequential):
    """5x5 stride-2 conv (+ spectral norm) (+ batch norm) + activation."""

    def __init__(self, in_ch: int, out_ch: int, *, norm: bool, spectral_norm: bool,
                 act: nn.Module | None = None) -> None:
        layers: list[nn.Module] = [_maybe_sn(nn.Conv2d(in_ch, out_ch, 5, stride=2, padding=2), spectral_norm)]
        if norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(act if act is not None else nn.ReLU(inplace=True))
        super().__init__(*layers)


class UpBlock(nn.Sequential):
    """5x5 transposed conv (stride 2 doubles the side, stride 1 keeps it) + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 2) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_ch, out_ch, 5, stride=stride, padding=2, output_padding=stride - 1),
            nn.ReLU(inplace=True),
        )


# --------------------------------------------------------------------------- networks

class Encoder(nn.Module):
    """E: image [B, C, S, S] in [-1, 1] -> z [B, z_dim] in (-1, 1)."""

    def __init__(self,
                 image_size: int = 128,   # S
                 in_chans: int = 1,       # grayscale X-ray
                 z_dim: int = 50,         # identity code size (paper: 50)
                 width: float = 1.0) -> None:
        super().__init__()
        n = _levels(image_size)
        chans = [_ch(64 * 2 ** i, width) for i in range(n)]
        blocks, prev = [], in_chans
        for c in chans:
            blocks.append(ConvBlock(prev, c, norm=False, spectral_norm=False))
            prev = c
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Linear(prev * 16, z_dim)
        self.image_size, self.z_dim = image_size, z_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(self.features(x).flatten(1)))


class Generator(nn.Module):
    """G: z [B, z_dim] + age label [B, n_groups] in [0, 1] -> image [B, C, S, S] in [-1, 1]."""

    def __init__(self,
                 image_size: int = 128,
                 out_chans: int = 1,
                 z_dim: int = 50,
                 n_groups: int = 5,
                 width: float = 1.0,
                 self_attention: bool = True) -> None:   # SA after the S/4 deconv
        super().__init__()
        n = _levels(image_size)
        self.top = _ch(64 * 2 ** (n - 1), width)
        label_dim = n_groups * max(1, z_dim // n_groups)
        self.fc = nn.Sequential(nn.Linear(z_dim + label_dim, self.top * 16), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        prev, side = self.top, 4
        for i in range(n):
            c = _ch(64 * 2 ** (n - 1) // 2 ** (i + 1), width, minimum=8 if self_attention else 1)
            blocks.append(UpBlock(prev, c))
            side *= 2
            if self_attention and side == image_size // 4:
                blocks.append(SelfAttention2d(c))
            prev = c
        blocks.append(UpBlock(prev, _ch(16, width), stride=1))
        blocks.append(nn.ConvTranspose2d(_ch(16, width), out_chans, 5, stride=1, padding=2))
        self.blocks = nn.Sequential(*blocks)
        self.z_dim, self.n_groups = z_dim, n_groups

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, tile_label(label, self.z_dim).to(z.dtype)], dim=1))
        return torch.tanh(self.blocks(h.view(z.shape[0], self.top, 4, 4)))


class IdentityDiscriminator(nn.Module):
    """D_id: z [B, z_dim] -> logit [B] (prior sample vs encoded image)."""

    def __init__(self,
                 z_dim: int = 50,
                 width: float = 1.0,
                 hidden: tuple[int, ...] = (64, 32, 16),   # CAAE D_z
                 spectral_norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = z_dim
        for h in hidden:
            c = _ch(h, width)
            layers += [_maybe_sn(nn.Linear(prev, c), spectral_norm), nn.BatchNorm1d(c), nn.ReLU(inplace=True)]
            prev = c
        layers.append(_maybe_sn(nn.Linear(prev, 1), spectral_norm))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


class _Branch(nn.Module):
    """Three stride-2 convs 32-64-128 (SA after the S/4 one), FC 1024 + leaky ReLU, linear head."""

    def __init__(self, in_ch: int, image_size: int, width: float, outputs: int, *,
                 self_attention: bool, spectral_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev, side = in_ch, image_size // 2
        for c in (32, 64, 128):
            c = _ch(c, width, minimum=8 if self_attention else 1)
            layers.append(ConvBlock(prev, c, norm=True, spectral_norm=spectral_norm))
            side //= 2
            if self_attention and side == image_size // 4:
                layers.append(SelfAttention2d(c, spectral_norm=spectral_norm))
            prev = c
        self.convs = nn.Sequential(*layers)
        hidden = _ch(1024, width)
        self.fc = nn.Sequential(_maybe_sn(nn.Linear(prev * side * side, hidden), spectral_norm),
                                nn.LeakyReLU(0.2, inplace=True))
        self.head = _maybe_sn(nn.Linear(hidden, outputs), spectral_norm)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.convs(h).flatten(1)))


class ImageDiscriminator(nn.Module):
    """D_img (real vs synthetic, given the age label) with the D_age head (age group logits)."""

    def __init__(self,
                 image_size: int = 128,
                 in_chans: int = 1,
                 z_dim: int = 50,             # only sets the label tiling (as in G)
                 n_groups: int = 5,
                 width: float = 1.0,
                 self_attention: bool = True,
                 age_discriminator: bool = True,
                 spectral_norm: bool = True) -> None:
        super().__init__()
        _levels(image_size)
        self.z_dim, self.n_groups = z_dim, n_groups
        label_dim = n_groups * max(1, z_dim // n_groups)
        stem = _ch(16, width)
        self.stem = ConvBlock(in_chans, stem, norm=True, spectral_norm=spectral_norm)
        self.img = _Branch(stem + label_dim, image_size, width, 1,
                           self_attention=self_attention, spectral_norm=spectral_norm)
        self.age = (_Branch(stem, image_size, width, n_groups,
                            self_attention=self_attention, spectral_norm=spectral_norm)
                    if age_discriminator else None)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (real/synthetic logit [B], age logits [B, n_groups] or None without D_age)."""
        h = self.stem(x)
        maps = tile_label(label, self.z_dim).to(h.dtype)[:, :, None, None].expand(-1, -1, *h.shape[2:])
        logit = self.img(torch.cat([h, maps], dim=1)).squeeze(1)
        return logit, (self.age(h) if self.age is not None else None)


# --------------------------------------------------------------------------- model

class BAPGAN(nn.Module):
    """The four BAPGAN networks in one module (what a system receives from the YAML).

    ``forward(image, label)`` is the age-conditioned translation G(E(x), l).
    """

    def __init__(self,
                 image_size: int = 128,
                 in_chans: int = 1,
                 z_dim: int = 50,
                 n_groups: int = 5,
                 width: float = 1.0,               # channel multiplier (tests: 1/8)
                 self_attention: bool = True,      # SA in G, D_img, D_age
                 age_discriminator: bool = True,   # D_age head on D_img
                 spectral_norm: bool = True) -> None:  # SN in D_id, D_img, D_age
        super().__init__()
        self.image_size, self.in_chans, self.z_dim, self.n_groups = image_size, in_chans, z_dim, n_groups
        self.self_attention, self.age_discriminator, self.spectral_norm = (
            self_attention, age_discriminator, spectral_norm)
        self.encoder = Encoder(image_size, in_chans, z_dim, width)
        self.generator = Generator(image_size, in_chans, z_dim, n_groups, width, self_attention)
        self.d_id = IdentityDiscriminator(z_dim, width, spectral_norm=spectral_norm)
        self.d_img = ImageDiscriminator(image_size, in_chans, z_dim, n_groups, width,
                                        self_attention, age_discriminator, spectral_norm)

    def sample_prior(self, n: int, like: torch.Tensor) -> torch.Tensor:
        return sample_prior(n, self.z_dim, device=like.device, dtype=like.dtype)

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.generator(self.encoder(image), label)


# --------------------------------------------------------------------------- variants

VARIANTS: dict[str, dict] = {   # the four rows of the paper's Table 1
    "caae": dict(self_attention=False, age_discriminator=False, spectral_norm=False),
    "caae_age_ls": dict(self_attention=False, age_discriminator=True, spectral_norm=False),
    "caae_sa": dict(self_attention=True, age_discriminator=False, spectral_norm=True),
    "bapgan": dict(self_attention=True, age_discriminator=True, spectral_norm=True),
}


def create_bapgan(variant: str = "bapgan", **kwargs) -> BAPGAN:
    """A Table 1 row by name; keyword arguments override (e.g. ``width=0.125, image_size=32``)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown BAPGAN variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return BAPGAN(**{**VARIANTS[variant], **kwargs})
