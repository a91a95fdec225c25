"""Batched Grad-CAM (boneage.analysis.gradcam) against the grad-cam package."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from boneage.analysis.gradcam import grad_cam, overlay, save_overlay_grid
from boneage.models.hierarchical_vgg import hierarchical_vgg16_bn


def _tiny_vgg() -> nn.Module:
    torch.manual_seed(0)
    net = hierarchical_vgg16_bn(width=1 / 16, hidden=(16,), side_units=8, image_size=64, global_pool_size=2)
    # non-trivial batch-norm statistics so the maps are not flat, and FC weights of order one so
    # the maps are far above the 1e-7 guard both implementations add to the min-max denominator
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.weight.data.uniform_(0.5, 1.5)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0 / m.in_features ** 0.5)
    return net.eval()


class _RegressionTarget:
    """The grad-cam package's target for a scalar regression output."""

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output


def test_batched_grad_cam_matches_grad_cam_package_on_hierarchical_vgg():
    net = _tiny_vgg()
    images = torch.randn(4, 1, 64, 64)
    layer = net.features[42]  # last ReLU of block 5
    ours = grad_cam(net, layer, images)
    with GradCAM(model=net, target_layers=[layer]) as cam:
        ref = cam(input_tensor=images, targets=[_RegressionTarget() for _ in range(4)])
    assert ours.shape == (4, 64, 64)
    assert ref.std() > 0.05  # a real map, not a constant
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4)


def test_grad_cam_on_a_block4_layer_by_name_and_with_a_score_function():
    net = _tiny_vgg()
    images = torch.randn(2, 1, 64, 64)
    ours = grad_cam(net, "features.32", images, targets=lambda out: -out)
    with GradCAM(model=net, target_layers=[net.features[32]]) as cam:
        ref = cam(input_tensor=images, targets=[lambda o: -o for _ in range(2)])
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4)


def test_grad_cam_class_targets_match_package_classifier_targets():
    torch.manual_seed(1)
    clf = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    with torch.no_grad():  # maps far above the 1e-7 guard of the min-max denominator
        clf[-1].weight.mul_(1e4)
    images = torch.randn(3, 1, 20, 24)
    classes = [2, 0, 1]
    ours = grad_cam(clf, clf[3], images, targets=classes)
    with GradCAM(model=clf, target_layers=[clf[3]]) as cam:
        ref = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])
    assert ours.shape == (3, 20, 24)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4)


def test_grad_cam_leaves_parameter_grads_and_mode_untouched():
    net = _tiny_vgg().train()
    grad_cam(net, net.features[42], torch.randn(2, 1, 64, 64), size=(10, 5))
    assert net.training
    assert all(p.grad is None for p in net.parameters())


def test_grad_cam_bad_layer_and_bad_score_raise_clear_errors():
    net = _tiny_vgg()
    with pytest.raises(ValueError, match="not a submodule"):
        grad_cam(net, "features.99", torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="one scalar per image"):
        grad_cam(net, net.features[42], torch.randn(2, 1, 64, 64), targets=lambda out: out.sum())


def test_overlay_is_rgb_uint8_with_heat_where_the_map_is_high():
    img = np.zeros((8, 4))
    cam = np.zeros((8, 4))
    cam[:4] = 1.0
    rgb = overlay(img, cam)
    assert rgb.shape == (8, 4, 3) and rgb.dtype == np.uint8
    assert rgb[:4, :, 0].mean() > rgb[4:, :, 0].mean()  # jet: high = red


def test_overlay_grid_figure_is_written(tmp_path):
    net = _tiny_vgg()
    images = torch.randn(3, 1, 64, 64)
    cams = grad_cam(net, net.features[42], images)
    path = save_overlay_grid(images, cams, tmp_path / "figs" / "gradcam.png", titles=["a", "b", "c"], ncols=2)
    assert path.is_file() and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="same"):
        save_overlay_grid(images, cams[:, :10], tmp_path / "x.png")
