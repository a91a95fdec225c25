"""Pretrained weights as users download them (issue 18): every backbone of the papers, built at its
real size with random weights, saved locally in the formats users have (torchvision ``.pth``, timm
``.safetensors`` / ``.bin``, a Lightning checkpoint of this project), loaded through an experiment
YAML's ``pretrained_path``; every tensor must arrive, and a file that does not fit is an error
naming its keys. Nothing downloads.

Fast: a torchvision GoogLeNet file, a timm Xception file, this project's checkpoints and the
errors. Slow: VGG16, VGG16-BN, VGG19, ResNet-50, Inception-V3, Inception-V4, Xception (.bin), the
hierarchical VGG's fc6/fc7 and the early-fusion YAML's three files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import timm
import torch
import torchvision
import yaml
from safetensors.torch import save_file
from torch import nn

from boneage.runs import instantiate
from data_modules.base import DataError

ROOT = Path(__file__).resolve().parents[1]


def network(experiment: str, **init_args) -> nn.Module:
    """The network section of ``experiments/<experiment>.yaml``, with ``init_args`` overridden."""
    spec = yaml.safe_load((ROOT / "experiments" / f"{experiment}.yaml").read_text())["model"]["init_args"]["network"]
    spec["init_args"].update(init_args)
    return instantiate(spec)


def randomised(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state with every tensor moved by its own offset (batch-norm statistics and
    counters included), so that no tensor can match the loading network's initialisation, nor
    another tensor of the file, by chance."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, value in enumerate(state.values()):
        value.add_(0.01 * (i + 1) if value.is_floating_point() else i + 1)
    return state


def save(state: dict[str, torch.Tensor], path: Path) -> str:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


def assert_arrived(module: nn.Module, source: dict[str, torch.Tensor], first_conv: str,
                   names: dict[str, str] | None = None) -> None:
    """Every tensor of ``module`` equals the file's (``names``: module key -> file key where they
    differ); the first convolution holds the file's RGB kernels summed to one channel."""
    names = names or {}
    own = module.state_dict()
    assert own, "no tensors"
    for key, value in own.items():
        file_key = names.get(key, key)
        if key.endswith("num_batches_tracked") and file_key not in source:
            continue
        want = source[file_key]
        if key == f"{first_conv}.weight":
            assert want.shape[1] == 3 and value.shape[1] == 1
            want = want.sum(1, keepdim=True)
        assert torch.equal(value, want.reshape(value.shape)), key


# ------------------------------------------------------------------------------ fast
@pytest.fixture(scope="module")
def tv_googlenet(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    """torchvision's GoogLeNet as its ``googlenet-1378be20.pth`` holds it: aux1, aux2 and fc included."""
    state = randomised(torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False))
    return save(state, tmp_path_factory.mktemp("w") / "googlenet-1378be20.pth"), state


def test_torchvision_googlenet_file_arrives_whole_through_ct_googlenet_yaml(tv_googlenet):
    """The file's aux1/aux2 and fc are dropped by name, every other tensor loads exactly (this
    backbone used to load with strict=False)."""
    path, state = tv_googlenet
    assert any(k.startswith("aux1.") for k in state)
    net = network("ct_googlenet", pretrained_path=path)
    assert_arrived(net.backbones[0].net, state, "conv1.conv")
    assert not any(p.requires_grad for p in net.backbones[0].net.conv3.parameters())  # the YAML's frozen stem
    assert all(p.requires_grad for p in net.backbones[0].net.inception3a.parameters())


def test_timm_xception_safetensors_arrives_whole_through_xception_rsna_yaml(tmp_path):
    state = randomised(timm.create_model("legacy_xception"))  # the hub's model.safetensors: 3 channels, fc
    path = save(state, tmp_path / "model.safetensors")
    net = network("xception_rsna", pretrained_path=path)
    assert_arrived(net.backbone, state, "conv1")


def test_files_that_do_not_fit_name_their_keys(tv_googlenet, tmp_path):
    path, state = tv_googlenet
    lacking = {k: v for k, v in state.items() if k != "inception4c.branch2.1.bn.running_var"}
    with pytest.raises(DataError, match=r"does not fit 'tv_googlenet' exactly.*: missing 1 keys: "
                                        r"inception4c.branch2.1.bn.running_var$"):
        network("ct_googlenet", pretrained_path=save(lacking, tmp_path / "lacking.pth"))
    extra = {**state, "inception6a.branch1.conv.weight": torch.zeros(3)}
    with pytest.raises(DataError, match="unexpected 1 keys: inception6a.branch1.conv.weight$"):
        network("ct_googlenet", pretrained_path=save(extra, tmp_path / "extra.pth"))
    narrow = {k: v[:, :100] if k == "inception5b.branch1.conv.weight" else v for k, v in state.items()}
    with pytest.raises(DataError, match=r"1 shapes differ: inception5b.branch1.conv.weight \(384, 100, 1, 1\) in the "
                                        r"file, \(384, 832, 1, 1\) here$"):
        network("ct_googlenet", pretrained_path=save(narrow, tmp_path / "narrow.pth"))


