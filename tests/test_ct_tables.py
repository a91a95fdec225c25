"""Tables 1-4 of the whole-body CT paper from predictions.csv files and from runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from boneage.analysis import ct_tables as T


def _write(path, ages, preds, sex, key=None):
    df = pd.DataFrame({"index": key if key is not None else np.arange(len(ages)), "age": ages,
                       "pred_age": preds, "sex": sex})
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


AGES = np.array([10.0, 40.0, 50.0, 60.0, 80.0])
SEX = ["F", "M", "F", "F", "M"]


def test_mae_and_late_fusion_are_hand_computed(tmp_path):
    a = _write(tmp_path / "a.csv", AGES, AGES + [2, -2, 2, -2, 2], SEX)      # MAE 2
    b = _write(tmp_path / "b.csv", AGES, AGES + [-2, 2, -2, 2, 4], SEX)      # MAE 2.4
    # c lists the same images in another order: fusion must align by index, not by row
    order = [4, 2, 0, 1, 3]
    c = _write(tmp_path / "c.csv", AGES[order], (AGES + [3, 3, 3, 3, 3])[order], [SEX[i] for i in order],
               key=np.array(order))                                          # MAE 3
    table = T.mae_table({"A": a, "B": b, "C": c})
    assert table["MAE (years)"].tolist() == [2.0, 2.4, 3.0]
    fused = T.late_fusion([a, b, c]).set_index("key")
    # per image: mean of (+2,-2,+3), (-2,+2,+3), (2,-2,3), (-2,2,3), (2,4,3) -> 1, 1, 1, 1, 3
    np.testing.assert_allclose(fused.loc[[str(i) for i in range(5)], "pred"] - AGES, [1, 1, 1, 1, 3])
    assert T.mae_table({"late": fused.reset_index()})["MAE (years)"].item() == pytest.approx(1.4)


def test_late_fusion_rejects_members_of_different_test_sets(tmp_path):
    a = _write(tmp_path / "a.csv", AGES, AGES, SEX)
    b = _write(tmp_path / "b.csv", AGES, AGES, SEX, key=np.arange(5) + 1)
    with pytest.raises(ValueError, match="different test images"):
        T.late_fusion([a, b])


def test_sex_table_counts_and_mae_with_phantom_floor(tmp_path):
    pred = _write(tmp_path / "p.csv", AGES, AGES + [1, 4, 3, -1, -6], SEX)
    labels = tmp_path / "data" / "labels.csv"
    labels.parent.mkdir()
    pd.DataFrame({"image": [f"{i}.png" for i in range(8)], "age_years": 1.0,
                  "sex": ["F"] * 6 + ["M"] * 2}).to_csv(labels, index=False)
    table = T.sex_table(pred, labels, floor=2.0).set_index("Gender")
    assert table.loc["Female", "Number of data"] == 6 and table.loc["Male", "Number of data"] == 2
    assert table.loc["Female", "n test"] == 3 and table.loc["Male", "n test"] == 2
    assert table.loc["Female", "MAE (years)"] == pytest.approx((1 + 3 + 1) / 3, abs=1e-3)
    assert table.loc["Male", "MAE (years)"] == pytest.approx(5.0)
    assert table.loc["Male", "MAE / floor"] == pytest.approx(2.5)


def test_numeric_sex_and_region_table(tmp_path):
    up = tmp_path / "up.csv"
    pd.DataFrame({"index": range(3), "target": [1.0, 2.0, 3.0], "prediction": [1.5, 2.5, 3.5],
                  "sex": [0.0, 1.0, 1.0]}).to_csv(up, index=False)
    assert T.read_predictions(up)["sex"].tolist() == ["F", "M", "M"]
    lo = _write(tmp_path / "lo.csv", AGES, AGES + 1, SEX)
    table = T.region_table(up, lo)
    assert table["Data type"].tolist() == ["Upper body", "Lower body"]
    assert table["MAE (years)"].tolist() == [0.5, 1.0]


def test_bad_predictions_name_file_row_and_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv not found.*make eval"):
        T.read_predictions(tmp_path / "missing.csv")
    p = tmp_path / "p.csv"
    pd.DataFrame({"foo": [1.0], "age": [2.0]}).to_csv(p, index=False)
    with pytest.raises(KeyError, match="p.csv.*predicted-age column"):
        T.read_predictions(p)
    pd.DataFrame({"pred": [1.0, np.nan], "age": [2.0, 3.0]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match="row 1: pred"):
        T.read_predictions(p)
    pd.DataFrame({"pred": [1.0], "age": [2.0], "sex": ["X"]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match="row 0: sex"):
        T.read_predictions(p)


_CLOCK = iter(range(1_000_000))


def _run(runs, exp, run_id, stage="fit", source=None, labels=None, predictions=None):
    """A run directory as the CLI leaves it (run.json, config.yaml, predictions.csv), created in order."""
    path = runs / exp / run_id
    path.mkdir(parents=True)
    info = {"id": run_id, "experiment": exp, "stage": stage, "created_ts": 1e9 + next(_CLOCK)}
    if source is not None:
        info.update(source_run=source.name, source_dir=str(source))
    (path / "run.json").write_text(json.dumps(info))
    data = {"class_path": "data_modules.wholebody.WholeBodyCTDataModule",
            "init_args": {"csv_path": str(labels or "data/wholebody_ct/labels.csv")}}
    (path / "config.yaml").write_text(yaml.safe_dump({"experiment": exp, "data": data}))
    if predictions is not None:
        predictions.to_csv(path / "predictions.csv", index=False)
    return path


def _frame(ages, preds, sex, truth=True):
    frame = pd.DataFrame({"index": np.arange(len(ages)), "pred_years": preds})
    if truth:
        frame["true_years"], frame["sex"] = ages, sex
    return frame


def _labels(folder, n_female, n_male, floor):
    folder.mkdir(parents=True)
    pd.DataFrame({"image": ["a.png"] * (n_female + n_male), "age_years": 1.0,
                  "sex": ["F"] * n_female + ["M"] * n_male}).to_csv(folder / "labels.csv", index=False)
    (folder / "phantom.json").write_text(json.dumps({"noise_floor_mae": floor}))
    return folder / "labels.csv"


def test_command_line_writes_all_tables_from_runs(tmp_path, capsys):
    """Each model: the newest fit run, its newest test run; a later predict run and a later test
    of an older fit run change nothing; labels and floor come from each run's own config."""
    runs = tmp_path / "runs"
    labels = _labels(tmp_path / "data", 40, 10, 2.0)
    rng = np.random.default_rng(0)
    ages = rng.uniform(1, 87, 40)
    sex = np.where(rng.random(40) < 0.8, "F", "M")
    for exp, err in [("ct_vgg16", 8.0), ("ct_googlenet", 5.0), ("ct_resnet", 5.5), ("ct_hvgg", 4.0),
                     ("ct_early", 6.0), ("ct_up", 4.0), ("ct_low", 5.0)]:
        old = _run(runs, exp, "20260101-000000-aaaa", labels=labels)
        _run(runs, exp, "test-20260101-000100-aaaa", "test", old, predictions=_frame(ages, ages + 1.0, sex))
        new = _run(runs, exp, "20260102-000000-bbbb", labels=labels)
        _run(runs, exp, "test-20260102-000100-bbbb", "test", new, predictions=_frame(ages, ages + 30.0, sex))
        _run(runs, exp, "test-20260102-000200-bbbb", "test", new,
             predictions=_frame(ages, ages + err * np.sign(rng.normal(size=40)), sex))
        _run(runs, exp, "predict-20260102-000300-bbbb", "predict", new,
             predictions=_frame(ages, ages + 50.0, sex, truth=False))
        _run(runs, exp, "test-20260102-000400-aaaa", "test", old, predictions=_frame(ages, ages + 20.0, sex))
    out = tmp_path / "reports"
    rc = T.main(["--runs-dir", str(runs), "--out", str(out),
                 "--model", "Fine-tuned VGGNet (A)=ct_vgg16",
                 "--model", "Fine-tuned GoogLeNet (B)=ct_googlenet",
                 "--model", "Fine-tuned ResNet (C)=ct_resnet", "--model", "Early fusion=ct_early",
                 "--model", "Ours=ct_hvgg", "--late", "A,B,C", "--table1", "Fine-tuned VGGNet (A),Ours",
                 "--upper", "ct_up", "--lower", "ct_low", "--sex", "ct_hvgg"])
    assert rc == 0
    t2 = pd.read_csv(out / "table2.csv").set_index("Model")
    assert t2.loc["Fine-tuned VGGNet (A)", "MAE (years)"] == pytest.approx(8.0)
    assert t2.loc["Ours", "MAE / floor"] == pytest.approx(2.0)
    assert "Late fusion of (A), (B), and (C)" in t2.index
    assert pd.read_csv(out / "table4.csv")["Number of data"].tolist() == [40, 10]
    assert pd.read_csv(out / "table3.csv")["MAE (years)"].tolist() == [4.0, 5.0]
    assert (out / "table1.csv").is_file()
    assert "| Model | MAE (years)" in (out / "tables.md").read_text()
    printed = capsys.readouterr().out
    assert "Ours: fit run ct_hvgg/20260102-000000-bbbb, test run ct_hvgg/test-20260102-000200-bbbb" in printed
    assert "wrote table1, table2, table3, table4" in printed


