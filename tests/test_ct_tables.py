"""Tables 1-4 of the whole-body CT paper from synthetic predictions.csv files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

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
    with pytest.raises(FileNotFoundError, match="make eval"):
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


def test_command_line_writes_all_tables_from_runs(tmp_path, capsys):
    logs = tmp_path / "lightning_logs"
    rng = np.random.default_rng(0)
    ages = rng.uniform(1, 87, 40)
    sex = np.where(rng.random(40) < 0.8, "F", "M")
    for exp, err in [("ct_vgg16", 8.0), ("ct_googlenet", 5.0), ("ct_resnet", 5.5), ("ct_hvgg", 4.0),
                     ("ct_early", 6.0), ("ct_up", 4.0), ("ct_low", 5.0)]:
        _write(logs / exp / "version_0" / "predictions.csv", ages, ages + rng.normal(0, 1, 40), sex)
        _write(logs / exp / "version_1" / "predictions.csv", ages,
               ages + err * np.sign(rng.normal(size=40)), sex)
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"image": ["a.png"] * 50, "age_years": 1.0, "sex": ["F"] * 40 + ["M"] * 10}).to_csv(
        data / "labels.csv", index=False)
    (data / "phantom.json").write_text(json.dumps({"noise_floor_mae": 2.0}))
    out = tmp_path / "reports"
    rc = T.main(["--logs", str(logs), "--out", str(out), "--labels", str(data / "labels.csv"),
                 "--model", "Fine-tuned VGGNet (A)=ct_vgg16",
                 "--model", "Fine-tuned GoogLeNet (B)=ct_googlenet",
                 "--model", "Fine-tuned ResNet (C)=ct_resnet", "--model", "Early fusion=ct_early",
                 "--model", "Ours=ct_hvgg", "--late", "A,B,C", "--table1", "Fine-tuned VGGNet (A),Ours",
                 "--upper", "ct_up", "--lower", "ct_low", "--sex", "ct_hvgg"])
    assert rc == 0
    t2 = pd.read_csv(out / "table2.csv").set_index("Model")
    assert t2.loc["Fine-tuned VGGNet (A)", "MAE (years)"] == pytest.approx(8.0)  # newest version used
    assert t2.loc["Ours", "MAE / floor"] == pytest.approx(2.0)
    assert "Late fusion of (A), (B), and (C)" in t2.index
    assert pd.read_csv(out / "table4.csv")["Number of data"].tolist() == [40, 10]
    assert (out / "table1.csv").is_file() and (out / "table3.csv").is_file()
    assert "| Model | MAE (years)" in (out / "tables.md").read_text()
    assert "wrote table1, table2, table3, table4" in capsys.readouterr().out
