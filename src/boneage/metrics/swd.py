"""Sliced Wasserstein distance per Laplacian-pyramid level (Karras et al., ICLR 2018).

Follows the official ``metrics/sliced_wasserstein.py``: a Laplacian pyramid with the 5x5
binomial filter (as cv2.pyrDown/pyrUp, mirror borders) from full resolution down to 16 px;
128 random 7x7 patches per image per level; each level's descriptors normalised per channel
(mean/std over all patches of the set); 4 repeats x 128 random unit directions; the distance
is the mean absolute difference of the sorted projections, times 1e3. The reference asserts
3-channel images: grayscale is repeated to 3 channels (``repeat_to_rgb``) to match its numbers.

Written by hand (in torch, device-agnostic) because no maintained library ships SWD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def _kernel(channels: int, like: Tensor, scale: float = 1.0) -> Tensor:
    k = torch.outer(_BINOMIAL, _BINOMIAL) / 256.0 * scale
    return k.to(like).expand(channels, 1, 5, 5).contiguous()


def pyr_down(x: Tensor) -> Tensor:
    """Blur with the 5x5 binomial filter (mirror borders) and keep every second pixel."""
    c = x.shape[1]
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), _kernel(c, x), groups=c)[:, :, ::2, ::2]


def pyr_up(x: Tensor) -> Tensor:
    """Zero-insert 2x upsampling followed by the binomial filter times 4 (as cv2.pyrUp)."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return F.conv2d(F.pad(up, (2, 2, 2, 2), mode="reflect"), _kernel(c, x, 4.0), groups=c)


def laplacian_pyramid(x: Tensor, num_levels: int) -> list[Tensor]:
    """Band-pass levels from full resolution down; the last level is the low-pass residual."""
    pyramid = [x.float()]
    for _ in range(1, num_levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])
    return pyramid


def pyramid_resolutions(size: int, min_resolution: int = 16) -> list[int]:
    """Resolutions of the levels: ``size, size/2, ...`` down to ``min_resolution``."""
    res, out = size, []
    while res >= min_resolution:
        out.append(res)
        res //= 2
    if not out:
        raise ValueError(f"SWD needs images of at least {min_resolution} px, got {size}")
    return out


def patch_descriptors(level: Tensor, patch_size: int = 7, patches_per_image: int = 128,
                      generator: torch.Generator | None = None) -> Tensor:
    """Random ``patch_size`` x ``patch_size`` patches per image: [N * patches_per_image, C, k, k]."""
    n, c, h, w = level.shape
    half = patch_size // 2
    if h < patch_size or w < patch_size:
        raise ValueError(f"level of {h}x{w} px is smaller than the {patch_size}x{patch_size} patch")
    count = n * patches_per_image
    ys = torch.randint(half, h - half, (count,), generator=generator).to(level.device)
    xs = torch.randint(half, w - half, (count,), generator=generator).to(level.device)
    img = torch.arange(n, device=level.device).repeat_interleave(patches_per_image)
    off = torch.arange(-half, half + 1, device=level.device)
    yy = (ys[:, None] + off[None, :])[:, :, None]  # [P, k, 1]
    xx = (xs[:, None] + off[None, :])[:, None, :]  # [P, 1, k]
    patches = level[img[:, None, None], :, yy, xx]  # [P, k, k, C]
    return patches.permute(0, 3, 1, 2).contiguous()


def finalize_descriptors(desc: Tensor) -> Tensor:
    """Normalise each channel over all patches (mean 0, std 1) and flatten: [P, C*k*k]."""
    desc = desc - desc.mean(dim=(0, 2, 3), keepdim=True)
    desc = desc / desc.std(dim=(0, 2, 3), keepdim=True, unbiased=False).clamp_min(1e-8)
    return desc.flatten(1)


def sliced_wasserstein(a: Tensor, b: Tensor, dir_repeats: int = 4, dirs_per_repeat: int = 128,
                       generator: torch.Generator | None = None) -> Tensor:
    """Mean over random unit directions of the 1-D Wasserstein distance between projections."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"descriptor sets must be [P, D] of the same shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    results = []
    for _ in range(dir_repeats):
        dirs = torch.randn(a.shape[1], dirs_per_repeat, generator=generator).to(a)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        pa = torch.sort(a @ dirs, dim=0).values
        pb = torch.sort(b @ dirs, dim=0).values
        results.append((pa - pb).abs().mean())
    return torch.stack(results).mean()


class SlicedWassersteinDistance:
    """SWD between two image sets, one value per pyramid level plus their mean.

    ``descriptors(images)`` turns a set (or a shard of it; concatenate shards) into per-level
    patch descriptors, so the real set's descriptors can be computed once and reused as the
    reference; ``distance(real_desc, fake_desc)`` gives ``{resolution: swd*1e3}`` and ``"mean"``.
    """

    def __init__(
        self,
        patch_size: int = 7,
        patches_per_image: int = 128,
        dir_repeats: int = 4,
        dirs_per_repeat: int = 128,
        min_resolution: int = 16,
        repeat_to_rgb: bool = True,
        seed: int = 0,
    ) -> None:
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image
        self.dir_repeats = dir_repeats
        self.dirs_per_repeat = dirs_per_repeat
        self.min_resolution = min_resolution
        self.repeat_to_rgb = repeat_to_rgb
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def descriptors(self, images: Tensor) -> list[Tensor]:
        """Raw patch descriptors per level, [P, C, k, k] each, finest level first."""
        if images.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
        if self.repeat_to_rgb and images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        levels = laplacian_pyramid(images, len(pyramid_resolutions(images.shape[-1], self.min_resolution)))
        return [patch_descriptors(lv, self.patch_size, self.patches_per_image, self.generator)
                for lv in levels]

    @torch.no_grad()
    def distance(self, real: list[Tensor], fake: list[Tensor], resolution: int) -> dict[str, float]:
        """SWD x 1e3 per level (keys are the level's resolution as a string) and their ``mean``."""
        out: dict[str, float] = {}
        for res, dr, df in zip(pyramid_resolutions(resolution, self.min_resolution), real, fake):
            n = min(len(dr), len(df))
            a, b = finalize_descriptors(dr[:n]), finalize_descriptors(df[:n])
            out[str(res)] = 1e3 * float(sliced_wasserstein(a, b, self.dir_repeats, self.dirs_per_repeat,
                                                           self.generator))
        out["mean"] = sum(out.values()) / len(out)
        return out

    def __call__(self, real: Tensor, fake: Tensor) -> dict[str, float]:
        """SWD between two image sets of the same resolution."""
        if real.shape[1:] != fake.shape[1:]:
            raise ValueError(f"image sets differ in shape: {tuple(real.shape)} vs {tuple(fake.shape)}")
        return self.distance(self.descriptors(real), self.descriptors(fake), real.shape[-1])
