"""The latent-space analysis end to end on a tiny GAN run and regressor run trained with the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from boneage.analysis.latent import (
    generate,
    load_generator,
    load_regressor,
    load_shards,
    main,
    predict_age,
    regressor_size,
)
from boneage.runs import find_runs, resolve_run

GAN_CFG = {
    "model": {"class_path": "boneage.systems.pggan.PGGANSystem", "init_args": {
        "generator": {"class_path": "boneage.models.pggan.PGGANGenerator",
                      "init_args": {"latent_dim": 16, "resolution": 16, "width": 0.03125}},
        "discriminator": {"class_path": "boneage.models.pggan.PGGANDiscriminator",
                          "init_args": {"resolution": 16, "width": 0.03125}},
        "stabilise_images": 8, "fade_images": 8, "batch_sizes": {4: 4}, "total_images": 48}},
    "trainer": {"max_epochs": -1},
}


def _data(data_dir: str, size: int, batch_size: int) -> dict:
    return {"class_path": "data_modules.rsna.RSNADataModule", "init_args": {
        "data_dir": data_dir, "image_size": [size, size], "batch_size": batch_size, "num_workers": 0}}


def _reg_cfg(data_dir: str) -> dict:
    return {
        "model": {"class_path": "boneage.systems.regression.AgeRegressor", "init_args": {
            "network": {"class_path": "boneage.models.regressor.SexAwareRegressor",
                        "init_args": {"backbone": "test_resnet", "use_sex": False, "hidden": []}},
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001}},
            "loss": "l1"}},
        "data": _data(data_dir, 16, 8),
        "trainer": {"max_epochs": 1},
    }


def _fit(runs, config, experiment: str, *extra: str) -> None:
    from boneage.cli import RUN_ENV
    from boneage.cli import main as cli

    os.environ.pop(RUN_ENV, None)
    cli(["fit", "--config", str(config), "--experiment", experiment, "--runs_dir", str(runs),
         "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """runs/pggan_rsna/<id> and runs/xception_rsna/<id>; the regressor was trained with overrides
    (another data folder, 24 px instead of its YAML's 16 px) that the analysis must pick up."""
    from data_modules.rsna import RSNADataModule

    root = tmp_path_factory.mktemp("analysis")
    gan_data = RSNADataModule.phantom_args(root / "rsna", n=48, seed=0, size=64)["data_dir"]
    reg_data = RSNADataModule.phantom_args(root / "rsna_other", n=72, seed=5, size=64)["data_dir"]
    gan_yaml, reg_yaml = root / "gan.yaml", root / "reg.yaml"
    gan_yaml.write_text(yaml.safe_dump({**GAN_CFG, "data": _data(gan_data, 16, 4)}))
    reg_yaml.write_text(yaml.safe_dump(_reg_cfg(gan_data)))
    runs = root / "runs"
    _fit(runs, reg_yaml, "xception_rsna", "--data.init_args.data_dir", reg_data,
         "--data.init_args.image_size", "[24,24]")
    _fit(runs, gan_yaml, "pggan_rsna")
    return runs, reg_data


def test_generation_is_sharded_and_independent_of_batching(trained, tmp_path):
    runs, _ = trained
    gan, reg = resolve_run(runs, "pggan_rsna"), resolve_run(runs, "xception_rsna")
    g, level = load_generator(gan)
    r = load_regressor(reg)
    assert level == 2
    size = regressor_size(reg)
    assert size == (24, 24)  # the run's override, not the 16 px of the YAML it started from
    a = load_shards(generate(g, r, size, 20, tmp_path / "a", batch_size=8, progress=False))
    b = load_shards(generate(g, r, size, 20, tmp_path / "b", batch_size=5, progress=False))
    assert len(list((tmp_path / "a").glob("shard_*.npz"))) == 3
    assert a["index"].tolist() == list(range(20))
    assert np.allclose(a["latent"], b["latent"]) and np.allclose(a["age"], b["age"], atol=1e-4)
    assert a["thumb"].dtype == np.uint8 and a["features"].shape[0] == 20
    # the stored age is the regressor's prediction for the generated image at the regressor's size
    with torch.no_grad():
        img = g(torch.as_tensor(a["latent"][:4])).clamp(-1, 1)
        assert np.allclose(predict_age(r, img, (24, 24)).numpy(), a["age"][:4], atol=1e-3)


def test_all_steps_on_the_newest_runs_write_into_the_gan_run(trained, capsys):
    from data_modules.rsna import RSNADataModule

    runs, reg_data = trained
    main(["all", "--runs-dir", str(runs), "--n", "300", "--batch-size", "100", "--thumb-size", "16",
          "--queries", "4", "--frames-per-step", "3", "--tolerance-years", "3", "--accelerator", "cpu",
          "--devices", "1", "--no-progress"])
    gan, reg = find_runs(runs, "pggan_rsna")[-1], find_runs(runs, "xception_rsna")[-1]
    out = gan.path / "analysis"
    for name in ("mae_by_year.csv", "mae_by_year.png", "lasso.json", "lasso.png", "neighbours.json",
                 "neighbours.png", "control.json", "control.png"):
        assert (out / name).is_file(), name
    used = json.loads((out / "analysis_runs.json").read_text())
    assert used["gan_run"] == str(gan.path) and used["regressor_run"] == str(reg.path)
    assert used["gan_ckpt"].endswith("last.ckpt")
    # Fig. 4 uses the data the regressor run was trained on (its --data.init_args.data_dir override)
    by_year = pd.read_csv(out / "mae_by_year.csv")
    dm = RSNADataModule(data_dir=reg_data, image_size=(24, 24))
    dm.setup("fit")
    for split in ("train", "test"):
        assert by_year[by_year["split"] == split]["count"].sum() == len(dm.table(split))
    errors = json.loads((out / "regressor_errors.json").read_text())
    for split in ("train", "test"):
        part = by_year[by_year["split"] == split]
        assert (part["count"] * part["mae"]).sum() / part["count"].sum() == pytest.approx(errors[f"{split}_mae"])
    lasso = json.loads((out / "lasso.json").read_text())
    assert lasso["n_train"] + lasso["n_test"] == 300
    nn = json.loads((out / "neighbours.json").read_text())
    assert nn["age_sd_by_pixels_mean"] >= 0 and nn["age_sd_by_features_mean"] >= 0
    printed = capsys.readouterr().out
    assert f"using run {gan.label} (the newest fit run)" in printed
    assert f"using run {reg.label} (the newest fit run)" in printed
    assert "wrote lasso.json" in printed and "wrote 300 generated latents" in printed
    assert f"regressor {reg.label} was trained from scratch" in printed  # its config has no weights file
    # the walk starts at 3-4 years, or at the youngest generated image when none is predicted there
    walk = json.loads((out / "walk.json").read_text())
    assert (out / "walk.gif").is_file() and (out / "walk.png").is_file()
    assert walk["frames"] == 3 * (len(walk["key_indices"]) - 1) + 1
    assert "no generated image is predicted at" in printed or walk["start_range"] == [36.0, 48.0]


def test_named_runs_and_out_folder(trained, tmp_path):
    runs, _ = trained
    reg = find_runs(runs, "xception_rsna")[-1]
    main(["regressor-errors", "--runs-dir", str(tmp_path / "elsewhere"), "--regressor-run", str(reg.path),
          "--out", str(tmp_path / "out"), "--batch-size", "16"])
    assert json.loads((tmp_path / "out" / "analysis_runs.json").read_text())["gan_run"] is None
    assert (tmp_path / "out" / "regressor_errors.json").is_file()


def test_missing_run_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["lasso", "--runs-dir", str(tmp_path / "runs")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no fit run of 'pggan_rsna'" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["regressor-errors", "--runs-dir", str(tmp_path / "runs"), "--regressor-run", "nope",
              "--out", str(tmp_path / "out")])
    assert "no fit run of 'xception_rsna'" in capsys.readouterr().err  # no runs at all: train first
