"""Sex-aware age regressor: a backbone, an optional sex branch, and a dense head.

The network shape shared by most bone-age papers (RSNA challenge entries, the whole-body
CT baselines, the scintigraphy stage-2 regressor, the Xception regressor of the PGGAN paper):

    image -> backbone -> pooled features ----+
    sex (0/1) -> FC(sex_units) -> act -------+-> concat -> [FC(h) -> act -> dropout]* -> FC(1)
"""

from __future__ import annotations

import torch
from torch import nn

from boneage.models.backbones import create_backbone


class SexAwareRegressor(nn.Module):
    """Age regressor over a named backbone.

    Args:
        backbone: timm model name (or ``tv_googlenet``).
        use_sex: feed the sex through its own FC layer and concatenate it with image features.
        sex_units: width of the sex FC layer.
        hidden: widths of the dense layers of the head (empty: one linear output).
        dropout: dropout after each hidden layer.
        pretrained_path: local weights file for the backbone (None: random init).
        in_chans: image channels (1 for radiographs).
        drop_rate: dropout on pooled image features (timm's ``drop_rate``).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        use_sex: bool = True,
        sex_units: int = 32,
        hidden: list[int] | None = None,
        dropout: float = 0.0,
        pretrained_path: str | None = None,
        in_chans: int = 1,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, in_chans=in_chans, pretrained_path=pretrained_path,
                                        **({"drop_rate": drop_rate} if drop_rate else {}))
        self.use_sex = use_sex
        width = self.backbone.num_features
        if use_sex:
            self.sex_fc = nn.Sequential(nn.Linear(1, sex_units), nn.ReLU(inplace=True))
            width += sex_units
        layers: list[nn.Module] = []
        for h in hidden or []:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        self.head = nn.Sequential(*layers)
        self.out = nn.Linear(width, 1)
        self.num_features = width

    def forward_features(self, image: torch.Tensor, sex: torch.Tensor | None = None) -> torch.Tensor:
        """Penultimate features (after the hidden layers), e.g. for nearest-neighbour search."""
        feats = self.backbone(image)
        if self.use_sex:
            if sex is None:
                raise ValueError("this regressor was built with use_sex=True: pass the sex tensor")
            feats = torch.cat([feats, self.sex_fc(sex.view(-1, 1).to(feats.dtype))], dim=1)
        return self.head(feats)

    def forward(self, image: torch.Tensor, sex: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.forward_features(image, sex)).squeeze(1)
