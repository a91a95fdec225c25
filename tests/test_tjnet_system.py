"""TJNetSystem: transfer from a checkpoint with frozen blocks, test outputs, and learning;
the transfer names its source run and the transfer run records the checkpoint it started from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from boneage.analysis import tjnet_tables
from boneage.analysis.tjnet_tables import run_metrics
from boneage.models.tjnet import tjnet_tiny
from boneage.phantoms import tongji
from boneage.phantoms.common import read_metadata
from boneage.runs import resolve_run
from boneage.systems.tjnet import TJNetSystem, load_network_weights
from boneage.systems.tjnet import main as transfer_source_main
from data_modules.rsna import RSNADataModule
from data_modules.tongji import TongjiDataModule

REPO = Path(__file__).resolve().parents[1]
# tiny runs of the real commands: 3 training and 2 validation batches, one epoch
TINY = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
        "--data.init_args.num_workers", "0"]


@pytest.fixture(scope="module")
def tongji_root(tmp_path_factory):
    return tongji.render(tmp_path_factory.mktemp("tongji"), n=64, seed=2, size=96, progress_bar=False)


@pytest.fixture(scope="module")
def rsna_args(tmp_path_factory):
    root = RSNADataModule.phantom_args(tmp_path_factory.mktemp("rsna"), n=48, seed=0, size=96)
    return ["--config", "experiments/tjnet_rsna.yaml", "--config", "tests/configs/tjnet_rsna.yaml",
            "--data.init_args.data_dir", root["data_dir"], *TINY]


def _tongji_args(tongji_root) -> list[str]:
    return ["--config", "experiments/tjnet_tongji.yaml", "--config", "tests/configs/tjnet_tongji.yaml",
            "--data.init_args.csv_path", str(tongji_root / "labels.csv"), *TINY]


def _trainer(tmp_path, **kw) -> pl.Trainer:
    kw.setdefault("max_epochs", 1)
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(accelerator="cpu", devices=1, logger=pl.loggers.CSVLogger(tmp_path, name="run"),
                      enable_progress_bar=False, enable_model_summary=False, **kw)


def _rsna_checkpoint(path):
    """A Lightning-style checkpoint of an RSNA TJ-Net (77 classes) with non-default weights."""
    torch.manual_seed(1)
    source = TJNetSystem(tjnet_tiny(num_classes=77))
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for name, b in source.network.named_buffers():
            if name.endswith("running_mean"):
                b.add_(0.3)
    torch.save({"state_dict": source.state_dict()}, path)
    state = source.state_dict()
    return {k.removeprefix("network."): v.clone() for k, v in state.items() if k.startswith("network.")}


def test_transfer_loads_checkpoint_freezes_blocks_and_writes_outputs(tmp_path, tongji_root):
    ckpt = tmp_path / "rsna.ckpt"
    source = _rsna_checkpoint(ckpt)
    system = TJNetSystem(tjnet_tiny(num_classes=23), class_width=1.0, freeze_blocks=3,
                         init_checkpoint=str(ckpt), heatmap_images=2)
    dm = TongjiDataModule(csv_path=str(tongji_root / "labels.csv"), image_size=(64, 64), batch_size=8)
    trainer = _trainer(tmp_path, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(system, dm)
    after = system.network.state_dict()
    for name, value in after.items():
        if name.startswith(("blocks.0.", "blocks.1.", "blocks.2.")):
            assert torch.equal(value, source[name]), f"{name}: frozen block not equal to the checkpoint"
    assert not torch.equal(after["blocks.3.0.proj.0.weight"], source["blocks.3.0.proj.0.weight"])  # trained
    assert after["age_head.6.weight"].shape[0] == 23  # the 23-class output layer stays fresh
    # the system's own AlphaPlateau and its alpha buffer go into checkpoints
    trainer.save_checkpoint(tmp_path / "tongji.ckpt")
    saved = torch.load(tmp_path / "tongji.ckpt", weights_only=False)
    assert saved["state_dict"]["alpha"].item() == 1.5
    assert any(k.startswith("AlphaPlateau") and v["wait"] == 0 for k, v in saved["callbacks"].items())
    # test: predictions in label units and in years, and the paper's figures in the run directory
    trainer.test(system, dm, verbose=False)
    run = tmp_path / "run" / "version_0"
    pred = pd.read_csv(run / "predictions.csv")
    test_table = dm.table("test")
    # one row per test image, in table order, with the image's own label and its yearly class
    assert pred["path"].tolist() == test_table["path"].tolist()
    np.testing.assert_allclose(pred["age_years"], test_table["age"], rtol=1e-6)
    assert (pred["true_class"] == np.floor(test_table["age"]).clip(0, 22)).all()
    assert (run / "figures" / "block4_activation.png").is_file()
    assert (run / "figures" / "error_by_age_group.png").is_file()
    # the logged test metrics are those of predictions.csv: the readout's MAD, the paper's
    # class-label MAD and RMSE (a class is a year here), and the class accuracy
    metrics = run_metrics(run)
    assert metrics["test/mad_years"] == pytest.approx(pred["abs_error_years"].mean(), rel=1e-5)
    class_error = (pred["true_class"] - pred["pred_class"]).to_numpy(float)
    assert metrics["test/mad_class_years"] == pytest.approx(np.abs(class_error).mean(), rel=1e-5)
    assert metrics["test/rmse_class_years"] == pytest.approx(np.sqrt((class_error ** 2).mean()), rel=1e-5)
    assert metrics["test/acc"] == pytest.approx((class_error == 0).mean(), rel=1e-5)
    assert {"train/acc", "train/ce", "train/mad_class_years", "val/mae"} <= set(metrics)


def test_init_checkpoint_errors(tmp_path):
    net = tjnet_tiny(num_classes=23)
    with pytest.raises(FileNotFoundError, match="make train EXP=tjnet_rsna"):
        load_network_weights(net, tmp_path / "missing.ckpt")
    torch.save({"state_dict": {"network.backbone.conv1.weight": torch.zeros(3)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="no TJ-Net feature blocks"):
        load_network_weights(net, tmp_path / "other.ckpt")


def test_transfer_names_its_source_run_and_records_it(run_cli, rsna_args, tongji_root, tmp_path, capsys):
    runs = run_cli("fit", *rsna_args)
    source = resolve_run(runs, "tjnet_rsna")
    capsys.readouterr()
    # the source: the best checkpoint of the newest tjnet_rsna fit run, named on stderr
    assert transfer_source_main(["--runs-dir", str(runs)]) == 0
    out, err = capsys.readouterr()
    ckpt = Path(out.strip())
    assert ckpt == source.checkpoint("best") and ckpt.name.startswith("best-")
    assert f"run {source.label} (the newest fit run), checkpoint {ckpt}" in err
    assert transfer_source_main(["--runs-dir", str(runs), "--run", source.id[:8]]) == 0
    assert Path(capsys.readouterr().out.strip()) == ckpt
    assert transfer_source_main(["--runs-dir", str(runs), "--run", "nope"]) == 2
    assert "no fit run 'nope' in" in capsys.readouterr().err
    # the transfer starts from it, and its config.yaml says so
    tongji = [*_tongji_args(tongji_root), "--experiment", "tjnet_tongji_freeze3",
              "--model.init_args.freeze_blocks", "3", "--model.init_args.init_checkpoint", str(ckpt)]
    run_cli("fit", *tongji)
    assert f"network tensors from {ckpt}" in capsys.readouterr().out
    fit = resolve_run(runs, "tjnet_tongji_freeze3")
    assert fit.config()["model"]["init_args"]["init_checkpoint"] == str(ckpt)
    run_cli("test", *tongji, "--ckpt_path", "best")
    # Table 2 reads the named transfer run: test metrics from its test run, training accuracy from it
    out_dir = tmp_path / "tables"
    assert tjnet_tables.main(["--runs-dir", str(runs), "--out", str(out_dir),
                              "--run", f"tjnet_tongji_freeze3/{fit.id}"]) == 0
    row = pd.read_csv(out_dir / "table2.csv").set_index("pretrained blocks").loc["Blocks 1-3"]
    assert row["fit run"] == fit.label and row["run"] == fit.evaluations("test")[-1].label
    assert np.isfinite(row[["MAD", "RMSE", "Training Accuracy", "Test Accuracy"]].astype(float)).all()


@pytest.mark.slow  # reason: two CLI processes through make (about a minute on 2 cores)
def test_make_tjnet_transfer_starts_from_the_named_source_run(run_cli, rsna_args, tongji_root, tmp_path):
    runs = run_cli("fit", *rsna_args)
    older = resolve_run(runs, "tjnet_rsna")
    run_cli("fit", *rsna_args)  # a newer source run that must not be used
    py = sys.executable
    args = " ".join(_tongji_args(tongji_root) + ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar",
                                                  "false"])
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}

    def make(source: str) -> subprocess.CompletedProcess:
        cmd = ["make", "-C", str(REPO), "tjnet-transfer", "TJNET_DEPS=", f"TJNET_LOGS={runs}", "TJNET_FREEZE=2",
               f"SOURCE_RUN={source}", f"PY={py}", f"BONEAGE={py} -m boneage.cli", f"ARGS={args}"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True)

    done = make(older.id)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ckpt = older.checkpoint("best")
    assert f"transfer source: run {older.label}, checkpoint {ckpt}" in done.stderr
    fit = resolve_run(runs, "tjnet_tongji_freeze2")
    assert fit.config()["model"]["init_args"]["init_checkpoint"] == str(ckpt)
    assert fit.config()["model"]["init_args"]["freeze_blocks"] == 2
    assert fit.evaluations("test"), "the transfer run was not tested"
    bad = make("nope")
    assert bad.returncode != 0 and "no fit run 'nope' in" in bad.stderr and "== tjnet_tongji" not in bad.stdout


def _labels(ages) -> pd.DataFrame:
    """A split's table as data modules give it: ages and the label file rows they came from."""
    return pd.DataFrame({"age": np.asarray(ages, float), "label_file": "labels.csv",
                         "label_row": np.arange(2, len(ages) + 2)})