def test_a_file_of_another_architecture_or_no_weights_file_says_so(tv_googlenet, tmp_path):
    with pytest.raises(DataError, match=r"googlenet-1378be20.pth holds weights of another architecture, "
                                        r"not 'legacy_xception'") as err:
        network("xception_rsna", pretrained_path=tv_googlenet[0])
    assert "\n" not in str(err.value)
    (tmp_path / "page.pth").write_text("<html>404 Not Found</html>")  # a failed download
    with pytest.raises(DataError, match=r"cannot read weights file .*page.pth"):
        network("ct_googlenet", pretrained_path=str(tmp_path / "page.pth"))


def _lightning_checkpoint(system: pl.LightningModule, path: Path) -> str:
    """A checkpoint as Lightning writes it (state_dict, hyper-parameters, loops ...)."""
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", devices=1,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(system)
    trainer.save_checkpoint(path)
    return str(path)


def test_lightning_checkpoint_of_this_project_gives_its_backbone(tv_googlenet, tmp_path):
    """A ct_googlenet fit's checkpoint starts another ct_googlenet fit: the backbone is found by name
    in the system's state (network.backbones.0.net.*)."""
    from boneage.systems.regression import AgeRegressor

    system = AgeRegressor(network("ct_googlenet", pretrained_path=tv_googlenet[0]))
    with torch.no_grad():
        for p in system.network.parameters():
            p.add_(1.0)  # as after fine-tuning
    path = _lightning_checkpoint(system, tmp_path / "best-epoch041.ckpt")
    net = network("ct_googlenet", pretrained_path=path)
    prefix = "network.backbones.0.net."
    trained = {k[len(prefix):]: v for k, v in system.state_dict().items() if k.startswith(prefix)}
    assert_arrived(net.backbones[0].net, trained, first_conv="")


def test_lightning_checkpoint_of_a_hierarchical_vgg_gives_the_whole_network(tmp_path):
    from boneage.models.hierarchical_vgg import hierarchical_vgg16_bn
    from boneage.systems.regression import AgeRegressor

    tiny = dict(width=1 / 16, hidden=(16, 8), side_units=8, image_size=64, global_pool_size=2)
    system = AgeRegressor(hierarchical_vgg16_bn(**tiny))
    trained = randomised(system.network)
    system.network.load_state_dict(trained)
    path = _lightning_checkpoint(system, tmp_path / "last.ckpt")
    net = hierarchical_vgg16_bn(**tiny, pretrained_path=path, freeze_blocks=0)
    assert_arrived(net, trained, first_conv="")
    with pytest.raises(DataError, match="does not fit 'this HierarchicalVGG'.*sides.3.fc.weight"):
        hierarchical_vgg16_bn(**{**tiny, "side_units": 4}, pretrained_path=path)


# ------------------------------------------------------------------------------ slow
TV_VGG = {"pre_logits.fc1.weight": "classifier.0.weight", "pre_logits.fc1.bias": "classifier.0.bias",
          "pre_logits.fc2.weight": "classifier.3.weight", "pre_logits.fc2.bias": "classifier.3.bias"}


def _tv(name: str, **kw) -> dict[str, torch.Tensor]:
    return randomised(getattr(torchvision.models, name)(weights=None, **kw))


def _timm(name: str) -> dict[str, torch.Tensor]:
    return randomised(timm.create_model(name))


# (experiment, YAML overrides, backbone attribute(s), source state maker, file name, first conv, renames)
CASES = {
    "resnet50 torchvision .pth (CT (C))": ("ct_resnet50", {}, ["backbones"], lambda: _tv("resnet50"),
                                           "resnet50-0676ba61.pth", "conv1", {}),
    "vgg16 torchvision .pth (ROI multi-input VGG16)": (
        "roi_mivgg16_scinti", {}, ["anterior", "posterior"], lambda: _tv("vgg16"),
        "vgg16-397923af.pth", "features.0", TV_VGG),
    "vgg16 timm .safetensors": ("roi_mivgg16_scinti", {}, ["anterior"], lambda: _timm("vgg16"),
                                "model.safetensors", "features.0", {}),
    "vgg16_bn torchvision .pth (TJ-Net baseline)": (
        "tjnet_rsna_baseline", {"backbone": "vgg16_bn"}, ["backbone"], lambda: _tv("vgg16_bn"),
        "vgg16_bn-6c64b313.pth", "features.0", TV_VGG),
    "vgg19 torchvision .pth (ROI baseline)": ("roi_vgg19_scinti", {}, ["backbone"], lambda: _tv("vgg19"),
                                              "vgg19-dcbb9e9d.pth", "features.0", TV_VGG),
    "vgg19 timm .bin": ("roi_vgg19_scinti", {}, ["backbone"], lambda: _timm("vgg19"), "pytorch_model.bin",
                        "features.0", {}),
    "resnet50 timm .safetensors (ROI localizer)": ("roi_localizer_scinti", {}, ["backbone"],
                                                   lambda: _timm("resnet50"), "model.safetensors", "conv1", {}),
    "inception_v3 torchvision .pth with AuxLogits (RSNA regressor)": (
        "regressor_rsna", {}, ["backbone"], lambda: _tv("inception_v3", aux_logits=True, init_weights=False),
        "inception_v3_google-0cc3c7bd.pth", "Conv2d_1a_3x3.conv", {}),
    "inception_v3 timm .safetensors (ROI stage 2)": ("roi_regressor_scinti", {}, ["backbone"],
                                                     lambda: _timm("inception_v3"), "model.safetensors",
                                                     "Conv2d_1a_3x3.conv", {}),
    "inception_v4 timm .safetensors (TJ-Net baseline)": (
        "tjnet_rsna_baseline", {"backbone": "inception_v4"}, ["backbone"], lambda: _timm("inception_v4"),
        "model.safetensors", "features.0.conv", {}),
    "inception_v4 timm .bin": ("tjnet_rsna_baseline", {"backbone": "inception_v4"}, ["backbone"],
                               lambda: _timm("inception_v4"), "pytorch_model.bin", "features.0.conv", {}),
    "legacy_xception timm .bin (ROI baseline)": ("roi_xception_scinti", {}, ["backbone"],
                                                 lambda: _timm("legacy_xception"), "pytorch_model.bin", "conv1", {}),
}


