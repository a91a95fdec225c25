"""Localization is measured, gated and cross-fitted (issue: the ROI pipeline must find the age region).

- cross-fitting: localizer k never trains on the images of fold k, and the merged export gives every
  image exactly one crop, from the localizer of its own fold;
- the localization check scores the heat-map peak and the crop against the phantom's true region
  (outside the LightningModule) and stops the pipeline below the threshold unless forced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from boneage.analysis.roi import gate, localization, localization_summary, merge_folds
from boneage.analysis.roi import main as roi_main
from boneage.cli import RUN_ENV
from boneage.cli import main as cli_main
from boneage.runs import RunError, find_runs, resolve_run
from data_modules.scintigraphy import ScintigraphyDataModule

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs"
TRAINER = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
           "--trainer.accelerator", "cpu", "--trainer.devices", "1"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("scinti_cv")
    return ScintigraphyDataModule.phantom_args(root, n=40, seed=5)["csv_path"]


def _dm(csv: str, **kw) -> ScintigraphyDataModule:
    dm = ScintigraphyDataModule(csv_path=csv, image_size=(64, 32), batch_size=4, num_workers=0, **kw)
    dm.setup()
    return dm


def test_folds_keep_each_localizer_off_its_own_fold(phantom):
    plain = _dm(phantom)
    seen: dict[str, list[str]] = {s: [] for s in ("train", "val", "test")}
    for k in range(2):
        dm = _dm(phantom, folds=2, fold=k)
        train_paths = {dm.table("train")["path"][int(b["index"])] for b in dm.dataset("train")}
        exported = {s: [dm.table(s)["path"][int(i)] for b in dm._plain_loader(s) for i in b["index"]]
                    for s in seen}
        assert not train_paths & set(exported["train"])  # never trains on what it crops
        assert train_paths | set(exported["train"]) == set(plain.table("train")["path"])
        for s in seen:
            seen[s] += exported[s]
    for s, paths in seen.items():  # every image of every split exported exactly once
        assert sorted(paths) == sorted(plain.table(s)["path"]), s


def test_fold_settings_are_checked(phantom):
    with pytest.raises(ValueError, match="cross-fitting"):
        ScintigraphyDataModule(csv_path=phantom, folds=2)
    with pytest.raises(ValueError, match="cross-fitting"):
        ScintigraphyDataModule(csv_path=phantom, folds=2, fold=2)


def _cli(cmd: str, csv: str, runs: Path, *extra: str) -> None:
    os.environ.pop(RUN_ENV, None)
    exp = "roi_localizer_scinti"
    cli_main([cmd, "--config", str(REPO / "experiments" / f"{exp}.yaml"), "--config", str(TINY / f"{exp}.yaml"),
              "--runs_dir", str(runs), "--data.init_args.csv_path", csv, *TRAINER, *extra])


def test_cross_fitted_export_takes_each_crop_from_the_other_fold(phantom, tmp_path, capsys):
    runs = tmp_path / "runs"
    for k in range(2):
        _cli("fit", phantom, runs, "--run", f"cv-test-fold{k}", "--data.init_args.folds", "2",
             "--data.init_args.fold", str(k))
    capsys.readouterr()
    assert roi_main(["folds", "--runs-dir", str(runs)]) == 0
    assert capsys.readouterr().out.split() == ["cv-test-fold0", "cv-test-fold1"]
    for k in range(2):
        _cli("predict", phantom, runs, "--run", f"cv-test-fold{k}", "--ckpt_path", "best",
             "--data.init_args.folds", "2", "--data.init_args.fold", str(k), "--data.init_args.predict_split", "all")
    parts = find_runs(runs, "roi_localizer_scinti", stage="predict")
    # a fold's export is a part, never taken by stage 2 on its own
    assert roi_main(["--runs-dir", str(runs)]) == 2
    with pytest.raises(RunError, match="one predict run of each fold"):
        merge_folds(parts[:1], runs)
    export = merge_folds(parts, runs)
    labels = pd.read_csv(export.path / "roi_dataset" / "labels.csv")
    source = pd.read_csv(phantom)
    assert len(labels) == len(source) and labels["source"].is_unique
    assert all((export.path / "roi_dataset" / p).is_file() for p in labels["image"])
    for k in range(2):  # the rows of fold k came from the localizer that left fold k out of training
        part = pd.read_csv(parts[k].path / "roi_dataset" / "labels.csv")
        assert set(part["fold"]) == {k}
        assert parts[k].info["source_run"] == f"cv-test-fold{k}"
    capsys.readouterr()
    assert roi_main(["--runs-dir", str(runs)]) == 0
    assert capsys.readouterr().out.strip() == str(export.path / "roi_dataset" / "labels.csv")
    assert export.info["source_runs"] == ["cv-test-fold0", "cv-test-fold1"]
    assert resolve_run(runs, "roi_localizer_scinti", export.id, stage="export").path == export.path


def _export(tmp_path: Path, hits: dict[str, list[bool]]) -> tuple[pd.DataFrame, Path]:
    """An export's rows and a truth file: every true box is 10 x 20 at (40, 100); a hit puts the peak in it."""
    rows, truth = [], []
    for split, flags in hits.items():
        for i, hit in enumerate(flags):
            name = f"{split}_{i}.png"
            (tmp_path / name).touch()
            peak = (45.0, 110.0) if hit else (5.0, 5.0)
            rows.append({"image": f"crops/{name}", "age_years": 50.0, "sex": "F", "source": str(tmp_path / name),
                         "split": split, "x0": 40, "y0": 100, "x1": 45 if hit else 10, "y1": 120 if hit else 10,
                         "orig_height": 300, "orig_width": 100, "peak_x": peak[0], "peak_y": peak[1],
                         "pred_group": i % 2})
            truth.append({"image": name, "roi_x0": 40, "roi_y0": 100, "roi_x1": 50, "roi_y1": 120})
    pd.DataFrame(truth).to_csv(tmp_path / "phantom_truth.csv", index=False)
    return pd.DataFrame(rows), tmp_path / "phantom_truth.csv"


