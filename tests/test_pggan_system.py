"""PGGAN training recipe: growth schedule, resume in the right phase, tiny growth 4 -> 16 on the phantom."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from boneage.models.pggan import PGGANDiscriminator, PGGANGenerator
from boneage.systems.pggan import GrowthSchedule, PGGANMetrics, PGGANSystem
from data_modules.rsna import RSNADataModule


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


def _dm(phantom, size: int = 16) -> RSNADataModule:
    return RSNADataModule(**phantom, image_size=(size, size), batch_size=4, num_workers=0)


def _trainer(tmp_path, **kw) -> pl.Trainer:
    return pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, **kw)


def test_tiny_pggan_grows_4_to_16_on_the_phantom_with_finite_losses(phantom, tmp_path):
    system = _system(total_images=112)
    log = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            m = trainer.callback_metrics
            log.append({"res": int(m["train/resolution"]), "alpha": float(m["train/alpha"]),
                        "d": float(m["train/d_loss"]), "g": float(m["train/g_loss"])})

    trainer = _trainer(tmp_path, max_epochs=-1, callbacks=[Record()], enable_checkpointing=False)
    trainer.fit(system, datamodule=_dm(phantom))
    frame = pd.DataFrame(log)
    assert system.images_shown == 112
    assert frame["res"].tolist()[0] == 4 and frame["res"].tolist()[-1] == 16
    assert set(frame["res"]) == {4, 8, 16}
    fades = frame[frame["alpha"] < 1]
    assert len(fades) > 0 and fades["alpha"].min() == 0.0
    assert all(math.isfinite(v) for v in frame[["d", "g"]].to_numpy().ravel())
    # Adam moments were reset when 16 px was added: step counts restart below the batches shown
    steps = system.optimizers()[0].optimizer.state
    assert max(int(s["step"]) for s in steps.values()) < len(frame)
    # the EMA generator moved away from its initial copy but stays close to the trained one
    g, ema = dict(system.generator.named_parameters()), dict(system.generator_ema.named_parameters())
    assert any(not torch.equal(g[k], ema[k]) for k in g)
    figures = list((tmp_path).rglob("samples_*.png"))
    assert len(figures) >= 4  # one grid per finished phase and the final one


def test_resume_continues_in_the_same_phase_with_the_same_alpha(phantom, tmp_path):
    system = _system(total_images=24)  # stops halfway into the fade-in of 8 px (images 16..32)
    trainer = _trainer(tmp_path, max_epochs=-1, enable_checkpointing=False)
    trainer.fit(system, datamodule=_dm(phantom))
    before = system.growth
    assert (before.resolution, before.phase, before.alpha) == (8, "fade", 0.5)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["pggan_growth"]
    assert saved["images_shown"] == 24 and saved["state"]["alpha"] == 0.5

    resumed = _system(total_images=32)
    trainer2 = _trainer(tmp_path / "resumed", max_epochs=-1, enable_checkpointing=False)
    seen = []

    class First(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(module.growth)

    trainer2.callbacks.append(First())
    trainer2.fit(resumed, datamodule=_dm(phantom), ckpt_path=ckpt)
    assert seen[0].phase == "fade" and seen[0].resolution == 8 and seen[0].alpha == 0.5
    assert resumed.images_shown == 32
    # a resumed run with another schedule is refused with a clear message
    other = _system(fade_images=32)
    with pytest.raises(ValueError, match="growth schedule"):
        _trainer(tmp_path / "other", max_epochs=-1, enable_checkpointing=False).fit(
            other, datamodule=_dm(phantom), ckpt_path=ckpt)


def test_diverging_gan_stops_with_a_clear_message(phantom, tmp_path):
    system = _system(lr=1e30, total_images=400)
    with pytest.raises(FloatingPointError, match="PGGAN diverged.*last good checkpoint"):
        _trainer(tmp_path, max_epochs=-1, enable_checkpointing=False).fit(system, datamodule=_dm(phantom))


def test_wrong_data_size_names_the_setting(phantom, tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        trainer = _trainer(tmp_path, max_steps=2, enable_checkpointing=False)
        trainer.fit(_system(), datamodule=_dm(phantom, 12))


def test_metrics_callback_logs_values_and_real_reference(phantom, tmp_path):
    system = _system(total_images=64)
    cb = PGGANMetrics(every_n_images=32, msssim_images=16, is_images=16, fid_images=16, swd_images=16,
                      batch_size=16)
    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, max_epochs=-1,
                         logger=pl.loggers.CSVLogger(tmp_path), enable_progress_bar=False,
                         enable_checkpointing=False, callbacks=[cb])
    trainer.fit(system, datamodule=_dm(phantom))
    hist = pd.DataFrame(cb.history)
    assert hist["kimg"].tolist() == [0.032, 0.064]
    assert {"msssim", "msssim_real", "swd_16", "swd_mean", "swd_mean_real"} <= set(hist.columns)
    assert hist["msssim"].between(-1, 1).all()
    assert hist["resolution"].tolist() == [8.0, 16.0]
    assert math.isnan(hist["swd_mean"][0]) and hist["swd_mean"][1] > 0  # SWD needs >= 16 px
    assert list(tmp_path.rglob("gan_metrics.csv")) and list(tmp_path.rglob("gan_metrics.png"))


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
