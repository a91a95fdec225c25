"""PGGAN training recipe: growth schedule, per-resolution batches and learning rates, Adam resets,
start-up batch checks, snapshots, resume in the right phase, the metrics callback's protocols."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import yaml

from boneage.models.pggan import PGGANDiscriminator, PGGANGenerator
from boneage.systems.pggan import GrowthSchedule, PGGANMetrics, PGGANSnapshots, PGGANSystem
from data_modules.rsna import RSNADataModule

ROOT = Path(__file__).resolve().parents[1]


def test_schedule_walks_stabilise_fade_stabilise_with_linear_alpha():
    s = GrowthSchedule(final_resolution=16, stabilise_images=100, fade_images=50, batch_sizes={4: 16, 16: 8})
    st = s.state(0)
    assert (st.resolution, st.phase, st.alpha, st.batch_size) == (4, "stabilise", 1.0, 16)
    st = s.state(125)  # 25 images into the fade-in of 8 px
    assert (st.resolution, st.phase, st.alpha) == (8, "fade", 0.5)
    assert s.state(150).phase == "stabilise" and s.state(150).resolution == 8
    st = s.state(250 + 10)
    assert (st.resolution, st.phase, st.alpha, st.batch_size) == (16, "fade", pytest.approx(0.2), 8)
    assert s.growth_images() == 100 + 150 + 150
    final = s.state(10_000)  # the last phase is open-ended
    assert (final.resolution, final.phase, final.alpha) == (16, "stabilise", 1.0)


def _system(**kw) -> PGGANSystem:
    torch.manual_seed(0)
    g = PGGANGenerator(latent_dim=16, resolution=16, width=1 / 32)
    d = PGGANDiscriminator(resolution=16, width=1 / 32)
    args = dict(stabilise_images=16, fade_images=16, batch_sizes={4: 4})
    args.update(kw)
    return PGGANSystem(g, d, **args)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna")
    args = RSNADataModule.phantom_args(root, n=48, seed=0, size=64)
    return args


def _dm(phantom, size: int = 16, batch_size: int = 4) -> RSNADataModule:
    return RSNADataModule(**phantom, image_size=(size, size), batch_size=batch_size, num_workers=0)


def _trainer(tmp_path, **kw) -> pl.Trainer:
    kw.setdefault("log_every_n_steps", 1)  # the system logs on the steps the loggers write: all of them here
    return pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, **kw)


def test_tiny_pggan_grows_4_to_16_with_its_batches_learning_rates_and_adam_resets(phantom, tmp_path):
    # 16 px steps take 8 images, more than the loader's 6: images queue across loader batches
    system = _system(total_images=112, batch_sizes={4: 4, 16: 8}, lrs={8: 5e-4, 16: 2e-3})
    log, loaded = [], []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            loaded.append(len(batch["image"]))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            m = trainer.callback_metrics
            if "train/resolution" in m:
                log.append({"res": int(m["train/resolution"]), "alpha": float(m["train/alpha"]),
                            "d": float(m["train/d_loss"]), "g": float(m["train/g_loss"]),
                            "lr": module.optimizers()[1].param_groups[0]["lr"]})

    metrics = PGGANMetrics(every_n_images=40, msssim_images=8, is_images=8, fid_images=8, swd_images=8)
    trainer = _trainer(tmp_path, max_epochs=-1, callbacks=[Record(), metrics], enable_checkpointing=False)
    trainer.fit(system, datamodule=_dm(phantom, batch_size=6))
    frame = pd.DataFrame(log)
    assert system.images_shown == 112
    queued = 0 if system._queue is None else len(system._queue)
    assert system.images_shown + queued == sum(loaded)  # every loaded image is shown once, or still queued
    assert frame["res"].tolist()[0] == 4 and frame["res"].tolist()[-1] == 16
    assert set(frame["res"]) == {4, 8, 16}
    fades = frame[frame["alpha"] < 1]
    assert len(fades) > 0 and fades["alpha"].min() == 0.0
    assert all(math.isfinite(v) for v in frame[["d", "g"]].to_numpy().ravel())
    # each resolution trains at its own rate (unnamed resolutions at lr), fade-ins at the new one's
    assert {(r, lr) for r, lr in zip(frame["res"], frame["lr"])} == {(4, 1e-3), (8, 5e-4), (16, 2e-3)}
    # Adam restarted when the last (stabilise) phase began at 64 images: 48 images / 8 = 6 steps since,
    # where a reset at fade-ins only would have counted the 16 px fade's 2 steps too
    for opt in system.optimizers():
        assert max(int(st["step"]) for st in opt.optimizer.state.values()) == 6
    # the EMA generator moved away from its initial copy but stays close to the trained one
    g, ema = dict(system.generator.named_parameters()), dict(system.generator_ema.named_parameters())
    assert any(not torch.equal(g[k], ema[k]) for k in g)
    figures = list((tmp_path).rglob("samples_*.png"))
    assert len(figures) >= 4  # one grid per finished phase and the final one
    # metrics during training, on full-resolution snapshots (official protocol): at 8 px and at 16 px
    hist = pd.DataFrame(metrics.history)
    assert hist["kimg"].tolist() == [0.04, 0.08, 0.112] and hist["resolution"].tolist() == [8.0, 16.0, 16.0]
    assert (hist["size"] == 16).all() and hist["msssim"].notna().all()
    assert (hist[["swd_mean", "swd_mean_real"]] > 0).all().all()
    assert list(tmp_path.rglob("gan_metrics.csv")) and list(tmp_path.rglob("gan_metrics.png"))


def _preset(name: str) -> dict:
    args = yaml.safe_load((ROOT / name).read_text())["model"]["init_args"]
    group = args.get("discriminator", {}).get("init_args", {}).get("mbstd_group", 4)
    keys = ("batch_sizes", "lrs", "lr", "stabilise_images", "fade_images", "total_images")
    return {"mbstd_group": group, **{k: args[k] for k in keys if k in args}}


def _full_size_system(mbstd_group: int, **kw) -> PGGANSystem:
    g = PGGANGenerator(latent_dim=8, resolution=1024, width=1 / 64)
    d = PGGANDiscriminator(resolution=1024, width=1 / 64, mbstd_group=mbstd_group)
    return PGGANSystem(g, d, **kw)


def test_official_presets_and_the_minibatch_stddev_check_at_start_up():
    four = _preset("experiments/presets/pggan_official_4gpus.yaml")
    one = _preset("experiments/presets/pggan_official_1gpu.yaml")
    default = _preset("experiments/pggan_rsna.yaml")
    assert {k: default[k] for k in four} == four  # the experiment's default is the paper's 4-GPU setup
    four_gpus = _full_size_system(**four)
    assert four_gpus.lr_at(1024) == 0.003 and four_gpus.lr_at(128) == 0.001
    for world in (1, 2, 4):
        four_gpus.check_batches(world)  # 16 images at 1024 px: 4 per GPU, one group of 4
    one_gpu = _full_size_system(**one)
    one_gpu.check_batches(1)  # 14, 6, 3 images in one group each, as the official min(group, batch)
    with pytest.raises(ValueError, match=r"16 images at 4 px: 4 per device on 4 device\(s\).*mbstd_group=16"):
        one_gpu.check_batches(4)
    with pytest.raises(ValueError, match="14 images at 256 px, which does not divide over 4 devices"):
        _full_size_system(4, batch_sizes={4: 16, 256: 14}).check_batches(4)
    with pytest.raises(ValueError, match="3 images at 1024 px: 1 per device .* constant"):
        _full_size_system(4, batch_sizes={4: 12, 1024: 3}).check_batches(3)


def test_snapshots_roll_back_and_resume_in_the_same_phase_with_the_same_alpha(phantom, tmp_path):
    system = _system(total_images=24)  # stops halfway into the fade-in of 8 px (images 16..32)
    trainer = _trainer(tmp_path, max_epochs=-1, enable_checkpointing=False, callbacks=[PGGANSnapshots(8)])
    trainer.fit(system, datamodule=_dm(phantom))
    before = system.growth
    assert (before.resolution, before.phase, before.alpha) == (8, "fade", 0.5)
    snaps = sorted((tmp_path / "checkpoints").glob("snapshot-*.ckpt"))
    assert [p.name for p in snaps] == [f"snapshot-img{n:010d}.ckpt" for n in (8, 16, 24)]
    saved = torch.load(snaps[-1], weights_only=False)["pggan_growth"]
    assert saved["images_shown"] == 24 and saved["state"]["alpha"] == 0.5

    def resume(ckpt, total: int, name: str) -> tuple[PGGANSystem, list]:
        resumed, seen = _system(total_images=total), []

        class First(pl.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                seen.append(module.growth)

        _trainer(tmp_path / name, max_epochs=-1, enable_checkpointing=False, callbacks=[First()]).fit(
            resumed, datamodule=_dm(phantom), ckpt_path=ckpt)
        return resumed, seen

    resumed, seen = resume(snaps[-1], 32, "resumed")
    assert seen[0].phase == "fade" and seen[0].resolution == 8 and seen[0].alpha == 0.5
    assert resumed.images_shown == 32
    rolled, seen = resume(snaps[1], 20, "rolled_back")  # back to 16 images: the fade-in starts again
    assert (seen[0].phase, seen[0].resolution, seen[0].alpha) == ("fade", 8, 0.0) and rolled.images_shown == 20
    # a resumed run with another schedule is refused with a clear message
    other = _system(fade_images=32)
    with pytest.raises(ValueError, match="growth schedule"):
        _trainer(tmp_path / "other", max_epochs=-1, enable_checkpointing=False).fit(
            other, datamodule=_dm(phantom), ckpt_path=snaps[-1])


def test_diverging_gan_stops_with_a_clear_message(phantom, tmp_path):
    system = _system(lr=1e30, total_images=400, check_finite_every_n_steps=4)
    with pytest.raises(FloatingPointError, match=r"PGGAN diverged: \w+ is (nan|inf) at \d+ images shown .*every 4 "
                                                 r"steps.*last good checkpoint"):
        _trainer(tmp_path, max_epochs=-1, enable_checkpointing=False).fit(system, datamodule=_dm(phantom))


def test_wrong_data_size_names_the_setting(phantom, tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        trainer = _trainer(tmp_path, max_steps=2, enable_checkpointing=False)
        trainer.fit(_system(), datamodule=_dm(phantom, 12))


class _TinyRegressor(torch.nn.Module):
    """Stand-in age regressor: pooled conv features -> one linear output (age in months)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(2),
                                            torch.nn.Flatten())
        self.out = torch.nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 120 + 60 * self.out(self.features(x)).squeeze(1)