def test_labels_outside_the_classes_are_counted_and_stop_above_one_percent():
    from data_modules.base import DataError

    yearly = TJNetSystem(tjnet_tiny(num_classes=23), class_width=1.0)  # [0, 23) years
    # months given to yearly classes: most labels outside, an error naming the rows
    with pytest.raises(DataError, match=r"3 of 4 train labels \(75.0%\) fall outside the 23 age classes") as err:
        yearly.check_class_range(_labels([10.0, 30.0, 120.0, 200.0]), "train")
    assert "labels.csv row 3 (30 years), labels.csv row 4 (120 years)" in str(err.value)
    assert "class_width" in str(err.value) and "\n" not in str(err.value)
    # 2 of 100 (2 %): still too many
    with pytest.raises(DataError, match="2 of 100 val labels"):
        yearly.check_class_range(_labels([5.0] * 98 + [23.0, -0.5]), "val")
    # 1 of 200 (0.5 %): a warning with the count and the row; the label counts as the last class
    with pytest.warns(UserWarning, match=r"1 of 200 train labels \(0.5%\).*labels.csv row 201 \(24 years\)"):
        yearly.check_class_range(_labels([5.0] * 199 + [24.0]), "train")
    yearly.check_class_range(_labels([0.0, 7.5, 22.99]), "test")  # all inside: silent


