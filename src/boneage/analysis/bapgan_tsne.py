"""t-SNE of real and generated bone images (BAPGAN paper, section 2.3.3 and Fig. 5).

42 images per age group (210 per set; 42 is the smallest real femur group), pixels scaled to
[0, 1] and flattened, scikit-learn's TSNE with perplexity 50 and 500 iterations. Paper is
silent on whether the three sets share one embedding: "respectively" reads as one embedding
per set, so ``joint=False`` (default) embeds each set alone; ``joint=True`` embeds all sets
together so positions are comparable across panels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.manifold import TSNE

from boneage.analysis.figures import write_figure

GROUP_NAMES = ("[0-3]", "[4-7]", "[8-11]", "[12-15]", "[16-19]")


def sample_per_group(groups: Sequence[int] | np.ndarray, n_per_group: int = 42, seed: int = 0,
                     n_groups: int = 5) -> np.ndarray:
    """Indices of ``n_per_group`` random items of each group (fewer where a group has fewer)."""
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    picks = []
    for g in range(n_groups):
        members = np.flatnonzero(groups == g)
        picks.append(rng.choice(members, size=min(n_per_group, len(members)), replace=False))
    return np.concatenate(picks)


def tsne_embed(images: np.ndarray, perplexity: float = 50.0, max_iter: int = 500,
               seed: int = 0) -> np.ndarray:
    """2-D t-SNE of images ``[N, H, W]`` (or ``[N, 1, H, W]``) with pixels in [0, 1]."""
    x = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    if x.min() < -1e-6 or x.max() > 1 + 1e-6:
        raise ValueError(f"t-SNE expects pixels in [0, 1] (paper), got [{x.min():.3f}, {x.max():.3f}]")
    perplexity = min(perplexity, (len(x) - 1) / 3.0)   # sklearn requires perplexity < n
    return TSNE(n_components=2, perplexity=perplexity, max_iter=max_iter, init="pca",
                random_state=seed).fit_transform(x)


def tsne_sets(sets: Mapping[str, tuple[np.ndarray, np.ndarray]], joint: bool = False,
              perplexity: float = 50.0, max_iter: int = 500, seed: int = 0) -> dict[str, np.ndarray]:
    """Embed several ``name -> (images, groups)`` sets; returns ``name -> [N, 2]``."""
    if not joint:
        return {k: tsne_embed(v[0], perplexity, max_iter, seed) for k, v in sets.items()}
    emb = tsne_embed(np.concatenate([v[0] for v in sets.values()]), perplexity, max_iter, seed)
    out, start = {}, 0
    for k, v in sets.items():
        out[k] = emb[start:start + len(v[0])]
        start += len(v[0])
    return out


def plot_tsne(embeddings: Mapping[str, np.ndarray], groups: Mapping[str, np.ndarray], path: str | Path,
              title: str = "") -> Path:
    """Fig. 5: one panel per set, points coloured by age group."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(embeddings), figsize=(4.2 * len(embeddings), 4.0), squeeze=False)
    cmap = plt.get_cmap("viridis", len(GROUP_NAMES))
    for ax, (name, xy) in zip(axes[0], embeddings.items()):
        g = np.asarray(groups[name])
        for k, label in enumerate(GROUP_NAMES):
            sel = g == k
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, color=cmap(k), label=label)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(title="age", fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    return write_figure(fig, path)
