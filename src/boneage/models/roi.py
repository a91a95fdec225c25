"""Networks of the scintigraphy ROI paper (Do et al., "Region of Interest Localization for Bone
Age Estimation Using Whole-Body Bone Scintigraphy") that the generic regressor cannot express.

- :class:`AgeGroupClassifier` -- stage 1, the localization network: a backbone (ResNet50 in
  the paper), global average pooling and one FC layer with 4 outputs (age groups over 40-80
  years); its last convolutional stage is the Grad-CAM layer.
- :class:`TwoViewRegressor` -- the "multiple inputs VGG16" baseline of the paper's Table 1
  (reference [13], Nguyen et al. 2019).

Stage 2 itself (InceptionV3 + GAP; sex -> FC 32; concat; FC 1024 + ReLU + dropout 0.2,
twice; one linear output) is exactly ``boneage.models.regressor.SexAwareRegressor`` and is
configured in experiments/roi_regressor_scinti.yaml.

What the paper leaves unsaid, and what was chosen:

- the age-group edges: "four groups by age" over 40-80 years; chose 10-year groups
  [40, 50), [50, 60), [60, 70), [70, 80] (Fig. 2 shows a nearly even distribution over
  them); labels outside the range go to the end groups.
- the Grad-CAM layer: "the last convolutional layer"; chose the output of the backbone's
  last feature stage (timm ``feature_info[-1]``: ``layer4`` for ResNet50), overridable.
- the multiple-input VGG16 of [13] is not described here; chose two inputs = the anterior
  and posterior views (left and right halves of the exported whole-body image), each
  through its own VGG16, pooled features concatenated (with the sex branch when enabled),
  then the same dense head as stage 2 so Table 1 compares inputs rather than heads.
"""

from __future__ import annotations

import torch
from torch import nn

from boneage.models.backbones import create_backbone


def _feature_width(backbone: nn.Module) -> int:
    """Width of the pooled output: timm VGGs report their conv width in ``num_features`` but
    return the 4096-wide ``pre_logits`` output (``head_hidden_size``)."""
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


class AgeGroupClassifier(nn.Module):
    """Backbone + GAP + FC(num_classes); ``cam_layer`` is the module Grad-CAM weights.

    Args:
        backbone: timm model name (ResNet50 in the paper).
        num_classes: number of age groups (4 in the paper).
        pretrained_path: local weights file for the backbone (None: random init).
        in_chans: image channels.
        cam_layer: dotted name of the Grad-CAM layer inside the backbone; default its last
            feature stage.
        output_stride: the backbone's total stride (timm's dilation: 8, 16 or 32); None keeps the
            model's own (32 for ResNet50). A miniature uses it to keep the paper's heat-map grid on a
            smaller input: ResNet50's last stage on 300 x 1000 gives 10 x 32 cells, as does a stride-8
            last stage on 80 x 256.
    """

    def __init__(self, backbone: str = "resnet50", num_classes: int = 4, pretrained_path: str | None = None,
                 in_chans: int = 1, cam_layer: str | None = None, output_stride: int | None = None) -> None:
        super().__init__()
        extra = {} if output_stride is None else {"output_stride": output_stride}
        self.backbone = create_backbone(backbone, in_chans=in_chans, pretrained_path=pretrained_path, **extra)
        self.fc = nn.Linear(_feature_width(self.backbone), num_classes)
        self.num_classes = num_classes
        if cam_layer is None:
            info = getattr(self.backbone, "feature_info", None)
            if not info:
                raise ValueError(f"backbone {backbone!r} lists no feature stages: give cam_layer by name")
            cam_layer = info[-1]["module"]
        try:
            self.cam_layer_name = cam_layer
            self._cam_layer = [self.backbone.get_submodule(cam_layer)]  # a list: not registered twice
        except AttributeError:
            names = [n for n, _ in self.backbone.named_children()]
            raise ValueError(f"cam_layer {cam_layer!r} is not a module of {backbone}; "
                             f"its top-level modules are {names}") from None

    @property
    def cam_layer(self) -> nn.Module:
        return self._cam_layer[0]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes]."""
        return self.fc(self.backbone(image))


class TwoViewRegressor(nn.Module):
    """Multiple-input regressor: anterior and posterior halves through two backbones, plus sex.

    Args:
        backbone: timm name of each view's backbone (VGG16 in [13]).
        use_sex: add the sex branch (FC ``sex_units`` + ReLU) to the concatenated features.
        sex_units: width of the sex FC layer.
        hidden: dense layers of the head.
        dropout: dropout after each dense layer.
        pretrained_path: local weights file for both backbones.
        in_chans: image channels.
        shared: one backbone for both views instead of two.
    """

    def __init__(self, backbone: str = "vgg16", use_sex: bool = True, sex_units: int = 32,
                 hidden: list[int] | None = None, dropout: float = 0.2, pretrained_path: str | None = None,
                 in_chans: int = 1, shared: bool = False) -> None:
        super().__init__()
        self.anterior = create_backbone(backbone, in_chans=in_chans, pretrained_path=pretrained_path)
        self.posterior = self.anterior if shared else create_backbone(backbone, in_chans=in_chans,
                                                                      pretrained_path=pretrained_path)
        self.use_sex = use_sex
        width = 2 * _feature_width(self.anterior)
        if use_sex:
            self.sex_fc = nn.Sequential(nn.Linear(1, sex_units), nn.ReLU(inplace=True))
            width += sex_units
        layers: list[nn.Module] = []
        for h in [1024, 1024] if hidden is None else hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        self.head = nn.Sequential(*layers)
        self.out = nn.Linear(width, 1)

    def forward(self, image: torch.Tensor, sex: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted (standardised) age [B]; the image's left half is the anterior view."""
        half = image.shape[-1] // 2
        feats = [self.anterior(image[..., :half]), self.posterior(image[..., half:2 * half])]
        if self.use_sex:
            if sex is None:
                raise ValueError("this regressor was built with use_sex=True: pass the sex tensor")
            feats.append(self.sex_fc(sex.view(-1, 1).to(feats[0].dtype)))
        return self.out(self.head(torch.cat(feats, dim=1))).squeeze(1)
