"""Helpers every system shares: where a run writes, and figure/image output for any logger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch


def run_dir(trainer: pl.Trainer) -> Path:
    """The run directory (``lightning_logs/<exp>/version_N``), created.

    Safe to call on one rank only (e.g. under ``if trainer.is_global_zero``): unlike
    ``trainer.log_dir`` it is not a collective under DDP (all ranks share the version anyway).
    """
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    first = trainer.loggers[0] if trainer.loggers else None
    if first is None:
        path = Path(trainer.default_root_dir)
    else:
        path = Path((first.log_dir if isinstance(first, (CSVLogger, TensorBoardLogger)) else first.save_dir)
                    or trainer.default_root_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir(trainer: pl.Trainer) -> Path:
    """``<run dir>/figures``, created."""
    path = run_dir(trainer) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(trainer: pl.Trainer, fig, name: str) -> Path:
    """Save a matplotlib figure into figures/ and hand it to every logger that shows images.

    Works with any logger: TensorBoard (``add_figure``), W&B (``log_image``) or none; modules
    never call a logger-specific API themselves.
    """
    import matplotlib.pyplot as plt

    path = figures_dir(trainer) / f"{name}.png"
    if trainer.is_global_zero:
        fig.savefig(path, dpi=110, bbox_inches="tight")
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # WandbLogger
                logger.log_image(key=f"figures/{name}", images=[str(path)], step=trainer.global_step)
            elif hasattr(getattr(logger, "experiment", None), "add_figure"):  # TensorBoard
                logger.experiment.add_figure(f"figures/{name}", fig, global_step=trainer.global_step)
    plt.close(fig)
    return path


def prediction_frame(trainer: pl.Trainer, stage: str, cols: dict[str, np.ndarray],
                     units: str) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The shared columns of a predictions.csv, one row per image in table order.

    ``cols`` holds per-sample arrays (``index``, ``pred`` and, when labelled, ``age`` and
    ``sex``) gathered from all ranks. Rows are sorted by index and the repeats that
    DistributedSampler pads with are dropped; the arrays are returned in that same order, so
    a system can add its own columns.
    """
    _, first = np.unique(cols["index"], return_index=True)
    cols = {k: v[first] for k, v in cols.items()}
    frame = pd.DataFrame({"index": cols["index"].astype(int)})
    dm = trainer.datamodule
    if dm is not None and hasattr(dm, "table"):
        frame["path"] = dm.table(stage)["path"].to_numpy()[frame["index"]]
    frame[f"pred_{units}"] = cols["pred"]
    if "age" in cols:
        frame[f"true_{units}"] = cols["age"]
        frame["sex"] = np.where(cols["sex"] > 0.5, "M", "F")
    return frame, cols


def gather_outputs(module: pl.LightningModule, outputs: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Per-sample tensors collected over an epoch's steps, concatenated and gathered from all
    ranks (every rank must call it), as numpy arrays for :func:`prediction_frame`."""
    cols = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
    return {k: module.all_gather(v).reshape(-1).cpu().numpy() for k, v in cols.items()}


def write_predict_outputs(module: pl.LightningModule, frame_fn, units: str) -> None:
    """predictions.csv of a predict run: ``frame_fn("predict", cols)`` of the steps' outputs."""
    outputs = module.trainer.predict_loop.predictions
    if not outputs or not isinstance(outputs[0], dict):
        return
    cols = {k: torch.cat([o[k] for o in outputs]).cpu().numpy() for k in ("index", "pred")}
    frame = frame_fn("predict", cols)
    path = run_dir(module.trainer) / "predictions.csv"
    frame.to_csv(path, index=False)
    print(f"wrote {len(frame)} predicted bone ages ({units}) to {path}")