def test_hit_rate_and_coverage_against_the_true_region(tmp_path):
    rows, truth = _export(tmp_path, {"train": [True] * 4, "val": [True] * 3 + [False], "test": [True, False]})
    scored = localization(rows, truth)
    summary = localization_summary(scored).set_index(["split", "pred_group"])
    assert summary.loc[("val", "all"), "hit_rate"] == 0.75
    assert summary.loc[("test", "all"), "hit_rate"] == 0.5
    assert summary.loc[("val", "all"), "coverage"] == pytest.approx(0.75 * 0.5)  # a hit crop covers half the box
    assert summary.loc[("val", 1), "hit_rate"] == 0.5  # val rows 1 and 3 are predicted group 1; row 3 misses
    # references: the training boxes' mean centre hits every image here, the image centre none; chance is
    # the box's share of the image
    assert summary.loc[("val", "all"), "mean_position_hit_rate"] == 1.0
    assert summary.loc[("val", "all"), "centre_hit_rate"] == 0.0
    assert summary.loc[("val", "all"), "chance_hit_rate"] == pytest.approx(200 / 30000)
    assert gate(localization_summary(scored), 0.7) is None
    why = gate(localization_summary(scored), 0.8)
    assert "val hit rate is 0.75" in why and "ROI_FORCE=1" in why


