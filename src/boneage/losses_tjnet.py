"""TJ-Net's joint loss and age classes, as pure functions (no Lightning, no state).

The paper's loss (section 2.3)::

    L = alpha * e^2 + sum_i (1 - |C_i|/|C_t|) H(Y_g, P_g) + sum_j (1 - |C_j|/|C_t|) H(Y_a, P_a)

with e the mean absolute difference (MAD) between ground-truth and predicted age labels,
|C_i| (|C_j|) the number of samples of sex class i (age class j) in the batch and |C_t| the
batch size.

Choices where the paper is silent (also in docs/tjnet.md):

- **Differentiable MAD.** The arg-max label has no gradient, so ``e`` uses the *expected class*
  ``sum_k k * softmax(logits)_k`` against the true class index: ``e = mean_b |E[k] - g_b|``.
  ``e`` is in class units, as the paper defines it on "age labels" (3-month units for RSNA, years
  for yearly classes). It is computed per batch (a stochastic estimate of the data-set MAD the
  paper writes; the data-set MAD is not differentiable with respect to one batch's weights).
- **Class-ratio-weighted cross entropy.** ``sum_j (1 - |C_j|/|C_t|) H_j`` with ``H_j`` the summed
  cross entropy of the batch's samples of class j, divided by the batch size, i.e.
  ``mean_b (1 - |C_{y_b}|/|C_t|) * -log p_b(y_b)``. A class filling the whole batch gets weight 0
  (literally the paper's formula): e.g. a batch of one sex adds no sex loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "AgeClasses", "RSNA_CLASSES", "YEARLY_CLASSES", "class_ratio_weights", "ratio_weighted_cross_entropy",
    "expected_class", "differentiable_mad", "tjnet_loss",
]


@dataclass(frozen=True)
class AgeClasses:
    """Equal-width age classes in the label's units.

    Class ``k`` is centred on ``offset + k * width`` and holds ages within half a width of it
    (nearest centre); ages outside are clipped to the first/last class.
    RSNA (months): width 3, 77 classes, centres 0, 3, ..., 228 months (0-19 years).
    Yearly (years): width 1, 23 classes, centres 0, 1, ..., 22 years.

    Paper is silent on the class boundaries: chose nearest-centre classes because RSNA labels
    are whole months (mostly multiples of 3, 6 or 12), which then fall exactly on a centre.
    """

    width: float
    num_classes: int
    offset: float = 0.0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.num_classes < 2:
            raise ValueError(f"AgeClasses needs width > 0 and num_classes >= 2, got {self}")

    @property
    def max_age(self) -> float:
        return self.offset + (self.num_classes - 1) * self.width

    def to_class(self, age: torch.Tensor) -> torch.Tensor:
        """Age (label units) -> class index (int64), clipped to the valid range."""
        k = torch.round((age - self.offset) / self.width)
        return k.clamp(0, self.num_classes - 1).long()

    def to_age(self, k: torch.Tensor) -> torch.Tensor:
        """Class index (or a fractional expected class) -> age in label units."""
        return self.offset + k.to(torch.float32) * self.width

    def centres(self, device: torch.device | str | None = None) -> torch.Tensor:
        return self.to_age(torch.arange(self.num_classes, device=device))


RSNA_CLASSES = AgeClasses(width=3.0, num_classes=77)  # months, 0-19 y
YEARLY_CLASSES = AgeClasses(width=1.0, num_classes=23)  # years, 0-22 y


def class_ratio_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class weights ``1 - |C_c| / |C_t|`` from the class counts of this batch, [num_classes]."""
    counts = torch.bincount(targets.long(), minlength=num_classes).to(torch.float32)
    return 1.0 - counts / max(targets.numel(), 1)


def ratio_weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``sum_c (1 - |C_c|/|C_t|) H_c / |C_t|`` (see the module docstring)."""
    w = class_ratio_weights(targets, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy(logits, targets.long(), weight=w, reduction="sum") / max(targets.numel(), 1)


def expected_class(logits: torch.Tensor) -> torch.Tensor:
    """Expected class index under softmax(logits): ``sum_k k p_k``, [B], differentiable."""
    k = torch.arange(logits.shape[1], device=logits.device, dtype=torch.float32)
    return torch.softmax(logits.float(), dim=1) @ k


def differentiable_mad(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Batch MAD in class units between the expected class and the true class."""
    return (expected_class(logits) - targets.float()).abs().mean()


def tjnet_loss(age_logits: torch.Tensor, age_targets: torch.Tensor, alpha: float | torch.Tensor,
               sex_logits: torch.Tensor | None = None, sex_targets: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor]:
    """TJ-Net's joint loss. Returns ``loss`` and its parts ``mad``, ``age_ce``, ``sex_ce``.

    Args:
        age_logits: [B, K] age-class logits.
        age_targets: [B] true age class indices.
        alpha: weight of ``e^2`` (1.5 at first, then the number of classes).
        sex_logits: [B, 2] sex logits (None without joint learning: no sex term).
        sex_targets: [B] sex labels, 1 male / 0 female.
    """
    mad = differentiable_mad(age_logits, age_targets)
    age_ce = ratio_weighted_cross_entropy(age_logits, age_targets)
    if sex_logits is not None:
        if sex_targets is None:
            raise ValueError("tjnet_loss got sex_logits but no sex_targets")
        sex_ce = ratio_weighted_cross_entropy(sex_logits, sex_targets.round().long())
    else:
        sex_ce = age_ce.new_zeros(())
    loss = alpha * mad * mad + sex_ce + age_ce
    return {"loss": loss, "mad": mad.detach(), "age_ce": age_ce.detach(), "sex_ce": sex_ce.detach()}
