"""The tiny hierarchical VGG learns whole-body CT age on a small phantom (issue 7)."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from boneage.models.hierarchical_vgg import hierarchical_vgg16_bn
from boneage.systems.regression import AgeRegressor
from data_modules.wholebody import WholeBodyCTDataModule


@pytest.mark.slow  # reason: renders 240 images and trains 25 epochs, about 45-60 s on one shared CPU core
def test_tiny_hierarchical_vgg_learns_on_phantom(tmp_path):
    """240 phantom bodies (paper's age mix), 25 epochs at 32x32: MAE well below the mean predictor's."""
    args = WholeBodyCTDataModule.phantom_args(tmp_path / "data", n=240, seed=0)
    dm = WholeBodyCTDataModule(**args, image_size=(36, 36), crop_size=(32, 32), batch_size=16, seed=0)
    pl.seed_everything(0)
    net = hierarchical_vgg16_bn(width=1 / 16, hidden=(32, 16), side_units=16, image_size=32,
                                global_pool_size=1, dropout=0.1)
    system = AgeRegressor(net, optimizer=partial(torch.optim.Adam, lr=3e-3), loss="mse")
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/mae", mode="min")
    trainer = pl.Trainer(max_epochs=25, accelerator="cpu", devices=1, logger=False, callbacks=[best],
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(system, dm)
    mae = trainer.test(system, dm, ckpt_path="best", verbose=False)[0]["test/mae"]
    mean, _ = dm.age_stats()
    baseline = float(np.abs(dm.table("test")["age"].to_numpy() - mean).mean())
    floor = dm.phantom_metadata()["noise_floor_mae"]
    print(f"test MAE {mae:.2f} y, mean predictor {baseline:.2f} y, noise floor {floor:.2f} y")
    assert mae < 0.7 * baseline