def test_class_age_follows_the_training_labels():
    """A network sure of class 7 predicts 7 y when the labels are whole years (Tongji's annotations)
    and about 7.5 y when they are continuous; the shift is saved with the weights."""
    system = TJNetSystem(tjnet_tiny(num_classes=23), class_width=1.0, readout="argmax")
    logits = torch.full((1, 23), -50.0)
    logits[0, 7] = 0.0
    system.set_class_age_shift(np.arange(0.0, 23.0))
    assert system.age_from_logits(logits).item() == pytest.approx(7.0)
    system.set_class_age_shift(np.random.default_rng(0).uniform(0.0, 23.0, 2000))
    assert system.age_from_logits(logits).item() == pytest.approx(7.5, abs=0.03)
    state = system.state_dict()
    fresh = TJNetSystem(tjnet_tiny(num_classes=23), class_width=1.0, readout="argmax")
    fresh.load_state_dict(state)
    assert fresh.age_from_logits(logits).item() == pytest.approx(7.5, abs=0.03)
    # a checkpoint from before the shift existed loads, with classes read at their start
    fresh.load_state_dict({k: v for k, v in state.items() if k != "class_age_shift"})
    assert fresh.age_from_logits(logits).item() == 7.0


def test_option_errors():
    with pytest.raises(ValueError, match="readout"):
        TJNetSystem(tjnet_tiny(), readout="median")
    with pytest.raises(ValueError, match="num_classes"):
        TJNetSystem(torch.nn.Linear(2, 2))


