"""``make bench``: what the framework costs over plain PyTorch, and whether data keeps up.

Three measurements, written to ``bench/results.md`` (tables) and ``bench/results.json`` (raw
figures, every step time included):

1. **Framework overhead**, per module family (age regressor, TJ-Net, and any GAN system present).
   The framework arm is the real thing: the experiment's YAML through ``BoneAgeCLI`` (its CSV and
   TensorBoard loggers, its checkpoint callback, Lightning's default callbacks and the progress bar
   as users see it), ``Trainer.fit``. The plain arm is a hand-written loop doing the same forward,
   loss, backward and optimizer steps on a copy of the same network (same initial weights), the
   same batches and the same optimizer settings. Both arms run in one process, interleaved: after
   a warm-up, a callback runs a block of plain steps after every block of framework steps, so drift
   (other users of the machine, clock changes, caches) hits both arms alike. Step time is the cycle
   from one step's start (batch fetched and on the device: ``on_train_batch_start``) to the next
   step's start, so everything the framework does between steps (logging, progress bar, hooks,
   metric updates) is inside it; the plain loop takes the same timestamps. On GPU each timestamp
   synchronises the device in both arms (conservative: CPU-side overhead is not hidden behind
   queued kernels). Reported: median and mean step time, their ratio, and the peak memory a step
   needs above what is resident at the start of a block (GPU: ``torch.cuda.max_memory_allocated``;
   CPU: peak RSS, ``VmHWM`` reset through ``/proc/self/clear_refs`` after ``malloc_trim``). When the
   median ratio is above ``--threshold`` (1.05), the framework arm is run again with the progress
   bar, the loggers and the checkpoint callback turned off one at a time, and all together, so
   each one's cost is shown. The fixed cost per step is measured again at a tiny step (32x32,
   batch 2; the regressor, TJ-Net and ROI systems with a ``StandIn`` network of one linear layer
   and the real network's output shapes, the GANs at their smallest widths, PGGAN at 8 px), where
   it stands out; on CPU both arms are then timed in the main thread's CPU time with one torch
   thread (other users of a shared machine barely move it). Beside it, Lightning's floor: the least
   a LightningModule can be, under a bare Trainer, against the same hand-written loop
   (``run_floor``). On CUDA every timed block also counts the host-device synchronisations per step
   (``torch.cuda.set_sync_debug_mode("warn")``, warnings counted). ``results.json`` carries per
   family ``step_ms``, ``framework_ms``, ``plain_ms``, ``ratio``, ``syncs_per_step`` (None on CPU)
   and ``fixed_cost_ms``.
2. **Options** on the plain loop of the first family (interleaved the same way): channels_last
   memory format and ``torch.compile``, each against the default.
3. **Data loading**: images/s of the RSNA DataModule's training loader (decode + resize +
   augment) with the cache cold (``use_cache=False``: decode every epoch; and the one-time cache
   build of a fresh ``cache_dir``) and warm, for each number of workers, against the raw PNG
   decode rate of the same files (``cv2.imread`` alone, one process: the limit; PIL for
   comparison) and against the model's consumption (images/s of the framework arm of the first
   family, by default the demo configuration: ResNet-10 at 128x128, batch 32).

``--data-only`` measures the data loading alone (the first family's DataModule settings, no
model consumption), into ``<out>/results-data.md`` and ``results-data.json``: ``make bench-data``.

Scales: ``small`` (default; the demo configuration, minutes on a CPU), ``paper`` (the YAMLs as
they are: use ``--device cuda --precision bf16-mixed``), ``tiny`` (the smoke-test configs of
tests/configs, for tests). ``--batch`` and ``--image-size`` override any scale.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import inspect
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[2]
Batch = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------
class Clock:
    """Timestamps that mean the same in both arms: on CUDA the device is synchronised first (with
    the sync debug mode off for that call, so :class:`SyncCounter` counts the arms' syncs only).

    ``cpu_time`` (CPU device only): the main thread's CPU time instead of the wall clock. With one
    torch thread every step's work runs on the main thread, so the difference of the two arms is
    the framework's own work, and other users of a shared machine (which stretch wall times by
    tens of percent from block to block) barely move it: the fixed-cost run uses it on CPU.
    """

    def __init__(self, device: torch.device, cpu_time: bool = False) -> None:
        self.cuda = device.type == "cuda"
        self.now = time.thread_time if cpu_time and not self.cuda else time.perf_counter
        self.kind = "main-thread CPU time, 1 torch thread" if self.now is time.thread_time else "wall clock"

    def __call__(self) -> float:
        if self.cuda:
            mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode(mode)
        return self.now()


class SyncCounter:
    """Host-device synchronisations per step on CUDA: ``torch.cuda.set_sync_debug_mode("warn")``
    makes every synchronising call (``.item()``, ``bool(t)``, a device-to-host copy, ...) warn,
    and a block's warnings are counted. Nothing on CPU (``per_step`` stays None)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._cm: warnings.catch_warnings | None = None
        self._seen: list = []

    def begin(self) -> None:
        if self.cuda:
            self._cm = warnings.catch_warnings(record=True)
            self._seen = self._cm.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

    def end(self, steps: int) -> float | None:
        if not self.cuda or self._cm is None:
            return None
        torch.cuda.set_sync_debug_mode(0)
        self._cm.__exit__(None, None, None)
        self._cm = None
        return sum("synchroniz" in str(w.message) for w in self._seen) / steps


class PeakMemory:
    """Peak memory of a block of steps above what is allocated when the block starts (bytes).

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: peak resident set size (``VmHWM``, reset by
    writing 5 to ``/proc/self/clear_refs``) after ``malloc_trim`` hands freed heap back, so the
    figure is what the block itself needed; ``None`` where /proc does not allow it.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.kind = "torch.cuda.max_memory_allocated" if self.cuda else "peak RSS (VmHWM reset per block)"
        self._base = 0
        self._libc = None
        if not self.cuda:
            with contextlib.suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")
            self.available = self._reset_hwm()
        else:
            self.available = True

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def _reset_hwm(self) -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._status("VmHWM")
            return True
        except (OSError, KeyError):
            return False

    def begin(self) -> None:
        if self.cuda:
            self._base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        elif self.available:
            if self._libc is not None:
                self._libc.malloc_trim(0)
            self._reset_hwm()
            self._base = self._status("VmRSS")

    def end(self) -> int | None:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated() - self._base)
        if not self.available:
            return None
        return int(self._status("VmHWM") - self._base)


@dataclass
class ArmRecord:
    """Step cycles (start to next start), step durations (start to end) and per-block peaks."""

    cycles: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    syncs: list[float] = field(default_factory=list)  # per block: synchronisations per step (CUDA)

    def summary(self, batch: int) -> dict[str, Any]:
        cyc = self.cycles or [float("nan")]
        med = statistics.median(cyc)
        return {"median_ms": 1e3 * med, "mean_ms": 1e3 * statistics.fmean(cyc),
                "step_median_ms": 1e3 * statistics.median(self.steps or [float("nan")]),
                "images_per_s": batch / med, "cycles": len(self.cycles),
                "peak_mib": max(self.peaks) / 2**20 if self.peaks else None,
                "syncs_per_step": statistics.median(self.syncs) if self.syncs else None,
                "cycles_s": self.cycles}


# --------------------------------------------------------------------------------------------
# The plain PyTorch arm
# --------------------------------------------------------------------------------------------
class PlainLoop:
    """What a researcher writes by hand: device moves, autocast, (scaled) backward, steps."""

    def __init__(self, device: torch.device, precision: str, channels_last: bool = False) -> None:
        self.device = device
        self.channels_last = channels_last
        self.dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    def to_device(self, batch: Batch) -> Batch:
        out = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.channels_last:
            out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
        return out

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


def _params(net: nn.Module) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def regressor_setup(system: Any) -> dict[str, Any]:
    """A copy of the AgeRegressor's network (same weights) and its optimizer settings."""
    net = copy.deepcopy(system.network).train()
    return {"net": net, "opt": system.optimizer(_params(net)), "make_opt": system.optimizer,
            "mean": system.age_mean.detach().clone(), "std": system.age_std.detach().clone(),
            "loss_fn": system.loss_fn}


