"""TJ-Net's joint loss, class weights and age classes against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from boneage.losses_tjnet import (
    RSNA_CLASSES,
    YEARLY_CLASSES,
    AgeClasses,
    class_ratio_weights,
    differentiable_mad,
    expected_class,
    ratio_weighted_cross_entropy,
    tjnet_loss,
)


def test_class_ratio_weights_hand_computed():
    # batch of 5: class 0 twice, class 2 three times, class 1 absent
    w = class_ratio_weights(torch.tensor([0, 2, 2, 0, 2]), num_classes=4)
    torch.testing.assert_close(w, torch.tensor([1 - 2 / 5, 1.0, 1 - 3 / 5, 1.0]))


def test_ratio_weighted_cross_entropy_hand_computed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 1, 1])
    # weights: class 0 -> 1 - 1/3, class 1 -> 1 - 2/3
    h0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    h1 = -math.log(math.e / (1 + math.e))
    h2 = math.log(2.0)
    expected = ((2 / 3) * h0 + (1 / 3) * (h1 + h2)) / 3
    assert ratio_weighted_cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_single_class_batch_has_zero_weight():
    """Literally the paper's weight: a class filling the batch contributes nothing."""
    logits = torch.randn(4, 2)
    assert ratio_weighted_cross_entropy(logits, torch.ones(4, dtype=torch.long)).item() == 0.0


def test_expected_class_and_mad_hand_computed():
    # three classes; sample 1: p = (0.5, 0.5, 0) -> E = 0.5; sample 2: p = (0, 0, 1) -> E = 2
    big = 50.0
    logits = torch.tensor([[0.0, 0.0, -big], [-big, -big, 0.0]])
    torch.testing.assert_close(expected_class(logits), torch.tensor([0.5, 2.0]))
    # targets 2 and 0: |0.5 - 2| = 1.5, |2 - 0| = 2 -> mean 1.75
    assert differentiable_mad(logits, torch.tensor([2, 0])).item() == pytest.approx(1.75)


def test_tjnet_loss_hand_computed_and_differentiable():
    age_logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]], requires_grad=True)
    age_t = torch.tensor([0, 2])
    sex_logits = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    sex_t = torch.tensor([1.0, 1.0])  # one sex only: weight 0
    out = tjnet_loss(age_logits, age_t, 1.5, sex_logits, sex_t)
    # sample 1: p = 1/3 each, E = 1, |1-0| = 1, CE = log 3; sample 2: p = (1/2, 1/4, 1/4),
    # E = 0.25 + 0.5 = 0.75, |0.75 - 2| = 1.25, CE = -log(1/4)
    mad = (1.0 + 1.25) / 2
    age_ce = (0.5 * math.log(3) + 0.5 * math.log(4)) / 2  # each class once in a batch of 2
    assert out["mad"].item() == pytest.approx(mad, rel=1e-6)
    assert out["age_ce"].item() == pytest.approx(age_ce, rel=1e-6)
    assert out["sex_ce"].item() == 0.0
    assert out["loss"].item() == pytest.approx(1.5 * mad**2 + age_ce, rel=1e-6)
    out["loss"].backward()
    assert age_logits.grad.abs().sum() > 0
    # alpha raises the weight of the global error term only
    hi = tjnet_loss(age_logits, age_t, 77.0, sex_logits, sex_t)
    assert (hi["loss"] - out["loss"]).item() == pytest.approx((77.0 - 1.5) * mad**2, rel=1e-5)


def test_tjnet_loss_without_joint_learning_has_no_sex_term():
    out = tjnet_loss(torch.zeros(2, 5), torch.tensor([1, 3]), 1.5)
    assert out["sex_ce"].item() == 0.0
    with pytest.raises(ValueError, match="sex_targets"):
        tjnet_loss(torch.zeros(2, 5), torch.tensor([1, 3]), 1.5, sex_logits=torch.zeros(2, 2))


def test_age_classes_are_half_open_intervals():
    """The age in completed class units: 7.5 y and 8.5 y land in classes 7 and 8, not both in 8."""
    years = torch.tensor([0.0, 0.2, 7.0, 7.5, 7.9999, 8.0, 8.5, 22.0, 22.9])
    torch.testing.assert_close(YEARLY_CLASSES.to_class(years), torch.tensor([0, 0, 7, 7, 7, 8, 8, 22, 22]))
    # RSNA: 77 classes of 3 months tile 0-19 y: [0, 3), ..., [228, 231) months
    months = torch.tensor([0.0, 1.4, 2.9, 3.0, 12.0, 100.0, 228.0, 230.0])
    torch.testing.assert_close(RSNA_CLASSES.to_class(months), torch.tensor([0, 0, 0, 1, 4, 33, 76, 76]))
    # a class stands for the start of its interval; a fractional expected class for a fractional age
    torch.testing.assert_close(RSNA_CLASSES.to_age(torch.tensor([0, 4, 76])), torch.tensor([0.0, 12.0, 228.0]))
    assert RSNA_CLASSES.to_age(torch.tensor(2.5)).item() == 7.5
    # ages outside every class are found (and clipped into the end classes by to_class)
    outside = torch.tensor([-5.0, -0.01, 0.0, 230.9, 231.0, 240.0])
    assert RSNA_CLASSES.outside(outside).tolist() == [True, True, False, False, True, True]
    torch.testing.assert_close(RSNA_CLASSES.to_class(outside), torch.tensor([0, 0, 0, 76, 76, 76]))
    shifted = AgeClasses(width=1.0, num_classes=5, offset=10.0)  # [10, 15) years
    torch.testing.assert_close(shifted.to_class(torch.tensor([10.0, 12.5, 14.99])), torch.tensor([0, 2, 4]))
    with pytest.raises(ValueError):
        AgeClasses(width=0.0, num_classes=10)


def test_class_ratio_weights_count_the_whole_batch_across_devices():
    """DDP: each device holds half of the batch; with the whole batch's targets, the mean of the two
    devices' losses (what gradient averaging takes) is the whole batch's loss, value and gradient."""
    torch.manual_seed(0)
    logits = torch.randn(8, 5, requires_grad=True)
    targets = torch.tensor([0, 0, 0, 1, 2, 0, 1, 4])
    whole = ratio_weighted_cross_entropy(logits, targets)
    (g_whole,) = torch.autograd.grad(whole, logits)
    halves = [ratio_weighted_cross_entropy(logits[i:i + 4], targets[i:i + 4], batch_targets=targets)
              for i in (0, 4)]
    split = (halves[0] + halves[1]) / 2
    (g_split,) = torch.autograd.grad(split, logits)
    torch.testing.assert_close(split, whole)
    torch.testing.assert_close(g_split, g_whole)
    # counted per device instead (each half's own classes), the loss is another one
    own = sum(ratio_weighted_cross_entropy(logits[i:i + 4], targets[i:i + 4]) for i in (0, 4)) / 2
    assert abs(own.item() - whole.item()) > 1e-3
    # the same through tjnet_loss, for both cross entropies
    sex_logits, sex = torch.randn(8, 2), torch.tensor([1.0, 1, 1, 1, 0, 0, 1, 0])
    full = tjnet_loss(logits, targets, 1.5, sex_logits, sex)
    parts = [tjnet_loss(logits[i:i + 4], targets[i:i + 4], 1.5, sex_logits[i:i + 4], sex[i:i + 4],
                        batch_age_targets=targets, batch_sex_targets=sex) for i in (0, 4)]
    for key in ("age_ce", "sex_ce"):
        torch.testing.assert_close((parts[0][key] + parts[1][key]) / 2, full[key])
