"""Table 1 (MAE with and without sex per method) from run directories (boneage.runs layout)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from boneage.analysis import roi_tables
from boneage.analysis.roi_tables import METHODS, missing_runs, result_run, table1, to_markdown
from boneage.runs import RunError

PAPER_VALUES = Path(__file__).with_name("paper_values.yaml")
_clock = iter(range(1_000_000))


def _run(root: Path, exp: str, stage: str = "fit", source: str | None = None, mae: float | None = None,
         truth: bool = True) -> str:
    """A run directory as the CLI leaves it: run.json, metrics.csv, predictions.csv (test/predict)."""
    t = next(_clock)
    rid = f"{'' if stage == 'fit' else stage + '-'}20260101-{t:06d}-abcd"
    d = root / exp / rid
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"id": rid, "experiment": exp, "stage": stage, "created_ts": 1e9 + t,
                                            "source_run": source}))
    rows = [{"epoch": 0, "step": 10, "val/mae": 9.0, "test/mae": float("nan")}]
    if mae is not None:
        rows.append({"epoch": 0, "step": 10, "val/mae": float("nan"), "test/mae": mae})
    pd.DataFrame(rows).to_csv(d / "metrics.csv", index=False)
    if stage in ("test", "predict"):
        preds = {"pred_years": [50.0]} | ({"true_years": [51.0]} if truth else {})
        pd.DataFrame(preds).to_csv(d / "predictions.csv", index=False)
    return rid


def test_table_takes_the_newest_test_of_the_newest_fit_run(tmp_path):
    old = _run(tmp_path, "roi_vgg19_scinti")
    _run(tmp_path, "roi_vgg19_scinti", "test", old, mae=9.9)
    fit = _run(tmp_path, "roi_vgg19_scinti")
    _run(tmp_path, "roi_vgg19_scinti", "test", fit, mae=8.5)
    _run(tmp_path, "roi_vgg19_scinti", "test", fit, mae=8.0)  # re-tested: the newest test counts
    nosex = _run(tmp_path, "roi_vgg19_nosex_scinti")
    _run(tmp_path, "roi_vgg19_nosex_scinti", "test", nosex, mae=8.3)
    reg = _run(tmp_path, "roi_regressor_scinti")
    _run(tmp_path, "roi_regressor_scinti", "test", reg, mae=3.35)
    table = table1(tmp_path, paper=True).set_index("Method")
    assert table.loc["VGG19", "MAE with sex"] == 8.0
    assert table.loc["VGG19", "MAE without sex"] == 8.3
    assert table.loc["Proposed (ROI + InceptionV3)", "MAE with sex"] == 3.35
    assert math.isnan(table.loc["ResNet50", "MAE with sex"])
    assert len(table) == len(METHODS)
    missing = missing_runs(tmp_path)
    assert "roi_resnet50_scinti" in missing and "roi_vgg19_scinti" not in missing


def test_paper_columns_are_the_papers_table_1(tmp_path):
    """The --paper columns beside each method's two experiments are the MAEs tests/paper_values.yaml
    records for those experiments (paper 004, Table 1), every cell."""
    (reported,) = [r for r in yaml.safe_load(PAPER_VALUES.read_text())["results"]
                   if str(r["paper"]) == "004" and r["metric"] == "test/mae"]
    paper = reported["values"]
    table = table1(tmp_path, paper=True).set_index("Method")
    for m in METHODS:
        cells = (table.loc[m.name, "paper with sex"], table.loc[m.name, "paper without sex"])
        assert cells == (paper[m.with_sex], paper[m.without_sex]), m.name
    assert {e for m in METHODS for e in (m.with_sex, m.without_sex)} == set(paper)  # no method left out


def test_a_predict_run_between_test_runs_does_not_break_the_table(tmp_path):
    fit = _run(tmp_path, "roi_xception_scinti")
    tested = _run(tmp_path, "roi_xception_scinti", "test", fit, mae=4.49)
    _run(tmp_path, "roi_xception_scinti", "predict", fit, truth=False)  # newer, no true ages, no test/mae
    assert result_run(tmp_path, "roi_xception_scinti").id == tested
    assert table1(tmp_path).set_index("Method").loc["Xception", "MAE with sex"] == 4.49


def test_an_untested_newest_fit_run_is_reported_not_hidden(tmp_path, capsys):
    old = _run(tmp_path, "roi_resnet50_scinti")
    _run(tmp_path, "roi_resnet50_scinti", "test", old, mae=7.4)
    new = _run(tmp_path, "roi_resnet50_scinti")  # trained again, not yet tested
    assert math.isnan(table1(tmp_path).set_index("Method").loc["ResNet50", "MAE with sex"])
    assert roi_tables.main(["--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"roi_resnet50_scinti/{new} has no test run yet" in out and f"--run {new} --ckpt_path best" in out
    # the older fit run, named, still gives its result
    assert roi_tables.main(["--runs-dir", str(tmp_path), "--run", f"roi_resnet50_scinti/{old}"]) == 0
    assert "| ResNet50 | 7.40 | - |" in capsys.readouterr().out


def test_named_runs_test_or_fit_id_or_directory(tmp_path, capsys):
    fit = _run(tmp_path, "roi_mivgg16_scinti")
    first = _run(tmp_path, "roi_mivgg16_scinti", "test", fit, mae=3.6)
    _run(tmp_path, "roi_mivgg16_scinti", "test", fit, mae=3.4)
    assert result_run(tmp_path, "roi_mivgg16_scinti", first).id == first
    assert roi_tables.main(["--runs-dir", str(tmp_path), "--run", str(tmp_path / "roi_mivgg16_scinti" / first)]) == 0
    assert "| Multiple inputs VGG16 | 3.60 | - |" in capsys.readouterr().out
    assert roi_tables.main(["--runs-dir", str(tmp_path), "--run", f"roi_mivgg16_scinti/{fit}"]) == 0
    assert "| Multiple inputs VGG16 | 3.40 | - |" in capsys.readouterr().out
    # a name that does not exist is one clear line and exit code 2, not a table with "-"
    assert roi_tables.main(["--runs-dir", str(tmp_path), "--run", "roi_mivgg16_scinti/nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no fit run 'nope'" in err and "\n" not in err
    assert roi_tables.main(["--runs-dir", str(tmp_path), "--run", "vgg/x"]) == 2
    assert "not an experiment of Table 1" in capsys.readouterr().err


def test_a_predict_run_named_as_a_result_is_refused(tmp_path):
    fit = _run(tmp_path, "roi_vgg19_scinti")
    pred = _run(tmp_path, "roi_vgg19_scinti", "predict", fit, truth=False)
    with pytest.raises(RunError, match="is a predict run"):
        result_run(tmp_path, "roi_vgg19_scinti", str(tmp_path / "roi_vgg19_scinti" / pred))


def test_no_runs_at_all_lists_every_experiment(tmp_path, capsys):
    assert roi_tables.main(["--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "not yet tested (10)" in out and "no fit run of 'roi_vgg19_scinti'" in out


def test_markdown_and_cli(tmp_path, capsys):
    fit = _run(tmp_path, "roi_xception_scinti")
    test = _run(tmp_path, "roi_xception_scinti", "test", fit, mae=4.4912)
    md = to_markdown(table1(tmp_path))
    assert "| Xception | 4.49 | - |" in md
    out = tmp_path / "t" / "table1.md"
    assert roi_tables.main(["--runs-dir", str(tmp_path), "--out", str(out)]) == 0
    assert out.read_text() == md
    printed = capsys.readouterr().out
    assert "not yet tested (9)" in printed
    assert f"roi_xception_scinti: roi_xception_scinti/{test} (fit run {fit})" in printed


def test_cli_prints_phantom_noise_floor(tmp_path, capsys):
    from boneage.phantoms.common import PhantomMetadata

    PhantomMetadata(generator="scintigraphy", n=10, seed=0, label_noise_sigma=2.0, units="years",
                    label_file="labels.csv").write(tmp_path)
    roi_tables.main(["--runs-dir", str(tmp_path / "runs"), "--data", str(tmp_path)])
    assert "noise floor MAE 1.60 years" in capsys.readouterr().out
