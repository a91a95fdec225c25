"""AgeRegressor: the generic bone-age regression recipe.

Any network whose ``forward(image, sex)`` returns one number per image. The system
standardises targets with the training set's mean and standard deviation (kept as buffers,
so checkpoints carry them), owns the loss, metrics and logging, and at test time writes
``predictions.csv``, a per-group table (age group x sex) and two figures into the run
directory. ``predict`` writes ``predictions.csv`` for the predict split or a folder.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection, MinMetric

from boneage.systems.base import (
    MetricInputs,
    gather_outputs,
    prediction_frame,
    run_dir,
    save_figure,
    write_predict_outputs,
)

LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}


def _builds(factory: Any, cls: type) -> bool:
    """Whether a (possibly nested) functools.partial from LightningCLI constructs ``cls``."""
    while isinstance(factory, functools.partial):
        if factory.func is cls or cls in factory.args:
            return True
        factory = factory.func
    return False


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


class AgeRegressor(pl.LightningModule):
    """Regress age from an image (and sex).

    Args:
        network: the network (``forward(image, sex) -> [B]``), e.g. SexAwareRegressor.
        optimizer: optimizer factory (LightningCLI ``OptimizerCallable``), default Adam lr 1e-3.
        scheduler: optional LR scheduler factory; ReduceLROnPlateau monitors ``val/loss``;
            OneCycleLR gets ``total_steps`` from the trainer and steps every batch.
        loss: "mse", "l1" or "smooth_l1" on standardised targets.
        age_groups: group edges (label units) for the per-group error table; default yearly
            groups of 48 months for months, 10 years for years.
    """

    monitor = "val/mae"
    mode = "min"

    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        loss: str = "mse",
        age_groups: list[float] | None = None,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        # Under LightningCLI the saved values are the config (class_path + init_args), so
        # load_from_checkpoint rebuilds the network; plain Python callers pass the objects.
        self.save_hyperparameters(logger=False)
        self.network = network
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss_fn = LOSSES[loss]
        self.age_groups = age_groups
        self.register_buffer("age_mean", torch.tensor(0.0))
        self.register_buffer("age_std", torch.tensor(1.0))
        metrics = MetricCollection({"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)})
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in range(3))
        self.val_mae_best = MinMetric()
        self._metric_inputs = MetricInputs.attached_to(self)  # per-step updates, handed over together
        self._outputs: list[dict[str, torch.Tensor]] = []
        self.age_units = "units"

    # --- setup ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None:
            self.age_units = getattr(dm, "age_units", self.age_units)
            if stage == "fit" and hasattr(dm, "age_stats"):
                mean, std = dm.age_stats()
                self.age_mean.fill_(mean)
                self.age_std.fill_(std)

    # --- steps ---------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, sex: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted age in label units."""
        return self.network(image, sex).float() * self.age_std + self.age_mean

    def model_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        z = self.network(batch["image"], batch["sex"]).float()
        target = (batch["age"].float() - self.age_mean) / self.age_std
        loss = self.loss_fn(z, target)
        pred = z.detach() * self.age_std + self.age_mean
        # Kept here, updated every 50 steps and logged once per epoch: self.log of a metric object, or a
        # torchmetrics update, on every step costs more than the step of a small model (make bench found
        # it). MeanMetric(nan_strategy="disable") skips torchmetrics' per-update host check (a
        # device-to-host copy): a NaN loss then shows as NaN in the epoch's value instead of being dropped.
        self._metric_inputs.add(getattr(self, f"{stage}_metrics"), pred, batch["age"].float())
        self._metric_inputs.add(getattr(self, f"{stage}_loss"), loss.detach())
        return {"loss": loss, "pred": pred}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "train")["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.model_step(batch, "val")

    def _log_epoch(self, stage: str) -> None:
        self._metric_inputs.flush()
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=stage == "train")
        self.log_dict(getattr(self, f"{stage}_metrics"), prog_bar=stage == "val")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
        if self.trainer.sanity_checking:  # a partial pass: not a candidate for the best (nor reset at train start,
            return                        # so a resumed run keeps the best of the epochs before the stop)
        self.val_mae_best(self.val_metrics["mae"].compute())
        self.log("val/mae_best", self.val_mae_best.compute(), sync_dist=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.model_step(batch, "test")
        self._outputs.append({"index": batch["index"], "pred": out["pred"], "age": batch["age"].float(),
                              "sex": batch["sex"].float()})

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        sex = batch["sex"]
        if getattr(self.network, "use_sex", False) and torch.isnan(sex).any():
            raise ValueError("this model needs the sex of each image; predict on a labelled split or a CSV with sex")
        return {"index": batch["index"], "pred": self(batch["image"], torch.nan_to_num(sex))}

    # --- outputs -------------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        self._outputs = []

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        if not self._outputs:
            return
        cols = gather_outputs(self, self._outputs)
        self._outputs = []
        if not self.trainer.is_global_zero:
            return
        frame = self._prediction_frame("test", cols)
        frame.to_csv(run_dir(self.trainer) / "predictions.csv", index=False)
        groups = self.group_table(frame)
        groups.to_csv(run_dir(self.trainer) / "errors_by_group.csv", index=False)
        for logger in self.trainer.loggers:
            if hasattr(logger, "log_table"):  # W&B shows it as a table
                logger.log_table(key="test/errors_by_group", dataframe=groups)
        self._figures(frame)

    def on_predict_epoch_end(self) -> None:
        write_predict_outputs(self, self._prediction_frame, self.age_units)

    def _prediction_frame(self, stage: str, cols: dict[str, np.ndarray]) -> pd.DataFrame:
        frame, cols = prediction_frame(self.trainer, stage, cols, self.age_units)
        if "age" in cols:
            frame["abs_error"] = np.abs(cols["pred"] - cols["age"])
        return frame

    def group_table(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Mean absolute error by age group and sex, with counts."""
        true = frame[f"true_{self.age_units}"]
        edges = self.age_groups or (list(range(0, 241, 48)) if self.age_units == "months" else list(range(0, 101, 10)))
        frame = frame.assign(age_group=pd.cut(true, bins=sorted(set(edges) | {float("inf")}), right=False))
        table = (frame.groupby(["age_group", "sex"], observed=True)["abs_error"]
                 .agg(["count", "mean"]).reset_index().rename(columns={"mean": "mae"}))
        table["age_group"] = table["age_group"].astype(str)
        return table

    def _figures(self, frame: pd.DataFrame) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        u = self.age_units
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for sex, colour in (("F", "tab:red"), ("M", "tab:blue")):
            part = frame[frame["sex"] == sex]
            ax.scatter(part[f"true_{u}"], part[f"pred_{u}"], s=8, alpha=0.6, c=colour, label=sex)
        lo, hi = frame[[f"true_{u}", f"pred_{u}"]].min().min(), frame[[f"true_{u}", f"pred_{u}"]].max().max()
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(xlabel=f"true age ({u})", ylabel=f"predicted age ({u})",
               title=f"test MAE {frame['abs_error'].mean():.2f} {u}")
        ax.legend()
        save_figure(self.trainer, fig, "predicted_vs_true")
        groups = self.group_table(frame)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        pivot = groups.pivot(index="age_group", columns="sex", values="mae")
        pivot.plot.bar(ax=ax, rot=30)
        ax.set(ylabel=f"MAE ({u})", xlabel=f"true age group ({u})", title="absolute error by age group and sex")
        save_figure(self.trainer, fig, "error_by_group")

    # --- optimisation --------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        if _builds(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
            # OneCycleLR needs the run length, which only the trainer knows; it steps per batch.
            scheduler = self.scheduler(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        scheduler = self.scheduler(optimizer)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
