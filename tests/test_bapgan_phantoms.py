"""Femur/phalange phantoms: format, determinism, visible ageing, the paper's imbalance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage.phantoms import cli
from boneage.phantoms.bones import PAPER_GROUP_COUNTS, draw_femur, draw_phalange, render, sample_ages


def test_writes_the_hospital_csv_format(tmp_path: Path) -> None:
    csv = render(tmp_path, n=12, seed=3, bone="phalange", progress=False)
    table = pd.read_csv(csv)
    assert list(table.columns) == ["image", "age_years", "sex"]
    assert set(table.sex) <= {"F", "M"}
    assert table.age_years.between(0, 20).all()
    img = Image.open(tmp_path / table.image[0])
    assert img.mode == "L"
    meta = json.loads((tmp_path / "phantom.json").read_text())
    assert meta["units"] == "years" and meta["extra"]["bone"] == "phalange"
    truth = pd.read_csv(tmp_path / "phantom_truth.csv")
    assert (table.age_years - truth.true_age_years).abs().max() < 2.0


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a = pd.read_csv(render(tmp_path / "a", n=4, seed=1, progress=False))
    b = pd.read_csv(render(tmp_path / "b", n=4, seed=1, progress=False))
    pd.testing.assert_frame_equal(a, b)
    ia = np.asarray(Image.open(tmp_path / "a" / a.image[2]))
    ib = np.asarray(Image.open(tmp_path / "b" / b.image[2]))
    assert np.array_equal(ia, ib)


def test_cli_subcommand(tmp_path: Path) -> None:
    assert cli.main(["bones", "--bone", "femur", "--out", str(tmp_path), "--n", "3", "--seed", "0"]) == 0
    assert len(pd.read_csv(tmp_path / "labels.csv")) == 3


def test_growth_plate_closes_with_age() -> None:
    """Along the femur's axis the dark growth plate band is there at 8 y and gone at 19 y."""
    def plate_contrast(age: float) -> float:
        img = draw_femur(age, 128, np.random.default_rng(0))
        column = img[58:80, 60:68].mean(1)   # around the plate (row ~71), near the axis
        return float(np.median(column) - column.min())
    assert plate_contrast(8.0) > plate_contrast(19.0) + 0.1


def test_phalange_cap_appears_with_age() -> None:
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    infant, child = draw_phalange(0.0, 128, rng()), draw_phalange(10.0, 128, rng())
    region = (slice(88, 108), slice(50, 78))   # base of the phalanx, where the cap forms
    assert child[region].mean() > infant[region].mean() + 0.1


def test_paper_age_imbalance() -> None:
    ages = sample_ages(20000, np.random.default_rng(0), "phalange", "paper")
    frac = np.bincount((ages // 4).astype(int), minlength=5) / len(ages)
    counts = np.array(PAPER_GROUP_COUNTS["phalange"], float)
    assert np.allclose(frac, counts / counts.sum(), atol=0.01)
    with pytest.raises(ValueError, match="age_distribution"):
        sample_ages(3, np.random.default_rng(0), "femur", "skewed")