def test_named_runs_and_labels_of_the_run(tmp_path):
    """EXP/<fit run> takes that run's newest test; EXP/<test run> takes that test; the label CSV
    defaults to the one the fit run trained on (an override), --labels replaces it."""
    runs = tmp_path / "runs"
    own = _labels(tmp_path / "mine", 3, 2, 1.0)
    other = _labels(tmp_path / "other", 1, 4, 4.0)
    ages, sex = np.array([10.0, 20.0, 30.0, 40.0, 50.0]), ["F", "M", "F", "M", "F"]
    old = _run(runs, "ct_hvgg", "20260101-000000-aaaa", labels=own)
    first = _run(runs, "ct_hvgg", "test-20260101-000100-aaaa", "test", old, predictions=_frame(ages, ages + 2, sex))
    _run(runs, "ct_hvgg", "test-20260101-000200-aaaa", "test", old, predictions=_frame(ages, ages + 3, sex))
    _run(runs, "ct_hvgg", "20260102-000000-bbbb", labels=other)  # newer fit run, never tested
    out = tmp_path / "out"
    assert T.main(["--runs-dir", str(runs), "--out", str(out), "--sex", "ct_hvgg/20260101"]) == 0
    t4 = pd.read_csv(out / "table4.csv")
    assert t4["Number of data"].tolist() == [3, 2] and t4["MAE (years)"].tolist() == [3.0, 3.0]
    assert t4["MAE / floor"].tolist() == [3.0, 3.0]
    assert T.main(["--runs-dir", str(runs), "--out", str(out), "--sex", f"ct_hvgg/{first.name}"]) == 0
    assert pd.read_csv(out / "table4.csv")["MAE (years)"].tolist() == [2.0, 2.0]
    assert T.main(["--runs-dir", str(runs), "--out", str(out), "--sex", str(first), "--labels", str(other)]) == 0
    assert pd.read_csv(out / "table4.csv")["Number of data"].tolist() == [1, 4]


