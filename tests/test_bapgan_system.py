"""BAPGAN LightningModule: optimizer ownership, learning, divergence stop, DDP and bf16."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from boneage.models.bapgan import create_bapgan
from boneage.phantoms.bones import render
from boneage.systems.bapgan import BAPGANSystem
from data_modules.bones import FemurDataModule

SIZE = 32


@pytest.fixture(scope="module")
def femur_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("femur")
    render(root, n=64, seed=0, bone="femur", size=48, progress=False)
    return root


@pytest.fixture(scope="module")
def loader(femur_root: Path) -> torch.utils.data.DataLoader:
    return _tiny_loader(femur_root)


def _tiny_loader(root: str | Path) -> torch.utils.data.DataLoader:
    """A tiny femur phantom through the real DataModule (paper augmentation) at 32x32, batch 16."""
    root = Path(root)
    csv = root / "labels.csv"
    if not csv.is_file():
        render(root, n=64, seed=0, bone="femur", size=48, progress=False)
    dm = FemurDataModule(csv_path=str(csv), image_size=(32, 32), batch_size=16, num_workers=0)
    dm.setup("fit")
    return dm.train_dataloader()


def _trainer(iterations: int, **kw) -> pl.Trainer:
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    kw.setdefault("log_every_n_steps", 1)  # the system logs on the steps the loggers write: all of them here
    return pl.Trainer(max_steps=3 * iterations, accelerator="cpu", devices=1, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, **kw)


def _system(variant: str = "bapgan", **kw) -> BAPGANSystem:
    torch.manual_seed(0)
    return BAPGANSystem(create_bapgan(variant, image_size=SIZE, width=0.125), **kw)


class _Spy(BAPGANSystem):
    """Records which networks each optimizer's step changed."""

    def configure_optimizers(self):  # type: ignore[override]
        self.changed: dict[str, set[str]] = {}
        opts = super().configure_optimizers()
        for phase, opt in zip(self.phases, opts):
            def step(closure=None, _orig=opt.step, _name=phase.name):
                before = {n: p.detach().clone() for n, p in self.network.named_parameters()}
                out = _orig(closure)
                self.changed[_name] = {n.split(".")[0] for n, p in self.network.named_parameters()
                                       if not torch.equal(before[n], p.detach())}
                return out
            opt.step = step
        return opts


def test_each_optimizer_updates_only_its_own_networks(loader) -> None:
    torch.manual_seed(0)
    system = _Spy(create_bapgan("bapgan", image_size=SIZE, width=0.125))
    owned = [set(id(p) for n in ph.networks for p in getattr(system.network, n).parameters())
             for ph in system.phases]
    assert sum(len(o) for o in owned) == len(set().union(*owned)) == len(list(system.network.parameters()))
    trainer = _trainer(2)
    trainer.fit(system, loader)
    assert trainer.global_step == 6 and system.iteration == 2   # 3 optimizer steps per iteration
    assert system.changed == {"eg": {"encoder", "generator"}, "d_id": {"d_id"}, "d_img": {"d_img"}}
    lrs = [o.param_groups[0]["lr"] for o in trainer.optimizers]
    assert lrs == [1e-4, 1e-4, 4e-4] and trainer.optimizers[0].param_groups[0]["betas"] == (0.5, 0.999)


