"""Networks of the scintigraphy ROI paper: stage 2 as configured, stage 1 classifier, two-view baseline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from boneage.models.regressor import SexAwareRegressor
from boneage.models.roi import AgeGroupClassifier, TwoViewRegressor, _feature_width

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _network_args(exp: str) -> dict:
    cfg = yaml.safe_load((EXPERIMENTS / f"{exp}.yaml").read_text())
    return cfg["model"]["init_args"]["network"]["init_args"]


def _all_params_get_grads(net: nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    # (timm zero-initialises the last BN of each residual block, so some grads are exactly 0 at init)
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_stage2_is_the_paper_network():
    """InceptionV3 + GAP; sex -> FC 32; concat; FC 1024 + ReLU + dropout 0.2, twice; linear output."""
    args = _network_args("roi_regressor_scinti")
    net = SexAwareRegressor(**args).eval()
    assert type(net.backbone).__name__ == "InceptionV3" and net.backbone.num_features == 2048
    assert isinstance(net.sex_fc[0], nn.Linear) and net.sex_fc[0].out_features == 32
    linears = [m for m in net.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048 + 32, 1024), (1024, 1024)]
    assert [m.p for m in net.head if isinstance(m, nn.Dropout)] == [0.2, 0.2]
    assert sum(isinstance(m, nn.ReLU) for m in net.head) == 2
    assert (net.out.in_features, net.out.out_features) == (1024, 1)
    image = torch.randn(2, 1, 107, 107)  # any size from 75 up; the YAML uses 299
    sex = torch.tensor([0.0, 1.0], requires_grad=True)
    out = net(image, sex)
    assert out.shape == (2,)
    (grad,) = torch.autograd.grad(out.sum(), sex)
    assert grad.abs().sum() > 0  # the sex input reaches the output
    no_sex = SexAwareRegressor(**_network_args("roi_regressor_nosex_scinti"))
    assert not hasattr(no_sex, "sex_fc") and no_sex.head[0].in_features == 2048


def test_stage2_tiny_variant_trains_every_parameter():
    net = SexAwareRegressor(**{**_network_args("roi_regressor_scinti"), "backbone": "test_resnet",
                               "hidden": [16, 16]})
    out = net(torch.randn(4, 1, 64, 64), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    _all_params_get_grads(net, out.pow(2).mean())


def test_stage1_classifier_is_resnet50_gap_fc4():
    net = AgeGroupClassifier(backbone="resnet50", num_classes=4)
    assert net.cam_layer_name == "layer4" and net.cam_layer is net.backbone.layer4
    assert (net.fc.in_features, net.fc.out_features) == (2048, 4)
    with torch.no_grad():
        logits = net.eval()(torch.randn(1, 1, 320, 96))  # 1000 x 300 in the YAML
    assert logits.shape == (1, 4)
    with pytest.raises(ValueError, match="layer9"):
        AgeGroupClassifier(backbone="test_resnet", cam_layer="layer9")


def test_stage1_tiny_variant_trains_every_parameter():
    net = AgeGroupClassifier(backbone="test_resnet", num_classes=4)
    logits = net(torch.randn(4, 1, 96, 32))
    _all_params_get_grads(net, nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])))


def test_two_view_regressor_sees_each_half_with_its_own_backbone():
    torch.manual_seed(0)
    net = TwoViewRegressor(backbone="test_resnet", use_sex=True, hidden=[16]).eval()
    image = torch.randn(2, 1, 64, 48)
    sex = torch.tensor([0.0, 1.0])
    acts = {}

    def keep(name):
        def hook(_m, inputs, _o):
            acts[name] = inputs[0]
        return hook

    net.anterior.register_forward_hook(keep("anterior"))
    net.posterior.register_forward_hook(keep("posterior"))
    with torch.no_grad():
        net(image, sex)
    assert torch.equal(acts["anterior"], image[..., :24]) and torch.equal(acts["posterior"], image[..., 24:])
    assert net.anterior is not net.posterior
    net.train()
    _all_params_get_grads(net, net(image, sex).pow(2).mean())
    with pytest.raises(ValueError, match="use_sex=True"):
        net(image)


def test_feature_width_uses_vgg_pre_logits():
    class Stub(nn.Module):
        num_features, head_hidden_size = 512, 4096

    assert _feature_width(Stub()) == 4096
    assert _feature_width(AgeGroupClassifier(backbone="test_resnet").backbone) == 96