def test_unknown_or_untested_run_is_one_clear_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    fit = _run(runs, "ct_vgg16", "20260101-000000-aaaa")
    predict = _run(runs, "ct_vgg16", "predict-20260101-000100-aaaa", "predict", fit,
                   predictions=_frame(np.ones(3), np.ones(3), ["F"] * 3, truth=False))
    args = ["--runs-dir", str(runs), "--out", str(tmp_path / "out"), "--model"]
    assert T.main(args + ["A=ct_vgg16/nope"]) == 2
    assert "no fit run 'nope' in" in capsys.readouterr().err
    assert T.main(args + ["A=ct_vgg99"]) == 2
    assert "no fit run of 'ct_vgg99'" in capsys.readouterr().err
    assert T.main(args + ["A=ct_vgg16"]) == 2  # its only evaluation is a predict run
    err = capsys.readouterr().err
    assert "ct_vgg16/20260101-000000-aaaa has no test run yet" in err and "--ckpt_path best" in err
    assert T.main(args + [f"A={predict}"]) == 2
    assert "is a predict run, not a test" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_runs_with_a_predict_run_after_the_test(run_cli, tmp_path, tmp_path_factory, monkeypatch, capsys):
    """The real commands: fit on an override CSV, test, then predict; the tables read the test
    run and count Table 4 from the CSV the run was trained on (the experiment's own is not there)."""
    from data_modules.wholebody import WholeBodyCTDataModule

    data = WholeBodyCTDataModule.phantom_args(tmp_path_factory.mktemp("ct"), n=40, seed=0)
    args = ["--config", "experiments/ct_vgg16.yaml", "--config", "tests/configs/ct_vgg16.yaml",
            "--data.init_args.csv_path", data["csv_path"], "--data.init_args.num_workers", "0"]
    runs = run_cli("fit", *args, "--trainer.max_epochs", "1")
    run_cli("test", *args, "--ckpt_path", "best")
    run_cli("predict", *args, "--ckpt_path", "best")
    stages = sorted(json.loads((d / "run.json").read_text())["stage"] for d in (runs / "ct_vgg16").iterdir())
    assert stages == ["fit", "predict", "test"]
    monkeypatch.chdir(tmp_path)  # the experiment's default CSV (data/wholebody_ct/labels.csv) is not here
    out = tmp_path / "out"
    assert T.main(["--runs-dir", str(runs), "--out", str(out), "--model", "A=ct_vgg16", "--sex", "ct_vgg16"]) == 0
    t4 = pd.read_csv(out / "table4.csv").set_index("Gender")
    labels = pd.read_csv(data["csv_path"])
    assert t4.loc["Female", "Number of data"] == (labels["sex"] == "F").sum()
    assert t4["n test"].sum() == pd.read_csv(out / "table2.csv")["n test"].item() == 12
    assert "MAE / floor" in t4.columns  # the phantom beside the override CSV
    assert "test run ct_vgg16/test-" in capsys.readouterr().out


