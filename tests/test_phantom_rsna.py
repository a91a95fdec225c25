"""The RSNA hand phantom: real layout, known noise floor, age visible the way it is on films."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from scipy import ndimage

from boneage.phantoms import rsna
from boneage.phantoms.cli import main as phantom_cli


def test_writes_rsna_layout_with_noise_floor(tmp_path):
    phantom_cli(["rsna", "--out", str(tmp_path), "--n", "12", "--seed", "3", "--size", "96", "--sigma", "8"])
    table = pd.read_csv(tmp_path / "boneage-training-dataset.csv")
    assert list(table.columns) == ["id", "boneage", "male"]
    assert table["male"].dtype == bool and table["boneage"].between(1, 228).all()
    assert all((tmp_path / "boneage-training-dataset" / f"{i}.png").is_file() for i in table["id"])
    meta = json.loads((tmp_path / "phantom.json").read_text())
    assert meta["units"] == "months"
    assert math.isclose(meta["noise_floor_mae"], meta["label_noise_sigma"] * math.sqrt(2 / math.pi))
    assert meta["label_noise_sigma"] >= 8.0


def test_deterministic_by_seed(tmp_path):
    a = rsna.render(tmp_path / "a", n=4, seed=7, size=64, progress_bar=False)
    b = rsna.render(tmp_path / "b", n=4, seed=7, size=64, progress_bar=False)
    for name in ("boneage-training-dataset.csv", "phantom_truth.csv"):
        assert (a / name).read_text() == (b / name).read_text()
    png = sorted((a / "boneage-training-dataset").iterdir())[0].name
    assert (a / "boneage-training-dataset" / png).read_bytes() == (b / "boneage-training-dataset" / png).read_bytes()


def test_label_noise_matches_sigma(tmp_path):
    root = rsna.render(tmp_path, n=400, seed=0, size=32, label_noise_sigma=10.0, progress_bar=False)
    labels = pd.read_csv(root / "boneage-training-dataset.csv")
    truth = pd.read_csv(root / "phantom_truth.csv")
    inner = truth["true_boneage"].between(40, 190)  # away from the clipped range ends
    err = labels["boneage"][inner] - truth["true_boneage"][inner]
    assert abs(err.std() - 10.0) < 1.5 and abs(err.mean()) < 1.5


def _carpal_count(maturity: float) -> int:
    img = rsna.render_hand(maturity, np.random.default_rng(0), height=384, nuisance=False)
    h, w = img.shape
    wrist = img[int(0.55 * h):int(0.70 * h), int(0.30 * w):int(0.72 * w)] > 0.6
    return ndimage.label(wrist)[1]


def test_carpals_appear_with_age_and_girls_mature_earlier():
    counts = [_carpal_count(m) for m in (1, 40, 80, 150)]
    assert counts == sorted(counts) and counts[-1] >= counts[0] + 4
    # same bone-age label, same pose: the girl's hand shows more (or as many) ossified carpals
    girl = _carpal_count(60 * rsna.tempo(male=False))
    boy = _carpal_count(60 * rsna.tempo(male=True))
    assert girl > boy


def test_growth_plates_close_with_maturity():
    """The dark growth-plate gap of the radius is present in children and gone in adults."""
    def gap_depth(m: float) -> float:
        img = rsna.render_hand(m, np.random.default_rng(0), height=384, nuisance=False)
        column = img[int(0.70 * 384):int(0.80 * 384), int(0.42 * 384 * 0.8)]
        return float(column.max() - column[np.argmax(column):].min())
    assert gap_depth(100) > gap_depth(228) + 0.2
