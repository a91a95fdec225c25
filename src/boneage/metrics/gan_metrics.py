"""GAN image-set metrics of paper 001 (Fig. 6): MS-SSIM diversity, Inception Score, FID.

FID and IS go through torchmetrics. Feature extractors (nothing is downloaded):

- ``InceptionFeatures(weights_path)``: timm ``inception_v3`` with ImageNet weights from a local
  file (pool features 2048 for FID, 1000 logits for IS). These are timm's Inception weights,
  not the TF-ported torch-fidelity ones, so values compare only with values made by this same
  extractor, resize and sample count (REFERENCE.md: never compare FIDs across tools).
- ``RegressorFeatures(network)``: a *domain* extractor: the trained bone-age regressor's
  penultimate features (FID) and soft one-year age-bin classes from its predicted age (IS).
  Results are labelled ``fid_domain`` / ``is_domain`` so they are never mistaken for the
  Inception numbers. Paper is silent on IS for a domain model: chose age-bin classes because
  the Inception Score's "confident and diverse classes" then reads "clear and varied bone ages".

MS-SSIM diversity is the official PGGAN metric (``metrics/ms_ssim.py``, the TensorFlow
authors' numpy MS-SSIM), written here in torch so it runs on the GPU: images in the official
value range [0, 255] (generated images ``round(127.5 * x + 127.5)`` clipped, as the official
``Gs.run(out_mul=127.5, out_add=127.5, out_dtype=uint8)``), a Gaussian window of ``min(11, H, W)``
px with sigma ``1.5 * size / 11`` applied without padding ("valid": every scale is cropped by
the window), five scales by 2x2 box averaging, the five original weights (not renormalised),
SSIM and contrast terms clipped at 0, pairs of consecutive images (``x[0::2]`` with ``x[1::2]``).
Means and variances are computed in float64 with the separable Gaussian.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # sum 0.9999, as the official code


def to_official_range(images: Tensor) -> Tensor:
    """Images in [-1, 1] to the official metric input: ``round(127.5 * x + 127.5)`` in [0, 255]."""
    return (images.double() * 127.5 + 127.5).round().clamp(0, 255)


def _gaussian_1d(size: int, sigma: float, like: Tensor) -> Tensor:
    """The official ``_FSpecialGauss`` window, separated: its 2-D window is ``outer(g, g)``."""
    x = torch.arange(size, dtype=torch.float64, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _ssim_and_cs(x: Tensor, y: Tensor, max_val: float, filter_size: int, filter_sigma: float,
                 k1: float, k2: float) -> tuple[Tensor, Tensor]:
    """Mean SSIM and contrast-structure term per image at one scale ("valid" window, no padding)."""
    n, c, h, w = x.shape
    size = min(filter_size, h, w)
    g = _gaussian_1d(size, size * filter_sigma / filter_size, x)
    kh, kw = g.view(1, 1, size, 1), g.view(1, 1, 1, size)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t.reshape(n * c, 1, h, w), kh), kw)

    mu1, mu2 = blur(x), blur(y)
    mu11, mu22, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s11, s22, s12 = blur(x * x) - mu11, blur(y * y) - mu22, blur(x * y) - mu12
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    v1, v2 = 2.0 * s12 + c2, s11 + s22 + c2
    ssim = ((2.0 * mu12 + c1) * v1) / ((mu11 + mu22 + c1) * v2)
    return ssim.reshape(n, -1).mean(1), (v1 / v2).reshape(n, -1).mean(1)


@torch.no_grad()
def ms_ssim(x: Tensor, y: Tensor, max_val: float = 255.0, filter_size: int = 11, filter_sigma: float = 1.5,
            k1: float = 0.01, k2: float = 0.03, weights: tuple[float, ...] = MSSSIM_WEIGHTS) -> Tensor:
    """MS-SSIM of each pair ``(x[i], y[i])`` [N] by the official algorithm (see the module docstring).

    ``x``, ``y``: [N, C, H, W] in the range ``max_val`` describes (official: [0, 255]). Needs at
    least ``2 ** (len(weights) - 1)`` px (16 px for five scales).
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"MS-SSIM needs two [N, C, H, W] batches of one shape, got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    if min(x.shape[-2:]) < 2 ** (len(weights) - 1):
        raise ValueError(f"MS-SSIM with {len(weights)} scales needs images of at least "
                         f"{2 ** (len(weights) - 1)} px, got {tuple(x.shape[-2:])}")
    x, y = x.double(), y.double()
    ssims, css = [], []
    for level in range(len(weights)):
        if level:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        ssim, cs = _ssim_and_cs(x, y, max_val, filter_size, filter_sigma, k1, k2)
        ssims.append(ssim.clamp_min(0.0))
        css.append(cs.clamp_min(0.0))
    w = torch.tensor(weights, dtype=torch.float64, device=x.device)
    return torch.stack(css[:-1], 1).pow(w[:-1]).prod(1) * ssims[-1].pow(w[-1])


@torch.no_grad()
def msssim_pairs(images: Tensor) -> Tensor:
    """Official MS-SSIM of consecutive pairs ``images[0::2]`` with ``images[1::2]`` [N // 2].

    ``images`` [N, C, H, W] in [-1, 1]; quantised to the official [0, 255] range first.
    """
    pairs = images.shape[0] // 2
    if pairs < 1:
        raise ValueError("MS-SSIM diversity needs at least 2 images")
    x = to_official_range(images[: 2 * pairs])
    return ms_ssim(x[0::2], x[1::2])


def msssim_diversity(images: Tensor) -> float:
    """Mean official MS-SSIM over consecutive pairs of one image set (lower = more diverse)."""
    return float(msssim_pairs(images).mean())


