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
    run = sorted((tmp_path / "runs" / "demo_rsna").glob("version_*"))[-1]
    summary = json.loads((run / "demo_summary.json").read_text())
    mae, floor = float(summary["test MAE (months)"]), float(summary["phantom noise floor (months)"])
    assert abs(float(summary["MAE / floor"]) - mae / floor) < 0.01
    assert (run / "predictions.csv").is_file()
    # fit and test ran in one process: each has its own run directory, the learning curve is kept
    fit_run = sorted((tmp_path / "runs" / "demo_rsna").glob("version_*"))[-2]
    curve = pd.read_csv(fit_run / "metrics.csv")
    assert {"train/loss", "val/mae"} <= set(curve.columns) and curve["val/mae"].notna().any()
    assert "test/mae" in pd.read_csv(run / "metrics.csv").columns
