"""Table 1 (MAE with and without sex per method) from synthetic finished runs."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from boneage.analysis import roi_tables
from boneage.analysis.roi_tables import METHODS, logged_mae, missing_runs, table1, to_markdown


def _run(root: Path, exp: str, version: int, mae: float | None) -> None:
    d = root / exp / f"version_{version}"
    d.mkdir(parents=True)
    rows = [{"epoch": 0, "step": 10, "val/mae": 9.0, "test/mae": float("nan")}]
    if mae is not None:
        rows.append({"epoch": 0, "step": 10, "val/mae": float("nan"), "test/mae": mae})
    pd.DataFrame(rows).to_csv(d / "metrics.csv", index=False)


def test_table_reads_newest_tested_version(tmp_path):
    _run(tmp_path, "roi_vgg19_scinti", 0, 8.5)
    _run(tmp_path, "roi_vgg19_scinti", 1, 8.0)
    _run(tmp_path, "roi_vgg19_scinti", 10, None)  # newest, training only: skipped
    _run(tmp_path, "roi_vgg19_nosex_scinti", 0, 8.3)
    _run(tmp_path, "roi_regressor_scinti", 2, 3.35)
    assert logged_mae(tmp_path, "roi_vgg19_scinti") == 8.0
    table = table1(tmp_path, paper=True).set_index("Method")
    assert table.loc["VGG19", "MAE with sex"] == 8.0
    assert table.loc["VGG19", "MAE without sex"] == 8.3
    assert table.loc["Proposed (ROI + InceptionV3)", "MAE with sex"] == 3.35
    assert math.isnan(table.loc["ResNet50", "MAE with sex"])
    assert table.loc["Xception", "paper without sex"] == 5.24
    assert len(table) == len(METHODS)
    missing = missing_runs(tmp_path)
    assert "roi_resnet50_scinti" in missing and "roi_vgg19_scinti" not in missing


def test_markdown_and_cli(tmp_path, capsys):
    _run(tmp_path, "roi_xception_scinti", 0, 4.4912)
    md = to_markdown(table1(tmp_path))
    assert "| Xception | 4.49 | - |" in md
    out = tmp_path / "t" / "table1.md"
    assert roi_tables.main(["--logs", str(tmp_path), "--out", str(out)]) == 0
    assert out.read_text() == md
    printed = capsys.readouterr().out
    assert "not yet tested (9)" in printed and "roi_xception_scinti," not in printed


def test_cli_prints_phantom_noise_floor(tmp_path, capsys):
    from boneage.phantoms.common import PhantomMetadata

    PhantomMetadata(generator="scintigraphy", n=10, seed=0, label_noise_sigma=2.0, units="years",
                    label_file="labels.csv").write(tmp_path)
    roi_tables.main(["--logs", str(tmp_path / "runs"), "--data", str(tmp_path)])
    assert "noise floor MAE 1.60 years" in capsys.readouterr().out