def test_readout_expected_and_argmax():
    system = TJNetSystem(tjnet_tiny(num_classes=77), class_width=3.0)
    logits = torch.full((1, 77), -50.0)
    logits[0, 10] = logits[0, 11] = 0.0  # half class 10 (30 months), half class 11 (33 months)
    assert system.age_from_logits(logits).item() == pytest.approx(31.5)
    system.hparams.readout = "argmax"
    assert system.age_from_logits(logits).item() == 30.0


def test_tiny_tjnet_learns_within_a_few_dozen_steps(tmp_path, tongji_root):
    """Fast: TJ-Net's loss trains a tiny TJ-Net on 52 Tongji-like hands at 32 px (whole-batch steps,
    30 steps): the training loss falls and the training MAD ends far below the mean predictor's.
    alpha stays 1.5 here (its raise is tested in test_tjnet_alpha.py and by the slow test below)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster, and far faster on a busy machine
    try:
        pl.seed_everything(1)
        dm = TongjiDataModule(csv_path=str(tongji_root / "labels.csv"), image_size=(32, 32), batch_size=64,
                              num_workers=0)
        system = TJNetSystem(tjnet_tiny(num_classes=23, dropout=0.0), class_width=1.0, alpha_patience=1000,
                             heatmap_images=0, optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))
        trainer = _trainer(tmp_path, max_epochs=30, limit_val_batches=0, log_every_n_steps=1)
        trainer.fit(system, dm)
    finally:
        torch.set_num_threads(threads)
    train = pd.read_csv(tmp_path / "run" / "version_0" / "metrics.csv").dropna(subset=["train/mad_years"])
    age = dm.table("train")["age"].to_numpy()
    mean_predictor = float(np.abs(age - age.mean()).mean())
    first, last = train.iloc[0], train.iloc[-1]
    print(f"train loss {first['train/loss']:.1f} -> {last['train/loss']:.1f}, MAD {first['train/mad_years']:.2f} "
          f"-> {last['train/mad_years']:.2f} y, mean predictor {mean_predictor:.2f} y")
    # observed (3 seeds): loss about 40 -> 5-6, MAD 1.2-1.6 y against 5.05 y
    assert last["train/loss"] < 0.3 * first["train/loss"]
    assert last["train/mad_years"] < 0.5 * mean_predictor


@pytest.mark.slow  # about 2 minutes on one CPU core: 24 epochs of a tiny TJ-Net on 240 hands
def test_tiny_tjnet_learns_on_phantom(tmp_path):
    """The recipe as the CLI runs it (lr reduced on a val/mae plateau, best checkpoint tested)."""
    root = tongji.render(tmp_path / "tj", n=240, seed=0, size=128, progress_bar=False)
    pl.seed_everything(0)
    dm = TongjiDataModule(csv_path=str(root / "labels.csv"), image_size=(96, 96), batch_size=16,
                          val_fraction=0.15, test_fraction=0.15, augment=[{"HorizontalFlip": {"p": 0.5}}])
    system = TJNetSystem(
        tjnet_tiny(num_classes=23, width=0.25, dropout=0.1), class_width=1.0, alpha_patience=1,
        heatmap_images=0, optimizer=lambda params: torch.optim.Adam(params, lr=2e-3),
        scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=3))
    best = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/mae", mode="min")
    trainer = _trainer(tmp_path, max_epochs=24, enable_checkpointing=True, callbacks=[best])
    trainer.fit(system, dm)
    assert float(system.alpha) == 23.0  # the plateau rule fired during training
    mad = trainer.test(system, dm, ckpt_path="best", verbose=False)[0]["test/mad_years"]
    train_mean = dm.table("train")["age"].mean()
    mean_predictor = float(np.abs(dm.table("test")["age"] - train_mean).mean())
    floor = read_metadata(root)["noise_floor_mae"]
    print(f"tiny TJ-Net test MAD {mad:.2f} y, mean predictor {mean_predictor:.2f} y, floor {floor:.2f} y")
    # observed 1.7-2.8 y against 5.15 y for the mean predictor (seed and thread-order noise)
    assert mad < 0.6 * mean_predictor, (mad, mean_predictor)
