"""BAPGAN losses and label smoothing against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from boneage.systems.gan_losses import (
    age_to_group,
    d_adversarial_bce,
    g_adversarial_bce,
    reconstruction_l2,
    smooth_age_labels,
    soft_cross_entropy,
)


def test_label_smoothing_matches_the_papers_examples() -> None:
    got = smooth_age_labels(torch.tensor([2, 0]), n_groups=5, smoothing=0.2)
    assert torch.allclose(got[0], torch.tensor([0.0, 0.2, 0.6, 0.2, 0.0]))
    assert torch.allclose(got[1], torch.tensor([0.8, 0.2, 0.0, 0.0, 0.0]))
    last = smooth_age_labels(torch.tensor([4]))[0]
    assert torch.allclose(last, torch.tensor([0.0, 0.0, 0.0, 0.2, 0.8]))
    assert torch.allclose(smooth_age_labels(torch.arange(5), smoothing=0.0), torch.eye(5))
    with pytest.raises(ValueError, match="smoothing"):
        smooth_age_labels(torch.tensor([0]), smoothing=0.6)


def test_age_groups_are_the_papers_intervals() -> None:
    ages = torch.tensor([0.0, 3.9, 4.0, 7.5, 8.0, 11.99, 12.0, 15.5, 16.0, 19.9, 21.0])
    assert age_to_group(ages).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    with pytest.raises(ValueError, match=">= 0"):
        age_to_group(torch.tensor([-1.0]))


def test_reconstruction_l2_is_the_mean_squared_error() -> None:
    x = torch.tensor([[0.0, 1.0], [-1.0, 0.5]])
    y = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert reconstruction_l2(x, y).item() == pytest.approx((1 + 0 + 4 + 0.25) / 4)


def test_adversarial_bce_by_hand() -> None:
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected_d = -math.log(sig(2.0)) - math.log(1 - sig(-1.0))
    assert d_adversarial_bce(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    assert g_adversarial_bce(fake).item() == pytest.approx(-math.log(sig(-1.0)), rel=1e-6)


def test_soft_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([[0.8, 0.2, 0.0, 0.0, 0.0]])
    lse = math.log(math.e + math.e ** 2 + 3)
    expected = -(0.8 * (1 - lse) + 0.2 * (2 - lse))
    assert soft_cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)
    onehot = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]])
    assert soft_cross_entropy(logits, onehot).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, torch.tensor([1])).item(), rel=1e-6)