def _penultimate_hook(network: nn.Module) -> nn.Linear:
    """The network's last nn.Linear: its input is the penultimate feature vector."""
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(network).__name__} has no nn.Linear layer to take penultimate features from")
    return linears[-1]


class InceptionFeatures(nn.Module):
    """timm Inception-v3 with local ImageNet weights: ``features`` (2048) or ``logits`` (1000).

    Input: grayscale or RGB images in [-1, 1] of any size; repeated to 3 channels and resized
    bilinearly to 299 px (timm's inception normalisation is mean 0.5 / std 0.5, i.e. [-1, 1]).
    """

    label = "inception"

    def __init__(self, weights_path: str | Path, output: str = "features") -> None:
        super().__init__()
        import timm

        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights not found: {path}. Give a local file of timm 'inception_v3' ImageNet "
                "weights (e.g. saved once on a machine with internet via timm.create_model('inception_v3', "
                "pretrained=True) and torch.save(model.state_dict(), path)), or use RegressorFeatures.")
        self.net = timm.create_model("inception_v3", pretrained=True,
                                     pretrained_cfg_overlay=dict(file=str(path)))
        self.net.eval().requires_grad_(False)
        if output not in ("features", "logits"):
            raise ValueError(f"output must be 'features' or 'logits', got {output!r}")
        self.output = output
        self.num_features = self.net.num_features if output == "features" else self.net.num_classes

    def train(self, mode: bool = True) -> InceptionFeatures:  # frozen: always eval
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        x = images.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        feats = self.net.forward_head(self.net.forward_features(x), pre_logits=True)
        return feats if self.output == "features" else self.net.get_classifier()(feats)


class RegressorFeatures(nn.Module):
    """Domain extractor from a trained age regressor (labelled ``domain``, not Inception).

    ``features``: the input of the network's last nn.Linear (penultimate features).
    ``logits``: log-probabilities of one-year age bins from the predicted age,
    ``-(age - centre)^2 / (2 * bin_sd^2)`` floored at 60 below the top bin (soft classes for a domain
    Inception Score; the floor keeps far bins from underflowing to NaN).
    ``predict_age(images) -> Tensor [B]`` must map images in [-1, 1] to age in label units;
    ``network(images)`` is then called for the features (its forward hook is read).
    """

    label = "domain"

    def __init__(self, network: nn.Module, predict_age=None, output: str = "features",
                 bin_edges: tuple[float, float, float] = (0.0, 240.0, 12.0), bin_sd: float = 12.0) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.predict_age = predict_age
        self.output = output
        self._last = _penultimate_hook(network)
        start, stop, step = bin_edges
        self.register_buffer("centres", torch.arange(start + step / 2, stop, step), persistent=False)
        self.bin_sd = bin_sd
        self.num_features = self._last.in_features if output == "features" else len(self.centres)

    def train(self, mode: bool = True) -> RegressorFeatures:
        return super().train(False)

    def features(self, images: Tensor) -> Tensor:
        grabbed: list[Tensor] = []
        handle = self._last.register_forward_hook(lambda m, i, o: grabbed.append(i[0]))
        try:
            self.predict_age(images) if self.predict_age is not None else self.network(images)
        finally:
            handle.remove()
        return grabbed[-1].flatten(1).float()

    def forward(self, images: Tensor) -> Tensor:
        if self.output == "features":
            return self.features(images)
        if self.predict_age is None:
            raise ValueError("RegressorFeatures(output='logits') needs predict_age")
        age = self.predict_age(images).float().view(-1, 1)
        logits = -((age - self.centres.view(1, -1)) ** 2) / (2 * self.bin_sd**2)
        # floor at e^-60 of the top class: a bin no image comes near would get probability 0 in float32,
        # and the Inception Score's 0 * log(0) would make the whole score NaN (e.g. a young-only sample)
        return logits.clamp_min(logits.max(dim=1, keepdim=True).values - 60.0)


class GANImageMetrics(nn.Module):
    """FID and IS of generated vs real images with one extractor pair, labelled by its kind.

    ``features``/``logits`` are nn.Modules mapping [B, C, H, W] in [-1, 1] to [B, D]; pass
    ``InceptionFeatures`` (labels ``fid``/``is``) or ``RegressorFeatures`` (``fid_domain``/``is_domain``).
    Real features are kept across ``reset`` (the reference set is fixed); FID keeps running sums
    of the features, never the images. ``sync_on_compute=False`` for a metric that only one rank
    updates and computes (the PGGAN metrics callback runs on rank zero).
    """

    def __init__(self, features: nn.Module, logits: nn.Module | None = None, is_splits: int = 10,
                 sync_on_compute: bool = True) -> None:
        super().__init__()
        suffix = "" if getattr(features, "label", "") == "inception" else "_domain"
        self.fid_name, self.is_name = f"fid{suffix}", f"is{suffix}"
        self.fid = FrechetInceptionDistance(feature=features, reset_real_features=False,
                                            sync_on_compute=sync_on_compute)
        self.inception_score = (InceptionScore(feature=logits, splits=is_splits, sync_on_compute=sync_on_compute)
                                if logits is not None else None)

    def update_real(self, images: Tensor) -> None:
        self.fid.update(images, real=True)

    def update_fake(self, images: Tensor) -> None:
        self.fid.update(images, real=False)
        if self.inception_score is not None:
            self.inception_score.update(images)

    def compute(self) -> dict[str, float]:
        out = {self.fid_name: float(self.fid.compute())}
        if self.inception_score is not None:
            out[self.is_name] = float(self.inception_score.compute()[0])
        return out

    def reset(self) -> None:
        self.fid.reset()
        if self.inception_score is not None:
            self.inception_score.reset()
