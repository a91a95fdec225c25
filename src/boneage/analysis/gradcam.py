"""Batched Grad-CAM (Selvaraju et al., ICCV 2017) for any network and any scalar score.

``alpha_k = mean over positions of dY/dA_k``, ``map = ReLU(sum_k alpha_k A_k)``, bilinearly
resized to the input and min-max normalised per image to [0, 1] -- the same maps as the
grad-cam package's ``GradCAM`` (checked in tests/test_ct_gradcam.py).

Written by hand rather than calling the grad-cam package because the package returns numpy
arrays on the CPU, puts the model in eval mode, and needs one target object per sample; ROI
cropping (scintigraphy) and Fig. 5 of the whole-body CT paper want one batched call that stays
on the model's device. It is a single ``torch.autograd.grad`` call, so it never touches the
parameters' ``.grad`` (safe inside a training step).

Used by the whole-body CT paper (Fig. 5 overlays) and by the scintigraphy ROI paper (Do et al.,
Eq. 1-2: the crops of stage 2), also from inside Lightning's predict loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from boneage.analysis.figures import write_figure

__all__ = ["grad_cam", "overlay", "resolve_layer", "save_overlay_grid"]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """A layer given as a module or a dotted name (``"features.42"``) of ``model``."""
    if isinstance(layer, nn.Module):
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][-8:]
        raise ValueError(f"target layer {layer!r} is not a submodule of {type(model).__name__}; "
                         f"its last layers are {names}") from None


def _scores(output: torch.Tensor, targets: torch.Tensor | Sequence[int] | ScoreFn | None) -> torch.Tensor:
    """Per-sample scalar scores [B] from the model output."""
    if callable(targets):
        scores = targets(output)
    elif targets is None:
        if output.dim() == 1:  # regression: the prediction itself
            scores = output
        else:  # classification: the highest logit
            scores = output.flatten(1).max(dim=1).values
    else:
        # a copy: class indices made under inference_mode cannot be saved for backward
        idx = torch.as_tensor(targets, device=output.device, dtype=torch.long).clone()
        scores = output.flatten(1).gather(1, idx.view(-1, 1)).squeeze(1)
    if scores.dim() != 1 or scores.shape[0] != output.shape[0]:
        raise ValueError(f"the score function must return one scalar per image, shape [{output.shape[0]}], "
                         f"got {tuple(scores.shape)}")
    return scores


def grad_cam(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    target_layer: nn.Module | str,
    images: torch.Tensor,
    targets: torch.Tensor | Sequence[int] | ScoreFn | None = None,
    size: tuple[int, int] | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Grad-CAM maps [B, H, W] in [0, 1] for a batch of images.

    Args:
        model: network (or any callable of the images); its train/eval mode is left as is --
            call ``model.eval()`` first for dropout/batch-norm free maps.
        target_layer: the layer whose output activations ``A`` [B, K, h, w] are weighted
            (a module of ``model`` or its dotted name, e.g. the last conv block's ReLU).
        images: input batch [B, C, H, W].
        targets: what each image's score is: None (regression output [B] itself, or the top
            logit), class indices (one per image), or a function output -> scores [B].
        size: output (H, W); the input size by default.
        normalize: min-max normalise each map to [0, 1] (as the grad-cam package); without it
            the ReLU'd map is returned in activation units.

    Returns:
        Tensor [B, H, W] on the images' device, detached.
    """
    layer = resolve_layer(model, target_layer) if isinstance(model, nn.Module) else target_layer
    if not isinstance(layer, nn.Module):
        raise TypeError("target_layer must be a module when model is a plain callable")
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        captured.append(output)
        # Later in-place ops (ReLU(inplace=True)) must not overwrite the captured activations.
        return output.clone()

    handle = layer.register_forward_hook(hook)
    try:
        # Lightning's predict loop runs under inference_mode, which enable_grad alone cannot
        # undo; inference tensors are copied outside it before autograd may use them.
        with torch.inference_mode(False), torch.enable_grad():
            output = model(images.clone())
            if not captured:
                raise RuntimeError(f"target layer {type(layer).__name__} was not called in the forward pass")
            acts = captured[-1]
            if acts.dim() != 4:
                raise ValueError(f"target layer output must be [B, K, h, w], got {tuple(acts.shape)}")
            scores = _scores(output, targets)
            (grads,) = torch.autograd.grad(scores.sum(), acts)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)  # alpha_k per image
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=size or tuple(images.shape[-2:]), mode="bilinear", align_corners=False)
    cam = cam[:, 0]
    if normalize:
        flat = cam.flatten(1)
        lo = flat.min(dim=1).values.view(-1, 1, 1)
        cam = cam - lo
        hi = cam.flatten(1).max(dim=1).values.view(-1, 1, 1)
        cam = cam / (hi + 1e-7)
    return cam


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """RGB uint8 overlay of a [0, 1] map on a grayscale image (values in any range)."""
    import matplotlib

    img = np.asarray(image, dtype=np.float32)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-7)
    heat = matplotlib.colormaps[cmap](np.clip(cam, 0.0, 1.0))[..., :3]
    rgb = (1.0 - alpha) * img[..., None] + alpha * heat
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_overlay_grid(images: np.ndarray | torch.Tensor, cams: np.ndarray | torch.Tensor, path: str | Path,
                      titles: Sequence[str] | None = None, ncols: int = 8, alpha: float = 0.5) -> Path:
    """Save image / Grad-CAM overlay pairs side by side (whole-body CT paper, Fig. 5).

    ``images`` and ``cams`` are [B, H, W] (or [B, 1, H, W] images); each sample becomes two
    panels, the image and its overlay, with an optional title (e.g. true and predicted age).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    maps = cams.detach().cpu().numpy() if isinstance(cams, torch.Tensor) else np.asarray(cams)
    if imgs.ndim == 4:
        imgs = imgs[:, 0]
    if imgs.shape != maps.shape:
        raise ValueError(f"images {imgs.shape} and maps {maps.shape} must have the same [B, H, W] shape")
    n = len(imgs)
    cols = min(ncols, n)
    rows = -(-n // cols)
    h, w = imgs.shape[1:]
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.6 * w / h + 0.5, rows * 1.8),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        axes[r, 2 * c].imshow(imgs[i], cmap="gray")
        axes[r, 2 * c + 1].imshow(overlay(imgs[i], maps[i], alpha=alpha))
        if titles is not None:
            axes[r, 2 * c].set_title(titles[i], fontsize=7)
    return write_figure(fig, path)


def _lightning_callback_base() -> type:
    import pytorch_lightning as pl

    return pl.Callback


class GradCAMOverlays(_lightning_callback_base()):
    """Trainer callback: Grad-CAM overlays of the first test images (whole-body CT paper, Fig. 5).

    Works with any system whose ``network`` attribute is the regression network and whose
    batches carry ``image``, ``age`` and ``sex``; writes ``figures/gradcam.png`` (and the maps as
    ``gradcam.npz``) into the run directory. Add it under ``trainer.callbacks`` in a YAML.

    Args:
        target_layer: dotted name of the layer inside ``network`` (VGG16-BN: "features.42",
            the last ReLU of block 5).
        n_images: how many test images to show.
        ncols: image/overlay pairs per row.
    """

    def __init__(self, target_layer: str = "features.42", n_images: int = 8, ncols: int = 8) -> None:
        super().__init__()
        self.target_layer = target_layer
        self.n_images = n_images
        self.ncols = ncols
        self._images: list[torch.Tensor] = []
        self._sex: list[torch.Tensor] = []
        self._age: list[torch.Tensor] = []

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._images, self._sex, self._age = [], [], []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        have = sum(len(x) for x in self._images)
        if have < self.n_images:
            k = self.n_images - have
            self._images.append(batch["image"][:k].detach().cpu().clone())
            self._sex.append(batch["sex"][:k].detach().cpu().clone())
            self._age.append(batch["age"][:k].detach().cpu().clone())

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        from boneage.systems.base import figures_dir

        if not self._images or not trainer.is_global_zero:
            return
        network = pl_module.network
        was_training = network.training
        network.eval()
        with torch.inference_mode(False), torch.enable_grad():
            images = torch.cat(self._images).to(pl_module.device).clone()
            sex = torch.cat(self._sex).to(pl_module.device).clone()
            cams = grad_cam(lambda x: network(x, sex), resolve_layer(network, self.target_layer), images)
            with torch.no_grad():
                pred = pl_module(images, sex).float().cpu()
        network.train(was_training)
        age = torch.cat(self._age).float()
        units = getattr(pl_module, "age_units", "")
        titles = [f"age {a:.1f} / pred {p:.1f} {units}".strip() for a, p in zip(age.tolist(), pred.tolist())]
        out = figures_dir(trainer)
        save_overlay_grid(images.cpu(), cams.cpu(), out / "gradcam.png", titles=titles, ncols=self.ncols)
        np.savez_compressed(out / "gradcam.npz", cams=cams.cpu().numpy(), age=age.numpy(), pred=pred.numpy())
        self._images, self._sex, self._age = [], [], []
