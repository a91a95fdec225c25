"""The ROI pipeline on the phantom at tiny scale: stage 1 fit, ROI export, stage 2 fit + test.

The export must write a valid data set (crops from the original images, labels.csv in the
hospital format with stage 1's split) that the stage-2 DataModule reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage.cli import RUN_ENV
from boneage.cli import main as cli_main
from data_modules.scintigraphy import ScintigraphyDataModule

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs"
TRAINER = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
           "--trainer.accelerator", "cpu", "--trainer.devices", "1"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("scinti_phantom")
    return ScintigraphyDataModule.phantom_args(root, n=40, seed=3)["csv_path"]


def _stage(cmd: str, exp: str, csv: str, runs: Path, *extra: str) -> None:
    os.environ.pop(RUN_ENV, None)  # a fresh run directory per command, as from the shell
    configs = ["--config", str(REPO / "experiments" / f"{exp}.yaml"), "--config", str(TINY / f"{exp}.yaml")]
    cli_main([cmd, *configs, "--runs_dir", str(runs), "--data.init_args.csv_path", csv, *TRAINER, *extra])


@pytest.fixture(scope="module")
def exported(phantom, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    _stage("fit", "roi_localizer_scinti", phantom, runs)
    _stage("predict", "roi_localizer_scinti", phantom, runs, "--ckpt_path", "best",
           "--data.init_args.predict_split", "all")
    return runs, runs / "roi_localizer_scinti" / "roi_dataset" / "labels.csv"


def test_export_is_a_valid_dataset_with_stage1_split(phantom, exported):
    runs, csv = exported
    roi = pd.read_csv(csv)
    source = pd.read_csv(phantom)
    assert len(roi) == len(source) and list(roi.columns[:3]) == ["image", "age_years", "sex"]
    # crops are the original pixels inside the box
    for _, r in roi.head(5).iterrows():
        crop = np.array(Image.open(csv.parent / r.image))
        original = np.array(Image.open(r.source))
        assert np.array_equal(crop, original[r.y0:r.y1, r.x0:r.x1])
    # stage 2 reads it and keeps stage 1's split
    stage1 = ScintigraphyDataModule(csv_path=phantom, image_size=(160, 48))
    stage2 = ScintigraphyDataModule(csv_path=str(csv), image_size=(64, 64), batch_size=8)  # split_col auto
    stage1.setup()
    stage2.setup()
    for split in ("train", "val", "test"):
        originals = set(stage1.table(split)["path"])
        assert set(roi.source[roi.split == split]) == originals
        assert len(stage2.table(split)) == len(originals)
    batch = next(iter(stage2.train_dataloader()))
    assert batch["image"].shape == (8, 1, 64, 64) and batch["image"].min() >= -1 and batch["image"].max() <= 1
    # figures like the paper's Fig. 3 and the phantom's noise floor travel with the export
    assert (csv.parent / "phantom.json").is_file()
    assert list((runs / "roi_localizer_scinti").glob("version_*/figures/roi/*.png"))


def test_stage2_trains_and_tests_on_the_export(exported):
    runs, csv = exported
    _stage("fit", "roi_regressor_scinti", str(csv), runs)
    _stage("test", "roi_regressor_scinti", str(csv), runs, "--ckpt_path", "best")
    preds = pd.read_csv(next((runs / "roi_regressor_scinti").glob("version_*/predictions.csv")))
    roi = pd.read_csv(csv)
    assert len(preds) == (roi.split == "test").sum() and np.isfinite(preds.pred_years).all()


@pytest.mark.slow  # reason: five CLI processes through make (about 2-4 minutes on 2 cores)
def test_make_roi_pipeline_end_to_end(phantom, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    py = sys.executable
    tiny = " ".join(TRAINER)
    cmd = ["make", "-C", str(REPO), "roi-pipeline", "ROI_DEPS=", f"ROI_RUNS={tmp_path}", f"PY={py}",
           f"BONEAGE={py} -m boneage.cli",
           f"ROI_ARGS={tiny}",
           f"ROI1_ARGS=--config tests/configs/roi_localizer_scinti.yaml --data.init_args.csv_path {phantom}",
           "ROI2_ARGS=--config tests/configs/roi_regressor_scinti.yaml"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for exp in ("roi_regressor_scinti", "roi_regressor_nosex_scinti"):
        assert list((tmp_path / exp).glob("version_*/predictions.csv")), f"{exp} was not tested"
