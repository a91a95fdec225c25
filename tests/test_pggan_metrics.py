"""SWD per Laplacian level and MS-SSIM diversity against references written from the official
PGGAN metric code (metrics/sliced_wasserstein.py, metrics/ms_ssim.py); domain FID and IS."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
from scipy import signal

from boneage.metrics.gan_metrics import ms_ssim, msssim_diversity, msssim_pairs, to_official_range
from boneage.metrics.swd import SlicedWassersteinDistance, laplacian_pyramid, pyr_down, pyr_up, sliced_wasserstein


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


# --- the official algorithms, written here in numpy from the official code's description -----------
BINOMIAL_5X5 = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32) / 256.0


def official_pyr_down(x: np.ndarray) -> np.ndarray:
    """cv2.pyrDown as the official SWD: 5x5 binomial filter, mirror borders, every second pixel."""
    return scipy.ndimage.convolve(x, BINOMIAL_5X5[None, None], mode="mirror")[:, :, ::2, ::2]


def official_pyr_up(x: np.ndarray) -> np.ndarray:
    """cv2.pyrUp as the official SWD: zeros between pixels, then the binomial filter times 4."""
    up = np.zeros((x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3]), x.dtype)
    up[:, :, ::2, ::2] = x
    return scipy.ndimage.convolve(up, BINOMIAL_5X5[None, None] * 4.0, mode="mirror")


def official_msssim(img1: np.ndarray, img2: np.ndarray, max_val: float = 255.0) -> np.ndarray:
    """Per-pair MS-SSIM of NHWC batches in [0, 255]: float32, Gaussian window min(11, H, W) with sigma
    scaled by size / 11, fftconvolve in 'valid' mode, 2x2 box downsampling, five scales, the original
    weights, SSIM and CS clipped at 0."""
    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
    a, b = img1.astype(np.float32), img2.astype(np.float32)
    ssims, css = [], []
    for _ in weights:
        size = min(11, a.shape[1], a.shape[2])
        sigma = size * 1.5 / 11
        r = np.arange(size) - (size - 1) / 2.0
        yy, xx = np.meshgrid(r, r, indexing="ij")
        window = np.exp(-(xx**2 + yy**2) / (2.0 * sigma**2))
        window = (window / window.sum()).reshape(1, size, size, 1)

        def blur(t: np.ndarray, window: np.ndarray = window) -> np.ndarray:
            return signal.fftconvolve(t, window, mode="valid")

        mu1, mu2 = blur(a), blur(b)
        s11, s22, s12 = blur(a * a) - mu1**2, blur(b * b) - mu2**2, blur(a * b) - mu1 * mu2
        c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
        v1, v2 = 2.0 * s12 + c2, s11 + s22 + c2
        ssims.append(np.mean((2.0 * mu1 * mu2 + c1) * v1 / ((mu1**2 + mu2**2 + c1) * v2), axis=(1, 2, 3)))
        css.append(np.mean(v1 / v2, axis=(1, 2, 3)))
        a = (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2]) * 0.25
        b = (b[:, 0::2, 0::2] + b[:, 1::2, 0::2] + b[:, 0::2, 1::2] + b[:, 1::2, 1::2]) * 0.25
    ssims, css = np.clip(np.asarray(ssims), 0, None), np.clip(np.asarray(css), 0, None)
    return np.prod(css[:-1] ** weights[:-1, None], axis=0) * ssims[-1] ** weights[-1]


# --- SWD -----------------------------------------------------------------------------------------------
def test_laplacian_pyramid_equals_the_official_cv2_pyramid():
    x = torch.rand(2, 3, 32, 32) * 255
    ref = x.numpy()
    assert np.allclose(pyr_down(x).numpy(), official_pyr_down(ref), atol=1e-3)
    assert np.allclose(pyr_up(x[:, :, :16, :16]).numpy(), official_pyr_up(ref[:, :, :16, :16]), atol=1e-3)
    levels = [ref]
    for _ in range(2):  # official generate_laplacian_pyramid, 3 levels
        levels.append(official_pyr_down(levels[-1]))
        levels[-2] = levels[-2] - official_pyr_up(levels[-1])
    ours = laplacian_pyramid(x, 3)
    assert [p.shape[-1] for p in ours] == [32, 16, 8]
    for mine, theirs in zip(ours, levels):
        assert np.allclose(mine.numpy(), theirs, atol=1e-3)


def test_sliced_wasserstein_of_one_dimensional_descriptors_is_scipys_wasserstein_distance():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 1, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(500, 1, generator=g, dtype=torch.float64) + 1
    # one dimension: every unit direction is +-1, and W1 does not change under a common sign flip
    expected = scipy.stats.wasserstein_distance(a[:, 0].numpy(), b[:, 0].numpy())
    assert float(sliced_wasserstein(a, b, dir_repeats=2, dirs_per_repeat=3, generator=g)) == pytest.approx(expected)


def test_swd_of_a_set_against_itself_is_near_zero_and_grows_with_noise():
    real = _blobs(32, 32, seed=0)
    swd = SlicedWassersteinDistance(patches_per_image=64, seed=0)  # fewer patches: CPU time
    same = swd(real, real)  # other random patches of the same images
    assert set(same) == {"32", "16", "mean"}
    values = [same["mean"]]
    for sigma in (0.1, 0.3, 1.0):
        noisy = real + sigma * torch.randn_like(real)
        values.append(swd(real, noisy)["mean"])
    assert values == sorted(values), values
    assert values[0] < 0.2 * values[-1]


def test_swd_rejects_too_small_images():
    with pytest.raises(ValueError, match="at least 16 px"):
        SlicedWassersteinDistance()(torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8))


# --- MS-SSIM -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [16, 64, 256])
def test_msssim_equals_the_official_numpy_algorithm(size):
    g = torch.Generator().manual_seed(size)
    images = _blobs(8, size, seed=size)
    images[3], images[5] = images[2], images[4]  # pairs 1 and 2: one image and a noisy copy of it
    images = images + 0.1 * torch.randn(8, 1, size, size, generator=g)
    images[6] = images[7]  # pair 3: identical
    official = to_official_range(images).permute(0, 2, 3, 1).numpy()  # NHWC in [0, 255], as fed officially
    expected = official_msssim(official[0::2], official[1::2])
    ours = msssim_pairs(images).numpy()
    assert np.abs(ours - expected).max() < 1e-3, (ours, expected)
    assert ours[-1] == pytest.approx(1.0)
    assert (expected[1:3] > 0.05).all()  # not a comparison of clipped zeros


def test_msssim_rejects_images_below_sixteen_px():
    with pytest.raises(ValueError, match="at least 16 px"):
        ms_ssim(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))


def test_msssim_diversity_detects_mode_collapse():
    diverse = _blobs(32, 32, seed=2)
    collapsed = diverse[:1].repeat(32, 1, 1, 1) + 0.02 * torch.randn(32, 1, 32, 32)
    assert msssim_diversity(collapsed) > msssim_diversity(diverse) + 0.2


# --- domain FID / IS -----------------------------------------------------------------------------------
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
    metrics.reset()
    metrics.update_fake(-real)  # inverted images: far in feature space
    assert metrics.compute()["fid_domain"] > 0.01
    with pytest.raises(FileNotFoundError, match="Inception weights not found"):
        InceptionFeatures("/nonexistent/inception_v3.pth")


def test_domain_inception_score_counts_confident_distinct_age_classes():
    from boneage.metrics.gan_metrics import GANImageMetrics, RegressorFeatures

    def age_of(images: torch.Tensor) -> torch.Tensor:  # a stand-in regressor: the first pixel is the age
        return images[:, 0, 0, 0]

    def inception_score(ages: list[float]) -> float:
        net = _TinyRegressor()
        metrics = GANImageMetrics(RegressorFeatures(net, net, "features"),
                                  RegressorFeatures(net, age_of, "logits", bin_sd=1.0), is_splits=1)
        images = torch.zeros(len(ages), 1, 8, 8)
        images[:, 0, 0, 0] = torch.tensor(ages)
        metrics.update_fake(images)
        return float(metrics.inception_score.compute()[0])

    # ages at the centres of one-year bins, each predicted confidently: IS = the number of bins used
    assert inception_score([18.0] * 40) == pytest.approx(1.0, abs=1e-3)
    assert inception_score([6.0, 30.0, 54.0, 78.0] * 10) == pytest.approx(4.0, abs=1e-2)
