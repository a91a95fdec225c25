"""Early and late fusion of fine-tuned backbones for whole-body CT bone age.

Paper: H.-D. Nguyen and S.-H. Kim, "Automatic Whole-body Bone Age Assessment Using Deep
Hierarchical Features" (paper 002, Sec. 4.3, Table 2): fine-tuned VGGNet (A), GoogLeNet (B)
and ResNet (C); early fusion concatenates the features of (A), (B) and (C) into one
regressor trained end to end; late fusion averages the ages predicted by the three trained
models.

What the paper leaves unsaid, and what we chose:

- paper is silent on the early-fusion regressor: chose dropout + one linear unit on the
  concatenated pooled features (``hidden=()``), the same head as its fine-tuned baselines
  ("softmax replaced by a single unit linear layer"); hidden layers are configurable.
- paper is silent on the ResNet depth: chose ResNet-50 (named in the experiment YAMLs).
- paper is silent on how early fusion treats the three different input sizes (224 for
  VGG/ResNet, 299 for Inception-style nets): one 224 input feeds all three, since every
  backbone ends in global pooling.
- paper is silent on which early layers stay frozen: configurable per backbone as
  parameter-name prefixes (``freeze``), applied only when that backbone's pretrained weights
  are given.
- late fusion averages predictions in the label's units; with members trained on the same
  training split (same target standardisation) the mean of normalised outputs is the same
  affine image of the mean age, so :class:`LateFusion` averages the members' outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["EarlyFusion", "FineTunedBackbone", "LateFusion", "freeze_parameters"]


def freeze_parameters(module: nn.Module, prefixes: Sequence[str]) -> int:
    """Freeze the parameters whose names start with one of ``prefixes``; returns how many.

    Batch-norm layers under those prefixes are kept in eval mode by :class:`EarlyFusion`.
    """
    prefixes = tuple(prefixes)
    if not prefixes:
        return 0
    names = [n for n, _ in module.named_parameters()]
    unknown = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unknown:
        raise ValueError(f"freeze prefixes {unknown} match no parameter of {type(module).__name__}; "
                         f"its first parameters are {names[:6]}")
    count = 0
    for name, p in module.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)
            count += p.numel()
    return count


def _feature_width(backbone: nn.Module) -> int:
    """Width of a backbone's pooled output: timm models with pre-logits layers (VGG's fc6/fc7 as
    ConvMlp) report it as ``head_hidden_size``, their ``num_features`` being the conv width."""
    width = getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features", None)
    if not isinstance(width, int):
        raise TypeError(f"backbone {type(backbone).__name__} has no integer num_features")
    return width


class EarlyFusion(nn.Module):
    """Pooled features of several backbones, concatenated, into one regressor (Table 2).

    With a single backbone this is that backbone's fine-tuned baseline (one linear unit).

    Args:
        backbones: backbone names for ``boneage.models.backbones.create_backbone`` (timm
            names, or "tv_googlenet"), or ready modules with ``num_features`` whose forward
            returns pooled features [B, num_features].
        pretrained_paths: one local weight file (or None) per named backbone.
        freeze: per backbone, parameter-name prefixes kept frozen when its weights are given.
        hidden: hidden FC widths of the regressor (ReLU + dropout after each).
        dropout: dropout on the concatenated features and after each hidden layer.
        in_chans: image channels.
        backbone_kwargs: extra keyword arguments per named backbone (one dict each; e.g. timm VGG's
            ``mlp_ratio`` shrinks its fc6/fc7 for tests).
    """

    def __init__(
        self,
        backbones: Sequence[str | nn.Module] = ("vgg16_bn", "tv_googlenet", "resnet50"),
        pretrained_paths: Sequence[str | None] | None = None,
        freeze: Sequence[Sequence[str]] | None = None,
        hidden: Sequence[int] = (),
        dropout: float = 0.5,
        in_chans: int = 1,
        backbone_kwargs: Sequence[dict] | None = None,
    ) -> None:
        super().__init__()
        if not backbones:
            raise ValueError("EarlyFusion needs at least one backbone")
        n = len(backbones)
        pretrained_paths = list(pretrained_paths) if pretrained_paths is not None else [None] * n
        freeze = [list(f) for f in freeze] if freeze is not None else [[] for _ in range(n)]
        kwargs = [dict(k or {}) for k in backbone_kwargs] if backbone_kwargs is not None else [{}] * n
        if len(pretrained_paths) != n or len(freeze) != n or len(kwargs) != n:
            raise ValueError(f"pretrained_paths ({len(pretrained_paths)}), freeze ({len(freeze)}) and "
                             f"backbone_kwargs ({len(kwargs)}) need one entry per backbone ({n})")
        members: list[nn.Module] = []
        for spec, path, kw in zip(backbones, pretrained_paths, kwargs):
            if isinstance(spec, nn.Module):
                members.append(spec)
            else:
                from boneage.models.backbones import create_backbone

                members.append(create_backbone(spec, in_chans=in_chans, pretrained_path=path, **kw))
        widths = [_feature_width(m) for m in members]
        self.backbones = nn.ModuleList(members)
        self._frozen_prefixes = [[] for _ in range(n)]
        for i, (prefixes, path) in enumerate(zip(freeze, pretrained_paths)):
            if path is not None and prefixes:
                freeze_parameters(self.backbones[i], prefixes)
                self._frozen_prefixes[i] = list(prefixes)
        self.num_features = sum(widths)
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        width = self.num_features
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = units
        self.regressor = nn.Sequential(*layers, nn.Linear(width, 1))

    def train(self, mode: bool = True) -> EarlyFusion:
        super().train(mode)
        for backbone, prefixes in zip(self.backbones, self._frozen_prefixes):
            for name, m in backbone.named_modules():
                if (prefixes and name.startswith(tuple(prefixes))
                        and isinstance(m, nn.modules.batchnorm._BatchNorm)):
                    m.eval()
        return self

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.flatten(m(image), 1) for m in self.backbones], dim=1)

    def forward(self, image: torch.Tensor, sex: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted age [B] (normalised units); ``sex`` is unused, as in the paper."""
        return self.regressor(self.forward_features(image)).squeeze(-1)


class LateFusion(nn.Module):
    """Mean of trained members' predictions (Table 2, "Late fusion of (A), (B) and (C)").

    Members are networks with ``forward(image, sex) -> [B]``; nothing here is trained.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("LateFusion needs at least one member")
        self.members = nn.ModuleList(members)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, sex: torch.Tensor | None = None) -> torch.Tensor:
        preds = [m(image, sex).reshape(image.shape[0]) for m in self.members]
        return torch.stack(preds, dim=0).mean(dim=0)


class FineTunedBackbone(EarlyFusion):
    """One backbone with its classifier replaced by a single linear unit (Table 2 baselines).

    The paper's fine-tuned GoogLeNet and ResNet: ImageNet weights from ``pretrained_path``,
    early layers (parameter-name prefixes ``freeze``) kept frozen, one linear output.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained_path: str | None = None,
        freeze: Sequence[str] = (),
        dropout: float = 0.0,
        in_chans: int = 1,
        backbone_kwargs: dict | None = None,
    ) -> None:
        super().__init__(backbones=[backbone], pretrained_paths=[pretrained_path], freeze=[list(freeze)],
                         hidden=(), dropout=dropout, in_chans=in_chans,
                         backbone_kwargs=[backbone_kwargs or {}])
