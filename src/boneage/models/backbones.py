"""Backbone factory: timm models by name (and torchvision's GoogLeNet), offline only.

``create_backbone(name, in_chans=1, pretrained_path=None)`` returns a feature extractor whose
forward gives pooled features ``[B, num_features]``. Pretrained weights come only from a local
file (timm: ``pretrained_cfg_overlay=dict(file=...)``; torchvision: a state dict); nothing is
downloaded. A missing file is a FileNotFoundError that says where such weights come from.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

TORCHVISION = {"tv_googlenet"}


def _missing(path: str | Path, name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"pretrained weights for backbone '{name}' not found at {path}. This framework never downloads: "
        f"fetch the file once on a machine with internet (e.g. timm.create_model('{name}', pretrained=True) and "
        "save its state_dict, or the model's safetensors/bin file from the Hugging Face hub "
        f"'timm/{name}'), copy it here and give its path, or set pretrained_path: null to train from scratch.")


class TorchvisionGoogLeNet(nn.Module):
    """torchvision GoogLeNet without aux heads, as a pooled feature extractor."""

    def __init__(self, in_chans: int = 1, pretrained_path: str | None = None) -> None:
        super().__init__()
        from torchvision.models import googlenet

        net = googlenet(weights=None, aux_logits=False, init_weights=pretrained_path is None)
        if pretrained_path:
            state = torch.load(pretrained_path, map_location="cpu", weights_only=True)
            net.load_state_dict({k: v for k, v in state.items() if not k.startswith("aux")}, strict=False)
        if in_chans != 3:  # average the RGB filters of the stem (timm's habit for 1-channel input)
            conv = net.conv1.conv
            new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
            with torch.no_grad():
                new.weight.copy_(conv.weight.mean(1, keepdim=True).repeat(1, in_chans, 1, 1))
            net.conv1.conv = new
        net.transform_input = False
        net.fc = nn.Identity()
        net.dropout = nn.Identity()
        self.net = net
        self.num_features = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def create_backbone(name: str, in_chans: int = 1, pretrained_path: str | None = None, **kwargs) -> nn.Module:
    """A pooled feature extractor (``.num_features``) by timm name, or ``tv_googlenet``."""
    if pretrained_path and not Path(pretrained_path).is_file():
        raise _missing(pretrained_path, name)
    if name in TORCHVISION:
        return TorchvisionGoogLeNet(in_chans, pretrained_path)
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise ValueError(f"unknown backbone {name!r}: use a timm model name (timm.list_models()) or one of "
                         f"{sorted(TORCHVISION)}")
    overlay = {"pretrained_cfg_overlay": {"file": str(pretrained_path)}} if pretrained_path else {}
    model = timm.create_model(name, pretrained=bool(pretrained_path), in_chans=in_chans, num_classes=0, **overlay,
                              **kwargs)
    # Models with a pre-logits head (MobileNetV3, EfficientNet-style conv_head) return
    # head_hidden_size features, not num_features: expose what forward really returns.
    model.num_features = getattr(model, "head_hidden_size", None) or model.num_features
    return model
