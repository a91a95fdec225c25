"""TJNetSystem: TJ-Net's training recipe (joint sex and bone-age classification).

Paper: Tang, Wu, Shen, "Automatic Radiographic Bone Age Assessment Using Deep Joint Learning
with Attention Modules". The network (:class:`boneage.models.tjnet.TJNet`, or a baseline with
the same sex input and dense head, :class:`boneage.models.tjnet.BackboneAgeClassifier`) maps an
image and a sex to age-class logits (and, for TJ-Net with joint learning, sex logits).

Recipe:

- ages become classes (:class:`boneage.losses_tjnet.AgeClasses`, half-open intervals: the age in
  completed class units): 77 classes of 3 months for RSNA (``class_width: 3``, labels in months,
  [0, 231) months), yearly classes 0-22 for the Tongji-like data (``class_width: 1``, labels in
  years); the class count is the network's ``num_classes``. Labels outside the classes are
  counted at setup: more than 1 % of a split stops with a DataError naming rows, fewer are
  clipped into the end classes with a warning;
- loss :func:`boneage.losses_tjnet.tjnet_loss`: ``alpha * e^2`` (differentiable MAD in class
  units, from the expected class) plus batch-class-ratio-weighted sex and age cross entropies;
- ``alpha`` (a buffer, saved in checkpoints) starts at 1.5 and is raised to the number of
  classes by :class:`boneage.systems.tjnet_callbacks.AlphaPlateau` once the cross entropies are
  stable (rule in that module); the system adds this callback itself;
- the predicted age is read from the class output: ``readout: expected`` (default) is the
  expected age under the softmax, ``argmax`` the age of the most likely class. The age a class
  stands for is the start of its interval plus ``class_age_shift``, the mean of (label - start of
  its class) over the training labels (0 for labels on the class grid: whole years, RSNA months
  in multiples of 3; about half a class for continuous labels), set at the start of fit and
  saved in checkpoints. Paper is silent: chose the expected value because it is what the MAD
  term trains, and has no 3-month quantisation; accuracy always uses the arg-max class;
- the paper's MAD and RMSE compare class labels: ``{stage}/mad_class_years`` and
  ``{stage}/rmse_class_years`` are |true class - arg-max class| x class width in years, logged
  beside the readout's ``{stage}/mad_years`` and ``{stage}/rmse_years``;
- several devices: the batch (paper: 16) is the global batch, split over the devices by
  ``boneage.cli``; the loss's class-ratio weights count the whole batch's classes (all-gathered);
- test and predict use the age head only (block 5 discarded);
- transfer: ``init_checkpoint`` (a TJ-Net checkpoint, e.g. from tjnet_rsna) initialises the
  network at the start of ``fit`` (tensors whose shapes differ, i.e. the age output layer when the
  class count changes, stay freshly initialised), and ``freeze_blocks: k`` freezes blocks 1..k.
  ``python -m boneage.systems.tjnet [--run ID]`` prints the best checkpoint of a tjnet_rsna fit
  run (default: the newest) for it; ``make tjnet-transfer [SOURCE_RUN=ID]`` uses that, and the
  transfer's config.yaml records the path.

Logged: ``{stage}/loss``, ``{stage}/mae`` and ``{stage}/rmse`` (label units), ``{stage}/mad_years``
and ``{stage}/rmse_years`` (the readout, in years), ``{stage}/mad_class_years`` and
``{stage}/rmse_class_years`` (class labels, the paper's way), ``{stage}/acc`` (class accuracy), and for
training ``train/ce`` (the cross-entropy part that AlphaPlateau watches), ``train/mad_cls`` and
``train/alpha``. The test run writes ``predictions.csv`` and, into figures/, the error
distribution per age group (paper Fig. 6, one run) and block-4 activation heat maps (paper Fig. 5).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection, MinMetric
from torchmetrics.classification import MulticlassAccuracy

from boneage.losses_tjnet import AgeClasses, expected_class, tjnet_loss
from boneage.systems.base import (
    MetricInputs,
    gather_outputs,
    prediction_frame,
    run_dir,
    save_figure,
    write_predict_outputs,
)
from boneage.systems.tjnet_callbacks import AlphaPlateau

YEARS_PER_UNIT = {"years": 1.0, "months": 1.0 / 12.0}
# Labels outside the age classes: above this share of a split, setup stops (the class settings do
# not fit the labels); below it they are clipped into the end classes with a warning (a few adult
# or mislabelled rows). Paper is silent: chose 1 %.
MAX_OUTSIDE_SHARE = 0.01


def _adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def load_network_weights(network: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Copy every tensor of a TJ-Net checkpoint whose name and shape match into ``network``.

    Accepts a Lightning checkpoint (``state_dict`` with ``network.`` prefixes) or a plain state
    dict. Returns (loaded, kept_fresh) names.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"init_checkpoint {path} not found. It is a checkpoint of a TJ-Net trained on RSNA: run "
            "`make train EXP=tjnet_rsna` (it writes lightning_logs/tjnet_rsna/<run id>/checkpoints/best-*.ckpt), "
            "then `make tjnet-transfer [SOURCE_RUN=<run id>]`, or give a file as "
            "--model.init_args.init_checkpoint PATH (`python -m boneage.systems.tjnet [--run ID]` prints "
            "a run's best checkpoint).")
    # A local file the user names; Lightning checkpoints carry more than tensors.
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    if any(k.startswith("network.") for k in state):  # a Lightning checkpoint of TJNetSystem
        state = {k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")}
    own = network.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("blocks.") for k in loaded):
        raise ValueError(f"{path} holds no TJ-Net feature blocks matching this network (width, flags): "
                         f"expected keys like {next(iter(own))!r}; is it a checkpoint of another model?")
    network.load_state_dict(loaded, strict=False)
    return sorted(loaded), sorted(set(own) - set(loaded))


def transfer_source(runs_dir: str | Path = "lightning_logs", run: str | None = None,
                    experiment: str = "tjnet_rsna") -> Path:
    """The best checkpoint of fit run ``run`` (default: the newest) of ``experiment``: the
    ``init_checkpoint`` of a transfer. Says which run and file on stderr; raises RunError."""
    from boneage.runs import resolve_run

    source = resolve_run(runs_dir, experiment, run, stage="fit")
    ckpt = source.checkpoint("best")
    newest = "" if run else " (the newest fit run)"
    print(f"transfer source: run {source.label}{newest}, checkpoint {ckpt}", file=sys.stderr)
    return ckpt


def main(argv: list[str] | None = None) -> int:
    """``python -m boneage.systems.tjnet [--runs-dir D] [--experiment E] [--run ID]``: print the
    transfer source checkpoint (for ``--model.init_args.init_checkpoint``)."""
    import argparse

    from boneage.runs import RunError, add_run_arguments

    parser = argparse.ArgumentParser(description="Print the best checkpoint of a TJ-Net fit run "
                                                 "(the source of a transfer).")
    add_run_arguments(parser, experiment="tjnet_rsna")
    args = parser.parse_args(argv)
    try:
        print(transfer_source(args.runs_dir, args.run, args.experiment))
    except RunError as err:
        print(f"tjnet transfer: {err}", file=sys.stderr)
        return 2
    return 0


class TJNetSystem(pl.LightningModule):
    """Joint sex / bone-age classification with TJ-Net's loss.

    Args:
        network: ``forward(image, sex)`` -> age logits, or (age logits, sex logits); has
            ``num_classes``; ``predict(image, sex)`` (age logits only) is used where present.
        class_width: width of an age class in label units (3 months for RSNA, 1 year).
        class_offset: start of the first class in label units (classes are half-open intervals).
        alpha: start value of alpha (paper: 1.5).
        alpha_final: alpha after the plateau (None: the number of classes, paper: 77).
        alpha_patience: epochs without 1 % improvement of train/ce before alpha is raised.
        alpha_min_delta: relative improvement that counts for the plateau rule.
        readout: "expected" or "argmax": how the age is read from the class output.
        freeze_blocks: freeze blocks 1..k of the network (transfer learning; 0 = none).
        init_checkpoint: checkpoint to initialise the network from at the start of fit.
        optimizer: optimizer factory (paper: Adam, lr 1e-3).
        scheduler: LR scheduler factory (paper: lr to 1/1000 when stable: ReduceLROnPlateau
            with factor 0.001).
        scheduler_monitor: metric ReduceLROnPlateau watches.
        heatmap_images: number of test images in the block-4 heat-map figure (0 = none).
        age_group_years: width of the age groups in the error-distribution figure.
    """

    monitor = "val/mae"
    mode = "min"

    def __init__(
        self,
        network: nn.Module,
        class_width: float = 3.0,
        class_offset: float = 0.0,
        alpha: float = 1.5,
        alpha_final: float | None = None,
        alpha_patience: int = 3,
        alpha_min_delta: float = 0.01,
        readout: str = "expected",
        freeze_blocks: int = 0,
        init_checkpoint: str | None = None,
        optimizer: OptimizerCallable = _adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_monitor: str = "val/mae",
        heatmap_images: int = 4,
        age_group_years: float = 2.0,
    ) -> None:
        super().__init__()
        if readout not in ("expected", "argmax"):
            raise ValueError(f"readout must be 'expected' or 'argmax', got {readout!r}")
        if not hasattr(network, "num_classes"):
            raise ValueError(f"{type(network).__name__} has no 'num_classes': TJNetSystem needs a classifier "
                             "network such as boneage.models.tjnet.TJNet")
        self.save_hyperparameters(ignore=["network", "optimizer", "scheduler"])
        self.network = network
        self.num_classes = int(network.num_classes)
        self.classes = AgeClasses(class_width, self.num_classes, class_offset)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        # label units added to a class's start to give the age it stands for (set at fit setup)
        self.register_buffer("class_age_shift", torch.tensor(0.0))
        if freeze_blocks:
            if not hasattr(network, "freeze_blocks"):
                raise ValueError(f"freeze_blocks={freeze_blocks} needs a network with blocks (TJNet); "
                                 f"{type(network).__name__} has none")
            network.freeze_blocks(freeze_blocks)
        regression = MetricCollection({"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)})
        years = MetricCollection({"mad": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)},
                                 postfix="_years")
        class_years = MetricCollection({"mad": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)},
                                       postfix="_class_years")
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_metrics", regression.clone(prefix=f"{stage}/"))
            setattr(self, f"{stage}_years", years.clone(prefix=f"{stage}/"))
            setattr(self, f"{stage}_class_years", class_years.clone(prefix=f"{stage}/"))
            setattr(self, f"{stage}_acc", MulticlassAccuracy(self.num_classes, average="micro", validate_args=False))
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))
        self.train_ce = MeanMetric(nan_strategy="disable")
        self.train_mad_cls = MeanMetric(nan_strategy="disable")
        self.val_mae_best = MinMetric()
        self._metric_inputs = MetricInputs.attached_to(self)  # per-step updates, handed over together
        self.age_units = "years"
        self._outputs: list[dict[str, torch.Tensor]] = []
        self._heat_batch: dict[str, torch.Tensor] | None = None

    # --- setup ---------------------------------------------------------------------------
    def configure_callbacks(self) -> list[pl.Callback]:
        return [AlphaPlateau(monitor="train/ce", patience=self.hparams.alpha_patience,
                             min_delta=self.hparams.alpha_min_delta, final=self.hparams.alpha_final)]

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None:
            self.age_units = getattr(dm, "age_units", self.age_units)
            if self.age_units not in YEARS_PER_UNIT:
                raise ValueError(f"unknown age units {self.age_units!r} of {type(dm).__name__}")
            splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
            for split in splits:
                self.check_class_range(dm.table(split), split)
            if stage == "fit":
                self.set_class_age_shift(dm.table("train")["age"].to_numpy(np.float64))
        init = self.hparams.init_checkpoint
        if stage == "fit" and init and self._trainer is not None and self.trainer.ckpt_path is None:
            loaded, fresh = load_network_weights(self.network, init)
            print(f"initialised {len(loaded)} network tensors from {init}; freshly initialised: "
                  f"{', '.join(fresh) if fresh else 'none'}")

    def check_class_range(self, table: pd.DataFrame, split: str) -> None:
        """Count the labels of a split outside the age classes: above ``MAX_OUTSIDE_SHARE`` a
        DataError naming rows, else a warning with the count (they are clipped into the end classes)."""
        from data_modules.base import DataError, row_name

        ages = table["age"].to_numpy(np.float64, copy=True)
        outside = np.flatnonzero(self.classes.outside(torch.from_numpy(ages)).numpy())
        if len(outside) == 0:
            return
        c, units = self.classes, self.age_units
        rows = ", ".join(f"{row_name(table, i)} ({ages[i]:g} {units})" for i in outside[:5])
        what = (f"{len(outside)} of {len(ages)} {split} labels ({len(outside) / len(ages):.1%}) fall outside the "
                f"{c.num_classes} age classes of width {c.width:g}, [{c.offset:g}, {c.upper:g}) {units}: {rows}"
                f"{' ...' if len(outside) > 5 else ''}")
        if len(outside) > MAX_OUTSIDE_SHARE * len(ages):
            raise DataError(f"{what}; fix or remove those rows, or set model.init_args.class_width/class_offset and "
                            "the network's num_classes for these labels (RSNA months: 3, 0 and 77; yearly 0-22: "
                            "1, 0 and 23)")
        rank_zero_warn(f"{what}; they count as the nearest end class")

    def set_class_age_shift(self, ages: np.ndarray) -> None:
        """``class_age_shift`` from training labels: the mean of (label - start of its class)."""
        t = torch.tensor(ages, dtype=torch.float64)
        inside = t[~self.classes.outside(t)]
        if len(inside):
            shift = (inside - self.classes.to_age(self.classes.to_class(inside)).double()).mean()
            self.class_age_shift.fill_(float(shift))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        # checkpoints from before the class-age shift existed read their classes at their start
        if "class_age_shift" not in state_dict and "alpha" in state_dict:
            state_dict = {**state_dict, "class_age_shift": torch.tensor(0.0)}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def on_train_start(self) -> None:
        self.val_mae_best.reset()

    # --- steps ---------------------------------------------------------------------------
    @property
    def years_per_unit(self) -> float:
        return YEARS_PER_UNIT[self.age_units]

    def _logits(self, image: torch.Tensor, sex: torch.Tensor, train: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not train and hasattr(self.network, "predict"):
            return self.network.predict(image, sex), None
        out = self.network(image, sex)
        return (out[0], out[1]) if isinstance(out, tuple) else (out, None)

    def age_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted age in label units (expected class or arg-max class centre)."""
        k = expected_class(logits) if self.hparams.readout == "expected" else logits.argmax(1)
        return self.classes.to_age(k) + self.class_age_shift

    def forward(self, image: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        """Predicted age in label units (age head only)."""
        return self.age_from_logits(self._logits(image, sex, train=False)[0])

    def model_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        age_logits, sex_logits = self._logits(batch["image"], batch["sex"], train=stage == "train")
        target = self.classes.to_class(batch["age"])
        whole = stage == "train" and self._trainer is not None and self.trainer.world_size > 1
        parts = tjnet_loss(age_logits.float(), target, self.alpha,
                           None if sex_logits is None else sex_logits.float(), batch["sex"],
                           # DDP: class counts of the whole batch (all devices), not of this device's share
                           batch_age_targets=self.all_gather(target).reshape(-1) if whole else None,
                           batch_sex_targets=self.all_gather(batch["sex"]).reshape(-1) if whole else None)
        pred = self.age_from_logits(age_logits.detach())
        pred_class = age_logits.detach().argmax(1)
        age = batch["age"].float()
        # Kept here, updated every 50 steps, logged once per epoch (_log_epoch): self.log of metric
        # objects, or seven torchmetrics updates, on every step cost more than a small model's step (make bench).
        keep = self._metric_inputs.add
        keep(getattr(self, f"{stage}_metrics"), pred, age)
        keep(getattr(self, f"{stage}_years"), pred * self.years_per_unit, age * self.years_per_unit)
        width_years = self.classes.width * self.years_per_unit  # class labels, the paper's MAD/RMSE
        keep(getattr(self, f"{stage}_class_years"), pred_class * width_years, target * width_years)
        keep(getattr(self, f"{stage}_acc"), pred_class, target)
        keep(getattr(self, f"{stage}_loss"), parts["loss"].detach())
        if stage == "train":
            keep(self.train_ce, parts["age_ce"] + parts["sex_ce"])
            keep(self.train_mad_cls, parts["mad"])
        return {"loss": parts["loss"], "pred": pred, "pred_class": pred_class}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "train")["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.model_step(batch, "val")

    def _log_epoch(self, stage: str) -> None:
        self._metric_inputs.flush()
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=stage == "train")
        self.log_dict(getattr(self, f"{stage}_metrics"), prog_bar=stage == "val")
        self.log_dict(getattr(self, f"{stage}_years"))
        self.log_dict(getattr(self, f"{stage}_class_years"))
        self.log(f"{stage}/acc", getattr(self, f"{stage}_acc"))
        if stage == "train":
            self.log("train/ce", self.train_ce)
            self.log("train/mad_cls", self.train_mad_cls)

    def epoch_value(self, key: str) -> float | None:
        """This epoch's value of a train metric so far, before it is logged (for AlphaPlateau,
        whose epoch-end hook Lightning runs before the module's ``on_train_epoch_end``)."""
        metric = {"train/ce": self.train_ce, "train/mad_cls": self.train_mad_cls, "train/loss": self.train_loss,
                  "train/acc": self.train_acc}.get(key)
        self._metric_inputs.flush()
        if metric is None or not metric.update_called:
            return None
        return float(metric.compute())

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
        if self.trainer.sanity_checking:
            return
        self.val_mae_best(self.val_metrics["mae"].compute())
        self.log("val/mae_best", self.val_mae_best.compute(), sync_dist=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.model_step(batch, "test")
        self._outputs.append({"index": batch["index"], "pred": out["pred"], "pred_class": out["pred_class"],
                              "age": batch["age"].float(), "sex": batch["sex"].float()})
        k = self.hparams.heatmap_images
        if batch_idx == 0 and k > 0:
            self._heat_batch = {"image": batch["image"][:k], "sex": batch["sex"][:k], "age": batch["age"][:k]}

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        sex = batch["sex"]
        if torch.isnan(sex).any():
            raise ValueError("TJ-Net needs the sex of each image (block 6 sex input); predict on a labelled "
                             "split or a CSV with a sex column")
        return {"index": batch["index"], "pred": self(batch["image"], sex)}

    # --- outputs -------------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        self._outputs, self._heat_batch = [], None

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        if not self._outputs:
            return
        cols = gather_outputs(self, self._outputs)
        self._outputs = []
        if not self.trainer.is_global_zero:
            return
        frame = self._frame("test", cols)
        path = run_dir(self.trainer) / "predictions.csv"
        frame.to_csv(path, index=False)
        self._error_figure(frame)
        if self._heat_batch is not None and hasattr(self.network, "forward_features"):
            self._heatmap_figure(self._heat_batch)
        print(f"wrote {len(frame)} test predictions to {path} and figures to "
              f"{run_dir(self.trainer) / 'figures'}")

    def on_predict_epoch_end(self) -> None:
        write_predict_outputs(self, self._frame, self.age_units)

    def _frame(self, stage: str, cols: dict[str, np.ndarray]) -> pd.DataFrame:
        frame, cols = prediction_frame(self.trainer, stage, cols, self.age_units)
        y = self.years_per_unit
        frame["pred_years"] = cols["pred"] * y
        if "age" in cols:
            frame["age_years"] = cols["age"] * y
            frame["true_class"] = self.classes.to_class(torch.from_numpy(cols["age"])).numpy()
            frame["pred_class"] = cols["pred_class"].astype(int)
            frame["abs_error_years"] = np.abs(frame["pred_years"] - frame["age_years"])
        return frame

    def _error_figure(self, frame: pd.DataFrame) -> None:
        from boneage.analysis.tjnet_tables import error_by_age_group

        max_age = float(np.ceil(frame["age_years"].max() / self.hparams.age_group_years)
                        * self.hparams.age_group_years)
        error_by_age_group({"TJ-Net test": frame},
                           run_dir(self.trainer) / "figures" / "error_by_age_group.png",
                           group_years=self.hparams.age_group_years, max_age=max(max_age, 1.0))

    @torch.no_grad()
    def block4_activation(self, image: torch.Tensor) -> torch.Tensor:
        """Channel-mean block-4 activation, min-max normalised per image, resized to the input:
        the paper's "heat maps of the activated features learned by block 4" (Fig. 5)."""
        was_training = self.network.training
        self.network.eval()
        feat = self.network.forward_features(image)[-1].float().mean(1, keepdim=True)
        self.network.train(was_training)
        heat = torch.nn.functional.interpolate(feat, size=image.shape[-2:], mode="bilinear",
                                               align_corners=False)
        lo = heat.amin((2, 3), keepdim=True)
        hi = heat.amax((2, 3), keepdim=True)
        return ((heat - lo) / (hi - lo).clamp_min(1e-8))[:, 0]

    def _heatmap_figure(self, batch: dict[str, torch.Tensor]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        heat = self.block4_activation(batch["image"]).cpu().numpy()
        images = batch["image"][:, 0].float().cpu().numpy()
        n = len(images)
        fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.3), squeeze=False)
        cbam = "with CBAM" if getattr(self.network, "use_cbam", False) else "without CBAM"
        for ax, img, h, age, sex in zip(axes[0], images, heat, batch["age"].tolist(), batch["sex"].tolist()):
            ax.imshow(img, cmap="gray")
            ax.imshow(h, cmap="jet", alpha=0.45)
            ax.set_title(f"{'M' if sex > 0.5 else 'F'}, {age * self.years_per_unit:.1f} y", fontsize=9)
            ax.axis("off")
        fig.suptitle(f"block-4 activation ({cbam})")
        save_figure(self.trainer, fig, "block4_activation")

    # --- optimisation --------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]  # frozen blocks stay out
        optimizer = self.optimizer(params)
        if self.scheduler is None:
            return optimizer
        scheduler = self.scheduler(optimizer)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": self.hparams.scheduler_monitor}}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


if __name__ == "__main__":
    raise SystemExit(main())
