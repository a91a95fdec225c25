"""Progressive GAN training recipe (paper 001: PGGAN on RSNA hand radiographs).

Manual optimization with explicit phases per step, as the official training loop:
a critic (D) phase with the WGAN-GP loss, then a generator (G) phase, then the generator's
weight EMA. The growth schedule (``GrowthSchedule``) maps the number of real images shown
to the current level, phase (stabilise / fade-in), alpha and batch size; the module keeps
``images_shown`` and writes it with the schedule into every checkpoint, so a resumed run
continues in the right phase with the right alpha.

Paper: "the same training schedule, optimizer and hyperparameters as the original
implementation", "4 Tesla V100 GPUs". The defaults here and in ``experiments/pggan_rsna.yaml``
are the official code's ``preset-v2-4gpus`` with its fp32 per-GPU caps (tkarras/
progressive_growing_of_gans, ``config.py``/``train.py``): 600k images per stabilise and per
fade-in phase, total batches 512/256/128/64/32/16 at 4-128 px and 16 from 256 px, learning rate
1e-3 with 1.5e-3/2e-3/3e-3 at 256/512/1024 px (G and D alike), 12,000k images in all,
minibatch-stddev group 4. ``experiments/presets/pggan_official_1gpu.yaml`` is the official
``preset-v1-1gpu`` (800k + 800k, batches 16/14/6/3, lr 1e-3, group 16, 19,000k images).
Common to both: Adam(0, 0.99, eps 1e-8), G EMA 0.999, Adam state reset at the start of every
fade-in and every stabilise phase (``reset_opt_for_new_lod``), real images faded like the
generator's output.

Batches are totals over all devices (divided by the world size, as the official multi-GPU code
divides its minibatch over its GPUs); images per phase count all devices' images. The data
loader's batch is independent of the schedule: its images are queued and consumed in steps of
the schedule's per-device batch, so every loaded image is shown once and ``data.batch_size``
only sets how many images are read at a time (paper is silent: chose a queue because Lightning
fixes a loader's batch for a whole run while the schedule's batch changes with resolution).

Divergence: the losses are checked for NaN/inf on the device every step and read on the host every
``check_finite_every_n_steps`` steps (50), before every checkpoint or snapshot is written and at the
epoch end (``NonFiniteWatch``): no host synchronisation per step, and no checkpoint after a bad step.

Mixed precision: under ``16-mixed`` Lightning's gradient scaler scales each ``manual_backward``, and
each optimizer's ``step`` unscales its own gradients and skips that step alone when they hold
inf/NaN. The gradient penalty differentiates the critic's scores inside the step, outside
``manual_backward``: it takes the gradient of the scores times the current scale and divides the
scale out in float32 (as the official code's ``apply_loss_scaling``/``undo_loss_scaling``), so
small fp16 gradients do not flush to zero. Under a scaler the penalty (and the D total holding it)
overflows to inf while the scale is too high; that is the scaler's business (the D step is
skipped and the scale lowered), so the divergence check then looks at the other terms only.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from boneage.metrics.gan_metrics import (
    GANImageMetrics,
    InceptionFeatures,
    RegressorFeatures,
    msssim_diversity,
    msssim_pairs,
)
from boneage.metrics.swd import SlicedWassersteinDistance
from boneage.models.pggan import PGGANDiscriminator, PGGANGenerator, fade_images, num_levels
from boneage.systems.base import NonFiniteWatch, logs_this_step
from boneage.systems.pggan_losses import wgan_g_loss, wgan_gp_d_loss

# official preset-v2-4gpus with the fp32 caps (max 4 per GPU at 1024, 8 at 512, 16 at 256): totals
PAPER_BATCH_SIZES = {4: 512, 8: 256, 16: 128, 32: 64, 64: 32, 128: 16, 256: 16, 512: 16, 1024: 16}
PAPER_LRS = {256: 0.0015, 512: 0.002, 1024: 0.003}


@dataclass(frozen=True)
class GrowthState:
    """Where training is: level (0 = 4 px), resolution, phase, alpha of the new block, batch size."""

    level: int
    resolution: int
    phase: str  # "stabilise" or "fade"
    alpha: float
    batch_size: int
    phase_index: int  # 0, 1, 2 ...: changes exactly when the phase changes
    phase_start: int  # images shown when this phase began


class GrowthSchedule:
    """Images-shown -> growth state. Phases: stabilise(start), [fade(l), stabilise(l)] up to final.

    The final stabilise phase is open-ended (training stops at ``total_images`` or the trainer's
    limits). ``batch_sizes`` maps resolution -> total batch; missing resolutions use the next
    lower resolution's entry. A fade-in phase already uses the new resolution's batch, as the
    official schedule does.
    """

    def __init__(
        self,
        final_resolution: int = 1024,
        start_resolution: int = 4,
        stabilise_images: int = 600_000,
        fade_images: int = 600_000,
        batch_sizes: dict[int, int] | None = None,
    ) -> None:
        self.final_level = num_levels(final_resolution) - 1
        self.start_level = num_levels(start_resolution) - 1
        if self.start_level > self.final_level:
            raise ValueError(
                f"start_resolution {start_resolution} is above final_resolution {final_resolution}")
        if stabilise_images <= 0 or fade_images <= 0:
            raise ValueError("stabilise_images and fade_images must be positive")
        self.final_resolution = final_resolution
        self.start_resolution = start_resolution
        self.stabilise_images = int(stabilise_images)
        self.fade_images = int(fade_images)
        self.batch_sizes = {int(k): int(v) for k, v in (batch_sizes or PAPER_BATCH_SIZES).items()}
        if not self.batch_sizes or min(self.batch_sizes) > start_resolution:
            raise ValueError(f"batch_sizes {self.batch_sizes} gives no batch size for {start_resolution} px")

    def batch_size(self, resolution: int) -> int:
        return self.batch_sizes[max(r for r in self.batch_sizes if r <= resolution)]

    def resolutions(self) -> list[int]:
        """Every resolution the schedule trains at, lowest first."""
        return [4 * 2**level for level in range(self.start_level, self.final_level + 1)]

    def segments(self) -> list[tuple[str, int, int]]:
        """(phase, level, length in images) in order; the last is open-ended."""
        segs = [("stabilise", self.start_level, self.stabilise_images)]
        for level in range(self.start_level + 1, self.final_level + 1):
            segs += [("fade", level, self.fade_images), ("stabilise", level, self.stabilise_images)]
        return segs

    def growth_images(self) -> int:
        """Images shown until the final resolution is fully faded in and stabilised once."""
        return sum(n for _, _, n in self.segments())

    def state(self, images_shown: int) -> GrowthState:
        start = 0
        segs = self.segments()
        for i, (phase, level, length) in enumerate(segs):
            if images_shown < start + length or i == len(segs) - 1:
                alpha = min(1.0, (images_shown - start) / length) if phase == "fade" else 1.0
                res = 4 * 2**level
                return GrowthState(level, res, phase, float(alpha), self.batch_size(res), i, start)
            start += length
        raise AssertionError("unreachable")

    def config(self) -> dict[str, Any]:
        return {"final_resolution": self.final_resolution, "start_resolution": self.start_resolution,
                "stabilise_images": self.stabilise_images, "fade_images": self.fade_images,
                "batch_sizes": dict(self.batch_sizes)}


def _adam_reset(optimizer: torch.optim.Optimizer) -> None:
    """Forget Adam's moments and step counts (official ``reset_optimizer_state``)."""
    optimizer.state.clear()


