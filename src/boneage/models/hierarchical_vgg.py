"""VGG16-BN with hierarchical (local + global) features for whole-body CT bone age.

Paper: H.-D. Nguyen and S.-H. Kim, "Automatic Whole-body Bone Age Assessment Using Deep
Hierarchical Features" (paper 002, Fig. 1-2, Sec. 3.2 and 4.2).

The base network is VGG16 with batch norm after every convolution. Side connections take
the max-pool outputs of block 3 (256 x 28 x 28 at 224 input) and block 4 (512 x 14 x 14),
flatten them into a fully connected layer of ``n_U = 256`` units each (so a connection has
``C*H*W*n_U + n_U`` parameters, Eq. 1) with dropout, and are concatenated with the
block-5 (global) features; a regression network of three fully connected layers (dropout
after each hidden one) ends in one linear unit. The paper's closing remark proposes a
global pooling layer before the connections (``side_global_pool="avg"``), which shrinks a
connection to ``C*n_U + n_U`` parameters and frees the network from a fixed input size.

With ``side_blocks=()`` the same class is the paper's fine-tuned VGG16 baseline: VGG16-BN
whose 1000-way softmax is replaced by a single linear unit (Table 1, row "Fine-tuned VGGNet").

What the paper leaves unsaid, and what we chose:

- paper is silent on the widths of the regression network: chose hidden ``(4096, 4096)``
  (plus the single output unit = three FC layers) because that is VGG's own classifier,
  so the baseline is exactly VGG16 with its softmax replaced, and fc6/fc7 can start from
  the ImageNet weights.
- paper is silent on the "global features": chose block 5's max-pool output, average-pooled
  to 7x7 and flattened (torchvision's VGG head), because that is what VGG's classifier reads.
- paper is silent on the activation inside a side connection: chose ReLU, as in VGG's FC layers.
- paper is silent on the dropout rate: chose 0.5, VGG's classifier value.
- paper is silent on the kind of global pooling: chose average (its citation [12], NIN,
  proposes global average pooling); ``"max"`` is available.
- paper is silent on which early layers stay frozen: chose blocks 1-2 (``freeze_blocks=2``),
  the blocks the paper calls "elementary features" and keeps out of the side connections;
  freezing applies only when pretrained weights are given, and frozen batch-norm layers keep
  their ImageNet statistics (eval mode) during training.
- pretrained weights: VGG16-BN's ImageNet weights from a local file, torchvision's
  ``vgg16_bn-6c64b313.pth`` or timm's ``vgg16_bn.tv_in1k`` (``.safetensors``/``.bin``, its
  ``pre_logits`` convolutions read as fc6/fc7), or a checkpoint of this network (a run of this
  project: every tensor). Keys match exactly (:mod:`boneage.models.backbones`): every
  convolution and batch norm comes from the file, and with ``pretrained_head`` (default) fc6 and
  fc7 too; the file's 1000-way layer (``classifier.6``) is the softmax the paper replaces and is
  dropped; anything else missing, unexpected or of another shape is an error naming the keys.
  The first convolution is adapted to grayscale by summing its RGB kernels (timm's
  ``adapt_input_conv``); fc6 is loaded into the columns that read the global features and
  the side-connection columns start random, as the paper initialises the new connections.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "VGG16_CFG",
    "HierarchicalVGG",
    "RegressionHead",
    "SideConnection",
    "hierarchical_vgg16_bn",
    "hierarchical_vgg16_bn_gap",
    "vgg16_bn_regressor",
]

log = logging.getLogger(__name__)

# Channels of the convolutions of each of VGG16's five blocks (torchvision cfg "D").
VGG16_CFG: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)

PRETRAINED_HINT = (
    "Pretrained VGG16-BN weights are torchvision's ImageNet state_dict 'vgg16_bn-6c64b313.pth' "
    "(torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1); download it on a machine with internet "
    "access (e.g. torch.hub.load_state_dict_from_url(VGG16_BN_Weights.IMAGENET1K_V1.url)) and give "
    "its path as pretrained_path, or set pretrained_path: null to train from scratch."
)
VGG_FIT_HINT = (
    "A VGG16-BN file fits width 1.0 and, with pretrained_head (fc6/fc7 from the file), hidden [4096, 4096] and "
    "global_pool_size 7; set pretrained_head: false to take the convolutions only"
)
# timm's VGG layout (pre_logits as convolutions, head.fc) in torchvision's names
TIMM_VGG_NAMES = {
    "pre_logits.fc1.weight": "classifier.0.weight",
    "pre_logits.fc1.bias": "classifier.0.bias",
    "pre_logits.fc2.weight": "classifier.3.weight",
    "pre_logits.fc2.bias": "classifier.3.bias",
    "head.fc.weight": "classifier.6.weight",
    "head.fc.bias": "classifier.6.bias",
}


def _pooled_size(size: int, n_pools: int) -> int:
    """Spatial size after ``n_pools`` 2x2/stride-2 max-pools (floor division, as nn.MaxPool2d)."""
    for _ in range(n_pools):
        size //= 2
    return size


def _pool_layer(kind: str | None) -> nn.Module | None:
    if kind is None or kind == "none":
        return None
    if kind == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if kind == "max":
        return nn.AdaptiveMaxPool2d(1)
    raise ValueError(f"side_global_pool must be None, 'none', 'avg' or 'max', got {kind!r}")


class SideConnection(nn.Module):
    """Fig. 2: (optional global pooling) -> flatten -> FC(n_U) -> ReLU -> dropout."""

    def __init__(self, channels: int, height: int, width: int, units: int = 256,
                 dropout: float = 0.5, global_pool: str | None = None) -> None:
        super().__init__()
        self.pool = _pool_layer(global_pool)
        in_features = channels if self.pool is not None else channels * height * width
        if in_features <= 0:
            raise ValueError(f"side connection on an empty feature map ({channels}x{height}x{width}); "
                             "use a larger image_size or side_global_pool='avg'")
        self.in_shape = (channels, height, width)
        self.fc = nn.Linear(in_features, units)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.units = units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        elif tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"side connection built for {self.in_shape} feature maps got "
                             f"{tuple(x.shape[1:])}: the input image size differs from image_size; "
                             "set image_size to the crop size or use side_global_pool='avg'")
        return self.drop(self.act(self.fc(torch.flatten(x, 1))))


class RegressionHead(nn.Module):
    """Hidden FC layers (ReLU + dropout after each) and one linear output unit."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (4096, 4096),
                 dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = units
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(width, 1)
        self.pre_logits_features = width

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden(x)
        return x if pre_logits else self.out(x).squeeze(-1)


