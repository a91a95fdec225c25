"""GAN losses as pure functions (BAPGAN equations (1)-(3), reusable by other GANs).

Nakazawa et al., "BAPGAN: GAN-based bone age progression of femur and phalange X-ray
images", ISBI 2022, section 2.3.1.

- ``reconstruction_l2``: the paper's l2 term ``L(x, G(E(x), l))``. Paper is silent on the
  reduction: chose the per-pixel mean of squared errors because lambda1 = 10000 only balances
  the adversarial terms (each O(1)) against a per-pixel mean, as in the CAAE code's mean L1.
- ``d_adversarial_bce`` / ``g_adversarial_bce``: sigmoid cross-entropy on logits; the
  minimised player uses the non-saturating form (``-log D(fake)``), as the CAAE code does.
- ``soft_cross_entropy``: ``-sum_k l_k log softmax(logits)_k``, equation (2) with smoothed l.
- ``smooth_age_labels``: the paper's age label smoothing (section 2.3.1 examples).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AGE_GROUP_YEARS = 4   # [0-3] [4-7] [8-11] [12-15] [16-19]
N_AGE_GROUPS = 5


def age_to_group(age_years: torch.Tensor, group_years: float = AGE_GROUP_YEARS,
                 n_groups: int = N_AGE_GROUPS, check: bool = True) -> torch.Tensor:
    """Age in years -> group index (int64): [0-3] -> 0, ..., [16-19] -> 4 (ages >= 20 -> last).

    ``check``: refuse negative ages (reads the ages on the host: a GPU synchronisation; the training
    step skips it because the data modules refuse such rows when they read the table)."""
    if check and torch.any(age_years < 0):
        raise ValueError(f"ages must be >= 0 years, got min {float(age_years.min())}")
    return torch.clamp(torch.div(age_years, group_years, rounding_mode="floor"), 0, n_groups - 1).long()


def smooth_age_labels(group: torch.Tensor, n_groups: int = N_AGE_GROUPS,
                      smoothing: float = 0.2) -> torch.Tensor:
    """One-hot age labels with ``smoothing`` moved to each adjacent group.

    The paper's examples fix the rule: [0,0,1,0,0] -> [0,0.2,0.6,0.2,0] and
    [1,0,0,0,0] -> [0.8,0.2,0,0,0]: every existing neighbour gets ``smoothing`` and the true
    group keeps the rest (so edge groups keep 1 - s, inner ones 1 - 2 s). ``smoothing = 0``
    gives plain one-hot labels (the CAAE rows).
    """
    if not 0.0 <= smoothing < 0.5:
        raise ValueError(f"smoothing must be in [0, 0.5), got {smoothing}")
    group = group.long()
    eye = torch.eye(n_groups, device=group.device)
    # Transition matrix: row k = smoothed label of group k (tridiagonal).
    off = torch.diag(torch.ones(n_groups - 1, device=group.device), 1)
    neighbours = off + off.T
    matrix = eye * (1.0 - smoothing * neighbours.sum(1, keepdim=True)) + smoothing * neighbours
    return matrix[group]


def reconstruction_l2(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Mean squared error between images (the paper's l2 term before lambda1)."""
    return F.mse_loss(x_rec.float(), x.float())


def d_adversarial_bce(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator side of log D(real) + log(1 - D(fake)), as a loss to minimise."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def g_adversarial_bce(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator (or encoder) side: -log D(fake)."""
    fake_logits = fake_logits.float()
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k target_k log softmax(logits)_k (target rows sum to 1)."""
    return -(target.float() * F.log_softmax(logits.float(), dim=1)).sum(1).mean()