def regressor_step(s: dict[str, Any], batch: Batch, loop: PlainLoop) -> None:
    """AgeRegressor's training step by hand: standardised targets, the loss, one Adam step."""
    with loop.autocast():
        z = s["net"](batch["image"], batch["sex"]).float()
    loss = s["loss_fn"](z, (batch["age"].float() - s["mean"]) / s["std"])
    s["opt"].zero_grad(set_to_none=True)
    loop.backward(loss)
    loop.step(s["opt"])


def tjnet_setup(system: Any) -> dict[str, Any]:
    """A copy of TJ-Net (same weights), its age classes, alpha and optimizer settings."""
    net = copy.deepcopy(system.network).train()
    return {"net": net, "opt": system.optimizer(_params(net)), "make_opt": system.optimizer,
            "classes": system.classes, "alpha": system.alpha.detach().clone()}


def tjnet_step(s: dict[str, Any], batch: Batch, loop: PlainLoop) -> None:
    """TJ-Net's training step by hand: joint sex/age logits, the joint loss, one Adam step."""
    from boneage.losses_tjnet import tjnet_loss

    with loop.autocast():
        out = s["net"](batch["image"], batch["sex"])
    age_logits, sex_logits = out if isinstance(out, tuple) else (out, None)
    target = s["classes"].to_class(batch["age"])
    loss = tjnet_loss(age_logits.float(), target, s["alpha"],
                      None if sex_logits is None else sex_logits.float(), batch["sex"])["loss"]
    s["opt"].zero_grad(set_to_none=True)
    loop.backward(loss)
    loop.step(s["opt"])


def roi_setup(system: Any) -> dict[str, Any]:
    """A copy of the age-group classifier (same weights), its group edges and optimizer settings."""
    net = copy.deepcopy(system.network).train()
    return {"net": net, "opt": system.optimizer(_params(net)), "make_opt": system.optimizer,
            "edges": system.inner_edges.detach().clone()}


def roi_step(s: dict[str, Any], batch: Batch, loop: PlainLoop) -> None:
    """The ROI localizer's training step by hand: age groups, cross entropy, one Adam step."""
    with loop.autocast():
        logits = s["net"](batch["image"])
    loss = F.cross_entropy(logits.float(), torch.bucketize(batch["age"].float(), s["edges"], right=True))
    s["opt"].zero_grad(set_to_none=True)
    loop.backward(loss)
    loop.step(s["opt"])


def _trainable(net: nn.Module, names: tuple[str, ...], all_names: tuple[str, ...]) -> None:
    """What Lightning's ``toggle_optimizer`` does: only the stepped networks require grad."""
    for name in all_names:
        getattr(net, name).requires_grad_(name in names)


BAPGAN_NETS = ("encoder", "generator", "d_id", "d_img")


def bapgan_setup(system: Any) -> dict[str, Any]:
    """A copy of BAPGAN's five networks (same weights) and its three Adam optimizers."""
    net = copy.deepcopy(system.network).train()
    hp = system.hparams
    groups = (("encoder", "generator"), ("d_id",), ("d_img",))
    lrs = (hp.lr_eg, hp.lr_d_id, hp.lr_d_img)
    opts = [torch.optim.Adam([p for n in g for p in getattr(net, n).parameters()], lr=lr, betas=tuple(hp.betas))
            for g, lr in zip(groups, lrs, strict=True)]
    return {"net": net, "hp": hp, "opts": opts, "groups": groups}


def bapgan_step(s: dict[str, Any], batch: Batch, loop: PlainLoop) -> None:
    """One BAPGAN iteration by hand: the E/G step, the D_id step, the D_img (+ D_age) step."""
    from boneage.models.bapgan import sample_prior
    from boneage.systems.gan_losses import (
        age_to_group,
        d_adversarial_bce,
        g_adversarial_bce,
        reconstruction_l2,
        smooth_age_labels,
        soft_cross_entropy,
    )

    net, hp, (opt_eg, opt_id, opt_img) = s["net"], s["hp"], s["opts"]
    x = batch["image"]
    groups = age_to_group(batch["age"].float(), hp.age_group_years, net.n_groups, check=False)
    labels = smooth_age_labels(groups, net.n_groups, hp.label_smoothing).to(x.dtype)
    _trainable(net, s["groups"][0], BAPGAN_NETS)
    with loop.autocast():
        z = net.encoder(x)
        x_rec = net.generator(z, labels)
        logit, age_logits = net.d_img(x_rec, labels)
        loss = hp.lambda_recon * reconstruction_l2(x, x_rec) + g_adversarial_bce(logit) + g_adversarial_bce(net.d_id(z))
        if age_logits is not None:
            loss = loss + hp.lambda_age * soft_cross_entropy(age_logits, labels)
    opt_eg.zero_grad(set_to_none=True)
    loop.backward(loss)
    loop.step(opt_eg)
    z, x_rec = z.detach(), x_rec.detach()
    _trainable(net, s["groups"][1], BAPGAN_NETS)
    with loop.autocast():
        prior = sample_prior(len(z), net.z_dim, device=z.device, dtype=z.dtype)
        loss = d_adversarial_bce(net.d_id(prior), net.d_id(z))
    opt_id.zero_grad(set_to_none=True)
    loop.backward(loss)
    loop.step(opt_id)
    _trainable(net, s["groups"][2], BAPGAN_NETS)
    with loop.autocast():
        real_logit, age_logits = net.d_img(x, labels)
        fake_logit, _ = net.d_img(x_rec, labels)
        loss = d_adversarial_bce(real_logit, fake_logit)
        if age_logits is not None:
            loss = loss + hp.lambda_age * soft_cross_entropy(age_logits, labels)
    opt_img.zero_grad(set_to_none=True)
    loop.backward(loss)
    loop.step(opt_img)
    _trainable(net, BAPGAN_NETS, BAPGAN_NETS)


def pggan_prepare(system: Any) -> None:
    """Start the framework arm in the final stabilise phase (the full-size networks)."""
    system.images_shown = system.schedule.growth_images() - system.schedule.stabilise_images
    system.total_images = max(system.total_images, system.images_shown + 10**7)  # no stop while timed


def pggan_setup(system: Any) -> dict[str, Any]:
    """Copies of G, D and the EMA generator (same weights), Adam for each, the growth state."""
    hp = system.hparams
    g, d = copy.deepcopy(system.generator).train(), copy.deepcopy(system.discriminator).train()
    kw = {"lr": hp.lr, "betas": tuple(hp.betas), "eps": hp.eps}
    return {"g": g, "d": d, "g_ema": copy.deepcopy(system.generator_ema), "hp": hp, "growth": system.growth,
            "opt_g": torch.optim.Adam(g.parameters(), **kw), "opt_d": torch.optim.Adam(d.parameters(), **kw)}


