"""Bone age progression/regression renders (BAPGAN paper, Figs. 1, 3 and 4).

- ``render_all_ages``: every image translated to all five age groups, G(E(x), l_k).
- ``eight_year_pairs``: (real, progressed by two groups = 8 years) and (real, regressed by two
  groups) pairs, the material of the visual Turing test's Table 3.
- ``save_progression_grid``: a figure with one row per image: the real image (its group in the
  title) then its renders at [0-3] ... [16-19]; the age-invariant reconstruction (the render at
  the image's own group) is framed in red as in the paper's Fig. 3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from boneage.analysis.bapgan_tsne import GROUP_NAMES
from boneage.systems.gan_losses import smooth_age_labels


@torch.no_grad()
def render_all_ages(network: torch.nn.Module, images: torch.Tensor, n_groups: int = 5,
                    smoothing: float = 0.0) -> torch.Tensor:
    """``[B, C, H, W]`` in [-1, 1] -> ``[B, n_groups, C, H, W]`` renders at every age group.

    Target labels are smoothed like the training labels (``smoothing``), so G sees the label
    distribution it was trained on.
    """
    z = network.encoder(images)
    outs = []
    for g in range(n_groups):
        label = smooth_age_labels(torch.full((len(images),), g, device=images.device), n_groups, smoothing)
        outs.append(network.generator(z, label.to(z.dtype)))
    return torch.stack(outs, dim=1).float()


@torch.no_grad()
def eight_year_pairs(network: torch.nn.Module, images: torch.Tensor, groups: torch.Tensor,
                     n_groups: int = 5, smoothing: float = 0.0,
                     shift: int = 2) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(real, transformed) pairs in [0, 1]: progression g -> g + shift, regression g -> g - shift."""
    renders = render_all_ages(network, images, n_groups, smoothing)
    to01 = lambda t: ((t[0].float().cpu().numpy() + 1.0) / 2.0).clip(0, 1)  # noqa: E731  [C,H,W] -> [H,W]
    pairs: dict[str, list] = {"progression": [], "regression": []}
    for i, g in enumerate(groups.tolist()):
        if g + shift < n_groups:
            pairs["progression"].append((to01(images[i]), to01(renders[i, g + shift])))
        if g - shift >= 0:
            pairs["regression"].append((to01(images[i]), to01(renders[i, g - shift])))
    return pairs


def progression_figure(images: torch.Tensor, renders: torch.Tensor, groups: torch.Tensor, title: str = ""):
    """Real image + renders at all groups per row; the own-group reconstruction framed in red."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, n_groups = renders.shape[:2]
    fig, axes = plt.subplots(b, n_groups + 1, figsize=(1.6 * (n_groups + 1), 1.6 * b + 0.4), squeeze=False)
    show = lambda t: ((t[0].float().cpu().numpy() + 1) / 2).clip(0, 1)  # noqa: E731
    for i in range(b):
        g = int(groups[i])
        axes[i][0].imshow(show(images[i]), cmap="gray", vmin=0, vmax=1)
        axes[i][0].set_title(f"real {GROUP_NAMES[g]}", fontsize=7)
        for k in range(n_groups):
            ax = axes[i][k + 1]
            ax.imshow(show(renders[i, k]), cmap="gray", vmin=0, vmax=1)
            if i == 0:
                ax.set_title(GROUP_NAMES[k], fontsize=7)
            if k == g:
                for spine in ax.spines.values():
                    spine.set_edgecolor("red")
                    spine.set_linewidth(2)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_progression_grid(images: torch.Tensor, renders: torch.Tensor, groups: torch.Tensor,
                          path: str | Path, title: str = "") -> Path:
    """``progression_figure`` written to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = progression_figure(images, renders, groups, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
