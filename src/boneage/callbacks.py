"""Small callbacks the CLI adds: sample images of the training data for whichever logger is active,
one line per epoch when the progress bar is off, and a progress bar that redraws on a clock."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, TQDMProgressBar

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


class EpochLines(Callback):
    """One line per finished training epoch (added when the progress bar is off, as in ``make demo``
    and on clusters): epoch, steps, the system's monitored metric and the epoch's losses.

    The line is printed once the epoch's own logging is complete (a system logs its epoch means in
    its ``on_train_epoch_end``, which Lightning calls after the callbacks'): at the next epoch's
    start or at the end of training.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self._pending: tuple[int, int, float] | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module)
        self._start = time.time()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._pending = (trainer.current_epoch, trainer.global_step, time.time() - self._start)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module)

    def _flush(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if pending is None or not trainer.is_global_zero:
            return
        epoch, step, seconds = pending
        metrics = trainer.callback_metrics
        keys = [k for k in (getattr(pl_module, "monitor", None), "train/loss", "val/loss") if k]
        shown = [f"{k} {float(metrics[k]):.4g}" for k in dict.fromkeys(keys) if k in metrics]
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        print(f"epoch {epoch + 1}{total}  step {step}  " + "  ".join(shown) + f"  ({seconds:.0f} s)", flush=True)


class TimedProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, redrawn at most every ``interval`` seconds instead of at every batch.

    Redrawing the bar (formatting, a terminal write and the logged values for its postfix) costs
    about a millisecond of Python per batch: as much as a small model's whole step and, on a GPU,
    time the host does not spend queueing work. Checking the clock costs a microsecond. The last batch
    of an epoch is always drawn. The CLI uses this bar wherever the progress bar is on and the config
    names no progress bar of its own. Paper is silent (not a paper setting): chose 0.5 s because the bar
    still moves smoothly to the eye.

    Args:
        interval: least seconds between two redraws of a bar.
    """

    def __init__(self, interval: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if interval < 0:
            raise ValueError(f"TimedProgressBar interval must be >= 0 seconds, got {interval}")
        self.interval = float(interval)
        self._drawn = float("-inf")

    def _should_update(self, current: int, total: int) -> bool:
        if not super()._should_update(current, total):
            return False
        now = time.monotonic()
        if current == total or now - self._drawn >= self.interval:
            self._drawn = now
            return True
        return False
