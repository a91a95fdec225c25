"""The generic age regressor: network interface, offline weights, and that it really learns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from boneage.models.backbones import create_backbone
from boneage.models.regressor import SexAwareRegressor
from boneage.runs import find_runs


@pytest.mark.parametrize("backbone", ["resnet10t", "tv_googlenet", "mobilenetv3_small_050"])  # last: pre-logits head
def test_every_parameter_gets_a_gradient(backbone):
    net = SexAwareRegressor(backbone, use_sex=True, sex_units=8, hidden=[16], dropout=0.1)
    out = net(torch.randn(2, 1, 64, 64), torch.tensor([0.0, 1.0]))
    assert out.shape == (2,) and torch.isfinite(out).all()
    out.sum().backward()
    # connected to the loss (timm zero-initialises the last BN of residual branches, so some
    # gradients are exactly zero at init: connection, not magnitude, is what is checked)
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_sex_changes_the_prediction_only_when_used():
    torch.manual_seed(0)
    img = torch.randn(1, 1, 64, 64)
    with_sex = SexAwareRegressor("resnet10t", use_sex=True).eval()
    assert with_sex(img, torch.tensor([0.0])) != with_sex(img, torch.tensor([1.0]))
    without = SexAwareRegressor("resnet10t", use_sex=False).eval()
    assert without(img, torch.tensor([0.0])) == without(img, torch.tensor([1.0]))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"resnet10t.*not found at .*nope.pth.*never downloads"):
        create_backbone("resnet10t", pretrained_path=str(tmp_path / "nope.pth"))


def test_local_weights_file_is_loaded(tmp_path):
    ref = create_backbone("resnet10t", in_chans=1)
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    loaded = create_backbone("resnet10t", in_chans=1, pretrained_path=str(path))
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), loaded.state_dict().values()))


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'"):
        create_backbone("resnet9000")


def test_regressor_learns_on_the_phantom(rsna_phantom_400, run_cli):
    """Test MAE falls well below that of always predicting the training mean."""
    rsna_phantom = rsna_phantom_400
    common = ["--config", "experiments/regressor_rsna.yaml", "--experiment", "learn",
              "--data.init_args.data_dir", str(rsna_phantom), "--data.init_args.image_size", "[64, 64]",
              "--data.init_args.batch_size", "16", "--data.init_args.num_workers", "0",
              "--data.init_args.augment", "null",
              "--model.init_args.network.init_args.backbone", "test_resnet",  # timm's tiny test net
              "--model.init_args.network.init_args.hidden", "[32]",
              "--model.init_args.network.init_args.dropout", "0.0",
              "--model.init_args.optimizer.init_args.lr", "0.002",
              "--model.init_args.scheduler", "null", "--trainer.max_epochs", "20"]
    runs = run_cli("fit", *common)
    run_cli("test", *common, "--ckpt_path", "best")
    (fit,), (test,) = (find_runs(runs, "learn", stage=s) for s in ("fit", "test"))
    ckpts = fit.path / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and list(ckpts.glob("best*.ckpt"))
    assert test.info["ckpt_path"] == str(fit.checkpoint("best"))  # the test run says what it evaluated
    run = test.path
    pred = pd.read_csv(run / "predictions.csv")
    assert len(pred) == 40 and {"path", "pred_months", "true_months", "sex", "abs_error"} <= set(pred.columns)
    assert "val/mae" in pd.read_csv(fit.path / "metrics.csv").columns
    table = pd.read_csv(rsna_phantom / "boneage-training-dataset.csv")
    train_mean = table[~table["id"].astype(str).isin(pred["path"].map(lambda p: p.rsplit("/", 1)[1][:-4]))]
    mean_mae = np.abs(pred["true_months"] - train_mean["boneage"].mean()).mean()
    assert pred["abs_error"].mean() < 0.6 * mean_mae
    assert (run / "figures" / "predicted_vs_true.png").is_file()
    assert (run / "figures" / "error_by_group.png").is_file()
    groups = pd.read_csv(run / "errors_by_group.csv")
    assert groups["count"].sum() == 40 and set(groups["sex"]) <= {"F", "M"}
    assert (run / "config.yaml").is_file()


def test_predict_writes_a_csv_for_a_folder(rsna_phantom, run_cli, tmp_path):
    common = ["--config", "experiments/regressor_rsna.yaml", "--experiment", "pred",
              "--data.init_args.data_dir", str(rsna_phantom), "--data.init_args.image_size", "[64, 64]",
              "--data.init_args.batch_size", "16", "--data.init_args.num_workers", "0",
              "--model.init_args.network.init_args.backbone", "resnet10t",
              "--model.init_args.network.init_args.use_sex", "false"]
    runs = run_cli("fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2")
    folder = rsna_phantom / "boneage-training-dataset"
    run_cli("predict", *common, "--ckpt_path", "last", "--data.init_args.predict_dir", str(folder))
    run = find_runs(runs, "pred", stage="predict")[-1].path
    pred = pd.read_csv(run / "predictions.csv")
    assert len(pred) == len(list(folder.glob("*.png"))) and pred["pred_months"].notna().all()


def test_checkpoint_rebuilds_the_model_without_the_config(rsna_phantom, run_cli):
    """load_from_checkpoint alone rebuilds network and target scaling (late fusion, analyses)."""
    from boneage.systems.regression import AgeRegressor

    common = ["--config", "experiments/regressor_rsna.yaml", "--experiment", "reload",
              "--data.init_args.data_dir", str(rsna_phantom), "--data.init_args.image_size", "[64, 64]",
              "--data.init_args.batch_size", "16", "--data.init_args.num_workers", "0",
              "--model.init_args.network.init_args.backbone", "test_resnet",
              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    runs = run_cli("fit", *common)
    last = find_runs(runs, "reload")[-1].checkpoint("last")
    model = AgeRegressor.load_from_checkpoint(last, map_location="cpu")
    table = pd.read_csv(rsna_phantom / "boneage-training-dataset.csv")
    assert model.network.use_sex and abs(float(model.age_mean) - table["boneage"].mean()) < 15
    out = model.eval()(torch.zeros(2, 1, 64, 64), torch.tensor([0.0, 1.0]))
    assert out.shape == (2,) and torch.isfinite(out).all()