def test_localization_command_stops_below_the_threshold_unless_forced(tmp_path, capsys):
    runs = tmp_path / "runs"
    export = runs / "roi_localizer_scinti" / "export-1"
    (export / "roi_dataset").mkdir(parents=True)
    (export / "run.json").write_text(json.dumps({"stage": "export", "created_ts": 1.0}))
    data = tmp_path / "data"
    data.mkdir()
    rows, _ = _export(data, {"train": [True] * 2, "val": [False, False, True], "test": [True]})
    rows.to_csv(export / "roi_dataset" / "labels.csv", index=False)
    args = ["localization", "--runs-dir", str(runs)]
    assert roi_main(args) == 0  # no phantom.json: nothing to check against, said so
    assert "localization not measured" in capsys.readouterr().err
    (export / "roi_dataset" / "phantom.json").write_text(json.dumps({"extra": {"roi_export_of": str(data)}}))
    assert roi_main(args) == 3
    err = capsys.readouterr().err
    assert "val hit rate is 0.33" in err and "chance" in err
    assert roi_main([*args, "--force"]) == 0
    written = json.loads((export / "roi_dataset" / "localization.json").read_text())
    assert written["val_hit_rate"] == pytest.approx(1 / 3, abs=1e-3) and written["test_hit_rate"] == 1.0
    assert np.isclose(pd.read_csv(export / "roi_dataset" / "localization.csv")["n"].iloc[0], 2)


def test_a_peak_within_one_heat_map_cell_of_the_region_is_a_hit(tmp_path):
    rows, truth = _export(tmp_path, {"val": [True, True, True]})
    # the true box is x 40-50, y 100-120 on a 100 x 300 image; a 10 x 30 grid has 10 x 10 px cells
    rows = rows.assign(grid_h=30, grid_w=10, peak_x=[45.0, 35.0, 25.0], peak_y=[110.0, 95.0, 110.0])
    scored = localization(rows, truth)
    assert scored["hit_strict"].tolist() == [True, False, False]
    assert scored["hit"].tolist() == [True, True, False]  # 5 px off is inside the cell; 15 px is not


@pytest.mark.slow
def test_localizer_finds_the_age_region_better_than_a_fixed_box_and_chance(tmp_path):
    """The miniature's stage 1 (docs/roi.md) on a small phantom: the heat-map peaks of the validation
    images fall in the true age region far more often than the image centre or a random point."""
    from boneage.phantoms import scintigraphy

    csv = scintigraphy.render(tmp_path / "data", n=400, seed=11, width=240, height=768, progress=False)
    runs = tmp_path / "runs"
    common = ["--data.init_args.val_fraction", "0.2", "--data.init_args.test_fraction", "0.1",
              "--data.init_args.image_size", "[256,80]", "--data.init_args.num_workers", "0",
              "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    model = ["--model.init_args.network.init_args.backbone", "test_resnet",
             "--model.init_args.network.init_args.output_stride", "8", "--model.init_args.max_figures", "0"]
    exp = str(REPO / "experiments" / "roi_localizer_scinti.yaml")
    os.environ.pop(RUN_ENV, None)
    cli_main(["fit", "--config", exp, "--runs_dir", str(runs), "--data.init_args.csv_path", str(csv), *common, *model,
              "--trainer.max_epochs", "30", "--model.init_args.scheduler.init_args.T_max", "30",
              "--data.init_args.batch_size", "16", "--model.init_args.optimizer.init_args.lr", "0.002",
              "--model.init_args.optimizer.init_args.weight_decay", "0.05"])
    os.environ.pop(RUN_ENV, None)
    cli_main(["predict", "--config", exp, "--runs_dir", str(runs), "--data.init_args.csv_path", str(csv), *common,
              *model, "--ckpt_path", "best", "--data.init_args.predict_split", "val"])
    (export,) = find_runs(runs, "roi_localizer_scinti", stage="predict")
    summary = localization_summary(localization(pd.read_csv(export.path / "roi_dataset" / "labels.csv"),
                                                tmp_path / "data" / "phantom_truth.csv"))
    val = summary[(summary["split"] == "val") & (summary["pred_group"] == "all")].iloc[0]
    assert val["hit_rate"] >= max(val["centre_hit_rate"], val["chance_hit_rate"]) + 0.4, summary.to_string()