def pggan_step(s: dict[str, Any], batch: Batch, loop: PlainLoop) -> None:
    """One PGGAN iteration by hand: WGAN-GP critic step(s), generator step, EMA update."""
    from boneage.models.pggan import fade_images
    from boneage.systems.pggan_losses import wgan_g_loss, wgan_gp_d_loss

    g, d, hp, st = s["g"], s["d"], s["hp"], s["growth"]
    real = batch["image"][: st.batch_size]
    if real.shape[-1] != st.resolution:
        real = F.avg_pool2d(real, real.shape[-1] // st.resolution)
    if st.phase == "fade":
        real = fade_images(real, st.alpha)
    n = len(real)

    def critic(x: torch.Tensor) -> torch.Tensor:
        return d(x, st.level, st.alpha)

    with loop.autocast():
        for _ in range(hp.n_critic):
            with torch.no_grad():
                fake = g(torch.randn(n, g.latent_dim, device=real.device, dtype=real.dtype), st.level, st.alpha)
            scale = None if loop.scaler is None else loop.scaler.scale(torch.ones((), device=real.device))
            d_loss = wgan_gp_d_loss(critic, real, fake, hp.gp_weight, hp.drift_weight, grad_scale=scale)["loss"]
            s["opt_d"].zero_grad(set_to_none=True)
            loop.backward(d_loss)
            loop.step(s["opt_d"])
        d.requires_grad_(False)
        z = torch.randn(n, g.latent_dim, device=real.device, dtype=real.dtype)
        g_loss = wgan_g_loss(critic(g(z, st.level, st.alpha)))
        s["opt_g"].zero_grad(set_to_none=True)
        loop.backward(g_loss)
        loop.step(s["opt_g"])
        d.requires_grad_(True)
    with torch.no_grad():
        torch._foreach_lerp_(list(s["g_ema"].parameters()), [p.detach() for p in g.parameters()], 1.0 - hp.ema_beta)
        for b_ema, b in zip(s["g_ema"].buffers(), g.buffers(), strict=True):
            b_ema.copy_(b)


def floor_setup(system: Any) -> dict[str, Any]:
    """Lightning's floor (run_floor): a copy of the one-layer network and its Adam."""
    net = copy.deepcopy(system.network).train()
    return {"net": net, "opt": torch.optim.Adam(net.parameters(), lr=1e-3)}


def _floor_loss(net: nn.Module, batch: Batch) -> torch.Tensor:
    x = batch["image"].float().mean(dim=tuple(range(1, batch["image"].dim()))).unsqueeze(1)
    return F.mse_loss(net(x).squeeze(1), batch["age"].float())


def floor_step(s: dict[str, Any], batch: Batch, loop: PlainLoop) -> None:
    """Lightning's floor by hand: the one-layer loss and one Adam step."""
    with loop.autocast():
        loss = _floor_loss(s["net"], batch)
    s["opt"].zero_grad(set_to_none=True)
    loop.backward(loss)
    loop.step(s["opt"])


class StandIn(nn.Module):
    """A network with another's interface and almost none of its compute, for measuring the
    framework's fixed cost per step: the same call signature and outputs of the same shapes (one
    linear layer from the image mean to each), so that the system's loss, metrics, logging and
    optimizer steps all run as they do with the real network while the step itself takes a fraction
    of a millisecond, and the framework's cost is no longer lost in the convolutions' spread."""

    def __init__(self, widths: list[int], flat: list[bool], single: bool) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(1, w) for w in widths)
        self.flat = flat  # outputs of shape (batch,) rather than (batch, k)
        self.single = single  # one tensor rather than a tuple

    @classmethod
    def like(cls, network: nn.Module, batch: Batch) -> StandIn:
        """The stand-in of ``network``: its outputs on ``batch`` give the shapes."""
        takes_sex = "sex" in inspect.signature(network.forward).parameters
        with torch.no_grad():
            out = network.eval()(batch["image"], *([batch["sex"]] if takes_sex else []))
        network.train()
        outs = [out] if torch.is_tensor(out) else list(out)
        if any(o.dim() > 2 for o in outs):
            raise ValueError(f"{type(network).__name__} returns more than (batch, k) outputs: no stand-in")
        return cls([o.shape[1] if o.dim() == 2 else 1 for o in outs], [o.dim() == 1 for o in outs],
                   torch.is_tensor(out))

    def forward(self, image: torch.Tensor, sex: torch.Tensor | None = None) -> Any:
        x = image.float().mean(dim=tuple(range(1, image.dim()))).unsqueeze(1)
        outs = [h(x).squeeze(1) if flat else h(x) for h, flat in zip(self.heads, self.flat, strict=True)]
        return outs[0] if self.single else tuple(outs)


def use_stand_in(system: Any, batch: Batch) -> None:
    """Replace a single-network system's ``network`` by its ``StandIn`` (before its optimizers exist)."""
    system.network = StandIn.like(system.network, batch)


# --------------------------------------------------------------------------------------------
# Module families
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """A module family: its experiment YAML, its small-scale overrides and its plain loop."""

    name: str
    experiment: str  # experiments/<experiment>.yaml
    module: str  # the system's module: the family is present when it imports
    small: tuple[str, ...]  # CLI overrides for the small (CPU) scale
    plain_setup: Callable[[Any], dict[str, Any]]
    plain_step: Callable[[dict[str, Any], Batch, PlainLoop], None]
    prepare: Callable[[Any], None] | None = None  # puts the system into the state to time
    batch_args: tuple[str, ...] = ()  # further overrides that follow --batch ("{batch}" replaced)
    # network overrides for the tiny step ("{size}": --breakdown-size): the smallest network of the
    # family's kind, so that the step is a few ms and the framework's fixed cost stands out of the noise
    tiny_args: tuple[str, ...] = ()
    stand_in: bool = False  # one ``network``: the fixed-cost runs replace it by its StandIn

    def present(self) -> bool:
        try:
            __import__(self.module)
        except ImportError:
            return False
        return (ROOT / "experiments" / f"{self.experiment}.yaml").is_file()


NET = "--model.init_args.network.init_args."
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("regressor", "regressor_rsna", "boneage.systems.regression",
           (f"{NET}backbone", "resnet10t", f"{NET}hidden", "[64]", f"{NET}dropout", "0.0",
            "--data.init_args.image_size", "[128, 128]", "--data.init_args.batch_size", "32"),
           regressor_setup, regressor_step, tiny_args=(f"{NET}backbone", "test_resnet", f"{NET}hidden", "[16]"),
           stand_in=True),
    Family("tjnet", "tjnet_rsna", "boneage.systems.tjnet",
           (f"{NET}width", "0.25", f"{NET}sex_units", "16", f"{NET}age_hidden", "[64, 32]",
            f"{NET}sex_hidden", "32", "--model.init_args.heatmap_images", "0",
            "--data.init_args.image_size", "[128, 128]", "--data.init_args.batch_size", "32"),
           tjnet_setup, tjnet_step,
           tiny_args=(f"{NET}width", "0.125", f"{NET}sex_units", "8", f"{NET}age_hidden", "[16, 16]",
                      f"{NET}sex_hidden", "16"), stand_in=True),
    Family("roi", "roi_localizer_scinti", "boneage.systems.roi",
           (f"{NET}backbone", "resnet10t", "--model.init_args.max_figures", "0",
            "--data.init_args.image_size", "[320, 96]", "--data.init_args.batch_size", "32"),
           roi_setup, roi_step, tiny_args=(f"{NET}backbone", "test_resnet"), stand_in=True),
    Family("bapgan", "bapgan_femur", "boneage.systems.bapgan",
           (f"{NET}image_size", "64", f"{NET}width", "0.25", "--model.init_args.fid_feature_extractor", "randconv",
            "--data.init_args.image_size", "[64, 64]", "--data.init_args.batch_size", "32"),
           bapgan_setup, bapgan_step, tiny_args=(f"{NET}image_size", "{size}", f"{NET}width", "0.0625")),
    Family("pggan", "pggan_rsna", "boneage.systems.pggan",
           ("--model.init_args.generator.init_args.resolution", "64",
            "--model.init_args.generator.init_args.latent_dim", "128",
            "--model.init_args.generator.init_args.width", "0.0625",
            "--model.init_args.discriminator.init_args.resolution", "64",
            "--model.init_args.discriminator.init_args.width", "0.0625",
            "--model.init_args.batch_sizes", "{4: 16}",
            "--trainer.callbacks", json.dumps([{"class_path": "boneage.systems.pggan.PGGANMetrics", "init_args": {
                "every_n_images": 0, "msssim_images": 16, "is_images": 16, "fid_images": 16, "swd_images": 16,
                "batch_size": 16}}]),
            "--data.init_args.image_size", "[64, 64]", "--data.init_args.batch_size", "16"),
           pggan_setup, pggan_step, prepare=pggan_prepare,
           batch_args=("--model.init_args.batch_sizes", "{{4: {batch}}}"),
           tiny_args=("--model.init_args.generator.init_args.resolution", "8",
                      "--model.init_args.discriminator.init_args.resolution", "8",
                      "--model.init_args.generator.init_args.width", "0.015625",
                      "--model.init_args.discriminator.init_args.width", "0.015625",
                      "--model.init_args.generator.init_args.latent_dim", "16",
                      "--data.init_args.image_size", "[8, 8]")),
)}

NO_SYSTEM_LOG = "bench:no-system-log"  # not a CLI argument: handled by run_family