class PGGANSystem(pl.LightningModule):
    """Progressive GAN with WGAN-GP, growth schedule and generator EMA.

    Args:
        generator: a ``PGGANGenerator`` (its ``resolution`` is the final resolution).
        discriminator: a ``PGGANDiscriminator`` of the same resolution.
        start_resolution: resolution of the first phase (4).
        stabilise_images: real images shown per stabilise phase (official 4-GPU preset 600k).
        fade_images: real images shown per fade-in phase (official 4-GPU preset 600k).
        batch_sizes: total batch over all devices per resolution (official 4-GPU preset: 512, 256,
            128, 64, 32 at 4-64 px, 16 from 128 px). Each must divide over the devices into a
            multiple of the discriminator's minibatch-stddev group (checked at start-up).
        total_images: stop after this many real images (None: when the final resolution has been
            faded in and stabilised once).
        lr: Adam learning rate of G and D at resolutions ``lrs`` does not name (1e-3).
        lrs: learning rate per resolution, for G and D alike (official 4-GPU preset: 1.5e-3 at
            256, 2e-3 at 512, 3e-3 at 1024 px); a fade-in uses its new resolution's rate.
        betas: Adam betas ((0, 0.99)).
        eps: Adam epsilon (1e-8).
        gp_weight: gradient penalty weight lambda (10).
        drift_weight: drift penalty epsilon (0.001).
        n_critic: D phases per G phase (1).
        ema_beta: generator EMA decay (0.999).
        reset_adam_on_growth: clear Adam state at the start of every fade-in and every stabilise
            phase (official ``reset_opt_for_new_lod``).
        samples: number of fixed latents in the sample grids written at every phase change.
        check_finite_every_n_steps: steps between host reads of the losses' finiteness record (50;
            see the module docstring).
    """

    monitor: str | None = None  # no "best" GAN checkpoint: last checkpoints only
    mode = "min"

    def __init__(
        self,
        generator: PGGANGenerator,
        discriminator: PGGANDiscriminator,
        start_resolution: int = 4,
        stabilise_images: int = 600_000,
        fade_images: int = 600_000,
        batch_sizes: dict[int, int] | None = None,
        total_images: int | None = None,
        lr: float = 1e-3,
        lrs: dict[int, float] | None = None,
        betas: tuple[float, float] = (0.0, 0.99),
        eps: float = 1e-8,
        gp_weight: float = 10.0,
        drift_weight: float = 0.001,
        n_critic: int = 1,
        ema_beta: float = 0.999,
        reset_adam_on_growth: bool = True,
        samples: int = 16,
        check_finite_every_n_steps: int = 50,
    ) -> None:
        super().__init__()
        if generator.resolution != discriminator.resolution:
            raise ValueError(f"generator resolution {generator.resolution} != discriminator resolution "
                             f"{discriminator.resolution}")
        self.save_hyperparameters(ignore=["generator", "discriminator"])
        self.automatic_optimization = False
        self.generator = generator
        self.discriminator = discriminator
        self.generator_ema = copy.deepcopy(generator).eval().requires_grad_(False)
        self.schedule = GrowthSchedule(generator.resolution, start_resolution, stabilise_images, fade_images,
                                       batch_sizes)
        self.lrs = {int(k): float(v) for k, v in (PAPER_LRS if lrs is None else lrs).items()}
        self.total_images = total_images if total_images is not None else self.schedule.growth_images()
        self.images_shown = 0
        self._phase_index: int | None = None
        self._queue: Tensor | None = None  # loaded images not yet shown (fewer than one step's batch)
        self._finite = NonFiniteWatch(check_finite_every_n_steps)
        g = torch.Generator().manual_seed(1234)
        self.register_buffer("sample_latents", torch.randn(samples, generator.latent_dim, generator=g))

    # --- state ---------------------------------------------------------------------------
    @property
    def growth(self) -> GrowthState:
        return self.schedule.state(self.images_shown)

    def lr_at(self, resolution: int) -> float:
        """Learning rate of G and D at ``resolution`` (``lrs`` entry, else ``lr``)."""
        return self.lrs.get(resolution, self.hparams.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.raise_if_not_finite()  # never write a checkpoint after a non-finite loss
        checkpoint["pggan_growth"] = {"images_shown": self.images_shown, "state": asdict(self.growth),
                                      "schedule": self.schedule.config()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("pggan_growth")
        if saved is None:
            raise KeyError("checkpoint has no 'pggan_growth' entry: it was not written by PGGANSystem")
        if saved["schedule"] != self.schedule.config():
            raise ValueError(f"the checkpoint's growth schedule {saved['schedule']} differs from this "
                             f"configuration's {self.schedule.config()}: resume with the same schedule")
        self.images_shown = int(saved["images_shown"])
        self._phase_index = self.growth.phase_index

    # --- generation ----------------------------------------------------------------------
    def forward(self, z: Tensor, level: int | None = None, alpha: float = 1.0, ema: bool = True) -> Tensor:
        """Images from latents with the EMA generator (default) at ``level`` (default final)."""
        return (self.generator_ema if ema else self.generator)(z, level, alpha)

    def real_at(self, images: Tensor, state: GrowthState) -> Tensor:
        """Data images (final resolution) area-downsampled to the current resolution and faded."""
        self._check_size(images)
        h = images.shape[-1]
        if h != state.resolution:
            images = F.avg_pool2d(images, h // state.resolution)
        return fade_images(images, state.alpha) if state.phase == "fade" else images

    def _check_size(self, images: Tensor) -> None:
        h, w = images.shape[-2:]
        if h != w or h != self.schedule.final_resolution:
            raise ValueError(f"data images are {h}x{w}; the PGGAN needs square images of the final "
                             f"resolution {self.schedule.final_resolution}: set data.init_args.image_size to "
                             f"[{self.schedule.final_resolution}, {self.schedule.final_resolution}]")

    # --- start-up checks -----------------------------------------------------------------
    def check_batches(self, world_size: int) -> None:
        """Every resolution's total batch divides over ``world_size`` devices into a per-device batch
        the minibatch-stddev layer can group: at least 2 images, a multiple of the group size, and
        under DDP at least the group size (official: ``minibatch_stddev_layer`` takes groups of
        ``min(group, per-GPU batch)`` and needs the batch divisible by it)."""
        group = self.discriminator.mbstd_group
        for res in self.schedule.resolutions():
            total = self.schedule.batch_size(res)
            where = f"model.init_args.batch_sizes gives {total} images at {res} px"
            if total % world_size:
                raise ValueError(f"{where}, which does not divide over {world_size} devices: make it a "
                                 f"multiple of {world_size}")
            per_device = total // world_size
            if group <= 0:
                continue
            if per_device < 2:
                raise ValueError(f"{where}: {per_device} per device on {world_size} devices, which makes the "
                                 "minibatch-stddev feature constant: raise batch_sizes or use fewer devices")
            need = group if world_size > 1 else min(group, per_device)
            if per_device % need:
                raise ValueError(
                    f"{where}: {per_device} per device on {world_size} device(s), not a multiple of the "
                    f"minibatch-stddev group model.init_args.discriminator.init_args.mbstd_group={group}: make "
                    f"batch_sizes[{res}] a multiple of {need * world_size} or choose another mbstd_group")

    def on_fit_start(self) -> None:
        self.check_batches(self.trainer.world_size)
        self._queue = None

    # --- training ------------------------------------------------------------------------
    def per_device_batch(self, state: GrowthState) -> int:
        world = self.trainer.world_size if self._trainer is not None else 1
        return max(1, state.batch_size // world)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Queue the loader's images and take as many D/G steps as the schedule's batch allows."""
        images = batch["image"]
        self._check_size(images)
        queue = images if self._queue is None else torch.cat([self._queue, images])
        opt_g, opt_d = self.optimizers()
        last = None
        while not self.trainer.should_stop:
            state = self.growth
            bs = self.per_device_batch(state)
            if len(queue) < bs:
                break
            self._on_phase(state)
            last = (self._step(self.real_at(queue[:bs], state), state, opt_g, opt_d), state)
            queue = queue[bs:]
            if self.images_shown >= self.total_images:
                self.trainer.should_stop = True
        self._queue = queue if len(queue) else None
        if last is not None and logs_this_step(self):  # only the steps the loggers write (logs_this_step)
            self._log_step(*last)
        if self._finite.due():
            self.raise_if_not_finite()

    def on_train_epoch_end(self) -> None:
        self.raise_if_not_finite()

    def _step(self, real: Tensor, state: GrowthState, opt_g, opt_d) -> dict[str, Tensor]:
        """One D phase (or ``n_critic``), one G phase and the EMA update on one batch of reals."""
        n = len(real)
        level, alpha = state.level, state.alpha
        lr = self.lr_at(state.resolution)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr

        def critic(x: Tensor) -> Tensor:
            return self.discriminator(x, level, alpha)

        scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # 16-mixed: Lightning's GradScaler
        # the current scale as a device tensor (no host read), for the gradient penalty
        scale = None if scaler is None else scaler.scale(torch.ones((), device=real.device))
        # --- D phase(s)
        self.toggle_optimizer(opt_d)
        for _ in range(self.hparams.n_critic):
            with torch.no_grad():
                fake = self.generator(self._latents(n, real), level, alpha)
            parts = wgan_gp_d_loss(critic, real, fake, self.hparams.gp_weight, self.hparams.drift_weight,
                                   grad_scale=scale)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(parts["loss"])
            opt_d.step()
        self.untoggle_optimizer(opt_d)
        # --- G phase
        self.toggle_optimizer(opt_g)
        g_loss = wgan_g_loss(critic(self.generator(self._latents(n, real), level, alpha)))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        # --- EMA
        self._update_ema()
        checked = {"d_loss": parts["loss"], "gp": parts["gp"]} if scaler is None else {}
        self._finite.update({**checked, "wgan": parts["wgan"], "drift": parts["drift"], "g_loss": g_loss},
                            (self.images_shown, state))
        self.images_shown += n * self.trainer.world_size
        return {**parts, "g_loss": g_loss.detach(), "n": n, "lr": lr}

    def _log_step(self, parts: dict[str, Any], state: GrowthState) -> None:
        n = parts["n"]
        log = {"train/d_loss": parts["loss"].detach(), "train/g_loss": parts["g_loss"], "train/gp": parts["gp"],
               "train/wgan": parts["wgan"], "train/drift": parts["drift"],
               "train/kimg": self.images_shown / 1000.0, "train/resolution": float(state.resolution),
               "train/alpha": state.alpha, "train/level": float(state.level), "train/lr": parts["lr"]}
        # host numbers as device scalars made by a fill (a copy from host memory would wait for the
        # device); nothing in the progress bar, which reads its values on the host at every refresh
        self.log_dict({k: v.float() if torch.is_tensor(v) else torch.full((), float(v), device=self.device)
                       for k, v in log.items()}, batch_size=n)

    def _latents(self, n: int, like: Tensor) -> Tensor:
        return torch.randn(n, self.generator.latent_dim, device=like.device, dtype=like.dtype)

    def _on_phase(self, state: GrowthState) -> None:
        """At the start of every fade-in and stabilise phase: reset Adam, write the ended phase's grid."""
        if self._phase_index is not None and state.phase_index != self._phase_index:
            if self.hparams.reset_adam_on_growth:
                for opt in self.optimizers():
                    _adam_reset(opt.optimizer if hasattr(opt, "optimizer") else opt)
            ended = self.schedule.state(max(0, self.images_shown - 1))  # the phase that just ended
            self.save_samples(f"samples_phase{self._phase_index:02d}", ended)
        self._phase_index = state.phase_index

    @torch.no_grad()
    def _update_ema(self) -> None:
        beta = self.hparams.ema_beta
        ema_p = list(self.generator_ema.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in self.generator.parameters()], 1.0 - beta)
        for b_ema, b in zip(self.generator_ema.buffers(), self.generator.buffers()):
            b_ema.copy_(b)

    def raise_if_not_finite(self) -> None:
        """Read the device-side finiteness record (all ranks together); raise if a loss was not finite."""
        if self._trainer is None or self.trainer.state.fn != "fit":
            return
        found = self._finite.check(self.trainer.strategy)
        if found is None:
            return
        (shown, state), term, kind = found
        raise FloatingPointError(
            f"PGGAN diverged: {term} is {kind} at {shown} images shown ({state.resolution} px, {state.phase}, "
            f"alpha {state.alpha:.3f}) on at least one rank (the first non-finite term; losses are read on the "
            f"host every {self._finite.every} steps, model.init_args.check_finite_every_n_steps, and before "
            "every checkpoint). Training stopped; no checkpoint was written after it: the last good checkpoint "
            "and the periodic snapshots are kept in the run's checkpoints/ folder. Lower the learning rate or "
            "lengthen the fade-in (model.init_args.fade_images) and resume with --ckpt_path last or "
            "--ckpt_path <snapshot file>.")

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        kw = {"lr": self.lr_at(self.growth.resolution), "betas": tuple(self.hparams.betas), "eps": self.hparams.eps}
        return [torch.optim.Adam(self.generator.parameters(), **kw),
                torch.optim.Adam(self.discriminator.parameters(), **kw)]

    # --- evaluation on held-out real images (boneage test) -------------------------------
    def on_test_epoch_start(self) -> None:
        self._test_reals: list[Tensor] = []

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Critic gap ``mean D(real) - mean D(fake)`` on held-out images at the current growth state."""
        state = self.growth
        real = self.real_at(batch["image"], state)
        fake = self(self._latents(len(real), real), state.level, state.alpha)
        gap = self.discriminator(real, state.level, state.alpha).float().mean() - \
            self.discriminator(fake, state.level, state.alpha).float().mean()
        self.log("test/critic_gap", gap, batch_size=len(real), sync_dist=True)
        self._test_reals.append(real.float().cpu())

    def on_test_epoch_end(self) -> None:
        """MS-SSIM diversity of generated and held-out images and SWD between them."""
        reals = torch.cat(self._test_reals) if self._test_reals else None
        self._test_reals = []
        if reals is None or len(reals) < 2:
            return
        state = self.growth
        g = torch.Generator().manual_seed(0)
        z = torch.randn(len(reals), self.generator.latent_dim, generator=g).to(self.device)
        with torch.no_grad():
            fakes = self(z, state.level, state.alpha).float().clamp(-1, 1).cpu()
        values: dict[str, float] = {}
        if state.resolution >= 16:
            values["test/msssim"] = msssim_diversity(fakes)
            values["test/msssim_real"] = msssim_diversity(reals)
            values["test/swd_mean"] = SlicedWassersteinDistance()(reals, fakes)["mean"]
        if values:
            self.log_dict(values, sync_dist=True)

# --- figures -------------------------------------------------------------------------
    @torch.no_grad()
    def save_samples(self, name: str, state: GrowthState | None = None) -> None:
        """Grid of the EMA generator's images from the fixed latents (paper Fig. 5a/b)."""
        if self._trainer is None or not self.trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from boneage.systems.base import save_figure

        state = state or self.growth
        imgs = self(self.sample_latents, state.level, state.alpha).float().clamp(-1, 1).cpu()
        cols = int(math.ceil(math.sqrt(len(imgs))))
        rows = int(math.ceil(len(imgs) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, img in zip(axes.flat, imgs):
            ax.imshow(img[0], cmap="gray", vmin=-1, vmax=1)
        fig.suptitle(f"{state.resolution} px, {state.phase}, alpha {state.alpha:.2f}, "
                     f"{self.images_shown / 1000:.1f}k images", fontsize=9)
        save_figure(self.trainer, fig, name)

    def on_train_end(self) -> None:
        self.raise_if_not_finite()
        self.save_samples("samples_final")


# ---------------------------------------------------------------------------- snapshots
class PGGANSnapshots(pl.Callback):
    """A checkpoint every ``every_n_images`` real images shown, kept beside ``last.ckpt``.

    Written to the run's ``checkpoints/snapshot-img<images shown, 10 digits>.ckpt`` (the folder of
    the trainer's checkpoint callback, else ``<run dir>/checkpoints``), with optimizer, schedule and callback
    state, so a run whose images degrade without a NaN can be rolled back and continued from an
    earlier snapshot (``boneage fit ... --ckpt_path <snapshot>`` starts a new run from it), as the
    paper's authors did with their failing 20- and 100-d runs. Official: a network snapshot every
    10 ticks (100-1600 kimg by resolution); paper is silent on the interval: chose one interval
    for every resolution (500k by default, the metrics' interval, so each snapshot has its
    metrics row).
    """

    def __init__(self, every_n_images: int = 500_000) -> None:
        if every_n_images <= 0:
            raise ValueError(f"every_n_images must be positive, got {every_n_images}")
        self.every = int(every_n_images)
        self._last_tick = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        tick = pl_module.images_shown // self.every
        if tick <= self._last_tick:
            return
        self._last_tick = tick
        trainer.save_checkpoint(self.folder(trainer) / f"snapshot-img{pl_module.images_shown:010d}.ckpt")

    @staticmethod
    def folder(trainer: pl.Trainer) -> Path:
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "dirpath", None):
            return Path(ckpt.dirpath)
        from boneage.systems.base import run_dir

        return run_dir(trainer) / "checkpoints"

    def state_dict(self) -> dict:
        return {"last_tick": self._last_tick}

    def load_state_dict(self, state_dict: dict) -> None:
        self._last_tick = int(state_dict.get("last_tick", 0))


# ---------------------------------------------------------------------------- metrics callback
PROTOCOLS = ("official", "current")


class PGGANMetrics(pl.Callback):
    """MS-SSIM, SWD, FID and IS at intervals of real images shown (paper Fig. 6).

    At every ``every_n_images`` real images shown (and at the end of training) the callback draws
    images from the EMA generator and computes, each on its own sample count (paper: MS-SSIM and
    IS on 5,000, FID on 10,000, SWD on 1,000):

    - MS-SSIM between pairs of generated images (official algorithm; diversity, lower = more diverse);
    - SWD x 1e3 per Laplacian level (>= 16 px) and their mean, generated vs real;
    - FID and IS with local Inception weights, or with the domain extractor (the age regressor's
      features), labelled ``fid_domain`` / ``is_domain``; skipped with a note when neither is given.

    ``protocol="official"`` (default) evaluates as the official ``evaluate_metrics`` does on its
    network snapshots: generated images at the full (final) resolution, the current level's output
    upsampled by nearest neighbour as the official generator outputs it, against real images at
    full resolution; the real line is then one value for the whole run. ``protocol="current"``
    measures at the current resolution, real images downsampled and faded like training.

    The real line (``<name>_real``) is measured like the generated images: a second pass of real
    images (another seeded shuffle) against the first pass's statistics, with the same image counts
    as the generated line (FID: N real vs N real, as N generated vs N real; the official
    ``real_passes=2``). Real images are streamed: the first pass keeps only FID's running feature
    sums and the SWD patch descriptors sampled from each chunk, never the images, so a 1024 px
    evaluation needs a few GiB. Evaluation runs on rank zero only (the other ranks wait).
    Values are logged as ``gan/<name>`` and ``gan/<name>_real``; the history is written to
    ``<run dir>/gan_metrics.csv`` and plotted into ``figures/gan_metrics.png`` at the end.

    Args:
        every_n_images: interval in real images shown (0: only at the end of training).
        msssim_images: generated (and real) images for MS-SSIM (paper 5,000).
        is_images: generated (and real) images for IS (paper 5,000).
        fid_images: generated and real images for FID (paper 10,000).
        swd_images: generated and real images for SWD (paper 1,000).
        protocol: ``official`` (full-resolution snapshots) or ``current`` (current resolution).
        inception_weights_path: local timm inception_v3 weights for FID/IS (Inception labels).
        regressor_checkpoint: a checkpoint of an age-regressor fit run (e.g. xception_rsna's
            ``<run>/checkpoints/last.ckpt``) for the domain FID/IS; the network is rebuilt from
            that run's own config.yaml.
        batch_size: images per chunk (None: the official ``clip(8192 // size, 4, 256)``, 8 at 1024 px).
        seed: seed of the latents, the real passes' order and metric sampling (the same latents at
            every evaluation).
    """

    def __init__(
        self,
        every_n_images: int = 500_000,
        msssim_images: int = 5000,
        is_images: int = 5000,
        fid_images: int = 10000,
        swd_images: int = 1000,
        protocol: str = "official",
        inception_weights_path: str | None = None,
        regressor_checkpoint: str | None = None,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.every = every_n_images
        self.counts = {"msssim": msssim_images, "is": is_images, "fid": fid_images, "swd": swd_images}
        self.protocol = protocol
        self.inception_weights_path = inception_weights_path
        self.regressor_checkpoint = regressor_checkpoint
        self.batch_size = batch_size
        self.seed = seed
        self.history: list[dict[str, float]] = []
        self._last_tick = 0
        self._evaluated_at: int | None = None
        self._real_cache: dict = {}
        self._image_metrics: tuple | None = None
        self._names = ("fid", "is")
        self._note_printed = False

    # --- hooks ---------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.every <= 0:
            return
        tick = pl_module.images_shown // self.every
        if tick > self._last_tick:
            self._last_tick = tick
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self._evaluated_at != pl_module.images_shown:
            self.evaluate(trainer, pl_module)
        if trainer.is_global_zero and self.history:
            from boneage.systems.base import run_dir

            path = run_dir(trainer) / "gan_metrics.csv"
            pd.DataFrame(self.history).to_csv(path, index=False)
            self.figure(trainer)
            print(f"wrote {len(self.history)} GAN metric evaluations to {path}")

    def state_dict(self) -> dict:
        return {"history": self.history, "last_tick": self._last_tick}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        self._last_tick = int(state_dict.get("last_tick", 0))

    # --- evaluation ----------------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module) -> dict[str, float] | None:
        """One evaluation at the current growth state on rank zero; every rank waits for it."""
        self._evaluated_at = pl_module.images_shown
        row = self._evaluate(trainer, pl_module) if trainer.is_global_zero else None
        trainer.strategy.barrier("PGGANMetrics.evaluate")
        return row

    def size(self, pl_module, state: GrowthState) -> int:
        """The resolution the metrics see: final (official protocol) or current."""
        return pl_module.schedule.final_resolution if self.protocol == "official" else state.resolution

    def chunk(self, size: int) -> int:
        return self.batch_size or int(np.clip(8192 // size, 4, 256))

    @torch.no_grad()
    def _evaluate(self, trainer: pl.Trainer, pl_module) -> dict[str, float]:
        state = pl_module.growth
        size = self.size(pl_module, state)
        key = "full" if self.protocol == "official" else (state.resolution, round(state.alpha, 6))
        if key not in self._real_cache:
            self._real_cache = {key: self._real_pass(trainer, pl_module, state, size)}  # one at a time
        real = self._real_cache[key]
        values = self._measure(self._fakes(pl_module, state, size), size, real)
        row: dict[str, float] = {"kimg": pl_module.images_shown / 1000, "resolution": float(state.resolution),
                                 "alpha": state.alpha, "size": float(size)}
        row.update(values)
        row.update({f"{k}_real": v for k, v in real["reference"].items()})
        self.history.append(row)
        for logger in trainer.loggers:  # straight to the loggers: also allowed in on_train_end
            logger.log_metrics({f"gan/{k}": float(v) for k, v in row.items()}, step=trainer.global_step)
        return row

    def _fakes(self, pl_module, state: GrowthState, size: int):
        """EMA generator images in chunks, the same latents at every evaluation, at ``size`` px."""
        g = torch.Generator().manual_seed(self.seed)
        z = torch.randn(max(self.counts.values()), pl_module.generator.latent_dim, generator=g)
        for zc in z.split(self.chunk(size)):
            x = pl_module(zc.to(pl_module.device), state.level, state.alpha).float()
            if x.shape[-1] != size:  # official snapshots: the current level upsampled to full size
                x = F.interpolate(x, scale_factor=size // x.shape[-1], mode="nearest")
            yield x.clamp(-1, 1)

    def _reals(self, trainer: pl.Trainer, pl_module, state: GrowthState, size: int, seed: int):
        """Real training images (no augmentation) in a seeded random order, chunk by chunk, cycling
        through the data set when a count asks for more images than it has."""
        from torch.utils.data import DataLoader, RandomSampler

        dm = trainer.datamodule
        if not hasattr(dm, "dataset"):
            raise ValueError("PGGANMetrics reads real images through the DataModule's dataset('train', "
                             f"augment=False); {type(dm).__name__} has none: use an ImageTableDataModule")
        dataset = dm.dataset("train", augment=False)
        if len(dataset) == 0:
            raise ValueError("PGGANMetrics: the training split has no images")
        loader = DataLoader(dataset, batch_size=self.chunk(size), num_workers=getattr(dm, "num_workers", 0),
                            sampler=RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)))
        while True:
            for batch in loader:
                x = batch["image"].to(pl_module.device).float()
                yield x if self.protocol == "official" else pl_module.real_at(x, state).float()

    def _measure(self, chunks, size: int, real: dict) -> dict[str, float]:
        """MS-SSIM / SWD / FID / IS of a stream of image chunks against the real set's statistics."""
        c = self.counts
        seen = 0
        ms_sum, ms_n = 0.0, 0
        desc: list[list[Tensor]] = []
        swd = SlicedWassersteinDistance(seed=self.seed)
        fid, inception_score = real.get("fid"), real.get("is_metric")
        need = max(c["msssim"] if size >= 16 else 0, c["swd"] if size >= 16 and real.get("swd_desc") else 0,
                   c["fid"] if fid is not None else 0, c["is"] if inception_score is not None else 0)
        for x in chunks if need else ():
            n = len(x)
            if size >= 16 and seen < c["msssim"]:
                part = x[: min(n, c["msssim"] - seen)]
                if len(part) >= 2:
                    ms_sum += float(msssim_pairs(part).sum())
                    ms_n += len(part) // 2
            if real.get("swd_desc") and seen < c["swd"]:
                desc.append([d.cpu() for d in swd.descriptors(x[: c["swd"] - seen])])
            if fid is not None and seen < c["fid"]:
                fid.update(x[: c["fid"] - seen], real=False)
            if inception_score is not None and seen < c["is"]:
                inception_score.update(x[: c["is"] - seen])
            seen += n
            if seen >= need:
                break
        out: dict[str, float] = {}
        if ms_n:
            out["msssim"] = ms_sum / ms_n
        if desc:
            fake_desc = [torch.cat(level) for level in zip(*desc)]
            out.update({f"swd_{k}": v for k, v in swd.distance(real["swd_desc"], fake_desc, size).items()})
        if fid is not None:
            out[self._names[0]] = float(fid.compute())
            fid.reset()  # keeps the real features' running sums (reset_real_features=False)
        if inception_score is not None:
            out[self._names[1]] = float(inception_score.compute()[0])
            inception_score.reset()
        return out

    def _real_pass(self, trainer: pl.Trainer, pl_module, state: GrowthState, size: int) -> dict:
        """Streamed real statistics: FID running sums and SWD descriptors of ``fid_images`` /
        ``swd_images`` real images, then the real line: a second real pass measured against them."""
        c = self.counts
        real: dict = {"fid": None, "is_metric": None, "swd_desc": None}
        extractors = self._extractors(pl_module)
        if extractors is not None:
            real["fid"], real["is_metric"] = self._new_fid_is(extractors, pl_module.device)
        need = max(c["fid"] if real["fid"] is not None else 0, c["swd"] if size >= 16 else 0)
        swd = SlicedWassersteinDistance(seed=self.seed)
        desc: list[list[Tensor]] = []
        seen = 0
        for x in self._reals(trainer, pl_module, state, size, self.seed) if need else ():
            if real["fid"] is not None and seen < c["fid"]:
                real["fid"].update(x[: c["fid"] - seen], real=True)
            if size >= 16 and seen < c["swd"]:
                desc.append([d.cpu() for d in swd.descriptors(x[: c["swd"] - seen])])
            seen += len(x)
            if seen >= need:
                break
        if desc:
            real["swd_desc"] = [torch.cat(level) for level in zip(*desc)]
        second = self._reals(trainer, pl_module, state, size, self.seed + 1)
        real["reference"] = self._measure(second, size, real)
        return real

    def _new_fid_is(self, extractors, device):
        metrics = GANImageMetrics(*extractors, sync_on_compute=False).to(device)  # rank zero alone
        return metrics.fid, metrics.inception_score

    def _extractors(self, pl_module):
        """(features, logits) modules for FID / IS, or None (then FID and IS are skipped)."""
        if self._image_metrics is not None:
            return self._image_metrics
        if self.inception_weights_path:
            feats = InceptionFeatures(self.inception_weights_path, "features")
            logits = InceptionFeatures(self.inception_weights_path, "logits")
        elif self.regressor_checkpoint:
            from boneage.analysis.latent import load_regressor, regressor_size
            from boneage.runs import RunError, run_of_checkpoint

            run = run_of_checkpoint(self.regressor_checkpoint)
            if run is None:
                raise RunError(f"regressor_checkpoint {self.regressor_checkpoint} is not in a run's checkpoints/ "
                               "folder: give lightning_logs/<regressor experiment>/<run id>/checkpoints/<file>")
            system = load_regressor(run, self.regressor_checkpoint)
            predict = _AgeFn(system, regressor_size(run))
            feats = RegressorFeatures(system.network, predict, "features")
            logits = RegressorFeatures(system.network, predict, "logits")
        else:
            if not self._note_printed:
                print("PGGANMetrics: FID and IS skipped: give inception_weights_path (local Inception "
                      "weights) or regressor_checkpoint (domain features)")
                self._note_printed = True
            return None
        probe = GANImageMetrics(feats, logits)
        self._names = (probe.fid_name, probe.is_name)
        self._image_metrics = (feats, logits)
        return self._image_metrics

    # --- figure --------------------------------------------------------------------------
    def figure(self, trainer: pl.Trainer) -> Path | None:
        """Fig. 6: each metric against thousands of images shown, real value dashed red."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from boneage.systems.base import save_figure

        frame = pd.DataFrame(self.history)
        skip = ("kimg", "resolution", "alpha", "size")
        names = [c for c in frame.columns
                 if c not in skip and not c.endswith("_real") and not c.startswith("swd_")]
        swd_cols = [c for c in frame.columns if c.startswith("swd_") and not c.endswith("_real")]
        panels = names + (["swd"] if swd_cols else [])
        if not panels:
            return None
        cols = min(3, len(panels))
        rows = int(math.ceil(len(panels) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax in axes.flat[len(panels):]:
            ax.axis("off")
        for ax, name in zip(axes.flat, panels):
            if name == "swd":
                for c in swd_cols:
                    ax.plot(frame["kimg"], frame[c], "o-", lw=2 if c == "swd_mean" else 1, label=c[4:])
                ax.legend(fontsize=7, title="level (px)")
            else:
                ax.plot(frame["kimg"], frame[name], "o-")
                if f"{name}_real" in frame:
                    ax.plot(frame["kimg"], frame[f"{name}_real"], "r--", label="real images")
                    ax.legend(fontsize=7)
            ax.set(title=name, xlabel="k images shown")
        fig.tight_layout()
        return save_figure(trainer, fig, "gan_metrics")


class _AgeFn:
    """Callable images -> predicted age (label units) of an AgeRegressor at its own input size."""

    def __init__(self, system, image_size: tuple[int, int]) -> None:
        self.system = system.eval()
        self.image_size = image_size

    def __call__(self, images: Tensor) -> Tensor:
        from boneage.analysis.latent import predict_age

        self.system.to(images.device)
        return predict_age(self.system, images, self.image_size)
