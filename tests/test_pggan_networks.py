"""PGGAN layers and networks: equalized LR, pixel norm, minibatch stddev, fade-in, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from boneage.models.pggan import PGGANDiscriminator, PGGANGenerator, fade_images, stage_channels
from boneage.nn.equalized import EqualizedConv2d, EqualizedLinear, MinibatchStdDev, PixelNorm


def test_equalized_conv_scales_unit_weights_by_he_constant():
    torch.manual_seed(0)
    conv = EqualizedConv2d(3, 2, 3)
    x = torch.randn(1, 3, 5, 5)
    # hand computation: weight * sqrt(2) / sqrt(3*3*3), zero-padded "same" convolution
    expected = F.conv2d(x, conv.weight * math.sqrt(2) / math.sqrt(27), conv.bias, padding=1)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    assert conv.scale == pytest.approx(math.sqrt(2 / 27))
    # weights are stored at N(0, 1), not pre-scaled
    assert 0.5 < conv.weight.std().item() < 1.5


def test_equalized_linear_matches_hand_value():
    lin = EqualizedLinear(4, 1, gain=1.0)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        lin.bias.fill_(0.5)
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    # (1 + 2 + 3 + 4) / sqrt(4) + 0.5 = 5.5
    assert lin(x).item() == pytest.approx(5.5)


def test_pixel_norm_matches_hand_value():
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    # mean of squares = 12.5 -> x / sqrt(12.5)
    out = PixelNorm(eps=0.0)(x).flatten()
    assert torch.allclose(out, torch.tensor([3.0, 4.0]) / math.sqrt(12.5))
    y = PixelNorm()(torch.randn(2, 8, 3, 3) * 7)
    assert torch.allclose(y.pow(2).mean(dim=1), torch.ones(2, 3, 3), atol=1e-5)


def test_minibatch_stddev_appends_group_std_channel():
    x = torch.randn(8, 5, 4, 4)
    y = MinibatchStdDev(group_size=4)(x)
    assert y.shape == (8, 6, 4, 4)
    assert torch.equal(y[:, :5], x)
    # groups are samples {m, m+2, m+4, m+6}; the new channel is their std averaged over C, H, W
    grp = x[0::2]
    expected = (grp.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    assert torch.allclose(y[0, 5], expected.expand(4, 4), atol=1e-6)
    # a batch not divisible by the group still works (group shrinks to a divisor)
    assert MinibatchStdDev(4)(torch.randn(6, 5, 4, 4)).shape == (6, 6, 4, 4)


def test_identical_samples_give_zero_stddev():
    x = torch.randn(1, 3, 4, 4).repeat(4, 1, 1, 1)
    y = MinibatchStdDev(4)(x)
    assert y[:, 3].abs().max() < 1e-3


def test_stage_channels_follow_the_official_table():
    assert [stage_channels(s) for s in range(1, 10)] == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    assert stage_channels(1, width=1 / 32) == 16


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_generator_fade_in_blends_old_and_new_paths(alpha):
    torch.manual_seed(0)
    g = PGGANGenerator(latent_dim=16, resolution=16, width=1 / 32)
    z = torch.randn(3, 16)
    out = g(z, level=2, alpha=alpha)
    x = g.blocks[1](g.blocks[0](g.latent_norm(z)))
    new = g.to_rgb[2](g.blocks[2](x))
    old = F.interpolate(g.to_rgb[1](x), scale_factor=2, mode="nearest")
    assert torch.allclose(out, alpha * new + (1 - alpha) * old, atol=1e-5)
    if alpha == 0.0:  # alpha 0 equals the previous resolution, upsampled
        assert torch.allclose(out, F.interpolate(g(z, level=1), scale_factor=2), atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_discriminator_fade_in_blends_old_and_new_paths(alpha):
    torch.manual_seed(0)
    d = PGGANDiscriminator(resolution=16, width=1 / 32)
    img = torch.randn(4, 1, 16, 16)
    act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
    new = d.blocks[2](act(d.from_rgb[2](img)))
    old = act(d.from_rgb[1](F.avg_pool2d(img, 2)))
    expected = d.blocks[0](d.blocks[1](alpha * new + (1 - alpha) * old))
    assert torch.allclose(d(img, level=2, alpha=alpha), expected, atol=1e-5)
    if alpha == 0.0:
        assert torch.allclose(d(img, level=2, alpha=0.0), d(F.avg_pool2d(img, 2), level=1), atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_real_images_fade_like_the_generator(alpha):
    x = torch.randn(2, 1, 8, 8)
    low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    assert torch.allclose(fade_images(x, alpha), alpha * x + (1 - alpha) * low)


def test_gradients_reach_every_active_parameter():
    torch.manual_seed(0)
    g = PGGANGenerator(latent_dim=8, resolution=16, width=1 / 32)
    d = PGGANDiscriminator(resolution=16, width=1 / 32)
    out = d(g(torch.randn(4, 8), level=2, alpha=0.5), level=2, alpha=0.5).sum()
    out.backward()
    # at level 2 with fade-in, only the 4x4 toRGB / fromRGB are outside the graph
    inactive = {"to_rgb.0.weight", "to_rgb.0.bias", "from_rgb.0.weight", "from_rgb.0.bias"}
    for name, p in list(g.named_parameters()) + list(d.named_parameters()):
        if name in inactive:
            assert p.grad is None, name
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


def test_wrong_size_or_level_raises_clear_error():
    d = PGGANDiscriminator(resolution=16, width=1 / 32)
    with pytest.raises(ValueError, match="expects 8x8"):
        d(torch.randn(2, 1, 16, 16), level=1)
    with pytest.raises(ValueError, match="level must be"):
        PGGANGenerator(latent_dim=8, resolution=16, width=1 / 32)(torch.randn(2, 8), level=3)
    with pytest.raises(ValueError, match="power of two"):
        PGGANGenerator(resolution=48)
