"""WGAN-GP losses of the Progressive GAN as pure functions.

Official code (tkarras/progressive_growing_of_gans, loss.py ``G_wgan_acgan``/``D_wgangp_acgan``):
critic loss ``D(fake) - D(real)``, gradient penalty ``lambda * (||grad D(mix)|| - target)^2 /
target^2`` on random mixes of real and fake (lambda 10, target 1), drift ``0.001 * D(real)^2``;
generator loss ``-D(fake)``. Every term is averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def wgan_d_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Critic loss ``mean(D(fake)) - mean(D(real))``."""
    return fake_scores.mean() - real_scores.mean()


def wgan_g_loss(fake_scores: Tensor) -> Tensor:
    """Generator loss ``-mean(D(fake))``."""
    return -fake_scores.mean()


def drift_penalty(real_scores: Tensor, weight: float = 0.001) -> Tensor:
    """``weight * mean(D(real)^2)``: keeps the critic's output from drifting away from 0."""
    return weight * real_scores.float().pow(2).mean()


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    weight: float = 10.0,
    target: float = 1.0,
    mix: Tensor | None = None,
    grad_scale: Tensor | None = None,
) -> Tensor:
    """``weight * mean((||grad_x critic(x)||_2 - target)^2) / target^2`` at ``x = lerp(real, fake, u)``.

    ``u ~ U(0, 1)`` per sample unless ``mix`` [B] is given (tests). The graph is kept
    (``create_graph``) so the penalty back-propagates into the critic's parameters.

    ``grad_scale`` (fp16 mixed precision: the gradient scaler's current scale, a tensor): the
    gradient is taken of ``scale * sum(scores)`` and the scale divided out in float32, so the
    critic's fp16 backward runs on scaled values and small gradients do not flush to zero (the
    official code's ``apply_loss_scaling`` / ``undo_loss_scaling``). An overflow makes the penalty
    inf, and the gradient scaler then skips the step and lowers the scale.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must have the same shape")
    if mix is None:
        mix = torch.rand(real.shape[0], device=real.device, dtype=real.dtype)
    u = mix.view(-1, *([1] * (real.ndim - 1))).to(real.dtype)
    x = torch.lerp(real.detach(), fake.detach().to(real.dtype), u).requires_grad_(True)  # bf16 fakes
    out = critic(x).float().sum()
    if grad_scale is not None:
        out = out * grad_scale
    (grad,) = torch.autograd.grad(out, x, create_graph=True)
    grad = grad.float() if grad_scale is None else grad.float() / grad_scale
    norms = grad.flatten(1).norm(dim=1)
    return weight * ((norms - target) ** 2).mean() / target**2


def wgan_gp_d_loss(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    gp_weight: float = 10.0,
    drift_weight: float = 0.001,
    gp_target: float = 1.0,
    grad_scale: Tensor | None = None,
) -> dict[str, Tensor]:
    """Full critic objective; returns the total and its parts (``loss``, ``wgan``, ``gp``, ``drift``,
    ``real_score``, ``fake_score``) for logging. ``grad_scale``: see :func:`gradient_penalty`."""
    real_scores = critic(real)
    fake_scores = critic(fake.detach())
    wgan = wgan_d_loss(real_scores, fake_scores)
    gp = gradient_penalty(critic, real, fake, gp_weight, gp_target, grad_scale=grad_scale)
    drift = drift_penalty(real_scores, drift_weight)
    return {
        "loss": wgan + gp + drift,
        "wgan": wgan.detach(),
        "gp": gp.detach(),
        "drift": drift.detach(),
        "real_score": real_scores.detach().mean(),
        "fake_score": fake_scores.detach().mean(),
    }
