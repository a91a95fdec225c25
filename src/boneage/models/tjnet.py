"""TJ-Net: multi-scale attention-enhanced bone-age classifier with joint sex learning.

Paper: W. Tang, G. Wu, G. Shen, "Automatic Radiographic Bone Age Assessment Using Deep Joint
Learning with Attention Modules" (TJ-Net). Blocks 1-4 extract features with three CBAMs, two
Inception-ResNet modules (IncRes1, IncRes2) and two Inception modules (Inception1, Inception2);
blocks 1-2 use small 3x3 kernels. Block 5 fuses multi-scale features for a sex classifier
(FC 256, softmax; training only). Block 6: sex input -> FC 64, concatenated with the image
features, FC 512, FC 256, softmax over age classes (77 x 3 months for RSNA).

The paper's Fig. 2 (channel counts, wiring) is not in the text. Paper is silent, chose:

- Block 1 (stem, 3x3 only): conv3x3/2 (32), conv3x3 (32), conv3x3 (64), maxpool3x3/2:
  500 -> 125 px. No CBAM here (low-level features; cheapest at the highest resolution).
- Block 2 (3x3 only): conv3x3 (96), conv3x3 (128), maxpool3x3/2, CBAM1: 125 -> 63 px.
- Block 3: IncRes1 (128), Inception1/2 (256), CBAM2: 63 -> 32 px.
- Block 4: IncRes2 (256), Inception2/2 (512), CBAM3: 32 -> 16 px.
  So the three CBAMs close blocks 2, 3 and 4, and block 4's output (the paper's Fig. 5 heat
  maps) is the attended feature map.
- Block 5 fuses the global-average-pooled outputs of blocks 2, 3 and 4 (128+256+512 features,
  the "multi-scale features"), then FC 256 + ReLU + dropout, then 2 sex logits.
- Block 6 uses the global-average-pooled block-4 features as "image features"; sex (0/1) ->
  FC 64 + ReLU; concat -> FC 512 -> FC 256 (ReLU, dropout 0.5 after each; the paper is silent
  on dropout, chose 0.5 as in the RSNA winner's dense head) -> age-class logits.
- Softmax is left to the loss (logits are returned).

Ablation flags: ``use_cbam`` (CBAMs replaced by identity), ``incres_shortcut`` (IncRes without
the residual shortcut), ``joint_learning`` (no block 5, so no sex logits and no sex loss).
``width`` multiplies every channel count and ``in_chans`` is 1 (grayscale) by default, so tests
run a tiny variant; any input size works (global pooling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from boneage.nn.cbam import CBAM
from boneage.nn.inception import Inception1, Inception2, IncRes1, IncRes2, conv_bn

__all__ = ["BackboneAgeClassifier", "TJNet", "tjnet", "tjnet_tiny"]


def _w(channels: int, width: float, minimum: int = 4) -> int:
    """Scale a channel count by the width multiplier (at least ``minimum``)."""
    return max(minimum, int(round(channels * width)))


class TJNet(nn.Module):
    """TJ-Net. ``forward(image, sex)`` returns age logits, or ``(age_logits, sex_logits)`` when
    ``joint_learning`` is on; ``predict(image, sex)`` returns age logits only (block 5 discarded,
    as at test time in the paper).

    Args:
        num_classes: number of age classes (77 for RSNA in 3-month classes; 23 for yearly
            classes 0-22 of the Tongji-like data).
        width: channel width multiplier (1.0 = the sizes listed in the module docstring).
        in_chans: image channels (1 for radiographs).
        use_cbam: keep the three CBAMs (ablation: False).
        incres_shortcut: keep the IncRes residual shortcuts (ablation: False).
        joint_learning: build block 5, the sex classifier (ablation: False).
        sex_units: width of the sex-input layer of block 6 (paper: 64).
        age_hidden: dense layers of block 6 (paper: 512, 256).
        sex_hidden: dense layer of block 5 (paper: 256).
        dropout: dropout after each hidden dense layer.
        cbam_reduction: CBAM channel-gate reduction ratio.
    """

    def __init__(self, num_classes: int = 77, width: float = 1.0, in_chans: int = 1,
                 use_cbam: bool = True, incres_shortcut: bool = True, joint_learning: bool = True,
                 sex_units: int = 64, age_hidden: Sequence[int] = (512, 256), sex_hidden: int = 256,
                 dropout: float = 0.5, cbam_reduction: int = 16) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.use_cbam = use_cbam
        self.incres_shortcut = incres_shortcut
        self.joint_learning = joint_learning
        c1a, c1, c2a, c2 = _w(32, width), _w(64, width), _w(96, width), _w(128, width)
        c3, c4 = _w(256, width), _w(512, width)

        def attention(ch: int) -> nn.Module:
            return CBAM(ch, reduction=cbam_reduction) if use_cbam else nn.Identity()

        block1 = nn.Sequential(conv_bn(in_chans, c1a, 3, 2), conv_bn(c1a, c1a, 3), conv_bn(c1a, c1, 3),
                               nn.MaxPool2d(3, 2, padding=1))
        block2 = nn.Sequential(conv_bn(c1, c2a, 3), conv_bn(c2a, c2, 3), nn.MaxPool2d(3, 2, padding=1),
                               attention(c2))
        block3 = nn.Sequential(IncRes1(c2, shortcut=incres_shortcut), Inception1(c2, c3, stride=2),
                               attention(c3))
        block4 = nn.Sequential(IncRes2(c3, shortcut=incres_shortcut), Inception2(c3, c4, stride=2),
                               attention(c4))
        self.blocks = nn.ModuleList([block1, block2, block3, block4])
        self.feature_channels = [c1, c2, c3, c4]
        self.num_features = c4
        self.pool = nn.AdaptiveAvgPool2d(1)

        # Block 5: multi-scale fusion (pooled blocks 2-4) -> FC -> sex logits.
        self.block5 = (nn.Sequential(nn.Linear(c2 + c3 + c4, sex_hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(sex_hidden, 2))
                       if joint_learning else None)
        # Block 6: sex input -> FC 64; concat image features; FC 512, FC 256; age logits.
        self.sex_fc = nn.Sequential(nn.Linear(1, sex_units), nn.ReLU())
        layers: list[nn.Module] = []
        prev = c4 + sex_units
        for h in age_hidden:
            layers += [nn.Linear(prev, h), nn.ReLU(), nn.Dropout(dropout)]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.age_head = nn.Sequential(*layers)
        self.frozen_blocks = 0

    # --- features -------------------------------------------------------------------------
    def forward_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after blocks 1, 2, 3 and 4."""
        feats, x = [], image
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats

    def age_logits(self, feats: list[torch.Tensor], sex: torch.Tensor) -> torch.Tensor:
        """Block 6 on the block-4 features and the sex input (1 male, 0 female)."""
        s = self.sex_fc(sex.reshape(-1, 1).to(feats[-1].dtype))
        return self.age_head(torch.cat([self.pool(feats[-1]).flatten(1), s], dim=1))

    def sex_logits(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Block 5: fused multi-scale features -> 2 sex logits (female, male)."""
        if self.block5 is None:
            raise RuntimeError("this TJNet was built with joint_learning=False: it has no sex classifier")
        fused = torch.cat([self.pool(f).flatten(1) for f in feats[1:]], dim=1)
        return self.block5(fused)

    def forward(self, image: torch.Tensor, sex: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feats = self.forward_features(image)
        age = self.age_logits(feats, sex)
        if self.block5 is None:
            return age
        return age, self.sex_logits(feats)

    def predict(self, image: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        """Age logits only (block 5 discarded)."""
        return self.age_logits(self.forward_features(image), sex)

    # --- transfer learning ----------------------------------------------------------------
    def freeze_blocks(self, k: int) -> None:
        """Freeze blocks 1..k (0 = none): no gradients, and their batch-norm statistics stay
        fixed (those blocks are kept in eval mode, also after ``.train()``)."""
        if not 0 <= k <= len(self.blocks):
            raise ValueError(f"freeze k must be in 0..{len(self.blocks)}, got {k}")
        self.frozen_blocks = k
        for i, block in enumerate(self.blocks):
            for p in block.parameters():
                p.requires_grad_(i >= k)
        self.train(self.training)

    def train(self, mode: bool = True) -> TJNet:
        super().train(mode)
        for block in self.blocks[: self.frozen_blocks]:
            block.eval()
        return self

    def cbam_modules(self) -> list[CBAM]:
        """The CBAMs closing blocks 2, 3, 4 (empty when ``use_cbam`` is False)."""
        return [m for m in self.modules() if isinstance(m, CBAM)]


def tjnet(**kwargs) -> TJNet:
    """Paper-size TJ-Net (width 1.0)."""
    return TJNet(**kwargs)


def tjnet_tiny(**kwargs) -> TJNet:
    """A tiny TJ-Net (width 1/8) for tests and the CPU demo."""
    kwargs.setdefault("width", 0.125)
    kwargs.setdefault("sex_units", 8)
    kwargs.setdefault("age_hidden", (32, 32))
    kwargs.setdefault("sex_hidden", 16)
    return TJNet(**kwargs)


class BackboneAgeClassifier(nn.Module):
    """The paper's baselines (Table 1): a timm backbone (VGG16, Inception V3/V4, ResNet50) with
    TJ-Net's block 6, i.e. the same separate sex input (FC 64) and dense classification head
    (FC 512, FC 256, age-class logits). ``forward(image, sex)`` returns age logits.

    Args:
        backbone: timm name (``vgg16_bn``, ``inception_v3``, ``inception_v4``, ``resnet50``) or any
            name :func:`boneage.models.backbones.create_backbone` accepts.
        num_classes: number of age classes.
        pretrained_path: local weights file (nothing is downloaded); None trains from scratch.
        in_chans, sex_units, age_hidden, dropout: as in :class:`TJNet`.
    """

    def __init__(self, backbone: str = "resnet50", num_classes: int = 77, pretrained_path: str | None = None,
                 in_chans: int = 1, sex_units: int = 64, age_hidden: Sequence[int] = (512, 256),
                 dropout: float = 0.5, **backbone_kwargs) -> None:
        super().__init__()
        from boneage.models.backbones import create_backbone

        self.num_classes = num_classes
        self.backbone = create_backbone(backbone, in_chans=in_chans, pretrained_path=pretrained_path,
                                        **backbone_kwargs)
        self.sex_fc = nn.Sequential(nn.Linear(1, sex_units), nn.ReLU())
        layers: list[nn.Module] = []
        prev = self.backbone.num_features + sex_units
        for h in age_hidden:
            layers += [nn.Linear(prev, h), nn.ReLU(), nn.Dropout(dropout)]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.age_head = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(image)
        s = self.sex_fc(sex.reshape(-1, 1).to(feats.dtype))
        return self.age_head(torch.cat([feats, s], dim=1))
