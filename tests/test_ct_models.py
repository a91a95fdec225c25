"""Hierarchical-feature VGG and fusion networks of the whole-body CT paper (issue 7)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from boneage.models.fusion import EarlyFusion, LateFusion
from boneage.models.hierarchical_vgg import (
    HierarchicalVGG,
    hierarchical_vgg16_bn,
    hierarchical_vgg16_bn_gap,
    vgg16_bn_regressor,
)

TINY = dict(width=1 / 16, hidden=(16, 8), side_units=8, image_size=64, global_pool_size=2)


def test_side_connection_inputs_are_block3_and_block4_pools_at_224():
    """Paper Fig. 1 at 224 input: block-3 pool 256x28x28, block-4 pool 512x14x14."""
    torch.manual_seed(0)
    net = HierarchicalVGG(side_units=1, hidden=(1,)).eval()
    with torch.no_grad():
        taps = net.forward_intermediates(torch.randn(1, 1, 224, 224))
    assert tuple(taps[2].shape[1:]) == (256, 28, 28)
    assert tuple(taps[3].shape[1:]) == (512, 14, 14)
    assert net.sides["3"].in_shape == (256, 28, 28) and net.sides["4"].in_shape == (512, 14, 14)
    # the taps are the max-pools of torchvision's vgg16_bn (features.23 / features.33)
    assert net.pool_indices[2] == 23 and net.pool_indices[3] == 33
    assert isinstance(net.features[23], nn.MaxPool2d) and isinstance(net.features[33], nn.MaxPool2d)


def test_side_connection_parameter_count_matches_eq1():
    """N(C, H, W, n_U) = C*H*W*n_U + n_U for flattened connections; C*n_U + n_U after global pooling."""
    with torch.device("meta"):
        net, gap = hierarchical_vgg16_bn(), hierarchical_vgg16_bn_gap()

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(net.sides["3"]) == 256 * 28 * 28 * 256 + 256
    assert count(net.sides["4"]) == 512 * 14 * 14 * 256 + 256
    assert count(gap.sides["3"]) == 256 * 256 + 256
    assert count(gap.sides["4"]) == 512 * 256 + 256
    # same convolutions as torchvision's vgg16_bn
    tv = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=True)
    assert count(net.features) == count(tv) - 64 * 2 * 9  # grayscale input: 1 instead of 3 channels
    assert net.num_features == 512 * 7 * 7 + 2 * 256


def test_baseline_is_vgg16_with_single_linear_output():
    with torch.device("meta"):
        base = vgg16_bn_regressor()
    assert len(base.sides) == 0 and base.num_features == 512 * 7 * 7
    assert base.head.out.out_features == 1 and base.head.out.in_features == 4096


def test_gradients_reach_every_parameter_and_output_is_per_image():
    torch.manual_seed(0)
    net = hierarchical_vgg16_bn(**TINY)
    out = net(torch.randn(3, 1, 64, 64), torch.tensor([0.0, 1.0, 0.0]))
    assert out.shape == (3,) and torch.isfinite(out).all()
    out.sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_global_pooling_variant_is_input_size_independent_and_flat_variant_says_why_not():
    gap = hierarchical_vgg16_bn_gap(**TINY).eval()
    for size in [(64, 64), (96, 48)]:
        assert gap(torch.randn(2, 1, *size)).shape == (2,)
    flat = hierarchical_vgg16_bn(**TINY).eval()
    with pytest.raises(ValueError, match="image_size"):
        flat(torch.randn(2, 1, 96, 48))


def test_side_blocks_are_configurable_and_validated():
    net = HierarchicalVGG(side_blocks=(2, 3, 4), side_units=(4, 8, 16), **{k: v for k, v in TINY.items()
                                                                           if k != "side_units"})
    assert net.num_features == net.global_features + 28
    with pytest.raises(ValueError, match="side_blocks"):
        HierarchicalVGG(side_blocks=(5,), **TINY)
    with pytest.raises(ValueError, match="side_units"):
        HierarchicalVGG(side_blocks=(3, 4), side_units=(8,), image_size=64, width=1 / 16)


def test_pretrained_file_missing_names_path_and_source(tmp_path):
    path = tmp_path / "vgg16_bn.pth"
    with pytest.raises(FileNotFoundError, match="vgg16_bn.pth.*torchvision"):
        hierarchical_vgg16_bn(**{**TINY, "width": 1.0}, pretrained_path=str(path))


def test_pretrained_torchvision_weights_load_and_early_blocks_stay_frozen(tmp_path):
    torch.manual_seed(0)
    feats = torchvision.models.vgg.make_layers(list(torchvision.models.vgg.cfgs["D"]), batch_norm=True)
    for m in feats.modules():  # non-trivial statistics to check they survive training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)
    net = hierarchical_vgg16_bn(side_units=4, hidden=(8,), image_size=32, pretrained_path=str(path),
                                pretrained_head=False, freeze_blocks=2)
    # grayscale first conv = RGB kernels summed (timm adapt_input_conv)
    torch.testing.assert_close(net.features[0].weight, feats[0].weight.sum(1, keepdim=True))
    torch.testing.assert_close(net.features[24].weight, feats[24].weight)
    net.train()
    bn_block1 = net.features[1].running_mean.clone()
    bn_block3 = net.features[15].running_mean.clone()
    net(torch.randn(2, 1, 32, 32)).sum().backward()
    frozen_end = net.pool_indices[1]
    for i, layer in enumerate(net.features):
        for p in layer.parameters():
            assert (p.grad is None) == (i <= frozen_end), i
    torch.testing.assert_close(net.features[1].running_mean, bn_block1)  # frozen BN keeps statistics
    assert not torch.equal(net.features[15].running_mean, bn_block3)  # trainable BN updates


def test_pretrained_weights_of_another_width_raise_clear_error(tmp_path):
    feats = torchvision.models.vgg.make_layers(list(torchvision.models.vgg.cfgs["D"]), batch_norm=True)
    path = tmp_path / "vgg.pth"
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, path)
    with pytest.raises(ValueError, match=r"features.0.weight \(64, 1, 3, 3\) in the file, \(4, 1, 3, 3\) here.*"
                                         "fits width 1.0"):
        hierarchical_vgg16_bn(**TINY, pretrained_path=str(path), pretrained_head=False)


def test_late_fusion_equals_mean_of_members_predictions():
    torch.manual_seed(0)
    members = [hierarchical_vgg16_bn(**TINY).eval() for _ in range(3)]
    x, sex = torch.randn(4, 1, 64, 64), torch.tensor([0.0, 1.0, 1.0, 0.0])
    with torch.no_grad():
        preds = torch.stack([m(x, sex) for m in members])
        fused = LateFusion(members).eval()(x, sex)
    assert not torch.allclose(preds[0], preds[1])
    torch.testing.assert_close(fused, preds.mean(0))
    torch.testing.assert_close(fused, (preds[0] + preds[1] + preds[2]) / 3)


class _PooledCNN(nn.Module):
    """A small backbone with the create_backbone interface (pooled features, num_features)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = channels

    def forward(self, x):
        return self.body(self.stem(x))


