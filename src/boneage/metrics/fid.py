"""FID for grayscale X-rays: torchmetrics' FrechetInceptionDistance with a named feature extractor.

Two extractors, never mixed: the metric's ``name`` says which one produced a number, systems
log under that name (``test/fid_inception`` vs ``test/fid_randconv``) and the tables refuse to
put different names in one column.

- ``"inception"``: the standard FID Inception-v3 (pool3, 2048 features), run by torch-fidelity's
  ``FeatureExtractorInceptionV3`` (through torchmetrics) with the ``pt_inception-2015-12-05``
  weights loaded from a local file (a state dict of that module; nothing downloads), as in the
  BAPGAN paper (section 3.1). Needs the ``torch-fidelity`` package (``pip install boneage[fid]``).
  ``antialias=False`` to match torch-fidelity / TF numbers (see REFERENCE.md).
- ``"randconv"``: used when no Inception file is given. A documented stand-in, not Inception:
  a fixed, seeded random conv net (four 5x5 stride-2 convs 32-64-128-256 with ReLU on the
  image resized to 128x128, global average and standard deviation pooling, 512 features).
  Random-feature Frechet distances rank image sets by low-level statistics (texture, edges,
  contrast) and need no downloaded weights; they are not comparable to published FIDs.
- ``"auto"`` (the YAMLs' choice): ``"inception"`` when the ``inception_weights`` file exists,
  otherwise ``"randconv"`` with a warning naming the missing file; the metric name records
  which one ran. A weights file without torch-fidelity installed is an error, not a fallback.
- ``"torchscript:<path>"``: any domain feature extractor saved with ``torch.jit.save`` whose
  forward maps ``[B, 3, H, W]`` floats in [0, 1] to ``[B, F]`` (e.g. a bone-age regressor's
  pooled backbone features).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

INCEPTION_HELP = ("FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth) come from "
                  "https://github.com/mseitzer/pytorch-fid/releases; download the file on a "
                  "machine with internet and give its path.")


class RandomConvFeatures(nn.Module):
    """Fixed seeded random conv features (the documented non-Inception FID extractor)."""

    def __init__(self, seed: int = 0, size: int = 128,
                 channels: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        prev = 3
        for c in channels:
            conv = nn.Conv2d(prev, c, 5, stride=2, padding=2)
            with torch.no_grad():   # He-scaled normal weights from our own generator: same for every run
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / (prev * 25)) ** 0.5)
                conv.bias.zero_()
            layers += [conv, nn.ReLU()]
            prev = c
        self.net = nn.Sequential(*layers).requires_grad_(False)
        self.size = size
        self.num_features = 2 * prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", antialias=True,
                          align_corners=False)
        h = self.net(x * 2.0 - 1.0)
        return torch.cat([h.mean((2, 3)), h.std((2, 3))], dim=1)


def fid_name(feature_extractor: str = "randconv") -> str:
    """The metric name for an extractor spec: ``fid_inception``, ``fid_randconv``, ``fid_<file stem>``."""
    if feature_extractor in ("inception", "randconv"):
        return f"fid_{feature_extractor}"
    if feature_extractor.startswith("torchscript:"):
        return f"fid_{Path(feature_extractor.split(':', 1)[1]).stem}"
    raise ValueError(f"unknown FID feature extractor {feature_extractor!r}: use 'inception' (with "
                     "inception_weights), 'randconv' or 'torchscript:<path>'")


def _require_torch_fidelity(inception_weights: str | None) -> None:
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ModuleNotFoundError(
            f"FID Inception weights {inception_weights} need the torch-fidelity package, which is not "
            "installed: pip install 'boneage[fid]' (or set model.init_args.fid_feature_extractor: randconv)")


def resolve_extractor(feature_extractor: str, inception_weights: str | None = None) -> str:
    """``"auto"`` -> ``"inception"`` when the weights file exists, else ``"randconv"`` (warned);
    ``"inception"`` without its file raises FileNotFoundError, without torch-fidelity
    ModuleNotFoundError; other names pass through."""
    if feature_extractor == "auto":
        if inception_weights and Path(inception_weights).is_file():
            _require_torch_fidelity(inception_weights)
            return "inception"
        warnings.warn(f"FID: Inception weights {inception_weights!r} not found, using the documented "
                      f"random-conv extractor (metric 'fid_randconv', not comparable to Inception FIDs). "
                      f"{INCEPTION_HELP}", stacklevel=2)
        return "randconv"
    if feature_extractor == "inception":
        if not inception_weights:
            raise ValueError("feature_extractor='inception' needs inception_weights (a local file). "
                             + INCEPTION_HELP)
        if not Path(inception_weights).is_file():
            raise FileNotFoundError(f"FID Inception weights not found: {inception_weights}. {INCEPTION_HELP}")
        _require_torch_fidelity(inception_weights)
    fid_name(feature_extractor)   # validates the name
    return feature_extractor


def create_fid(feature_extractor: str = "randconv",
               inception_weights: str | None = None) -> FrechetInceptionDistance:
    """A FrechetInceptionDistance taking ``[B, 3, H, W]`` floats in [0, 1] (see ``to_fid_input``).

    ``feature_extractor="inception"`` requires ``inception_weights`` (a local file); ``"auto"``
    falls back to ``"randconv"`` without it.
    """
    feature_extractor = resolve_extractor(feature_extractor, inception_weights)
    name = fid_name(feature_extractor)
    if feature_extractor == "inception":
        metric = FrechetInceptionDistance(feature=2048, normalize=True, antialias=False,
                                          feature_extractor_weights_path=str(inception_weights))
    elif feature_extractor == "randconv":
        metric = FrechetInceptionDistance(feature=RandomConvFeatures(), normalize=True)
    else:
        path = Path(feature_extractor.split(":", 1)[1])
        if not path.is_file():
            raise FileNotFoundError(f"FID feature extractor file not found: {path} "
                                    "(expected a module saved with torch.jit.save)")
        extractor = torch.jit.load(str(path), map_location="cpu").eval()
        for p in extractor.parameters():
            p.requires_grad_(False)
        metric = FrechetInceptionDistance(feature=extractor, normalize=True)
    metric.name = name
    return metric


def to_fid_input(x: torch.Tensor) -> torch.Tensor:
    """Grayscale images in [-1, 1] ``[B, 1, H, W]`` -> ``[B, 3, H, W]`` float32 in [0, 1]."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1 or 3, H, W], got shape {tuple(x.shape)}")
    x = ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