def test_metrics_protocols_count_real_images_like_generated_ones_on_rank_zero(phantom, monkeypatch):
    from torchmetrics.image.fid import FrechetInceptionDistance

    from boneage.metrics.gan_metrics import RegressorFeatures

    events = []  # FID calls: (real?, images) per update, "compute" per value
    update, compute = FrechetInceptionDistance.update, FrechetInceptionDistance.compute
    monkeypatch.setattr(FrechetInceptionDistance, "update",
                        lambda self, x, real: events.append((real, len(x))) or update(self, x, real))
    monkeypatch.setattr(FrechetInceptionDistance, "compute", lambda self: events.append("compute") or compute(self))
    dm, system, barriers = _dm(phantom), _system(), []

    def evaluate(cb: PGGANMetrics, images_shown: int, rank_zero: bool = True):
        system.images_shown = images_shown
        trainer = SimpleNamespace(is_global_zero=rank_zero, datamodule=dm, loggers=[], global_step=0,
                                  strategy=SimpleNamespace(barrier=barriers.append))
        return cb.evaluate(trainer, system)

    def callback(protocol: str) -> PGGANMetrics:
        cb = PGGANMetrics(msssim_images=6, is_images=6, fid_images=10, swd_images=4, batch_size=4,
                          protocol=protocol)
        net = _TinyRegressor()
        cb._image_metrics = (RegressorFeatures(net, net, "features"), RegressorFeatures(net, net, "logits"))
        cb._names = ("fid_domain", "is_domain")
        return cb

    official = callback("official")
    at_4px, at_8px = evaluate(official, 0), evaluate(official, 24)  # 4 px stabilise; 8 px fade-in
    assert at_4px["resolution"] == 4 and at_8px["resolution"] == 8
    assert at_4px["size"] == at_8px["size"] == 16  # full-resolution snapshots
    assert {"msssim", "swd_16", "swd_mean", "fid_domain", "is_domain", "fid_domain_real"} <= set(at_4px)
    real_line = {k: v for k, v in at_4px.items() if k.endswith("_real")}
    assert real_line == {k: at_8px[k] for k in real_line}  # full-resolution reals: one real line per run
    # FID: 10 real images once; then 10 more reals (the real line), 10 fakes, 10 fakes, each against them
    segments, fakes = [], 0
    for event in events:
        if event == "compute":
            segments.append(fakes)
            fakes = 0
        elif event[0]:
            assert segments == []  # every real statistic comes before the first value
        else:
            fakes += event[1]
    assert sum(e[1] for e in events if e != "compute" and e[0]) == 10
    assert segments == [10, 10, 10]

    current = callback("current")
    low = evaluate(current, 0)
    assert low["size"] == 4 and not any(k.startswith(("swd", "msssim")) for k in low)  # below 16 px
    high = evaluate(current, 80)
    assert high["size"] == 16 and "swd_16" in high
    # other ranks skip the work and wait at the barrier with rank zero
    other_rank = callback("official")
    assert evaluate(other_rank, 0, rank_zero=False) is None and other_rank.history == []
    assert len(barriers) == 5


@pytest.mark.slow  # bf16 autocast is emulated on CPUs without AVX512-BF16: ~12 s here
def test_bf16_mixed_grows_with_finite_losses(phantom, tmp_path):
    system = _system(stabilise_images=8, fade_images=8, total_images=48)
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append((float(trainer.callback_metrics["train/d_loss"]), module.growth.resolution))

    trainer = _trainer(tmp_path, precision="bf16-mixed", max_epochs=-1, callbacks=[Record()],
                       enable_checkpointing=False)
    trainer.fit(system, datamodule=_dm(phantom))
    assert {r for _, r in losses} == {4, 8, 16}
    assert all(math.isfinite(d) for d, _ in losses)