def test_repeats_give_the_best_of_n_beside_mean_and_sd_and_fuse_seed_by_seed(tmp_path, capsys):
    """The repeats file decides which fit runs count (a newer, unlisted run is not read); each row
    gives the best of its runs (the paper's pick), the mean and sample sd; late fusion averages
    the members trained with the same seed; Table 4 reads the best run."""
    runs = tmp_path / "runs"
    labels = _labels(tmp_path / "data", 6, 4, 2.0)
    ages = np.linspace(5.0, 80.0, 10)
    sex = ["F", "M"] * 5
    errors = {"ct_vgg16": [8.0, 6.0, 7.0], "ct_googlenet": [5.0, 5.5, 4.5], "ct_resnet": [2.0, 3.5, 1.5],
              "ct_hvgg": [4.0, 3.0, 5.0], "ct_up": [4.0, 4.5, 5.0], "ct_low": [6.0, 7.0, 8.0]}
    listed = []
    for exp, errs in errors.items():
        for seed, err in zip((1, 2, 3), errs):
            fit = _run(runs, exp, f"rep1-s{seed}", labels=labels)
            _run(runs, exp, f"test-rep1-s{seed}", "test", fit, predictions=_frame(ages, ages + err, sex))
            listed.append(f"{exp},{seed},rep1-s{seed}")
        newer = _run(runs, exp, "20270101-000000-cccc", labels=labels)  # not in the repeats file
        _run(runs, exp, "test-20270101-000100-cccc", "test", newer, predictions=_frame(ages, ages, sex))
    single = _run(runs, "ct_early", "20260101-000000-aaaa", labels=labels)
    _run(runs, "ct_early", "test-20260101-000100-aaaa", "test", single, predictions=_frame(ages, ages - 6.5, sex))
    repeats = tmp_path / "repeats.csv"
    repeats.write_text("experiment,seed,run\n" + "\n".join(listed) + "\n")
    out = tmp_path / "out"
    assert T.main(["--runs-dir", str(runs), "--out", str(out), "--repeats", str(repeats),
                   "--model", "Fine-tuned VGGNet (A)=ct_vgg16", "--model", "Fine-tuned GoogLeNet (B)=ct_googlenet",
                   "--model", "Fine-tuned ResNet (C)=ct_resnet", "--model", "Early fusion=ct_early",
                   "--model", "Ours=ct_hvgg", "--late", "A,B,C", "--sex", "ct_hvgg",
                   "--upper", "ct_up", "--lower", "ct_low"]) == 0
    t3 = pd.read_csv(out / "table3.csv")
    assert t3["MAE (years)"].tolist() == [4.0, 6.0] and t3["MAE mean (years)"].tolist() == [4.5, 7.0]
    assert t3["runs"].tolist() == [3, 3]
    t2 = pd.read_csv(out / "table2.csv").set_index("Model")
    a = t2.loc["Fine-tuned VGGNet (A)"]
    assert (a["MAE (years)"], a["MAE mean (years)"], a["MAE sd (years)"], a["runs"]) == (6.0, 7.0, 1.0, 3)
    assert t2.loc["Ours", "MAE (years)"] == 3.0 and t2.loc["Ours", "MAE / floor"] == 1.5
    early = t2.loc["Early fusion"]
    assert early["MAE (years)"] == 6.5 and early["runs"] == 1 and np.isnan(early["MAE sd (years)"])
    # late fusion per seed: (8+5+2)/3 = 5, (6+5.5+3.5)/3 = 5, (7+4.5+1.5)/3 = 4.333
    late = t2.loc["Late fusion of (A), (B), and (C)"]
    assert late["MAE (years)"] == pytest.approx(4.333) and late["MAE mean (years)"] == pytest.approx(4.778)
    t4 = pd.read_csv(out / "table4.csv")
    assert t4["MAE (years)"].tolist() == [3.0, 3.0]  # the best ct_hvgg run (seed 2)
    listed_runs = pd.read_csv(out / "runs.csv")
    ours = listed_runs[listed_runs["row"] == "Ours"]
    assert ours["fit run"].tolist() == [f"ct_hvgg/rep1-s{s}" for s in (1, 2, 3)]
    assert ours["picked"].tolist() == [False, True, False]
    assert "best of the runs" in (out / "tables.md").read_text()
    assert "Ours (seed 2): fit run ct_hvgg/rep1-s2, test run ct_hvgg/test-rep1-s2" in capsys.readouterr().out


