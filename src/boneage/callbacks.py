"""Small callbacks the CLI adds: sample images of the training data for whichever logger is active."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from boneage.systems.base import save_figure


class TrainingSamples(Callback):
    """A grid of the first training batch (after augmentation) with age and sex, as figure
    ``training_samples`` in figures/ and in every image-capable logger (TensorBoard, W&B).

    Args:
        n: number of images in the grid.
    """

    def __init__(self, n: int = 16) -> None:
        self.n = n
        self._done = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._done or not isinstance(batch, dict) or "image" not in batch:
            return
        self._done = True
        if not trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        images = batch["image"][: self.n].detach().float().cpu()
        cols = min(8, len(images))
        rows = -(-len(images) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < len(images):
                ax.imshow(images[i, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
                title = []
                if "age" in batch:
                    title.append(f"{float(batch['age'][i]):.1f}")
                if "sex" in batch:
                    title.append("M" if float(batch["sex"][i]) > 0.5 else "F")
                ax.set_title(" ".join(title), fontsize=7)
        fig.suptitle("training samples (age, sex)", fontsize=8)
        save_figure(trainer, fig, "training_samples")
