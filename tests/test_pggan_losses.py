"""WGAN-GP losses against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from boneage.systems.pggan_losses import (
    drift_penalty,
    gradient_penalty,
    wgan_d_loss,
    wgan_g_loss,
    wgan_gp_d_loss,
)


def test_wgan_terms_match_hand_values():
    real = torch.tensor([1.0, 3.0])
    fake = torch.tensor([-1.0, 0.0])
    assert wgan_d_loss(real, fake).item() == pytest.approx(-0.5 - 2.0)
    assert wgan_g_loss(fake).item() == pytest.approx(0.5)
    assert drift_penalty(real).item() == pytest.approx(0.001 * (1 + 9) / 2)


def test_gradient_penalty_of_a_linear_critic():
    # critic(x) = sum(w * x): gradient w everywhere, norm 5 -> 10 * (5 - 1)^2 = 160
    w = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    critic = lambda x: (x * w).sum(dim=(1, 2, 3))  # noqa: E731
    real, fake = torch.randn(4, 2, 1, 1), torch.randn(4, 2, 1, 1)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(160.0)
    # a critic with unit gradient norm has no penalty
    unit = lambda x: (x * w / 5).sum(dim=(1, 2, 3))  # noqa: E731
    assert gradient_penalty(unit, real, fake).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_reaches_critic_parameters():
    lin = torch.nn.Linear(4, 1)
    critic = lambda x: lin(x.flatten(1)).squeeze(1)  # noqa: E731
    parts = wgan_gp_d_loss(critic, torch.randn(8, 1, 2, 2), torch.randn(8, 1, 2, 2))
    parts["loss"].backward()
    assert lin.weight.grad.abs().sum() > 0
    assert set(parts) == {"loss", "wgan", "gp", "drift", "real_score", "fake_score"}
    assert parts["loss"].item() == pytest.approx((parts["wgan"] + parts["gp"] + parts["drift"]).item())