class _Record(Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


@pytest.mark.parametrize("lr_eg,iterations", [
    (1e-3, 70),   # E/G lr x10 so the drop shows in 210 optimizer steps on a shared 2-core CPU
    pytest.param(1e-4, 120, marks=pytest.mark.slow(reason="paper lr: 360 optimizer steps, ~1 min")),
])
def test_a_few_hundred_steps_lower_the_reconstruction_loss(loader, lr_eg: float, iterations: int) -> None:
    record = _Record()
    system = _system(lr_eg=lr_eg)
    _trainer(iterations, callbacks=[record]).fit(system, loader)
    log = pd.DataFrame(record.rows)
    assert np.isfinite(log.to_numpy()).all()
    first, last = log["train/eg_recon_l2"].iloc[:8].mean(), log["train/eg_recon_l2"].iloc[-8:].mean()
    assert last < 0.6 * first, (first, last)
    assert {"train/d_img_age_real", "train/eg_age_fake", "train/d_id_loss"} <= set(log.columns)


class _Poison(Callback):
    """Makes the reconstruction weight infinite from iteration ``at`` (default the third) on."""

    def __init__(self, at: int = 2) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.iteration == self.at:
            pl_module.hparams.lambda_recon = math.inf


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(loader, tmp_path) -> None:
    """The losses are read on the host every 50 iterations, but a checkpoint write reads them first."""
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=3, save_top_k=-1)
    system = _system("caae")
    trainer = _trainer(10, enable_checkpointing=True, callbacks=[ckpt, _Poison()])
    message = (r"non-finite loss in phase 'eg' at iteration 2 \(global_step 6\).*'loss' is inf.*"
               r"No checkpoint was written after it; the last good checkpoint is kept in")
    with pytest.raises(FloatingPointError, match=message):
        trainer.fit(system, loader)
    assert trainer.global_step == 9  # stopped at the write after the bad iteration
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert state["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_test_stage_logs_fid_and_writes_the_progression_grid(loader, tmp_path) -> None:
    system = _system(n_grid=2)
    trainer = _trainer(1, default_root_dir=tmp_path, logger=pl.loggers.CSVLogger(tmp_path))
    trainer.fit(system, loader)
    out = trainer.test(system, loader, verbose=False)[0]
    assert out["test/fid_randconv"] > 0 and out["test/recon_l2"] > 0 and "test/age_acc" in out
    assert list(Path(tmp_path).rglob("progression_grid.png"))


def test_bf16_mixed_runs_the_networks_in_bf16_and_keeps_float32_weights(loader) -> None:
    system = _system()
    dtypes: set[torch.dtype] = set()
    system.network.generator.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    trainer = _trainer(2, precision="bf16-mixed")
    trainer.fit(system, loader)
    assert trainer.global_step == 6
    assert dtypes == {torch.bfloat16}   # autocast reached the generator in every training forward
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in system.parameters())


def test_setup_refuses_data_with_other_age_groups(femur_root: Path) -> None:
    from data_modules.base import DataError

    dm = FemurDataModule(csv_path=str(femur_root / "labels.csv"), image_size=(32, 32), batch_size=16,
                         num_workers=0, n_groups=6)
    keys = (r"data.init_args.n_groups = 6, data.init_args.age_group_years = 4 but "
            r"model.init_args.network.init_args.n_groups = 5, model.init_args.age_group_years = 4")
    with pytest.raises(DataError, match=keys):
        _trainer(1).fit(_system(), datamodule=dm)


DDP_SCRIPT = """
import sys
import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
sys.path.insert(0, {tests!r})
from test_bapgan_system import _system, _tiny_loader
loader = _tiny_loader({root!r})
system = _system()
strategy = DDPStrategy(process_group_backend="gloo", find_unused_parameters=True)
trainer = pl.Trainer(max_steps=6, accelerator="cpu", devices=2, strategy=strategy, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     precision={precision!r})
trainer.fit(system, loader)
assert all(torch.isfinite(p).all() for p in system.parameters())
if trainer.is_global_zero:
    print("DDP-OK", trainer.world_size, trainer.global_step)
"""


@pytest.mark.slow(reason="two CPU processes (gloo): ~40 s on the shared 2-core machine")
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_ddp_two_cpu_processes(tmp_path: Path, precision: str) -> None:
    """Strategy 'ddp' (the CLI's launcher re-runs the script per rank; spectral-norm
    parametrizations do not pickle, so 'ddp_spawn' is not supported)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path / "data"),
                                        precision=precision))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "DDP-OK 2 6" in run.stdout
