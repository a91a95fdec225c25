"""The tiny hierarchical VGG learns whole-body CT age on a small phantom (issue 7): a fast check in
``make test`` and a longer one in the slow suite."""

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


def test_tiny_hierarchical_vgg_learns_on_a_tiny_phantom_fast(tmp_path):
    """160 small phantom bodies (160 x 48 px), 20 epochs at 32 x 32: the held-out MAE falls well
    below that of always predicting the training mean (0.58-0.66 of it over five augmentation
    seeds here; 10 epochs were not enough to be reliable)."""
    args = WholeBodyCTDataModule.phantom_args(tmp_path / "data", n=160, seed=0, height=160, width=48)
    dm = WholeBodyCTDataModule(**args, image_size=(36, 36), crop_size=(32, 32), batch_size=8, seed=0)
    dm.setup("fit")
    dm.augment.set_random_seed(0)  # crops and flips drawn the same way every run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # convolutions of 4-32 channels: a second thread only waits, on a shared CPU
    try:
        pl.seed_everything(0)
        net = hierarchical_vgg16_bn(width=1 / 16, hidden=(32, 16), side_units=16, image_size=32,
                                    global_pool_size=1, dropout=0.0)
        system = AgeRegressor(net, optimizer=partial(torch.optim.Adam, lr=3e-3), loss="mse")
        trainer = pl.Trainer(max_epochs=20, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(system, dm)
        mae = trainer.test(system, dm, verbose=False)[0]["test/mae"]
    finally:
        torch.set_num_threads(threads)
    mean, _ = dm.age_stats()
    baseline = float(np.abs(dm.table("test")["age"].to_numpy() - mean).mean())
    assert mae < 0.8 * baseline, (mae, baseline)
