"""The ROI pipeline on the phantom at tiny scale: stage 1 fit, ROI export, stage 2 fit + test.

The export is a predict run: it must name the stage-1 fit run it used and write a valid data set
(crops from the original images, labels.csv in the hospital format with stage 1's split) inside
its own run directory, which the stage-2 DataModule reads.
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

from boneage.analysis.roi import export_csv
from boneage.analysis.roi import main as roi_main
from boneage.cli import RUN_ENV
from boneage.cli import main as cli_main
from boneage.runs import find_runs, resolve_run
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
    return runs, export_csv(runs)[0]


def test_export_lives_in_its_predict_run_and_names_its_fit_run(exported, capsys):
    runs, csv = exported
    fit = resolve_run(runs, "roi_localizer_scinti")
    (export,) = find_runs(runs, "roi_localizer_scinti", stage="predict")
    assert csv == export.path / "roi_dataset" / "labels.csv"
    assert export.info["source_run"] == fit.id and Path(export.info["ckpt_path"]).parent == fit.path / "checkpoints"
    assert not (runs / "roi_localizer_scinti" / "roi_dataset").exists()  # nothing shared between runs
    assert (export.path / "roi_export.txt").read_text().startswith(str(csv))
    assert roi_main(["--runs-dir", str(runs)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(csv) and f"stage-1 fit run {fit.id}" in err and export.label in err


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
    assert list((csv.parent.parent / "figures" / "roi").glob("*.png"))


def test_stage2_trains_and_tests_on_the_export(exported):
    runs, csv = exported
    _stage("fit", "roi_regressor_scinti", str(csv), runs)
    _stage("test", "roi_regressor_scinti", str(csv), runs, "--ckpt_path", "best")
    fit = resolve_run(runs, "roi_regressor_scinti")
    assert fit.config()["data"]["init_args"]["csv_path"] == str(csv)  # trained on this export
    (test,) = fit.evaluations("test")
    preds = test.predictions()
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
    csv, export = export_csv(tmp_path)
    assert f"ROI export: {export.label}" in done.stderr  # stage 2 said which export it used
    for exp in ("roi_regressor_scinti", "roi_regressor_nosex_scinti"):
        fit = resolve_run(tmp_path, exp)
        assert fit.config()["data"]["init_args"]["csv_path"] == str(csv), f"{exp} did not train on the export"
        assert fit.evaluations("test") and fit.evaluations("test")[-1].predictions() is not None, f"{exp} untested"


def _export(runs: Path, source: str, finished: bool = True, when: float = 0.0) -> Path:
    """A predict run of the localizer as the CLI leaves it (labels.csv only when the export finished)."""
    import json

    d = runs / "roi_localizer_scinti" / f"predict-20260101-00000{int(when)}-abcd"
    (d / "roi_dataset").mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"stage": "predict", "created_ts": 1e9 + when, "source_run": source,
                                            "ckpt_path": f"/x/{source}/checkpoints/best.ckpt"}))
    if finished:
        (d / "roi_dataset" / "labels.csv").write_text("image,age_years,sex\n")
    return d


def test_stage2_takes_the_newest_export_or_the_named_one(tmp_path):
    first = _export(tmp_path, "fitA", when=1)
    second = _export(tmp_path, "fitB", when=2)
    assert export_csv(tmp_path)[0] == second / "roi_dataset" / "labels.csv"
    assert export_csv(tmp_path, first.name)[0] == first / "roi_dataset" / "labels.csv"
    # make roi-stage2 passes that CSV to stage 2's fit and test (BONEAGE=echo shows the commands)
    cmd = ["make", "-s", "-C", str(REPO), "roi-stage2", "ROI_DEPS=", f"ROI_RUNS={tmp_path}", f"PY={sys.executable}",
           "BONEAGE=echo boneage", "ROI_STAGE2=roi_regressor_scinti", f"EXPORT_RUN={first.name}"]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(f"--data.init_args.csv_path {first}/roi_dataset/labels.csv" in ln for ln in lines)
    assert "stage-1 fit run fitA" in done.stderr


def test_unfinished_or_missing_export_is_one_clear_line(tmp_path):
    from boneage.runs import RunError

    with pytest.raises(RunError, match="no ROI export .*make roi-stage1 roi-export"):
        export_csv(tmp_path)
    broken = _export(tmp_path, "fitA", finished=False)
    with pytest.raises(RunError, match=f"{broken.name} has no roi_dataset/labels.csv"):
        export_csv(tmp_path)
    with pytest.raises(RunError, match="no predict run 'nope'"):
        export_csv(tmp_path, "nope")
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    done = subprocess.run(["make", "-s", "-C", str(REPO), "roi-stage2", "ROI_DEPS=", f"ROI_RUNS={tmp_path}",
                           f"PY={sys.executable}", "BONEAGE=echo boneage"], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "boneage fit" not in done.stdout
    assert "has no roi_dataset/labels.csv (the export did not finish)" in done.stderr
