"""Age accuracy of generated bone images: does G(E(x), l_k) look like age group k?

Age progression is BAPGAN's point, and the paper measures it only by the readers of its visual
Turing test. The standard measure of face-ageing work is added here: an age estimator trained
independently of the GAN, on the real training images only, assigns an age group to every image
rendered for each target group, and the share of renders landing in their target group is the
age accuracy (per target group and over all renders). The same estimator's accuracy on the real
images (against their true group) is reported beside it: it is the ceiling of the measure.

The estimator is the project's age regressor (:class:`boneage.systems.regression.AgeRegressor`)
trained as its own experiment, ``bapgan_age_regressor_<bone>`` (a ResNet-18 without the sex
input: a generated image carries its age alone); its predicted age in years is put into the
GAN's age groups. Paper is silent (it does not report this measure): chose a regressor over a
5-class classifier so the imbalanced groups share one age scale, and the test split (held out
from both the GAN and the regressor) as the images to render.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_confusion_matrix

from boneage.analysis.bapgan_grids import render_all_ages
from boneage.systems.gan_losses import age_to_group

AgeFn = Callable[[torch.Tensor], torch.Tensor]   # images [B, C, H, W] in [-1, 1] -> ages [B] in years


def predicted_groups(predict_age: AgeFn, images: torch.Tensor, group_years: float, n_groups: int,
                     size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(age group, age in years) the estimator assigns to each image; ``size``: its input size."""
    if size is not None and tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images.float(), size=tuple(size), mode="bilinear", antialias=True,
                               align_corners=False)
    age = predict_age(images).float().flatten()
    return age_to_group(age.clamp(min=0.0), group_years, n_groups), age


@torch.no_grad()
def generated_age_accuracy(network: torch.nn.Module, predict_age: AgeFn, images: torch.Tensor,
                           true_groups: torch.Tensor, n_groups: int, group_years: float,
                           smoothing: float = 0.0, batch_size: int = 64,
                           size: tuple[int, int] | None = None) -> dict:
    """Age accuracy of every image rendered at every target group, and of the real images.

    Returns ``accuracy`` (share of all renders whose estimated group is the target),
    ``per_target`` (that share for each target group), ``mean_age`` (mean estimated age of the
    renders per target group, years), ``confusion`` (rows: target group, columns: estimated
    group, counts), ``real_accuracy`` (estimated vs true group of the real images) and
    ``n_images``.
    """
    targets, estimated, ages, real_pred = [], [], [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        renders = render_all_ages(network, x, n_groups, smoothing)          # [B, G, C, H, W]
        b = len(x)
        group, age = predicted_groups(predict_age, renders.flatten(0, 1), group_years, n_groups, size)
        targets.append(torch.arange(n_groups).repeat(b))
        estimated.append(group.cpu())
        ages.append(age.cpu())
        real_pred.append(predicted_groups(predict_age, x, group_years, n_groups, size)[0].cpu())
    target, est, age = torch.cat(targets), torch.cat(estimated), torch.cat(ages)
    confusion = multiclass_confusion_matrix(est, target, n_groups)          # [target, estimated]
    real = multiclass_confusion_matrix(torch.cat(real_pred), true_groups.long().cpu(), n_groups)
    per_target = confusion.diag() / confusion.sum(1).clamp(min=1)
    return {
        "n_images": len(images),
        "accuracy": float(confusion.diag().sum() / confusion.sum()),
        "per_target": [float(v) for v in per_target],
        "mean_age": [float(age[target == k].mean()) for k in range(n_groups)],
        "confusion": confusion.tolist(),
        "real_accuracy": float(real.diag().sum() / real.sum()),
    }