# Framework settings turned off one at a time (and all together) to show what each costs.
VARIANTS: dict[str, tuple[str, ...]] = {
    "no progress bar": ("--trainer.enable_progress_bar", "false"),
    "no loggers": ("--trainer.logger", "false"),
    "no checkpoint callback": ("--trainer.enable_checkpointing", "false"),
    # the system's own self.log calls replaced by no-ops (its torchmetrics still update): what
    # Lightning's per-call bookkeeping of logged values costs (see docs/performance.md)
    "no self.log in the system": (NO_SYSTEM_LOG,),
    "bare Trainer (all off, no model summary)": (
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_model_summary", "false"),
}


# --------------------------------------------------------------------------------------------
# Batches both arms share
# --------------------------------------------------------------------------------------------
class Repeat(Dataset):
    """``length`` items cycling through a fixed list of pre-collated batches (``batch_size=None``)."""

    def __init__(self, batches: list[Batch], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Batch:
        return self.batches[i % len(self.batches)]


def fixed_batches(datamodule: Any, k: int, pin: bool) -> list[Batch]:
    """The first ``k`` training batches of the real DataModule (augmented), kept in memory."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append({key: (v.pin_memory() if pin else v) for key, v in batch.items()})
        if len(batches) == k:
            break
    if not batches:
        raise ValueError(f"the training split has fewer images than one batch ({datamodule.batch_size}); "
                         "render more phantom images (--n-images) or lower --batch")
    return batches


# --------------------------------------------------------------------------------------------
# Arms and the interleaving callback
# --------------------------------------------------------------------------------------------
class PlainArm:
    """A hand-written training loop over the shared batches, timed like the framework's steps."""

    def __init__(self, family: Family, state: dict[str, Any], loop: PlainLoop, batches: list[Batch],
                 clock: Clock, mem: PeakMemory) -> None:
        self.family, self.state, self.loop, self.clock, self.mem = family, state, loop, clock, mem
        self.syncs = SyncCounter(loop.device)
        self._data = iter(DataLoader(Repeat(batches, 10**9), batch_size=None, num_workers=0))
        self.record = ArmRecord()

    def run(self, n: int, record: bool = True) -> None:
        """``n`` steps; recorded: their ``n - 1`` cycles, ``n`` step times and the block's peak memory."""
        if record:
            self.mem.begin()
            self.syncs.begin()
        starts = []
        for _ in range(n):
            batch = self.loop.to_device(next(self._data))  # fetched and on the device, as in Lightning
            t0 = self.clock()
            starts.append(t0)
            self.family.plain_step(self.state, batch, self.loop)
            if record:
                self.record.steps.append(self.clock() - t0)
        if record:
            syncs = self.syncs.end(n)
            if syncs is not None:
                self.record.syncs.append(syncs)
            self.record.cycles.extend(np.diff(starts).tolist())
            peak = self.mem.end()
            if peak is not None:
                self.record.peaks.append(peak)


def _lightning_callback() -> type:
    import pytorch_lightning as pl

    return pl.Callback


class Interleave(_lightning_callback()):
    """Times the framework's steps and, after every block of them, runs a block of plain steps.

    Schedule: ``warmup`` framework steps and ``warmup`` plain steps untimed, then ``blocks``
    times: ``block + 1`` framework steps (``block`` cycles), ``block + 1`` plain steps.
    """

    def __init__(self, family: Family, batches: list[Batch], loop: PlainLoop, clock: Clock, mem: PeakMemory,
                 warmup: int, block: int, blocks: int) -> None:
        self.family, self.batches, self.loop, self.clock, self.mem = family, batches, loop, clock, mem
        self.warmup, self.block, self.blocks = warmup, block, blocks
        self.framework = ArmRecord()
        self.syncs = SyncCounter(loop.device)
        self.plain: PlainArm | None = None
        self._starts: list[float] = []
        self._t0 = 0.0

    @property
    def total_steps(self) -> int:
        return self.warmup + self.blocks * (self.block + 1)

    def _position(self, step: int) -> tuple[int, int] | None:
        """(block, index in block) of a framework step, None during warm-up."""
        if step < self.warmup:
            return None
        return divmod(step - self.warmup, self.block + 1)

    def on_train_start(self, trainer, pl_module) -> None:
        # After setup (target statistics, class ranges) and before the first step: same weights.
        state = self.family.plain_setup(pl_module)
        self.plain = PlainArm(self.family, state, self.loop, self.batches, self.clock, self.mem)
        self.plain.run(self.warmup, record=False)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        pos = self._position(batch_idx)
        if pos is None:
            return
        if pos[1] == 0:
            self.mem.begin()
            self.syncs.begin()
            self._starts = []
        self._t0 = self.clock()
        self._starts.append(self._t0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        pos = self._position(batch_idx)
        if pos is None:
            return
        self.framework.steps.append(self.clock() - self._t0)
        if pos[1] == self.block:  # block done: its cycles, syncs and peak, then a plain block
            syncs = self.syncs.end(self.block + 1)
            if syncs is not None:
                self.framework.syncs.append(syncs)
            self.framework.cycles.extend(np.diff(self._starts).tolist())
            peak = self.mem.end()
            if peak is not None:
                self.framework.peaks.append(peak)
            self.plain.run(self.block + 1)


# --------------------------------------------------------------------------------------------
# One framework-versus-plain run
# --------------------------------------------------------------------------------------------
def data_args(family: Family, args: argparse.Namespace) -> list[str]:
    """Data arguments of a family's framework arm: the RSNA folder, or a phantom of its format
    rendered once by its DataModule's ``phantom_args``."""
    import importlib

    import yaml

    cfg = yaml.safe_load((ROOT / "experiments" / f"{family.experiment}.yaml").read_text())
    class_path = cfg["data"]["class_path"]
    if class_path == "data_modules.rsna.RSNADataModule":
        return ["--data.init_args.data_dir", str(args.data_dir)]
    root = Path(args.out) / "data" / f"{family.name}_{args.n_images}"
    marker = root / "bench_data_args.json"
    if marker.is_file():
        init = json.loads(marker.read_text())
    else:
        module, name = class_path.rsplit(".", 1)
        print(f"rendering a {args.n_images}-image phantom for {name} into {root}")
        init = getattr(importlib.import_module(module), name).phantom_args(root, n=args.n_images, seed=0)
        marker.write_text(json.dumps(init))
    return [x for k, v in init.items() for x in (f"--data.init_args.{k}", v if isinstance(v, str) else json.dumps(v))]


def cli_args(family: Family, args: argparse.Namespace, runs_dir: Path,
             extra: tuple[str, ...] = ()) -> list[str]:
    """The ``boneage fit`` arguments of the framework arm (as a user would type them)."""
    argv = ["--config", str(ROOT / "experiments" / f"{family.experiment}.yaml")]
    if args.scale == "tiny":
        tiny = ROOT / "tests" / "configs" / f"{family.experiment}.yaml"
        if tiny.is_file():
            argv += ["--config", str(tiny)]
    elif args.scale == "small":
        argv += list(family.small)
    if args.batch:
        argv += ["--data.init_args.batch_size", str(args.batch)]
        argv += [a.format(batch=args.batch) for a in family.batch_args]
    if args.image_size:
        argv += ["--data.init_args.image_size", f"[{args.image_size}, {args.image_size}]"]
    if getattr(args, "tiny_step", False):
        argv += [a.format(size=args.image_size) for a in family.tiny_args]
    argv += [
        "--experiment", f"bench_{family.name}", "--runs_dir", str(runs_dir),
        # where a variant without loggers writes its figures (Lightning's fallback is the cwd)
        "--trainer.default_root_dir", str(runs_dir),
        *data_args(family, args), "--data.init_args.num_workers", "0",
        "--data.init_args.cache_dir", str(Path(args.out) / "cache"),
        "--trainer.accelerator", args.device, "--trainer.devices", "1",
        # one epoch over exactly the timed schedule's batches (max_steps counts optimizer steps,
        # several per batch for the GANs)
        "--trainer.precision", args.precision, "--trainer.max_steps", "-1",
        "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0", *extra,
    ]
    if "scheduler" in inspect.signature(_system_class(family)).parameters:
        # epoch-level schedulers (ReduceLROnPlateau on val metrics) never step inside the timed
        # steps, and without validation they would fail at the epoch end
        argv += ["--model.init_args.scheduler", "null"]
    return argv


def _system_class(family: Family) -> type:
    import importlib

    import yaml

    cfg = yaml.safe_load((ROOT / "experiments" / f"{family.experiment}.yaml").read_text())
    module, name = cfg["model"]["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _networks(system: nn.Module) -> str:
    """The trained network(s) of a system by class name (GANs have several)."""
    if hasattr(system, "network"):
        return type(system.network).__name__
    nets = [type(m).__name__ for name, m in system.named_children()
            if any(p.requires_grad for p in m.parameters()) and not name.endswith("_metrics")]
    return " + ".join(nets)


def run_family(family: Family, args: argparse.Namespace, extra: tuple[str, ...] = (),
               cpu_time: bool = False) -> dict[str, Any]:
    """Interleaved framework and plain arms of one family; a summary with both arms and the ratio.
    ``cpu_time`` (CPU device): steps timed in the main thread's CPU time, one torch thread (Clock)."""
    cpu_time = cpu_time and args.device == "cpu"
    with one_torch_thread(cpu_time):
        return _run_family(family, args, extra, Clock(torch.device(args.device), cpu_time))


@contextlib.contextmanager
def one_torch_thread(on: bool = True) -> Any:
    """One torch thread while timing in CPU time (every step's work on the timed thread)."""
    threads = torch.get_num_threads()
    if on:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_family(family: Family, args: argparse.Namespace, extra: tuple[str, ...], clock: Clock) -> dict[str, Any]:
    from boneage.cli import RUN_ENV, BoneAgeCLI

    device = torch.device(args.device)
    mem = PeakMemory(device)
    loop = PlainLoop(device, args.precision)
    probe = Interleave(family, [], loop, clock, mem, args.warmup, args.block, args.blocks)
    os.environ.pop(RUN_ENV, None)
    cli_extra = tuple(a for a in extra if a != NO_SYSTEM_LOG)
    argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI reads our arguments only from args=
    try:
        cli = BoneAgeCLI(args=cli_args(family, args, Path(args.out) / "runs", cli_extra),
                         run=False)
    finally:
        sys.argv = argv
    os.environ.pop(RUN_ENV, None)
    dm, system, trainer = cli.datamodule, cli.model, cli.trainer
    if family.prepare is not None:
        family.prepare(system)
    if NO_SYSTEM_LOG in extra:
        system.log = system.log_dict = lambda *a, **k: None
    batches = fixed_batches(dm, args.fixed_batches, pin=device.type == "cuda")
    if getattr(args, "tiny_step", False) and getattr(args, "stand_in", False) and family.stand_in:
        use_stand_in(system, batches[0])
    bench_loader = DataLoader(Repeat(batches, probe.total_steps), batch_size=None, num_workers=0)
    dm.train_dataloader = lambda: bench_loader  # the framework arm gets the same in-memory batches
    timer = Interleave(family, batches, loop, clock, mem, args.warmup, args.block, args.blocks)
    trainer.callbacks.append(timer)
    torch.manual_seed(0)
    trainer.fit(system, datamodule=dm)
    batch = len(batches[0]["age"])
    fw, pl_ = timer.framework.summary(batch), timer.plain.record.summary(batch)
    result = {
        "family": family.name, "system": type(system).__name__, "network": _networks(system),
        "parameters": sum(p.numel() for p in system.parameters() if p.requires_grad),
        "batch": batch, "image_size": list(batches[0]["image"].shape[-2:]),
        "framework": fw, "plain": pl_,
        "ratio_median": fw["median_ms"] / pl_["median_ms"], "ratio_mean": fw["mean_ms"] / pl_["mean_ms"],
        # the headline figures, flat (make gpu-check reads these): framework arm's step duration,
        # framework and plain step cycles, their ratio, host-device syncs per framework step (CUDA)
        "step_ms": fw["step_median_ms"], "framework_ms": fw["median_ms"], "plain_ms": pl_["median_ms"],
        "ratio": fw["median_ms"] / pl_["median_ms"], "syncs_per_step": fw["syncs_per_step"],
        "plain_syncs_per_step": pl_["syncs_per_step"],
        "block_cost_ms": block_costs(timer.framework.cycles, timer.plain.record.cycles, args.block),
        "clock": clock.kind,
        "callbacks": [type(c).__name__ for c in trainer.callbacks if c is not timer],
        "loggers": [type(lg).__name__ for lg in trainer.loggers],
        "log_every_n_steps": trainer.log_every_n_steps,
        "settings_off": list(extra),
    }
    # kept for the options and data sections, not written to JSON
    result["_private"] = {"state": timer.plain.state, "batches": batches, "datamodule": dm}
    return result


def block_costs(framework: list[float], plain: list[float], block: int) -> list[float]:
    """Framework minus plain median cycle (ms) of each pair of neighbouring blocks: pairing the
    blocks cancels the slow drift of a shared machine that the overall medians still carry."""
    n = min(len(framework), len(plain)) // block
    return [1e3 * (statistics.median(framework[i * block:(i + 1) * block])
                   - statistics.median(plain[i * block:(i + 1) * block])) for i in range(n)]


def _tiny(args: argparse.Namespace, blocks: int) -> argparse.Namespace:
    """The tiny step at ``--breakdown-size``/``-batch``: the framework's fixed cost does not depend on
    the network, and it stands out of the step's spread only when the step is short. The regressor,
    TJ-Net and ROI systems get their network's ``StandIn`` (``--stand-in``, the default; else their
    smallest real network, ``Family.tiny_args``); the GANs, whose several networks interlock, get their
    smallest widths (``Family.tiny_args``)."""
    tiny = copy.copy(args)
    tiny.scale = "tiny" if args.scale == "tiny" else "small"
    tiny.image_size, tiny.batch, tiny.tiny_step = args.breakdown_size, args.breakdown_batch, True
    tiny.stand_in = args.stand_in
    tiny.warmup, tiny.block, tiny.blocks = 3, args.breakdown_block, blocks
    return tiny


def run_fixed_cost(family: Family, args: argparse.Namespace, full: dict[str, Any]) -> dict[str, Any]:
    """The framework's cost per step, measured where it stands out: a tiny step (``--breakdown-size``,
    ``--breakdown-batch``), many short paired blocks. It does not grow with the model or the batch,
    so the ratio it implies at the measured configuration, ``1 + cost / plain step``, is a far
    tighter figure than the direct ratio of two noisy second-long medians."""
    r = _public(run_family(family, _tiny(args, args.cost_blocks), cpu_time=True))
    costs = r["block_cost_ms"]
    q1, med, q3 = (float(x) for x in np.percentile(costs, [25, 50, 75]))
    plain_ms = full["plain"]["median_ms"]
    return {"family": family.name, "network": r["network"], "batch": r["batch"], "image_size": r["image_size"],
            "clock": r["clock"],
            "framework_ms": r["framework"]["median_ms"], "plain_ms": r["plain"]["median_ms"],
            "cost_ms": med, "cost_q1_ms": q1, "cost_q3_ms": q3, "blocks": len(costs),
            "step_ms": plain_ms, "implied_ratio": 1.0 + med / plain_ms,
            "implied_ratio_q3": 1.0 + q3 / plain_ms}


def run_floor(args: argparse.Namespace) -> dict[str, Any]:
    """Lightning's own cost per step on this machine: the least a LightningModule can be (one linear
    layer from the image mean, its loss, one Adam; automatic optimisation) under a bare Trainer (no
    loggers, checkpoints, progress bar or model summary), against the same hand-written loop, timed
    like the fixed cost. The framework's fixed cost of a family less this floor is what the project's
    own systems, callbacks and loggers add."""
    import pytorch_lightning as pl

    class Floor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.network = nn.Linear(1, 1)

        def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
            return _floor_loss(self.network, batch)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    size, batch = args.breakdown_size, args.breakdown_batch
    batches = [{"image": torch.randn(batch, 1, size, size, generator=g), "age": torch.rand(batch, generator=g) * 200,
                "sex": torch.ones(batch), "index": torch.arange(batch)} for _ in range(args.fixed_batches)]
    family = Family("lightning floor", "", "", (), floor_setup, floor_step)
    with one_torch_thread(device.type == "cpu"):
        clock = Clock(device, cpu_time=device.type == "cpu")
        timer = Interleave(family, batches, PlainLoop(device, args.precision), clock, PeakMemory(device), 3,
                           args.breakdown_block, args.cost_blocks)
        trainer = pl.Trainer(accelerator=args.device, devices=1, precision=args.precision, max_epochs=1,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[timer], default_root_dir=Path(args.out) / "runs")
        torch.manual_seed(0)
        trainer.fit(Floor(), DataLoader(Repeat(batches, timer.total_steps), batch_size=None, num_workers=0))
    costs = block_costs(timer.framework.cycles, timer.plain.record.cycles, args.breakdown_block)
    q1, med, q3 = (float(x) for x in np.percentile(costs, [25, 50, 75]))
    return {"framework_ms": timer.framework.summary(batch)["median_ms"],
            "plain_ms": timer.plain.record.summary(batch)["median_ms"], "cost_ms": med, "cost_q1_ms": q1,
            "cost_q3_ms": q3, "blocks": len(costs), "clock": clock.kind}


def run_breakdown(family: Family, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The framework's fixed cost per step, in full and with each setting off.

    Run at a tiny step (``--breakdown-size``, ``--breakdown-batch``) so that the per-step cost of
    the framework (progress bar, loggers, callbacks, the system's metric updates and ``self.log``)
    stands out of the noise; ``framework - plain`` in ms is that cost, and at any other step time
    the ratio is ``1 + cost / plain step``.
    """
    tiny = _tiny(args, args.breakdown_blocks)
    rows = []
    for variant, extra in {"CLI defaults (as users run it)": (), **VARIANTS}.items():
        print(f"  {family.name} breakdown: {variant}")
        r = _public(run_family(family, tiny, extra, cpu_time=True))
        r["variant"] = variant
        r["cost_ms"] = r["framework"]["median_ms"] - r["plain"]["median_ms"]
        rows.append(r)
    return rows


# --------------------------------------------------------------------------------------------
# Options: channels_last and torch.compile on the plain loop
# --------------------------------------------------------------------------------------------
def run_options(family: Family, first: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The first family's plain loop as it is, in channels_last, and compiled; interleaved."""
    device = torch.device(args.device)
    clock, mem = Clock(device), PeakMemory(device)
    base, batches = first["_private"]["state"], first["_private"]["batches"]
    wanted = ["default"] + (["channels_last"] if args.channels_last else []) + (["torch.compile"] if args.compile
                                                                                  else [])
    if len(wanted) == 1:
        return {}
    arms: dict[str, PlainArm] = {}
    notes: dict[str, str] = {}
    for name in wanted:
        net = copy.deepcopy(base["net"])
        loop = PlainLoop(device, args.precision, channels_last=name == "channels_last")
        if name == "channels_last":
            net = net.to(memory_format=torch.channels_last)
        state = {**base, "net": net, "opt": base["make_opt"](_params(net))}
        if name == "torch.compile":
            state["net"] = torch.compile(net)
        arm = PlainArm(family, state, loop, batches, clock, mem)
        t0 = time.perf_counter()
        try:
            arm.run(args.warmup, record=False)
        except Exception as err:  # a compiler missing or failing is a result, reported as such
            notes[name] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
            continue
        if name == "torch.compile":
            notes[name] = f"compile + {args.warmup} warm-up steps: {time.perf_counter() - t0:.1f} s"
        arms[name] = arm
    for _ in range(args.blocks):
        for arm in arms.values():
            arm.run(args.block + 1)
    batch = len(batches[0]["age"])
    out = {name: arm.record.summary(batch) for name, arm in arms.items()}
    for name, summary in out.items():
        summary["vs_default"] = summary["median_ms"] / out["default"]["median_ms"]
        summary["note"] = notes.get(name, "")
    for name, note in notes.items():
        out.setdefault(name, {"note": note})
    return {"family": family.name, "arms": out}


# --------------------------------------------------------------------------------------------
# Data loading
# --------------------------------------------------------------------------------------------
def ensure_data(data_dir: Path, n: int, size: int) -> Path:
    """The RSNA-layout folder to read: a real download as it is, or a phantom rendered once."""
    from boneage.phantoms.common import read_metadata
    from boneage.phantoms.rsna import render

    if (data_dir / "boneage-training-dataset.csv").is_file() and not (data_dir / "phantom.json").is_file():
        return data_dir  # real RSNA data
    meta = read_metadata(data_dir)
    if meta is None or meta.get("n") != n or meta.get("extra", {}).get("size") != size:
        if data_dir.exists():
            shutil.rmtree(data_dir)
        print(f"rendering a {n}-image RSNA phantom at {size} px into {data_dir}")
        render(data_dir, n=n, seed=0, size=size, progress_bar=True)
    return data_dir


class DecodeOnly(Dataset):
    """PNG decode and nothing else: through a DataLoader, the limit of a loader with as many workers."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> int:
        import cv2

        img = cv2.imread(self.paths[i], cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"cannot decode {self.paths[i]}")
        return img.shape[0]


def _epochs_rate(loader: Any, epochs: int) -> float:
    """Images/s of a loader after one untimed epoch (worker start, OS file cache)."""
    for _ in loader:
        pass
    t0, n = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            n += len(batch["age"]) if isinstance(batch, dict) else len(batch)
    rate = n / (time.perf_counter() - t0)
    if getattr(loader, "_iterator", None) is not None:
        loader._iterator._shutdown_workers()  # persistent workers: end them now
    return rate


def _decode_rate(paths: list[str], workers: int, batch: int, epochs: int) -> float:
    loader = DataLoader(DecodeOnly(paths), batch_size=batch, num_workers=workers, persistent_workers=workers > 0)
    return _epochs_rate(loader, epochs)


def _rate(fn: Callable[[], int]) -> float:
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def _decode_all(paths: list[str], how: str) -> int:
    import cv2

    for p in paths:
        if how == "cv2":
            img = cv2.imread(p, cv2.IMREAD_UNCHANGED)
        else:
            from PIL import Image

            with Image.open(p) as im:
                img = np.asarray(im)
        if img is None:
            raise ValueError(f"cannot decode {p}")
    return len(paths)


def measure_loading(data_dir: Path, src: Any, args: argparse.Namespace, cache_dir: Path, repeats: int,
                    warm: bool = True) -> dict[str, Any]:
    """Loader images/s of one RSNA folder: the decode limit per worker count (a DataLoader that only
    decodes, with as many workers), the cache build, the cold loader and, with ``warm``, the cached one."""
    from data_modules.base import ImageCache
    from data_modules.rsna import RSNADataModule

    common = {"data_dir": str(data_dir), "image_size": src.image_size, "keep_aspect": src.keep_aspect,
              "batch_size": src.batch_size, "augment": src.augment_spec, "cache_dir": str(cache_dir)}
    probe = RSNADataModule(**common, use_cache=False)
    probe.setup("fit")
    paths = probe.table("train")["path"].tolist()
    sizes = {}
    with contextlib.suppress(Exception):
        from PIL import Image

        with Image.open(paths[0]) as im:
            sizes = {"source_size": [im.height, im.width], "source_mode": im.mode}
    resize = resize_times(paths[:8], src.image_size, src.keep_aspect)
    raw_pil: list[float] = []
    limit = {w: [] for w in args.workers}
    build = {w: [] for w in args.workers}
    cold = {w: [] for w in args.workers}
    hot = {w: [] for w in args.workers}
    for r in range(repeats):
        raw_pil.append(_rate(lambda: _decode_all(paths, "PIL")))
        for w in args.workers:
            fresh = Path(tempfile.mkdtemp(prefix="cache", dir=args.out))
            cache = ImageCache(paths, src.image_size, src.keep_aspect, fresh, src.crop, window=src.window)
            build[w].append(_rate(lambda cache=cache, w=w: (cache.build(progress=False, workers=w), len(paths))[1]))
            shutil.rmtree(fresh)
            limit[w].append(_decode_rate(paths, w, src.batch_size, args.data_epochs))
            for use_cache, out in ((False, cold), (True, hot)) if warm else ((False, cold),):
                dm = RSNADataModule(**common, num_workers=w, use_cache=use_cache)
                dm.setup("fit")
                out[w].append(_epochs_rate(dm.train_dataloader(), args.data_epochs))
        print(f"data loading ({data_dir.name}): round {r + 1}/{repeats} done")
    med = statistics.median
    rows = []
    for w in args.workers:
        rows.append({"path": "raw PNG decode, cv2.imread (the limit)", "workers": w, "images_per_s": med(limit[w]),
                     "limit": med(limit[w])})
    rows.append({"path": "raw PNG decode, PIL", "workers": 0, "images_per_s": med(raw_pil), "limit": med(limit[0])
                 if 0 in limit else None})
    rows += [{"path": "cold: cache build of a fresh cache_dir (decode + resize)", "workers": w,
              "images_per_s": med(build[w]), "limit": med(limit[w])} for w in args.workers]
    rows += [{"path": "cold: use_cache=False (decode + resize + augment)", "workers": w,
              "images_per_s": med(cold[w]), "limit": med(limit[w])} for w in args.workers]
    if warm:
        rows += [{"path": "warm: cached uint8 (augment)", "workers": w, "images_per_s": med(hot[w]),
                  "limit": med(limit[w])} for w in args.workers]
    for row in rows:
        row["limit_over_rate"] = None if row["limit"] is None else row["limit"] / row["images_per_s"]
    return {"data_dir": str(data_dir), "images": len(paths), **sizes, "repeats": repeats, "rows": rows,
            "resize_ms": resize, "raw": {"limit": limit, "PIL": raw_pil, "build": build, "cold": cold, "warm": hot}}


def resize_times(paths: list[str], size: tuple[int, int], keep_aspect: bool, repeats: int = 15) -> dict[str, float]:
    """Median ms per image of the DataModule's resize (``resize_gray``: area average on both axes)
    and, for comparison, of one OpenCV ``INTER_AREA`` resize to the same size, on decoded images."""
    import cv2

    from data_modules.base import resize_gray

    images = [cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in paths]
    h, w = size
    arms = {"resize_gray": lambda img: resize_gray(img, size, keep_aspect),
            "cv2.INTER_AREA": lambda img: cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, fn in arms.items():  # interleaved: load on the machine hits both alike
            t0 = time.perf_counter()
            for img in images:
                fn(img)
            times[name].append((time.perf_counter() - t0) / len(images))
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def run_data(first: dict[str, Any] | None, args: argparse.Namespace) -> dict[str, Any]:
    """Loader images/s (cold, cache build, warm) per worker count against the decode limit, on the
    demo-size phantom and, with ``--large-phantom-size``, on radiograph-size images. With no
    framework run (``--data-only``) the first family's DataModule is built alone and the model's
    consumption is not measured."""
    if first is None:
        src, consumption, of = family_datamodule(FAMILIES[args.families[0]], args), None, "not measured: --data-only"
    else:
        src, consumption = first["_private"]["datamodule"], first["framework"]["images_per_s"]
        of = f"{first['family']} framework arm"
    _decode_all(src.table("train")["path"].tolist(), "cv2")  # OS file cache warm for what follows
    sets = [measure_loading(Path(args.data_dir), src, args, Path(args.out) / "cache", args.data_repeats)]
    if args.large_phantom_size:
        large = ensure_data(Path(args.out) / "data" / f"rsna_{args.large_phantom_size}px", args.large_n_images,
                            args.large_phantom_size)
        sets.append(measure_loading(large, src, args, Path(args.out) / "cache_large", args.data_repeats, warm=False))
    for d in sets:
        for row in d["rows"]:
            row["rate_over_consumption"] = None if consumption is None else row["images_per_s"] / consumption
    return {"image_size": list(src.image_size), "batch": src.batch_size, "augment": src.augment_spec,
            "epochs_timed": args.data_epochs, "consumption_images_per_s": consumption,
            "consumption_of": of, "sets": sets}


def family_datamodule(family: Family, args: argparse.Namespace) -> Any:
    """A family's DataModule exactly as its framework arm gets it (the CLI, without training)."""
    from boneage.cli import RUN_ENV, BoneAgeCLI

    os.environ.pop(RUN_ENV, None)
    argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI reads our arguments only from args=
    try:
        cli = BoneAgeCLI(args=cli_args(family, args, Path(args.out) / "runs"), run=False)
    finally:
        sys.argv = argv
    os.environ.pop(RUN_ENV, None)
    cli.datamodule.setup("fit")
    return cli.datamodule


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import pytorch_lightning as pl

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "lightning": pl.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _f(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    if not res["families"]:  # --data-only
        lines = [f"Machine: {m['cpu']} ({m['cores']} cores); torch {m['torch']}. Load average before / after: "
                 f"{res['load_before']} / {res['load_after']}."]
        return "\n".join(lines + markdown_data(res))
    lines = [
        "## Framework overhead: Lightning + BoneAgeCLI against a plain PyTorch loop",
        "",
        f"Machine: {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads)"
        + (f", {m['gpu']}" if "gpu" in m else "")
        + f"; torch {m['torch']}, Lightning {m['lightning']}. Device {cfg['device']}, precision "
        f"{cfg['precision']}, scale {cfg['scale']}. Load average before / after: {res['load_before']} / "
        f"{res['load_after']}. {cfg['blocks']} interleaved blocks of {cfg['block']} steps per arm after "
        f"{cfg['warmup']} warm-up steps; step = cycle from one step's start to the next. "
        f"Peak memory: {res['memory_kind']}, above the block's start. Syncs per step: host-device "
        "synchronisations counted with torch.cuda.set_sync_debug_mode (CUDA only; n/a on CPU).",
        "",
        "| family | network (params) | batch, size | framework median (ms) | plain median (ms) "
        "| ratio (median) | ratio (mean) | framework peak (MiB) | plain peak (MiB) | syncs per step "
        "(framework / plain) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["families"]:
        fw, pl_ = r["framework"], r["plain"]
        lines.append(
            f"| {r['family']} | {r['network']} ({r['parameters'] / 1e6:.2f} M) | {r['batch']}, "
            f"{r['image_size'][0]}x{r['image_size'][1]} | {_f(fw['median_ms'])} | {_f(pl_['median_ms'])} "
            f"| **{_f(r['ratio_median'], 3)}** | {_f(r['ratio_mean'], 3)} | {_f(fw['peak_mib'])} "
            f"| {_f(pl_['peak_mib'])} | {_f(r['syncs_per_step'], 1)} / {_f(r['plain_syncs_per_step'], 1)} |")
    if res.get("fixed_cost"):
        c0 = res["fixed_cost"][0]
        lines += ["", f"Fixed cost of the framework per step, where it stands out: a tiny step (batch {c0['batch']}, "
                  f"{c0['image_size'][0]}x{c0['image_size'][1]}; the single-network families with a StandIn network of "
                  f"one linear layer, the GANs at their smallest widths), {c0['blocks']} pairs of neighbouring blocks "
                  f"timed in {c0['clock']}; cost = "
                  "median over the pairs of (framework - plain) block medians, with its interquartile range. The "
                  "cost does not grow with model or batch, so the ratio at the configuration above is about "
                  "1 + cost / plain step: a tighter figure than the direct ratio of two noisy medians.", "",
                  "| family | tiny network | tiny framework (ms) | tiny plain (ms) | cost (ms/step) | cost IQR (ms) "
                  "| plain step above (ms) | **implied ratio** | implied ratio at the cost's Q3 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        floor = res.get("floor")
        if floor:
            lines.append(f"| Lightning's floor | Linear(1, 1), bare Trainer | {_f(floor['framework_ms'], 2)} "
                         f"| {_f(floor['plain_ms'], 2)} | {_f(floor['cost_ms'], 2)} | {_f(floor['cost_q1_ms'], 2)} "
                         f"to {_f(floor['cost_q3_ms'], 2)} | | | |")
        for c in res["fixed_cost"]:
            lines.append(f"| {c['family']} | {c.get('network', '')} | {_f(c['framework_ms'], 2)} "
                         f"| {_f(c['plain_ms'], 2)} "
                         f"| {_f(c['cost_ms'], 2)} | {_f(c['cost_q1_ms'], 2)} to {_f(c['cost_q3_ms'], 2)} "
                         f"| {_f(c['step_ms'])} | **{_f(c['implied_ratio'], 3)}** | {_f(c['implied_ratio_q3'], 3)} |")
        if floor:
            lines += ["", "Lightning's floor: the least a LightningModule can be (one linear layer, automatic "
                      "optimisation) under a bare Trainer, against the same hand-written loop; a family's cost "
                      "less the floor is what the project's systems, callbacks and loggers add."]
    if res["breakdown"]:
        b = res["breakdown"][0]
        lines += ["", f"What the framework costs per step, and each setting of it: a tiny step (batch {b['batch']}, "
                  f"{b['image_size'][0]}x{b['image_size'][1]}) where the fixed cost stands out; each row its own "
                  "interleaved run; cost = framework - plain median. At a step of T ms the ratio is about "
                  "1 + cost / T.", "",
                  "| family | framework arm | framework median (ms) | plain median (ms) | cost (ms/step) "
                  "| ratio (median) | ratio (mean) |", "|---|---|---|---|---|---|---|"]
        for r in res["breakdown"]:
            lines.append(f"| {r['family']} | {r['variant']} | {_f(r['framework']['median_ms'], 2)} "
                         f"| {_f(r['plain']['median_ms'], 2)} | {_f(r['cost_ms'], 2)} | {_f(r['ratio_median'], 3)} "
                         f"| {_f(r['ratio_mean'], 3)} |")
    if res["options"]:
        opts = res["options"]
        lines += ["", f"## Options (plain loop of the {opts['family']} family, interleaved)", "",
                  "| option | median step (ms) | images/s | vs default | note |", "|---|---|---|---|---|"]
        for name, a in opts["arms"].items():
            lines.append(f"| {name} | {_f(a.get('median_ms'))} | {_f(a.get('images_per_s'))} "
                         f"| {_f(a.get('vs_default'), 3)} | {a.get('note', '')} |")
    return "\n".join(lines + markdown_data(res))


def markdown_data(res: dict[str, Any]) -> list[str]:
    """The data-loading tables and the targets line."""
    lines = []
    if res["data"]:
        d = res["data"]
        lines += [
            "", "## Data loading: RSNA DataModule training loader", "",
            f"Images resized to {d['image_size'][0]}x{d['image_size'][1]}, batch {d['batch']}, the experiment's "
            f"augmentation; {d['epochs_timed']} timed epoch(s) after an untimed one (OS file cache warm everywhere: "
            "'cold' means no decoded-image cache). The limit of each row is the PNG decode rate through a "
            "DataLoader with the same number of workers. "
            f"Model consumption: {_f(d['consumption_images_per_s'])} images/s ({d['consumption_of']})."]
        for s in d["sets"]:
            src = (f"{s['source_size'][0]}x{s['source_size'][1]} {s.get('source_mode', '')} PNGs"
                   if "source_size" in s else "PNGs")
            lines += ["", f"{s['images']} training images from {s['data_dir']} ({src}), median of "
                      f"{s['repeats']} round(s).", "",
                      "| path | workers | images/s | ms/image | decode limit / rate | rate / model consumption |",
                      "|---|---|---|---|---|---|"]
            for row in s["rows"]:
                lines.append(f"| {row['path']} | {row['workers']} | {_f(row['images_per_s'])} "
                             f"| {_f(1e3 / row['images_per_s'], 2)} "
                             f"| {_f(row['limit_over_rate'], 2)} | {_f(row['rate_over_consumption'], 2)} |")
            if s.get("resize_ms"):
                r = s["resize_ms"]
                lines += ["", f"Resize alone (decoded images to {d['image_size'][0]}x{d['image_size'][1]}, median ms "
                          f"per image): the DataModule's `resize_gray` {_f(r['resize_gray'], 2)}, one OpenCV "
                          f"INTER_AREA resize {_f(r['cv2.INTER_AREA'], 2)}."]
    lines += ["", "Targets: ratio <= 1.05 for every family (measured, or implied by the fixed cost); "
              "warm loader >= 5x the model's consumption; cold path "
              "within 1.5x of the raw decode limit (decode limit / rate <= 1.5).", ""]
    return lines


def _public(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m boneage.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench", help="folder for results.md, results.json, runs, cache, data")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    p.add_argument("--scale", default="small", choices=["tiny", "small", "paper"])
    p.add_argument("--families", default="all", help="comma-separated, from: " + ", ".join(FAMILIES))
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the scale's)")
    p.add_argument("--image-size", type=int, default=None, help="square image size (default: the scale's)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per arm")
    p.add_argument("--block", type=int, default=3, help="timed steps per block")
    p.add_argument("--blocks", type=int, default=6, help="blocks per arm")
    p.add_argument("--fixed-batches", type=int, default=4, help="distinct batches both arms cycle through")
    p.add_argument("--threshold", type=float, default=1.05, help="ratio above which settings are broken down")
    p.add_argument("--cost-blocks", type=int, default=12,
                   help="paired blocks of the fixed-cost run at the tiny step (0: no fixed-cost run)")
    p.add_argument("--breakdown", default="auto", choices=["auto", "always", "never"],
                   help="cost of each framework setting: auto = for families whose implied ratio (or, "
                        "without the fixed-cost run, measured ratio) is above --threshold")
    p.add_argument("--breakdown-size", type=int, default=32,
                   help="image size of the tiny step (fixed cost, breakdown; the GANs' networks follow it)")
    p.add_argument("--breakdown-batch", type=int, default=2, help="batch of the breakdown's tiny step")
    p.add_argument("--stand-in", action=argparse.BooleanOptionalAction, default=True,
                   help="the tiny step of the single-network families (regressor, TJ-Net, ROI) uses a stand-in "
                        "network (bench.StandIn: same interface and output shapes, one linear layer) so that "
                        "the fixed cost is not lost in the convolutions' spread; --no-stand-in: their smallest "
                        "real networks")
    p.add_argument("--breakdown-block", type=int, default=8)
    p.add_argument("--breakdown-blocks", type=int, default=5)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="also measure torch.compile (minutes of compiling on a CPU)")
    p.add_argument("--workers", default="0,2", help="loader worker counts to measure")
    p.add_argument("--data", action=argparse.BooleanOptionalAction, default=True, help="measure data loading")
    p.add_argument("--data-only", action="store_true",
                   help="measure only the data loading (the cold-path tables; the first family's DataModule "
                        "settings), into <out>/results-data.md and results-data.json")
    p.add_argument("--data-dir", default=None, help="RSNA folder (default: a phantom in <out>/data/rsna)")
    p.add_argument("--n-images", type=int, default=320, help="phantom images when rendering one")
    p.add_argument("--phantom-size", type=int, default=256, help="phantom image height (the demo's: 256)")
    p.add_argument("--large-phantom-size", type=int, default=2048,
                   help="also time the cold path on phantom radiographs of this height (RSNA's are 1500-2500 px); "
                        "0 skips it")
    p.add_argument("--large-n-images", type=int, default=160, help="images of the large phantom")
    p.add_argument("--data-repeats", type=int, default=3)
    p.add_argument("--data-epochs", type=int, default=1)
    args = p.parse_args(argv)
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda"):
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no GPU")
    names = list(FAMILIES) if args.families == "all" else [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    missing = [n for n in names if not FAMILIES[n].present()]
    if missing and args.families != "all":
        p.error(f"families {missing} are not present in this checkout (system module or YAML missing)")
    args.families = [n for n in names if FAMILIES[n].present()]
    args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    for name in ("warmup", "block", "blocks", "fixed_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.data_dir = ensure_data(Path(args.data_dir) if args.data_dir else out / "data" / "rsna", args.n_images,
                                args.phantom_size)
    started = time.time()
    res: dict[str, Any] = {"machine": machine(), "load_before": load_average(), "config": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "memory_kind": PeakMemory(torch.device(args.device)).kind, "families": [], "fixed_cost": [], "floor": None,
        "breakdown": [],
        "options": {}, "data": {}}
    first = None
    for name in [] if args.data_only else args.families:
        print(f"framework vs plain: {name}")
        r = run_family(FAMILIES[name], args)
        first = first or r
        res["families"].append(r)
        print(f"  {name}: framework {r['framework']['median_ms']:.1f} ms, plain {r['plain']['median_ms']:.1f} ms, "
              f"ratio {r['ratio_median']:.3f}")
        r["fixed_cost_ms"] = None
        if args.cost_blocks:
            c = run_fixed_cost(FAMILIES[name], args, r)
            res["fixed_cost"].append(c)
            r["fixed_cost_ms"] = c["cost_ms"]
            print(f"  {name}: fixed cost {c['cost_ms']:.2f} ms/step (IQR {c['cost_q1_ms']:.2f} to "
                  f"{c['cost_q3_ms']:.2f}), implied ratio {c['implied_ratio']:.3f}")
        over = res["fixed_cost"][-1]["implied_ratio"] if args.cost_blocks else r["ratio_median"]
        if args.breakdown == "always" or (args.breakdown == "auto" and over > args.threshold):
            res["breakdown"] += run_breakdown(FAMILIES[name], args)
    if res["fixed_cost"]:
        print("lightning floor")
        res["floor"] = run_floor(args)
        print(f"  Lightning's own cost: {res['floor']['cost_ms']:.2f} ms/step")
    if first is not None:
        res["options"] = run_options(FAMILIES[first["family"]], first, args)
        if args.data:
            res["data"] = run_data(first, args)
    elif args.data_only:
        res["data"] = run_data(None, args)
    res["load_after"] = load_average()
    res["wall_s"] = time.time() - started
    res["families"] = [_public(r) for r in res["families"]]
    stem = "results-data" if args.data_only else "results"  # a data-only run keeps the full run's tables
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str))
    table = markdown(res)
    (out / f"{stem}.md").write_text(table)
    print("\n" + table)
    print(f"wrote {out / f'{stem}.md'} and {out / f'{stem}.json'} in {res['wall_s']:.0f} s")
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
