"""Batched Grad-CAM for the ROI localization (Do et al., Eq. 1-2).

``alpha_k = mean over positions of dY_c/dA_k`` (Eq. 1), ``map = ReLU(sum_k alpha_k A_k)``
(Eq. 2 plus the usual ReLU of Selvaraju et al.), bilinearly resized to the input and min-max
normalised per image to [0, 1] -- the same maps as the grad-cam package's ``GradCAM``
(checked in tests/test_roi_gradcam.py).

Private to the ROI paper until the shared ``boneage.analysis.gradcam`` reaches main; it
keeps that function's signature. Written by hand rather than calling the grad-cam package
because the package returns CPU numpy arrays, switches the model to eval mode and needs one
target object per sample; cropping wants one batched call that stays on the model's device.
It uses ``torch.autograd.grad``, so parameters' ``.grad`` are never touched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gradcam(model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            targets: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM maps [B, H, W] in [0, 1] for the class ``targets`` [B] (None: the top logit)."""
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor:
        captured.append(out)
        return out.clone()  # a later in-place ReLU must not overwrite the captured activations

    handle = target_layer.register_forward_hook(hook)
    try:
        # Lightning's predict runs under inference_mode, which enable_grad alone cannot undo;
        # inference tensors must be cloned outside it before autograd may use them.
        with torch.inference_mode(False), torch.enable_grad():
            images = images.clone()
            logits = model(images)
            if not captured:
                raise RuntimeError(f"target layer {type(target_layer).__name__} was not called by the model")
            acts = captured[-1]
            if acts.dim() != 4:
                raise ValueError(f"target layer output must be [B, K, h, w], got {tuple(acts.shape)}")
            targets = logits.argmax(dim=1) if targets is None else targets.clone()
            scores = logits.gather(1, targets.long().view(-1, 1).to(logits.device)).sum()
            (grads,) = torch.autograd.grad(scores, acts)
            weights = grads.mean(dim=(2, 3), keepdim=True)  # Eq. 1 (1/Z sum over positions)
            cam = F.relu((weights * acts.detach()).sum(dim=1, keepdim=True))  # Eq. 2 + ReLU
            size = tuple(images.shape[-2:])
            cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
            cam = cam - cam.flatten(1).min(dim=1).values.view(-1, 1, 1)
            return cam / (cam.flatten(1).max(dim=1).values.view(-1, 1, 1) + 1e-7)
    finally:
        handle.remove()