def test_repeats_whose_members_share_no_seed_cannot_be_fused(tmp_path, capsys):
    runs = tmp_path / "runs"
    ages, sex = np.array([10.0, 20.0]), ["F", "M"]
    for exp, seed in (("ct_vgg16", 1), ("ct_resnet", 2)):
        fit = _run(runs, exp, f"rep-s{seed}")
        _run(runs, exp, f"test-rep-s{seed}", "test", fit, predictions=_frame(ages, ages, sex))
    repeats = tmp_path / "repeats.csv"
    repeats.write_text("experiment,seed,run\nct_vgg16,1,rep-s1\nct_resnet,2,rep-s2\n")
    assert T.main(["--runs-dir", str(runs), "--out", str(tmp_path / "out"), "--repeats", str(repeats),
                   "--model", "A=ct_vgg16", "--model", "C=ct_resnet", "--late", "A,C"]) == 2
    assert "share no seed" in capsys.readouterr().err


def test_fig4_counts_the_data_of_the_run(tmp_path):
    """Fig. 4 from the fit run's own data module (build_data): ages in the paper's whole-year
    ranges 0-39, 40-60, 61+, and the counts by sex; --labels counts another CSV."""
    runs = tmp_path / "runs"
    data = tmp_path / "data"
    data.mkdir()
    ages = [5.0, 39.9, 40.0, 50.0, 60.9, 61.0, 70.0, 45.0, 55.0, 52.0]
    pd.DataFrame({"image": [f"{i}.png" for i in range(10)], "age_years": ages,
                  "sex": ["F"] * 7 + ["M"] * 3}).to_csv(data / "labels.csv", index=False)
    other = _labels(tmp_path / "other", 1, 1, 2.0)
    _run(runs, "ct_hvgg", "20260101-000000-aaaa", labels=data / "labels.csv")
    out = tmp_path / "out"
    assert T.main(["--runs-dir", str(runs), "--out", str(out), "--fig4", "ct_hvgg"]) == 0
    assert (out / "fig4_data_distribution.png").stat().st_size > 5000
    text = (out / "tables.md").read_text()
    assert "10 images, ages 5.0-70.0 years; 0-39 y 20.0% (paper 8.5%), 40-60 y 60.0% (paper 73.4%), " \
           "61+ y 20.0% (paper 18.1%); female 7, male 3" in text
    assert T.main(["--runs-dir", str(runs), "--out", str(out), "--fig4", "ct_hvgg", "--labels", str(other)]) == 0
    assert "2 images" in (out / "tables.md").read_text()