def test_early_fusion_concatenates_backbone_features_and_trains_all():
    torch.manual_seed(0)
    nets = [_PooledCNN(4), _PooledCNN(6), _PooledCNN(8)]
    fusion = EarlyFusion(backbones=nets, hidden=(5,))
    assert fusion.num_features == 18
    x = torch.randn(3, 1, 16, 16)
    feats = fusion.forward_features(x)
    torch.testing.assert_close(feats[:, 4:10], nets[1](x))
    out = fusion(x)
    assert out.shape == (3,)
    out.sum().backward()
    assert all(p.grad is not None for p in fusion.parameters())


def test_early_fusion_freezes_early_layers_only_with_pretrained_weights():
    nets = [_PooledCNN(4), _PooledCNN(6)]
    fusion = EarlyFusion(backbones=nets, pretrained_paths=["weights_a.pth", None],
                         freeze=[["stem"], ["stem"]])
    assert not any(p.requires_grad for p in fusion.backbones[0].stem.parameters())
    assert all(p.requires_grad for p in fusion.backbones[1].stem.parameters())
    fusion.train()
    assert not fusion.backbones[0].stem[1].training and fusion.backbones[1].stem[1].training
    with pytest.raises(ValueError, match="match no parameter"):
        EarlyFusion(backbones=[_PooledCNN(4)], pretrained_paths=["w.pth"], freeze=[["layer9"]])

