"""Grad-CAM as the ROI localization uses it: batched, on the predicted class, inside Lightning's
predict loop (inference mode), equal to the grad-cam package's maps."""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from boneage.analysis.gradcam import grad_cam as gradcam


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()


def test_matches_grad_cam_package():
    net = _net()
    x = torch.randn(3, 1, 20, 12)
    targets = torch.tensor([0, 3, 1])
    ours = gradcam(net, net[3], x, targets)
    cam = GradCAM(model=net, target_layers=[net[3]])
    ref = cam(x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    assert ours.shape == (3, 20, 12)
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-3)
    assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0


def test_default_target_is_predicted_class_and_grads_untouched():
    net = _net()
    x = torch.randn(2, 1, 16, 16)
    pred = net(x).argmax(1)
    assert torch.allclose(gradcam(net, net[3], x), gradcam(net, net[3], x, pred))
    assert all(p.grad is None for p in net.parameters())


def test_localizes_the_evidence():
    """A hand-built detector of a bright square: the map peaks where the square is."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.constant_(conv.weight, 1 / 9)
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        net[4].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[4].bias.zero_()
    x = torch.zeros(1, 1, 30, 10)
    x[0, 0, 20:24, 3:6] = 1.0
    cam = gradcam(net, net[1], x, torch.tensor([0]))[0]
    y, xx = np.unravel_index(int(cam.argmax()), cam.shape)
    assert 19 <= y <= 24 and 2 <= xx <= 6


def test_works_under_inference_mode():
    """Lightning's predict loop runs in inference_mode; the ROI export calls Grad-CAM there."""
    net = _net()
    x = torch.randn(2, 1, 16, 16)
    expected = gradcam(net, net[3], x)
    with torch.inference_mode():
        x_inf = torch.randn(2, 1, 16, 16).copy_(x)
        got = gradcam(net, net[3], x_inf)
        got_with_targets = gradcam(net, net[3], x_inf, net(x_inf).argmax(1))
    assert torch.allclose(got, expected) and torch.allclose(got_with_targets, expected)