class HierarchicalVGG(nn.Module):
    """VGG16-BN whose block-3/4 max-pool outputs feed FC side connections (paper Fig. 1).

    Args:
        side_blocks: VGG blocks (1-4) whose max-pool outputs get a side connection; the
            paper's best model uses (3, 4); ``()`` gives the plain fine-tuned VGG16 baseline.
        side_units: units ``n_U`` of each side connection's FC layer (one value for all,
            or one per block).
        side_global_pool: None (flatten the whole C x H x W map, paper Fig. 2), "avg" or
            "max" (global pooling before the connections, the paper's proposed variant).
        hidden: hidden FC widths of the regression network (its last layer is one unit).
        dropout: dropout after each FC layer (side connections and regression network).
        global_pool_size: block-5 features are average-pooled to this square size, then
            flattened (7 as in VGG).
        image_size: input size (int or (H, W)) the flattened side connections are built for.
        width: multiplier of every convolution's channels (1.0 = VGG16; tests use 1/16).
        in_chans: image channels (1 for CT).
        pretrained_path: local VGG16-BN weights (torchvision ``.pth``, timm ``.safetensors``/``.bin``)
            or a checkpoint of this network, or None for random init.
        pretrained_head: with VGG16-BN weights, fc6/fc7 start from the file's ``classifier.0/3``
            (needs hidden [4096, 4096]); False takes the convolutions only.
        freeze_blocks: with pretrained weights, the first ``freeze_blocks`` blocks stay frozen.
        cfg: channels per block (VGG16 by default).
    """

    def __init__(
        self,
        side_blocks: Sequence[int] = (3, 4),
        side_units: int | Sequence[int] = 256,
        side_global_pool: str | None = None,
        hidden: Sequence[int] = (4096, 4096),
        dropout: float = 0.5,
        global_pool_size: int = 7,
        image_size: int | Sequence[int] = 224,
        width: float = 1.0,
        in_chans: int = 1,
        pretrained_path: str | None = None,
        pretrained_head: bool = True,
        freeze_blocks: int = 2,
        cfg: Sequence[Sequence[int]] = VGG16_CFG,
    ) -> None:
        super().__init__()
        n_blocks = len(cfg)
        side_blocks = tuple(int(b) for b in side_blocks)
        bad = [b for b in side_blocks if not 1 <= b < n_blocks]
        if bad or len(set(side_blocks)) != len(side_blocks):
            raise ValueError(f"side_blocks must be distinct block numbers in 1..{n_blocks - 1} "
                             f"(block {n_blocks} is the global path), got {list(side_blocks)}")
        if isinstance(side_units, int):
            side_units = [side_units] * len(side_blocks)
        if len(side_units) != len(side_blocks):
            raise ValueError(f"side_units has {len(side_units)} entries for {len(side_blocks)} side_blocks")
        if not 0 <= freeze_blocks <= n_blocks:
            raise ValueError(f"freeze_blocks must be in 0..{n_blocks}, got {freeze_blocks}")
        img_h, img_w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if pretrained_path is not None and not Path(pretrained_path).is_file():  # fail before building
            raise FileNotFoundError(f"pretrained weights not found: {pretrained_path}. {PRETRAINED_HINT}")

        # Features with torchvision's layer indices (conv, bn, relu per conv; pool per block),
        # so a torchvision vgg16_bn state_dict loads key for key.
        layers: list[nn.Module] = []
        self.pool_indices: list[int] = []
        self.block_channels: list[int] = []
        chans = in_chans
        for block in cfg:
            for c in block:
                c = max(1, int(round(c * width)))
                layers += [nn.Conv2d(chans, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                chans = c
            layers.append(nn.MaxPool2d(2, 2))
            self.pool_indices.append(len(layers) - 1)
            self.block_channels.append(chans)
        self.features = nn.Sequential(*layers)

        self.side_blocks = side_blocks
        self.sides = nn.ModuleDict()
        for b, units in zip(side_blocks, side_units):
            self.sides[str(b)] = SideConnection(
                self.block_channels[b - 1], _pooled_size(img_h, b), _pooled_size(img_w, b),
                units=int(units), dropout=dropout, global_pool=side_global_pool)
        self.avgpool = nn.AdaptiveAvgPool2d(global_pool_size)
        self.global_features = self.block_channels[-1] * global_pool_size ** 2
        self.num_features = self.global_features + sum(int(u) for u in side_units)
        self.head = RegressionHead(self.num_features, hidden, dropout)

        self._init_weights()
        self.pretrained_head = pretrained_head
        self.frozen_blocks = 0
        if pretrained_path is not None:
            self.load_pretrained(pretrained_path)
            self.freeze(freeze_blocks)

    # --- weights -------------------------------------------------------------------------
    def _init_weights(self) -> None:
        """torchvision VGG's initialisation (He-normal convs, N(0, 0.01) linears)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def load_pretrained(self, path: str | Path) -> None:
        """Load a VGG16-BN weights file (torchvision ``.pth``, timm ``.safetensors``/``.bin``) or a
        checkpoint of this network, with exact key matching (see the module doc)."""
        from boneage.models.backbones import adapt_first_conv, check_weights, read_weights, select_weights

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights not found: {path}. {PRETRAINED_HINT}")
        own = self.state_dict()
        batches = [k for k in own if k.endswith("num_batches_tracked")]  # absent from pre-0.4.1 files
        state = select_weights(read_weights(path), own, path, "HierarchicalVGG")
        adapt_first_conv(state, "features.0.weight", self.features[0].in_channels)
        if "head.out.weight" in state:  # a checkpoint of this network itself (a run of this project)
            check_weights({k: v.shape for k, v in own.items()}, state, path, "this HierarchicalVGG", batches)
            self.load_state_dict(state, strict=True)
            log.info("loaded the whole network from %s", path)
            return
        state = {TIMM_VGG_NAMES.get(k, k): v.flatten(1) if k in TIMM_VGG_NAMES and v.ndim == 4 else v
                 for k, v in state.items()}
        state = {k: v for k, v in state.items()
                 if not k.startswith("classifier.6.") and (self.pretrained_head or not k.startswith("classifier."))}
        expected = {f"features.{k}": v.shape for k, v in self.features.state_dict().items()}
        fc6, fc7 = self._fc67()
        if self.pretrained_head:
            expected.update({"classifier.0.weight": (fc6.out_features, self.global_features),
                             "classifier.0.bias": (fc6.out_features,)})
            if fc7 is not None:
                expected.update({"classifier.3.weight": fc7.weight.shape, "classifier.3.bias": fc7.bias.shape})
        try:
            check_weights(expected, state, path, "vgg16_bn (HierarchicalVGG)", [f"features.{k}" for k in batches])
        except ValueError as err:
            raise type(err)(f"{err}. {VGG_FIT_HINT}") from None
        self.features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                       if k.startswith("features.")}, strict=True)
        loaded = ["features"]
        if self.pretrained_head:
            with torch.no_grad():
                fc6.weight[:, :self.global_features] = state["classifier.0.weight"]  # side columns stay random
                fc6.bias.copy_(state["classifier.0.bias"])
                loaded.append("fc6")
                if fc7 is not None:
                    fc7.weight.copy_(state["classifier.3.weight"])
                    fc7.bias.copy_(state["classifier.3.bias"])
                    loaded.append("fc7")
        log.info("loaded %s from %s", "+".join(loaded), path)

    def _fc67(self) -> tuple[nn.Linear, nn.Linear | None]:
        linears = [m for m in self.head.hidden if isinstance(m, nn.Linear)] + [self.head.out]
        return linears[0], (linears[1] if len(linears) > 2 else None)

    def freeze(self, n_blocks: int) -> None:
        """Freeze the first ``n_blocks`` VGG blocks (parameters and batch-norm statistics)."""
        end = self.pool_indices[n_blocks - 1] + 1 if n_blocks > 0 else 0
        for i, layer in enumerate(self.features):
            for p in layer.parameters():
                p.requires_grad_(i >= end)
        self.frozen_blocks = n_blocks
        self.train(self.training)

    def train(self, mode: bool = True) -> HierarchicalVGG:
        super().train(mode)
        if self.frozen_blocks:
            for layer in self.features[: self.pool_indices[self.frozen_blocks - 1] + 1]:
                if isinstance(layer, nn.BatchNorm2d):
                    layer.eval()
        return self

    # --- forward -------------------------------------------------------------------------
    def forward_intermediates(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Max-pool outputs of every block (block 1 first)."""
        taps = []
        x = image
        pools = set(self.pool_indices)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in pools:
                taps.append(x)
        return taps

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """Concatenation [global block-5 features, side connection 1, side connection 2, ...]."""
        taps = self.forward_intermediates(image)
        parts = [torch.flatten(self.avgpool(taps[-1]), 1)]
        parts += [self.sides[str(b)](taps[b - 1]) for b in self.side_blocks]
        return torch.cat(parts, dim=1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(features, pre_logits=pre_logits)

    def forward(self, image: torch.Tensor, sex: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted age [B] (normalised units); ``sex`` is accepted and unused, as in the paper."""
        return self.forward_head(self.forward_features(image))


# --- variants: argument dicts only -------------------------------------------------------
def _create(defaults: dict, **kwargs) -> HierarchicalVGG:
    return HierarchicalVGG(**{**defaults, **kwargs})


def hierarchical_vgg16_bn(**kwargs) -> HierarchicalVGG:
    """The paper's model: side connections from block-3 and block-4 max-pools, 256 units each."""
    return _create(dict(side_blocks=(3, 4), side_units=256, side_global_pool=None), **kwargs)


def hierarchical_vgg16_bn_gap(**kwargs) -> HierarchicalVGG:
    """The paper's proposed variant: global average pooling before the side connections."""
    return _create(dict(side_blocks=(3, 4), side_units=256, side_global_pool="avg"), **kwargs)


def vgg16_bn_regressor(**kwargs) -> HierarchicalVGG:
    """Fine-tuned VGG16-BN baseline: no side connections, softmax replaced by one linear unit."""
    return _create(dict(side_blocks=()), **kwargs)
