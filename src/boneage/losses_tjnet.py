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
- **Several devices.** The paper trained on one GPU. Under DDP the batch of 16 is split over the
  devices (``boneage.cli``); the class counts |C_j|, |C_t| are those of the whole batch
  (``batch_*_targets``), while ``e`` is each device's batch mean (its square averaged over the
  devices differs from the square of the whole batch's mean only by the spread between devices).
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
    """Equal-width age classes in the label's units, as half-open intervals.

    Class ``k`` holds the ages in ``[offset + k * width, offset + (k + 1) * width)``: the age in
    completed class units, as ages are counted ("7 years old" until the 8th birthday), so 7.5 y is
    in class 7 and 8.5 y in class 8.
    RSNA (months): width 3, 77 classes, [0, 3), [3, 6), ..., [228, 231) months: the paper's
    "77 bone age classes (0-19 years with a 3-months basic unit)" tile 0-19 y exactly.
    Yearly (years): width 1, 23 classes, [0, 1), ..., [22, 23): the Tongji annotations "in years".
    Ages outside ``[offset, offset + num_classes * width)`` are clipped to the first/last class by
    :meth:`to_class`; :meth:`outside` finds them (the system counts them and stops when they are
    more than a few).

    ``to_age`` maps a class (or a fractional expected class) back to the start of its interval,
    i.e. the age label the class stands for (class 12 of RSNA = 36 months, class 7 = 7 years).
    """

    width: float
    num_classes: int
    offset: float = 0.0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.num_classes < 2:
            raise ValueError(f"AgeClasses needs width > 0 and num_classes >= 2, got {self}")

    @property
    def upper(self) -> float:
        """End (exclusive) of the last class, in label units."""
        return self.offset + self.num_classes * self.width

    def outside(self, age: torch.Tensor) -> torch.Tensor:
        """True where an age falls outside every class (it would be clipped into an end class)."""
        return (age < self.offset) | (age >= self.upper)

    def to_class(self, age: torch.Tensor) -> torch.Tensor:
        """Age (label units) -> class index (int64), clipped to the valid range."""
        k = torch.floor((age - self.offset) / self.width)
        return k.clamp(0, self.num_classes - 1).long()

    def to_age(self, k: torch.Tensor) -> torch.Tensor:
        """Class index (or a fractional expected class) -> start of its interval, in label units."""
        return self.offset + k.to(torch.float32) * self.width

    def starts(self, device: torch.device | str | None = None) -> torch.Tensor:
        return self.to_age(torch.arange(self.num_classes, device=device))


RSNA_CLASSES = AgeClasses(width=3.0, num_classes=77)  # months, [0, 231): 0-19 y
YEARLY_CLASSES = AgeClasses(width=1.0, num_classes=23)  # years, [0, 23): 0-22 y


def class_ratio_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class weights ``1 - |C_c| / |C_t|`` from the class counts of this batch, [num_classes]."""
    counts = torch.bincount(targets.long(), minlength=num_classes).to(torch.float32)
    return 1.0 - counts / max(targets.numel(), 1)


def ratio_weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                                  batch_targets: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_c (1 - |C_c|/|C_t|) H_c / |C_t|`` (see the module docstring).

    ``batch_targets``: the targets of the whole batch when ``logits`` hold one device's share of
    it (DDP): the class counts come from the whole batch, and the mean over the devices' values
    (what DDP's gradient averaging takes) equals the whole batch's loss.
    """
    counted = targets if batch_targets is None else batch_targets
    w = class_ratio_weights(counted, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy(logits, targets.long(), weight=w, reduction="sum") / max(targets.numel(), 1)


def expected_class(logits: torch.Tensor) -> torch.Tensor:
    """Expected class index under softmax(logits): ``sum_k k p_k``, [B], differentiable."""
    k = torch.arange(logits.shape[1], device=logits.device, dtype=torch.float32)
    return torch.softmax(logits.float(), dim=1) @ k


def differentiable_mad(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Batch MAD in class units between the expected class and the true class."""
    return (expected_class(logits) - targets.float()).abs().mean()


def tjnet_loss(age_logits: torch.Tensor, age_targets: torch.Tensor, alpha: float | torch.Tensor,
               sex_logits: torch.Tensor | None = None, sex_targets: torch.Tensor | None = None,
               batch_age_targets: torch.Tensor | None = None, batch_sex_targets: torch.Tensor | None = None,
               ) -> dict[str, torch.Tensor]:
    """TJ-Net's joint loss. Returns ``loss`` and its parts ``mad``, ``age_ce``, ``sex_ce``.

    Args:
        age_logits: [B, K] age-class logits.
        age_targets: [B] true age class indices.
        alpha: weight of ``e^2`` (1.5 at first, then the number of classes).
        sex_logits: [B, 2] sex logits (None without joint learning: no sex term).
        sex_targets: [B] sex labels, 1 male / 0 female.
        batch_age_targets, batch_sex_targets: the whole batch's targets when this is one device's
            share of it (DDP; class counts of the ratio weights), else None.
    """
    mad = differentiable_mad(age_logits, age_targets)
    age_ce = ratio_weighted_cross_entropy(age_logits, age_targets, batch_age_targets)
    if sex_logits is not None:
        if sex_targets is None:
            raise ValueError("tjnet_loss got sex_logits but no sex_targets")
        sex_ce = ratio_weighted_cross_entropy(sex_logits, sex_targets.round().long(),
                                              None if batch_sex_targets is None else batch_sex_targets.round().long())
    else:
        sex_ce = age_ce.new_zeros(())
    loss = alpha * mad * mad + sex_ce + age_ce
    return {"loss": loss, "mad": mad.detach(), "age_ce": age_ce.detach(), "sex_ce": sex_ce.detach()}
