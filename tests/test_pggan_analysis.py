"""The latent-space analysis pipeline end to end on a tiny GAN and regressor trained on the phantom."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import yaml

from boneage.analysis.latent import generate, load_generator, load_regressor, load_shards, main

GAN_CFG = {
    "model": {"class_path": "boneage.systems.pggan.PGGANSystem", "init_args": {
        "generator": {"class_path": "boneage.models.pggan.PGGANGenerator",
                      "init_args": {"latent_dim": 16, "resolution": 16, "width": 0.03125}},
        "discriminator": {"class_path": "boneage.models.pggan.PGGANDiscriminator",
                          "init_args": {"resolution": 16, "width": 0.03125}},
        "stabilise_images": 8, "fade_images": 8, "batch_sizes": {4: 4}, "total_images": 48}},
}


def _reg_cfg(data_dir: str) -> dict:
    return {
        "model": {"class_path": "boneage.systems.regression.AgeRegressor", "init_args": {
            "network": {"class_path": "boneage.models.regressor.SexAwareRegressor",
                        "init_args": {"backbone": "test_resnet", "use_sex": False, "hidden": []}},
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001}},
            "loss": "l1"}},
        "data": {"class_path": "data_modules.rsna.RSNADataModule", "init_args": {
            "data_dir": data_dir, "image_size": [16, 16], "batch_size": 8, "num_workers": 0}},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from boneage.analysis.latent import instantiate
    from data_modules.rsna import RSNADataModule

    root = tmp_path_factory.mktemp("analysis")
    data = RSNADataModule.phantom_args(root / "rsna", n=48, seed=0, size=64)
    gan_yaml, reg_yaml = root / "gan.yaml", root / "reg.yaml"
    gan_yaml.write_text(yaml.safe_dump(GAN_CFG))
    reg_yaml.write_text(yaml.safe_dump(_reg_cfg(data["data_dir"])))
    kw = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False)
    pl.seed_everything(0)
    reg_cfg = yaml.safe_load(reg_yaml.read_text())
    regressor = instantiate(reg_cfg["model"])  # default optimizer: Adam 1e-3
    dm = instantiate(reg_cfg["data"])
    trainer = pl.Trainer(max_epochs=1, default_root_dir=root / "reg", **kw)
    trainer.fit(regressor, datamodule=dm)
    trainer.save_checkpoint(root / "reg.ckpt")
    gan = instantiate(GAN_CFG["model"])
    gdm = RSNADataModule(**data, image_size=(16, 16), batch_size=4, num_workers=0)
    trainer = pl.Trainer(max_epochs=-1, default_root_dir=root / "gan", **kw)
    trainer.fit(gan, datamodule=gdm)
    trainer.save_checkpoint(root / "gan.ckpt")
    return root


def test_generation_is_sharded_and_independent_of_batching(trained, tmp_path):
    g, level = load_generator(trained / "gan.ckpt", [trained / "gan.yaml"])
    r = load_regressor(trained / "reg.ckpt", [trained / "reg.yaml"])
    assert level == 2
    a = load_shards(generate(g, r, (16, 16), 20, tmp_path / "a", batch_size=8, progress=False))
    b = load_shards(generate(g, r, (16, 16), 20, tmp_path / "b", batch_size=5, progress=False))
    assert len(list((tmp_path / "a").glob("shard_*.npz"))) == 3
    assert a["index"].tolist() == list(range(20))
    assert np.allclose(a["latent"], b["latent"]) and np.allclose(a["age"], b["age"], atol=1e-4)
    assert a["thumb"].dtype == np.uint8 and a["features"].shape[0] == 20
    # the stored age is the regressor's prediction for the generated image
    with torch.no_grad():
        img = g(torch.as_tensor(a["latent"][:4])).clamp(-1, 1)
        assert np.allclose(r(img).numpy(), a["age"][:4], atol=1e-3)


def test_all_steps_write_their_outputs(trained, tmp_path, capsys):
    out = tmp_path / "analysis"
    main(["all", "--gan-ckpt", str(trained / "gan.ckpt"), "--gan-config", str(trained / "gan.yaml"),
          "--regressor-ckpt", str(trained / "reg.ckpt"), "--regressor-config", str(trained / "reg.yaml"),
          "--out", str(out), "--n", "300", "--batch-size", "100", "--thumb-size", "16", "--queries", "4",
          "--frames-per-step", "3", "--tolerance-years", "3", "--accelerator", "cpu", "--devices", "1",
          "--no-progress"])
    for name in ("mae_by_year.csv", "mae_by_year.png", "lasso.json", "lasso.png", "neighbours.json",
                 "neighbours.png", "control.json", "control.png"):
        assert (out / name).is_file(), name
    # Fig. 4: MAE by true age in years adds up to the overall MAE of each split
    by_year = pd.read_csv(out / "mae_by_year.csv")
    errors = json.loads((out / "regressor_errors.json").read_text())
    for split in ("train", "test"):
        part = by_year[by_year["split"] == split]
        assert (part["count"] * part["mae"]).sum() / part["count"].sum() == pytest.approx(errors[f"{split}_mae"])
    lasso = json.loads((out / "lasso.json").read_text())
    assert lasso["n_train"] + lasso["n_test"] == 300
    nn = json.loads((out / "neighbours.json").read_text())
    assert nn["age_sd_by_pixels_mean"] >= 0 and nn["age_sd_by_features_mean"] >= 0
    printed = capsys.readouterr().out
    assert "wrote lasso.json" in printed and "wrote 300 generated latents" in printed
    # the walk starts at 3-4 years, or at the youngest generated image when none is predicted there
    walk = json.loads((out / "walk.json").read_text())
    assert (out / "walk.gif").is_file() and (out / "walk.png").is_file()
    assert walk["frames"] == 3 * (len(walk["key_indices"]) - 1) + 1
    assert "no generated image is predicted at" in printed or walk["start_range"] == [36.0, 48.0]
