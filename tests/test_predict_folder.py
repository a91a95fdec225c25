"""`boneage predict-folder`: a folder mixing PNG and DICOM, two runs as an ensemble, heat maps, report,
no patient identifiers in any output."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from predict_helpers import IDENTIFIERS, SECRET_FILE, identified_dicom, tiny_runs

from boneage.cli import main as cli
from boneage.predict import collect_inputs, load_predictor, run_folder
from boneage.runs import build_data, resolve_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return tiny_runs(tmp_path_factory.getbasetemp())


@pytest.fixture
def mixed_folder(tmp_path, trained) -> Path:
    """Two phantom PNG hands without a sex, and one DICOM hand (sex F) carrying a patient's identifiers."""
    images = trained[3] / "boneage-training-dataset"
    folder = tmp_path / "cohort"
    folder.mkdir()
    for name in ("1377.png", "1378.png"):
        shutil.copy(images / name, folder / name)
    identified_dicom(folder / SECRET_FILE, images / "1379.png")
    return folder


def test_folder_of_png_and_dicom_with_an_ensemble(tmp_path, trained, mixed_folder):
    runs_dir, regressor, tjnet, _ = trained
    out = tmp_path / "out"
    frame = run_folder([regressor, tjnet], [str(mixed_folder)], out, runs_dir)

    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 3 and table["image"].is_unique
    per_run = table[[f"months[{regressor}]", f"months[{tjnet}]"]].to_numpy()
    assert np.isfinite(per_run).all() and (per_run > 0).all() and (per_run < 300).all()
    # the ensemble: mean and spread of the runs' months, years beside months
    np.testing.assert_allclose(table["age_months"], per_run.mean(1), atol=0.01)
    np.testing.assert_allclose(table["age_sd_months"], per_run.std(1, ddof=1), atol=0.01)
    np.testing.assert_allclose(table["age_years"], table["age_months"] / 12, atol=0.002)
    # sex: the DICOM header where it has one, TJ-Net's own sex classifier for the PNGs
    dicom_row = table.index[table["sex_source"] == "dicom"]
    assert list(dicom_row) == [2] and table.loc[2, "sex"] == "F"
    assert list(table["sex_source"][:2]) == ["model", "model"]
    assert set(table["runs"].iloc[0].split(";")) == {regressor, tjnet}

    overlays = sorted(p.stem for p in (out / "overlays").glob("*.png"))
    assert overlays == sorted(frame["image"])
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 6  # a thumbnail and a heat map per image
    assert "tiny_regressor" in report and "tiny_tjnet" in report and "test MAE" in report

    # no identifier of the DICOM, nor its file name, in any output (names, text, image bytes)
    secrets = [*IDENTIFIERS.values(), "DOE", "JANE", "778899", Path(SECRET_FILE).stem]
    for path in out.rglob("*"):
        assert not any(s.lower() in path.name.lower() for s in secrets)
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), f"{path.name} leaks an identifier"


def test_inputs_are_the_datamodules_own(trained, mixed_folder):
    """Each image reaches the network exactly as the run's DataModule loads it for `boneage predict`."""
    runs_dir, regressor, _, _ = trained
    pred = load_predictor(regressor, runs_dir)
    table = collect_inputs([str(mixed_folder)])
    images, _ = pred.inputs(list(table["path"]), mixed_folder)
    dm = build_data(resolve_run(runs_dir, *regressor.split("/")), {"init_args": {"predict_dir": str(mixed_folder)}})
    dm.setup("predict")
    dataset = dm.dataset("predict")
    assert list(dm.table("predict")["path"]) == list(table["path"])
    reference = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    torch.testing.assert_close(images, reference)


def test_cli_csv_sex_sources_tta_and_kept_names(tmp_path, trained, mixed_folder):
    """Sex from the CSV first, then the DICOM header, then --sex for the rest."""
    runs_dir, regressor, _, _ = trained
    pd.DataFrame({"path": ["1377.png", "1378.png", SECRET_FILE], "sex": ["F", "", ""]}).to_csv(
        mixed_folder / "list.csv", index=False)
    out = tmp_path / "out"
    cli(["predict-folder", "--run", regressor, str(mixed_folder / "list.csv"), "--out", str(out),
         "--runs-dir", str(runs_dir), "--sex", "M", "--tta", "--keep-names"])
    table = pd.read_csv(out / "predictions.csv")
    assert list(table["sex"]) == ["F", "M", "F"] and list(table["sex_source"]) == ["csv", "cli", "dicom"]
    assert [Path(f).name for f in table["file"]] == ["1377.png", "1378.png", SECRET_FILE]
    assert table["age_sd_months"].isna().all()  # one run: no spread


def test_a_sex_aware_run_without_a_sex_ends_with_one_line(tmp_path, trained, mixed_folder, capsys):
    runs_dir, regressor, _, _ = trained
    with pytest.raises(SystemExit) as stop:
        cli(["predict-folder", "--run", regressor, str(mixed_folder / "1377.png"), "--out", str(tmp_path / "o"),
             "--runs-dir", str(runs_dir)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sex M|F" in err[0] and "image 1" in err[0]


@pytest.mark.slow
def test_ct_run_gets_its_crop_and_the_checkpoints_pixel_statistics(tmp_path, run_cli):
    """Whole-body CT (upper half, centre crop, standardised): predict-folder's inputs are the DataModule's,
    with the training set's pixel statistics taken from the checkpoint, not recomputed from data."""
    from data_modules.wholebody import WholeBodyCTDataModule

    csv = WholeBodyCTDataModule.phantom_args(tmp_path / "ct", n=24, seed=0)["csv_path"]
    runs_dir = run_cli("fit", "--config", "experiments/ct_hvgg_upper.yaml",
                       "--config", "tests/configs/ct_hvgg_upper.yaml", "--data.init_args.csv_path", csv,
                       "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1",
                       "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1")
    pred = load_predictor("ct_hvgg_upper", runs_dir)
    folder = tmp_path / "new"
    folder.mkdir()
    for png in sorted((tmp_path / "ct").rglob("*.png"))[:3]:
        shutil.copy(png, folder / png.name)
    table = collect_inputs([str(folder)])
    images, _ = pred.inputs(list(table["path"]), folder)
    dm = build_data(resolve_run(runs_dir, "ct_hvgg_upper"), {"init_args": {"predict_dir": str(folder)}})
    dm.setup("predict")
    assert (pred.dm.pixel_mean, pred.dm.pixel_std) == pytest.approx((dm.pixel_mean, dm.pixel_std))
    reference = torch.stack([dm.dataset("predict")[i]["image"] for i in range(3)])
    torch.testing.assert_close(images, reference)
    assert images.shape[-2:] == (64, 64)  # the evaluation centre crop
    frame = run_folder(["ct_hvgg_upper"], [str(folder)], tmp_path / "out", runs_dir, sex="M")
    assert frame["age_years"].between(0, 120).all()