@pytest.mark.slow  # reason: real-size VGG16/19 and Inception files (0.1-0.6 GB each), about 6 min in all here
@pytest.mark.parametrize("case", list(CASES))
def test_every_backbone_of_the_papers_loads_its_files_exactly(case, tmp_path):
    experiment, overrides, attrs, make, filename, first_conv, renames = CASES[case]
    state = make()
    path = save(state, tmp_path / filename)
    net = network(experiment, **overrides, pretrained_path=path)
    for attr in attrs:
        module = getattr(net, attr)
        assert_arrived(module[0] if isinstance(module, nn.ModuleList) else module, state, first_conv, renames)


@pytest.mark.slow  # reason: the full hierarchical VGG (about 200 M parameters) and its files, about 1.5 min
@pytest.mark.parametrize("fmt", ["torchvision", "timm"])
def test_hierarchical_vgg_takes_features_fc6_and_fc7_from_vgg16_bn_files(fmt, tmp_path):
    """ct_hvgg (torchvision vgg16_bn-6c64b313.pth) and ct_vgg16 (timm vgg16_bn.tv_in1k safetensors):
    every convolution and batch norm, fc6 (the global-feature columns) and fc7 from the file."""
    if fmt == "torchvision":
        state, experiment = _tv("vgg16_bn"), "ct_hvgg"
        path = save(state, tmp_path / "vgg16_bn-6c64b313.pth")
        fc6, fc7 = state["classifier.0.weight"], state["classifier.3.weight"]
        fc6_b, fc7_b = state["classifier.0.bias"], state["classifier.3.bias"]
    else:
        state, experiment = _timm("vgg16_bn"), "ct_vgg16"
        path = save(state, tmp_path / "model.safetensors")
        fc6, fc7 = state["pre_logits.fc1.weight"].flatten(1), state["pre_logits.fc2.weight"].flatten(1)
        fc6_b, fc7_b = state["pre_logits.fc1.bias"], state["pre_logits.fc2.bias"]
    net = network(experiment, pretrained_path=path)
    assert_arrived(net.features, {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")},
                   first_conv="0")
    first, second = net.head.hidden[0], net.head.hidden[3]
    assert torch.equal(first.weight[:, :net.global_features], fc6) and torch.equal(first.bias, fc6_b)
    assert torch.equal(second.weight, fc7) and torch.equal(second.bias, fc7_b)
    if net.side_blocks:  # the side connections' fc6 columns start random, as the paper's new connections
        assert first.weight[:, net.global_features:].std() < 0.1
    with pytest.raises(DataError, match=r"classifier.0.weight \(4096, 25088\) in the file, \(1024, 25088\) here"
                                        r".*set pretrained_head: false"):
        network(experiment, pretrained_path=path, hidden=[1024, 1024])


@pytest.mark.slow  # reason: VGG16-BN, GoogLeNet and ResNet-50 at full size with their files, about 1 min
def test_early_fusion_yaml_loads_its_three_files(tmp_path):
    """ct_early_fusion's three files as named in the YAML: timm vgg16_bn and resnet50 safetensors,
    torchvision GoogLeNet."""
    vgg, googlenet, resnet = (_timm("vgg16_bn"), _tv("googlenet", aux_logits=True, init_weights=False),
                              _timm("resnet50"))
    paths = [save(vgg, tmp_path / "vgg16_bn_tv_in1k.safetensors"),
             save(googlenet, tmp_path / "googlenet-1378be20.pth"),
             save(resnet, tmp_path / "resnet50_tv_in1k.safetensors")]
    net = network("ct_early_fusion", pretrained_paths=paths)
    assert_arrived(net.backbones[0], vgg, "features.0")
    assert_arrived(net.backbones[1].net, googlenet, "conv1.conv")
    assert_arrived(net.backbones[2], resnet, "conv1")
