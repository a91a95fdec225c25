"""BAPGAN training recipe: five networks, three optimizers, manual optimization.

Nakazawa et al., "BAPGAN: GAN-based bone age progression of femur and phalange X-ray images",
ISBI 2022 (equations (1)-(3), section 2.3.1), on the CAAE of Zhang et al., CVPR 2017.

The pattern for every GAN in the framework: a list of ``Phase`` objects, each naming the
networks it updates, its learning rate and its loss (a method returning named terms, the
minimised one under ``"loss"``). ``training_step`` loops over the phases in order; for each it
toggles its optimizer (other networks' parameters stop requiring grad), computes the loss,
stops the run if any term is not finite, backpropagates with ``manual_backward``, clips through
``clip_gradients`` if asked, and steps. One batch = one *iteration* = one step of every phase.

BAPGAN's phases, per batch (x, age label l; l smoothed when ``label_smoothing`` > 0):

1. ``eg`` (E and G, lr 1e-4): ``lambda1 * l2(x, G(E(x), l)) - log D_img(G(E(x), l), l)
   - log D_id(E(x)) + lambda2 * CE(D_age(G(E(x), l)), l)``;
2. ``d_id`` (D_id, lr 1e-4): ``-log D_id(z*) - log(1 - D_id(E(x)))``, z* ~ U[-1, 1]^50;
3. ``d_img`` (D_img with its D_age head, lr 4e-4): ``-log D_img(x, l) - log(1 - D_img(x', l))
   + lambda2 * CE(D_age(x), l)``.

The discriminator phases reuse E(x) and x' = G(E(x), l) from phase 1 (detached), i.e. D judges
the same samples G was judged on, as in the CAAE code where all three updates come from one
forward pass. Paper is silent on the phase order: chose E/G first for that reuse.

Steps: the paper's 5.0e4 steps are iterations (batches). Lightning's ``global_step`` counts
optimizer steps, three per iteration here, so ``trainer.max_steps = 3 * 5.0e4 = 150000`` in the
YAMLs, and ``iteration = global_step // 3`` (logged as ``train/iteration``).

Divergence: a NaN/inf loss term raises ``FloatingPointError`` naming the phase, term, iteration
and checkpoint folder. The terms are checked on the device every phase and read on the host every
``check_finite_every_n_steps`` iterations (50), before every checkpoint is written and at the
epoch end (all ranks agree under DDP): reading a loss on the host every phase would stall a GPU's
queue three times per iteration. So the weights in memory may already be non-finite when the
error comes, but no checkpoint is written after the bad iteration: the ones on disk are good.
``check_finite_every_n_steps: 1`` looks after every iteration.

Mixed precision: under ``16-mixed`` Lightning's one gradient scaler scales every
``manual_backward``; each optimizer's ``step`` (through Lightning's optimizer wrapper) unscales that
optimizer's gradients, skips its step alone when they hold inf/NaN, and updates the scale, so
each phase backpropagates with the scale its predecessor left. Gradient clipping runs in
``on_before_optimizer_step``, which Lightning calls after the unscale: the clipped norm is the
norm of the true gradients (clipping before ``step`` would clip the scaled ones).

Age groups: the data module (``data.init_args.n_groups``, ``age_group_years``) and this system
(``model.init_args.network.init_args.n_groups``, ``model.init_args.age_group_years``) both map
ages to groups; ``setup`` refuses a data module whose groups differ (``check_age_groups``, one
line naming the four keys), so the two can never disagree silently.

Which weights are "the model": the paper reports the network after its 5.0e4 iterations, so the
evaluation commands (``boneage.analysis.bapgan_eval``) take ``last.ckpt`` by default;
``--ckpt best`` takes the checkpoint with the lowest ``val/recon_l2`` instead.

Paper is silent, chose:
- non-saturating G/E adversarial terms (``-log D(fake)``), as the CAAE code;
- the age-invariant reconstruction and progression renders use smoothed target labels when
  training used them (G never saw hard one-hot labels);
- ``val/recon_l2`` (mean squared error of the age-invariant reconstruction) is the monitored
  value behind the ``best`` checkpoint: FID over a validation split of 32 images is too noisy
  to pick checkpoints with;
- no learning-rate schedule, no gradient clipping (``gradient_clip_val`` off by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from boneage.metrics.fid import create_fid, fid_name, resolve_extractor, to_fid_input
from boneage.models.bapgan import BAPGAN, sample_prior
from boneage.systems.base import NonFiniteWatch, logs_this_step, save_figure
from boneage.systems.gan_losses import (
    age_to_group,
    d_adversarial_bce,
    g_adversarial_bce,
    reconstruction_l2,
    smooth_age_labels,
    soft_cross_entropy,
)

LossFn = Callable[[dict], dict[str, torch.Tensor]]


def check_age_groups(system: BAPGANSystem, datamodule: object) -> None:
    """Raise DataError when the data module's age groups differ from the system's.

    A data module without age groups (``n_groups``/``age_group_years``) is not checked.
    """
    if not (hasattr(datamodule, "n_groups") and hasattr(datamodule, "age_group_years")):
        return
    data = (int(datamodule.n_groups), float(datamodule.age_group_years))
    model = (int(system.n_groups), float(system.hparams.age_group_years))
    if data != model:
        from data_modules.base import DataError

        raise DataError(
            f"age groups differ: data.init_args.n_groups = {data[0]}, data.init_args.age_group_years = "
            f"{data[1]:g} but model.init_args.network.init_args.n_groups = {model[0]}, "
            f"model.init_args.age_group_years = {model[1]:g}; set both pairs to the same values")


@dataclass(frozen=True)
class Phase:
    """One optimizer step of an iteration: which networks, which learning rate, which loss."""

    name: str
    networks: tuple[str, ...]   # attribute names on the system's network
    lr: float
    loss: LossFn                # state dict -> {"loss": minimised total, other terms for logging}


class BAPGANSystem(pl.LightningModule):
    """Trains a :class:`~boneage.models.bapgan.BAPGAN` (any Table 1 row via its flags)."""

    monitor = "val/recon_l2"
    mode = "min"

    def __init__(self,
                 network: BAPGAN,
                 lambda_recon: float = 1.0e4,       # lambda1 (paper)
                 lambda_age: float = 100.0,         # lambda2 (paper); unused without D_age
                 label_smoothing: float = 0.2,      # 0 for the CAAE and CAAE + SA rows
                 lr_eg: float = 1.0e-4,             # E and G
                 lr_d_id: float = 1.0e-4,           # D_id
                 lr_d_img: float = 4.0e-4,          # D_img and D_age (imbalanced, TTUR)
                 betas: tuple[float, float] = (0.5, 0.999),
                 gradient_clip_val: float | None = None,
                 age_group_years: float = 4.0,      # [0-3] [4-7] [8-11] [12-15] [16-19]
                 fid_feature_extractor: str = "auto",   # inception if the weights file exists
                 inception_weights: str | None = None,
                 n_grid: int = 8,                   # test images in the progression grid
                 check_finite_every_n_steps: int = 50) -> None:  # iterations between host reads of the
        #                                                         losses' finiteness flag (see module doc)
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.automatic_optimization = False
        self.network = network
        self.n_groups = network.n_groups
        # resolved now, so a missing Inception file or a bad name fails before training starts
        self.fid_name = fid_name(resolve_extractor(fid_feature_extractor, inception_weights))
        self._fid: FrechetInceptionDistance | None = None
        self.recon = nn.ModuleDict({s: torchmetrics.MeanMetric() for s in ("val", "test")})
        self.age_acc = nn.ModuleDict({s: torchmetrics.classification.MulticlassAccuracy(self.n_groups)
                                      for s in ("val", "test")})
        self.val_recon_best = torchmetrics.MinMetric()
        self._grid_done = False
        self._finite = NonFiniteWatch(check_finite_every_n_steps)

    def setup(self, stage: str) -> None:
        check_age_groups(self, getattr(self.trainer, "datamodule", None))

    # ------------------------------------------------------------------ phases
    @property
    def phases(self) -> list[Phase]:
        hp = self.hparams
        return [Phase("eg", ("encoder", "generator"), hp.lr_eg, self.loss_eg),
                Phase("d_id", ("d_id",), hp.lr_d_id, self.loss_d_id),
                Phase("d_img", ("d_img",), hp.lr_d_img, self.loss_d_img)]

    @property
    def iteration(self) -> int:
        """Paper steps (batches) done: Lightning's global_step counts every optimizer step."""
        return self.trainer.global_step // len(self.phases)

    def labels(self, age: torch.Tensor) -> torch.Tensor:
        # no host check of the ages here (a GPU synchronisation every step): the data modules refuse
        # negative ages naming the row, and any other age maps to a group
        groups = age_to_group(age.float(), self.hparams.age_group_years, self.n_groups, check=False)
        return smooth_age_labels(groups, self.n_groups, self.hparams.label_smoothing)

    def loss_eg(self, s: dict) -> dict[str, torch.Tensor]:
        net, hp = self.network, self.hparams
        z = net.encoder(s["x"])
        x_rec = net.generator(z, s["labels"])
        logit, age_logits = net.d_img(x_rec, s["labels"])
        terms = {"recon_l2": reconstruction_l2(s["x"], x_rec),
                 "adv_img": g_adversarial_bce(logit),
                 "adv_id": g_adversarial_bce(net.d_id(z))}
        loss = hp.lambda_recon * terms["recon_l2"] + terms["adv_img"] + terms["adv_id"]
        if age_logits is not None:
            terms["age_fake"] = soft_cross_entropy(age_logits, s["labels"])
            loss = loss + hp.lambda_age * terms["age_fake"]
        s["z"], s["x_rec"] = z.detach(), x_rec.detach()
        return {"loss": loss, **terms}

    def loss_d_id(self, s: dict) -> dict[str, torch.Tensor]:
        prior = sample_prior(len(s["z"]), self.network.z_dim, device=s["z"].device, dtype=s["z"].dtype)
        net = self.network.d_id
        return {"loss": d_adversarial_bce(net(prior), net(s["z"]))}

    def loss_d_img(self, s: dict) -> dict[str, torch.Tensor]:
        net = self.network.d_img
        real_logit, age_logits = net(s["x"], s["labels"])
        fake_logit, _ = net(s["x_rec"], s["labels"])
        terms = {"adv": d_adversarial_bce(real_logit, fake_logit)}
        loss = terms["adv"]
        if age_logits is not None:
            terms["age_real"] = soft_cross_entropy(age_logits, s["labels"])
            loss = loss + self.hparams.lambda_age * terms["age_real"]
        return {"loss": loss, **terms}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        opts = []
        for phase in self.phases:
            params = [p for n in phase.networks for p in getattr(self.network, n).parameters()]
            opts.append(torch.optim.Adam(params, lr=phase.lr, betas=tuple(self.hparams.betas)))
        return opts

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> None:
        state = {"x": batch["image"], "labels": self.labels(batch["age"]).to(batch["image"].dtype)}
        optimizers = self.optimizers()
        logs: dict[str, torch.Tensor] = {}
        step, log_now = self.trainer.global_step, logs_this_step(self)  # log on the steps the loggers write
        for phase, opt in zip(self.phases, optimizers):
            self.toggle_optimizer(opt)
            terms = phase.loss(state)
            self._finite.update(terms, (phase.name, step))  # on the device: no host read here
            opt.zero_grad(set_to_none=True)
            self.manual_backward(terms["loss"])
            opt.step()  # unscales (16-mixed), on_before_optimizer_step clips, steps unless inf/NaN
            self.untoggle_optimizer(opt)
            step += 1
            if log_now:
                logs.update({f"train/{phase.name}_{k}": v.detach() for k, v in terms.items()})
        if log_now:
            # a device scalar made by a fill: logging a Python number copies it to the device, and a
            # copy from host memory waits for the device
            logs["train/iteration"] = torch.full((), float(self.iteration), device=self.device)
            logs["train/recon_l2"] = logs["train/eg_recon_l2"]
            # nothing in the progress bar: it reads its values on the host at every refresh
            self.log_dict(logs, batch_size=len(state["x"]))
        if self._finite.due():
            self.raise_if_not_finite()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after unscaling the optimizer's gradients (16-mixed): true norms
        if self.hparams.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip_val,
                                gradient_clip_algorithm="norm")

    def on_train_epoch_end(self) -> None:
        self.raise_if_not_finite()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.raise_if_not_finite()  # never write a checkpoint after a non-finite loss

    def on_train_end(self) -> None:
        self.raise_if_not_finite()

    def raise_if_not_finite(self) -> None:
        """Read the device-side finiteness record (all ranks together); raise if a loss was not finite."""
        if self._trainer is None or self.trainer.state.fn != "fit":
            return
        found = self._finite.check(self.trainer.strategy)
        if found is None:
            return
        (phase, global_step), term, kind = found
        ckpt_dir = getattr(self.trainer.checkpoint_callback, "dirpath", None)
        raise FloatingPointError(
            f"GAN diverged: non-finite loss in phase '{phase}' at iteration {global_step // len(self.phases)} "
            f"(global_step {global_step}) on at least one rank: '{term}' is {kind} (the first non-finite term; "
            f"losses are read on the host every {self._finite.every} iterations, "
            f"model.init_args.check_finite_every_n_steps, and before every checkpoint). No checkpoint was "
            f"written after it; the last good checkpoint is kept in {ckpt_dir or 'the checkpoint folder'}. "
            "Lower the learning rates or set model.gradient_clip_val, then resume with --ckpt_path last.")

    # ------------------------------------------------------------------ evaluation
    @property
    def fid(self) -> FrechetInceptionDistance:
        """The FID metric, built on first use and kept out of the module tree, so the feature
        extractor's weights (24M for Inception) stay out of every checkpoint."""
        if self._fid is None:
            metric = create_fid(self.hparams.fid_feature_extractor, self.hparams.inception_weights)
            object.__setattr__(self, "_fid", metric)
        if self._fid.device != self.device:
            self._fid.to(self.device)
        return self._fid

    def _eval_step(self, batch: dict, stage: str) -> None:
        x = batch["image"]
        labels = self.labels(batch["age"]).to(x.dtype)
        x_rec = self.network(x, labels)   # age-invariant reconstruction G(E(x), l_true)
        self.recon[stage].update(reconstruction_l2(x, x_rec))
        self.log(f"{stage}/recon_l2", self.recon[stage], batch_size=len(x), prog_bar=stage == "val")
        _, age_logits = self.network.d_img(x, labels)
        if age_logits is not None:
            groups = age_to_group(batch["age"].float(), self.hparams.age_group_years, self.n_groups)
            self.age_acc[stage].update(age_logits.float(), groups)
            self.log(f"{stage}/age_acc", self.age_acc[stage], batch_size=len(x))
        if stage == "test":
            self.fid.update(to_fid_input(x), real=True)
            self.fid.update(to_fid_input(x_rec), real=False)
            if not self._grid_done:
                self._save_grid(batch)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and self.recon["val"].update_called:
            self.val_recon_best.update(self.recon["val"].compute())
            self.log("val/recon_l2_best", self.val_recon_best.compute())

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_start(self) -> None:
        self.fid.reset()
        self._grid_done = False

    def on_test_epoch_end(self) -> None:
        if int(self.fid.fake_features_num_samples) >= 2:
            self.log(f"test/{self.fid_name}", self.fid.compute(), sync_dist=False)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        from boneage.analysis.bapgan_grids import render_all_ages

        renders = render_all_ages(self.network, batch["image"], self.n_groups, self.hparams.label_smoothing)
        return {"index": batch["index"], "renders": renders}

    def _save_grid(self, batch: dict) -> None:
        from boneage.analysis.bapgan_grids import progression_figure, render_all_ages

        self._grid_done = True
        x = batch["image"][: self.hparams.n_grid]
        groups = age_to_group(batch["age"][: len(x)].float(), self.hparams.age_group_years, self.n_groups)
        renders = render_all_ages(self.network, x, self.n_groups, self.hparams.label_smoothing)
        fig = progression_figure(x, renders, groups,
                                 title="real | renders at each age group (red: age-invariant reconstruction)")
        save_figure(self.trainer, fig, "progression_grid")
