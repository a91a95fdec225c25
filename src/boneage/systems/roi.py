"""AgeGroupLocalizer: stage 1 of the scintigraphy ROI paper (Do et al.).

Trains a 4-class age-group classifier (ResNet50 + GAP + FC 4 on images resized to 300 wide
x 1000 high, cross-entropy), and its predict step is the ROI export: per image a Grad-CAM map
(Eq. 1-2) of the predicted class on the network input, the binary mask of Eq. 3 (gamma 150
on 0-255), the bounding box mapped back to the ORIGINAL image, the crop from the original
file, a Fig. 3 style figure, and a ``labels.csv`` of the crops in the hospital CSV format with
the source split, so stage 2 trains and tests on exactly the same images as stage 1.

Choices where the paper is silent:

- Grad-CAM target (``cam_target``): the paper says "the age group"; labels are unknown at
  inference, so the map is of what the network predicts. ``expected_age`` (default) takes the
  expected age under the softmax (probabilities times group centres): both age cues grow with age,
  so for the youngest group the predicted-class score weighs the age region negatively, ReLU
  removes it and min-max scaling magnifies the rest (skull, text marker); the expected age points
  at the age region for every group (docs/roi.md gives the measured hit rates). ``predicted``: the
  predicted class's logit, the literal reading.
- Checkpoint selection (``monitor``): validation loss (``val/loss``); accuracy on a few hundred
  images moves in steps of a few tenths of a percent and picks lucky epochs.
- Optimizer: Adam lr 1e-4 (the paper gives Adam, batch 32, lr 1e-4 for "the implementation").
- Where the ROI data set goes: ``<predict run>/roi_dataset/`` (``lightning_logs/<exp>/predict-<id>/``),
  one per export, never shared: the run's run.json names the stage-1 fit run and checkpoint it
  came from, and stage 2 takes an export by run (``boneage.analysis.roi.export_csv``).
- Empty masks keep the whole image (see boneage.analysis.roi); several blobs: the one holding
  the heat map's peak.

The export records per crop the predicted group and the heat map's peak; how well that localizes
is measured outside the system, against a phantom's truth (``python -m boneage.analysis.roi
localization``): the system never reads ground truth.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from boneage.analysis.gradcam import grad_cam
from boneage.analysis.roi import RoiExporter
from boneage.models.roi import AgeGroupClassifier
from boneage.phantoms.common import METADATA_FILE
from boneage.systems.base import MetricInputs, figures_dir, run_dir

SPLITS = ("train", "val", "test")


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-4)


class AgeGroupLocalizer(pl.LightningModule):
    """Age-group classifier whose Grad-CAM maps crop the ROI data set.

    Args:
        network: an AgeGroupClassifier (``forward(image) -> logits``, ``cam_layer``).
        optimizer: optimizer factory; default Adam lr 1e-4.
        scheduler: optional LR scheduler factory (ReduceLROnPlateau monitors ``val/loss``).
        age_edges: group edges in label units; ``len(age_edges) - 1`` must equal the network's
            classes. Ages outside go to the first/last group.
        gamma: Eq. 3 threshold on the 0-255 heat-map scale.
        blobs: "peak", "largest" or "union" (several blobs in the mask).
        empty: "full", "peak" or "raise" (empty mask).
        margin: widen each box by this fraction of its size per side.
        roi_dir: where the ROI data set is written; default ``<predict run dir>/roi_dataset``.
        max_figures: Fig. 3 figures to draw (None: one per sample, 0: none).
        cam_target: "expected_age" (default) or "predicted" (the predicted class's logit).
        monitor: checkpoint selection metric, "val/loss" (default, lowest) or "val/acc" (highest).
    """

    def __init__(
        self,
        network: AgeGroupClassifier,
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        age_edges: list[float] | None = None,
        gamma: float = 150.0,
        blobs: str = "peak",
        empty: str = "full",
        margin: float = 0.0,
        roi_dir: str | None = None,
        max_figures: int | None = None,
        cam_target: str = "expected_age",
        monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network", "optimizer", "scheduler"])
        edges = list(age_edges) if age_edges is not None else [40.0, 50.0, 60.0, 70.0, 80.0]
        if len(edges) - 1 != network.num_classes or sorted(edges) != edges:
            raise ValueError(f"age_edges {edges} must be increasing and give {network.num_classes} groups "
                             f"(the network's num_classes)")
        if blobs not in ("peak", "largest", "union") or empty not in ("full", "peak", "raise"):
            raise ValueError(f"blobs must be peak/largest/union and empty full/peak/raise, "
                             f"got {blobs!r}, {empty!r}")
        if cam_target not in ("expected_age", "age_direction", "predicted") or monitor not in ("val/loss", "val/acc"):
            raise ValueError(f"cam_target must be expected_age/predicted and monitor val/loss/val/acc, "
                             f"got {cam_target!r}, {monitor!r}")
        self.monitor, self.mode = monitor, ("min" if monitor == "val/loss" else "max")
        self.network = network
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.register_buffer("inner_edges", torch.tensor(edges[1:-1], dtype=torch.float32))
        self.register_buffer("centres", torch.tensor([(a + b) / 2 for a, b in zip(edges, edges[1:])]),
                             persistent=False)
        accuracy = MulticlassAccuracy(num_classes=network.num_classes, average="micro", validate_args=False)
        metrics = MetricCollection({"acc": accuracy})
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in range(3))
        self.val_acc_best = MaxMetric()
        self._metric_inputs = MetricInputs.attached_to(self)  # per-step updates, handed over together
        self._exporter: RoiExporter | None = None

    # --- training ------------------------------------------------------------------------
    def age_group(self, age: torch.Tensor) -> torch.Tensor:
        """Group index of each age (edges are left-closed; out-of-range ages clamp)."""
        return torch.bucketize(age.float(), self.inner_edges, right=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(image)

    def model_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self.network(batch["image"])
        target = self.age_group(batch["age"])
        loss = F.cross_entropy(logits, target)
        # Kept here, updated every 50 steps, logged once per epoch (_log_epoch): per-step self.log of
        # metric objects, or torchmetrics updates, cost more than a small model's step (make bench found it).
        self._metric_inputs.add(getattr(self, f"{stage}_metrics"), logits.detach(), target)
        self._metric_inputs.add(getattr(self, f"{stage}_loss"), loss.detach())
        return loss

    def _log_epoch(self, stage: str) -> None:
        self._metric_inputs.flush()
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=stage == "train")
        self.log_dict(getattr(self, f"{stage}_metrics"), prog_bar=stage == "val")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.model_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.model_step(batch, "test")

    def on_train_start(self) -> None:
        self.val_acc_best.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
        self.val_acc_best(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        scheduler = self.scheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}

    # --- the ROI export (predict) --------------------------------------------------------
    def roi_dir(self) -> Path:
        if self.hparams.roi_dir:
            return Path(self.hparams.roi_dir)
        return run_dir(self.trainer) / "roi_dataset"

    def on_predict_start(self) -> None:
        if self.trainer.world_size > 1:
            raise RuntimeError("the ROI export writes one data set from one process: run predict with "
                               "--trainer.devices 1 (training may use several GPUs)")
        out = self.roi_dir()
        if (out / "crops").is_dir():  # a new export replaces the old one: no stale crops
            shutil.rmtree(out / "crops")
        max_fig = self.hparams.max_figures
        self._exporter = RoiExporter(out, gamma=self.hparams.gamma, blobs=self.hparams.blobs,
                                     empty=self.hparams.empty, margin=self.hparams.margin,
                                     figures=figures_dir(self.trainer) / "roi" if max_fig != 0 else None,
                                     max_figures=max_fig,
                                     letterboxed=bool(getattr(self.trainer.datamodule, "keep_aspect", False)),
                                     window=getattr(self.trainer.datamodule, "window", "dicom"))
        self._order_offset: dict[str, int] = {}

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        dm = self.trainer.datamodule
        split = dm.predict_splits()[dataloader_idx] if hasattr(dm, "predict_splits") else "predict"
        table = dm.table(split)
        was_training = self.network.training
        self.network.eval()
        grid: list[tuple[int, int]] = []
        hook = self.network.cam_layer.register_forward_hook(lambda _m, _i, out: grid.append(tuple(out.shape[-2:])))
        try:
            logits = self.network(batch["image"]).detach()
        finally:
            hook.remove()
        pred = logits.argmax(dim=1)
        target = {"expected_age": self.expected_age, "age_direction": self.age_direction,
                  "predicted": pred}[self.hparams.cam_target]
        cams = grad_cam(self.network, self.network.cam_layer, batch["image"], target).float().cpu().numpy()
        self.network.train(was_training)
        offset = self._split_offset(split, dm)
        for k, i in enumerate(batch["index"].tolist()):
            row = table.iloc[i]
            sex = "" if pd.isna(row["sex"]) else ("M" if float(row["sex"]) > 0.5 else "F")
            source = dm.source(row) if hasattr(dm, "source") else row["path"]  # a scan's one or two files
            # the heat map's grid: its peak is only known to about a cell (boneage.analysis.roi.localization)
            self._exporter.add(source, float(row["age"]), sex, cams[k], order=offset + i, split=split,
                               pred_group=int(pred[k]), fold=self._fold(dm), grid_h=grid[0][0], grid_w=grid[0][1])
        return {"pred_group": pred.cpu(), "index": batch["index"].cpu()}

    def expected_age(self, logits: torch.Tensor) -> torch.Tensor:
        """Expected age under the softmax: the Grad-CAM score of ``cam_target="expected_age"``."""
        return logits.float().softmax(dim=1) @ self.centres.to(logits.device)

    def age_direction(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits projected on the centred group centres: an age score that, unlike the softmax's
        expected age, does not flatten when one group's probability nears 1."""
        centres = self.centres.to(logits.device)
        return logits.float() @ (centres - centres.mean())

    @staticmethod
    def _fold(dm: Any) -> int:
        return int(getattr(dm, "fold", None) or 0)

    def _split_offset(self, split: str, dm: Any) -> int:
        """Crops are numbered train, then val, then test, so names are unique across splits."""
        if split not in self._order_offset:
            names = dm.predict_splits() if hasattr(dm, "predict_splits") else [split]
            start = 0
            for name in names:
                self._order_offset[name] = start
                start += len(dm.table(name))
        return self._order_offset[split]

    def on_predict_end(self) -> None:
        if self._exporter is None or not self._exporter.rows:
            return
        dm = self.trainer.datamodule
        extra = {}
        root = Path(getattr(dm, "root", ""))
        meta_path = root / METADATA_FILE
        if meta_path.is_file():  # keep the phantom's noise floor beside the ROI data set
            meta = json.loads(meta_path.read_text())
            meta["extra"] = {**meta.get("extra", {}), "roi_export_of": str(root)}
            extra[METADATA_FILE] = json.dumps(meta, indent=2) + "\n"
        csv = self._exporter.finish(extra)
        print(self._exporter.summary())
        (run_dir(self.trainer) / "roi_export.txt").write_text(f"{csv}\n")
        self._exporter = None
