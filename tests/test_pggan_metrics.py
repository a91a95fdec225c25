"""SWD per Laplacian level and MS-SSIM diversity at small sizes."""

from __future__ import annotations

import pytest
import torch

from boneage.metrics.gan_metrics import msssim_diversity, msssim_settings
from boneage.metrics.swd import SlicedWassersteinDistance, laplacian_pyramid, pyr_down, pyr_up


def _blobs(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random images in [-1, 1] (sums of Gaussian blobs)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    imgs = torch.zeros(n, 1, size, size)
    for _ in range(4):
        c = torch.rand(n, 2, generator=g)
        s = 0.05 + 0.15 * torch.rand(n, generator=g)
        imgs[:, 0] += torch.exp(-((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2)
                                / (2 * s[:, None, None] ** 2))
    return imgs.clamp(0, 1) * 2 - 1


def test_laplacian_pyramid_reconstructs_the_image():
    x = torch.randn(2, 3, 32, 32)
    pyr = laplacian_pyramid(x, 2)
    assert [p.shape[-1] for p in pyr] == [32, 16]
    assert torch.allclose(pyr[0] + pyr_up(pyr[1]), x, atol=1e-5)
    # a constant image keeps its value through pyrDown (mirror borders, normalised filter)
    assert torch.allclose(pyr_down(torch.ones(1, 1, 8, 8)), torch.ones(1, 1, 4, 4))


def test_swd_of_a_set_against_itself_is_near_zero_and_grows_with_noise():
    real = _blobs(32, 32, seed=0)
    swd = SlicedWassersteinDistance(patches_per_image=64, seed=0)  # fewer patches: CPU time
    same = swd(real, real)
    assert set(same) == {"32", "16", "mean"}
    values = [same["mean"]]
    for sigma in (0.1, 0.3, 1.0):
        noisy = real + sigma * torch.randn_like(real)
        values.append(swd(real, noisy)["mean"])
    assert values == sorted(values), values
    assert values[0] < 0.2 * values[-1]
    # identical descriptor sets give exactly 0
    desc = swd.descriptors(real)
    assert swd.distance(desc, desc, 32)["mean"] == 0.0


def test_swd_rejects_too_small_images():
    with pytest.raises(ValueError, match="at least 16 px"):
        SlicedWassersteinDistance()(torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8))


@pytest.mark.parametrize("size", [16, 32, 64, 128, 256])
def test_msssim_kernel_and_scales_fit_the_size(size):
    k, betas = msssim_settings(size)
    assert k % 2 == 1 and 3 <= k <= 11
    assert sum(betas) == pytest.approx(1.0)
    if size >= 176:
        assert (k, len(betas)) == (11, 5)  # the reference setting where it fits
    if size == 128:
        assert (k, len(betas)) == (7, 5)  # REFERENCE.md: kernel 7 at 128 px
    imgs = _blobs(8, size, seed=1)
    # through torchmetrics: identical pairs are 1, different images less
    assert msssim_diversity(torch.cat([imgs[:1], imgs[:1]])) == pytest.approx(1.0, abs=1e-4)
    assert msssim_diversity(imgs) < 0.95


def test_msssim_diversity_detects_mode_collapse():
    diverse = _blobs(32, 32, seed=2)
    collapsed = diverse[:1].repeat(32, 1, 1, 1) + 0.02 * torch.randn(32, 1, 32, 32)
    assert msssim_diversity(collapsed) > msssim_diversity(diverse) + 0.2


class _TinyRegressor(torch.nn.Module):
    """Stand-in age regressor: pooled conv features -> one linear output (age in months)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        self.out = torch.nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 120 + 60 * self.out(self.features(x)).squeeze(1)


def test_domain_fid_and_is_are_labelled_and_behave():
    from boneage.metrics.gan_metrics import GANImageMetrics, InceptionFeatures, RegressorFeatures

    net = _TinyRegressor()
    metrics = GANImageMetrics(RegressorFeatures(net, net, "features"), RegressorFeatures(net, net, "logits"),
                              is_splits=1)
    real = _blobs(64, 16, seed=3)
    metrics.update_real(real)
    metrics.update_fake(real)
    same = metrics.compute()
    assert set(same) == {"fid_domain", "is_domain"}  # never mistaken for Inception numbers
    assert abs(same["fid_domain"]) < 1e-3
    assert 1.0 <= same["is_domain"] <= 20.0  # 20 one-year age bins
    metrics.reset()
    metrics.update_fake(-real)  # inverted images: far in feature space
    assert metrics.compute()["fid_domain"] > 0.01
    with pytest.raises(FileNotFoundError, match="Inception weights not found"):
        InceptionFeatures("/nonexistent/inception_v3.pth")
