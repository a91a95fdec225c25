"""`make demo` end to end at a tiny size: phantom, fit, test, the printed MAE table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from boneage.demo import main as demo

ROOT = Path(__file__).resolve().parents[1]


def test_demo_prints_the_mae_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    demo(["--n", "60", "--epochs", "1", "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    for row in ("test MAE (months)", "phantom noise floor", "MAE / floor", "MAE of predicting the training mean"):
        assert row in out
    from boneage.runs import find_runs

    (fit, ), (test, ) = (find_runs(tmp_path / "runs", "demo_rsna", stage=s) for s in ("fit", "test"))
    run = test.path
    assert test.info["source_run"] == fit.id  # the test run records which fit run it evaluated
    assert "epoch 1/1" in out  # progress: one line per epoch
    summary = json.loads((run / "demo_summary.json").read_text())
    mae, floor = float(summary["test MAE (months)"]), float(summary["phantom noise floor (months)"])
    assert abs(float(summary["MAE / floor"]) - mae / floor) < 0.01
    assert (run / "predictions.csv").is_file()
    # fit and test ran in one process: each has its own run directory, the learning curve is kept
    fit_run = fit.path
    curve = pd.read_csv(fit_run / "metrics.csv")
    assert {"train/loss", "val/mae"} <= set(curve.columns) and curve["val/mae"].notna().any()
    assert "test/mae" in pd.read_csv(run / "metrics.csv").columns
