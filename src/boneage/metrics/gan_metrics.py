"""GAN image-set metrics of paper 001 (Fig. 6): MS-SSIM diversity, Inception Score, FID.

All three go through torchmetrics. Feature extractors (nothing is downloaded):

- ``InceptionFeatures(weights_path)``: timm ``inception_v3`` with ImageNet weights from a local
  file (pool features 2048 for FID, 1000 logits for IS). These are timm's Inception weights,
  not the TF-ported torch-fidelity ones, so values compare only with values made by this same
  extractor, resize and sample count (REFERENCE.md: never compare FIDs across tools).
- ``RegressorFeatures(network)``: a *domain* extractor: the trained bone-age regressor's
  penultimate features (FID) and soft one-year age-bin classes from its predicted age (IS).
  Results are labelled ``fid_domain`` / ``is_domain`` so they are never mistaken for the
  Inception numbers. Paper is silent on IS for a domain model: chose age-bin classes because
  the Inception Score's "confident and diverse classes" then reads "clear and varied bone ages".

MS-SSIM diversity follows the official PGGAN metric (pairs of generated images, lower = more
diverse) with torchmetrics' MS-SSIM; ``msssim_settings`` picks a kernel and number of scales
that work at the image size (torchmetrics raises on 128 px with the default 11 px kernel).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

MSSSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def msssim_settings(size: int, kernel_size: int = 11, max_scales: int = 5) -> tuple[int, tuple[float, ...]]:
    """Kernel (odd, <= ``kernel_size``) and number of scales that work at ``size`` px.

    Preference: a kernel of at least 7 px, then as many scales as fit, then the largest kernel
    (11 and 5 scales from 176 px, 7 and 5 scales at 128 px, 7 and 2 scales at 16 px). A setting
    fits when torchmetrics accepts it and the kernel fits the coarsest scale. Dropped coarse
    scales' weights are removed and the rest renormalised to sum to 1.
    """
    for k_min in (min(7, kernel_size), 3):
        for scales in range(max_scales, 0, -1):
            div = max(1, scales - 1) ** 2
            coarsest = size // 2 ** (scales - 1)
            for k in range(kernel_size, k_min - 1, -2):
                if size >= 2**scales and size // div > k - 1 and coarsest > k - 1:
                    betas = MSSSIM_BETAS[:scales]
                    total = sum(betas)
                    return k, tuple(b / total for b in betas)
    raise ValueError(f"MS-SSIM needs images of at least 8 px, got {size}")


@torch.no_grad()
def msssim_diversity(images: Tensor, num_pairs: int | None = None, seed: int = 0,
                     data_range: float = 2.0, kernel_size: int = 11) -> float:
    """Mean MS-SSIM over random pairs of distinct images of one set (lower = more diverse).

    ``images`` [N, C, H, W] in [-1, 1] (``data_range`` 2). ``num_pairs`` defaults to N // 2
    disjoint pairs, as the official metric pairs consecutive images.
    """
    n = images.shape[0]
    if n < 2:
        raise ValueError("MS-SSIM diversity needs at least 2 images")
    g = torch.Generator().manual_seed(seed)
    if num_pairs is None:
        perm = torch.randperm(n, generator=g)
        a, b = perm[: n // 2], perm[n // 2: 2 * (n // 2)]
    else:
        a = torch.randint(0, n, (num_pairs,), generator=g)
        b = (a + torch.randint(1, n, (num_pairs,), generator=g)) % n
    k, betas = msssim_settings(min(images.shape[-2:]), kernel_size)
    x, y = images[a.to(images.device)].float(), images[b.to(images.device)].float()
    vals = multiscale_structural_similarity_index_measure(
        x, y, kernel_size=k, betas=betas, data_range=data_range, reduction="none")
    return float(vals.mean())


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
    ``-(age - centre)^2 / (2 * bin_sd^2)`` (soft classes for a domain Inception Score).
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
        return -((age - self.centres.view(1, -1)) ** 2) / (2 * self.bin_sd**2)


class GANImageMetrics(nn.Module):
    """FID and IS of generated vs real images with one extractor pair, labelled by its kind.

    ``features``/``logits`` are nn.Modules mapping [B, C, H, W] in [-1, 1] to [B, D]; pass
    ``InceptionFeatures`` (labels ``fid``/``is``) or ``RegressorFeatures`` (``fid_domain``/``is_domain``).
    Real features are kept across ``reset`` (the reference set is fixed).
    """

    def __init__(self, features: nn.Module, logits: nn.Module | None = None, is_splits: int = 10) -> None:
        super().__init__()
        suffix = "" if getattr(features, "label", "") == "inception" else "_domain"
        self.fid_name, self.is_name = f"fid{suffix}", f"is{suffix}"
        self.fid = FrechetInceptionDistance(feature=features, reset_real_features=False)
        self.inception_score = (InceptionScore(feature=logits, splits=is_splits)
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
