"""Whole-body CT phantom: format, determinism, age distribution and where age shows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage.phantoms import wholebody_ct as W
from boneage.phantoms.cli import main as phantom_cli


def test_cli_writes_generic_hospital_format_deterministically(tmp_path):
    for d in ("a", "b"):
        phantom_cli(["wholebody_ct", "--out", str(tmp_path / d), "--n", "12", "--seed", "3",
                     "--height", "200", "--width", "60"])
    labels = pd.read_csv(tmp_path / "a" / "labels.csv")
    assert list(labels.columns) == ["image", "age_years", "sex"] and len(labels) == 12
    assert set(labels["sex"]) <= {"F", "M"} and labels["age_years"].min() >= 0
    img = Image.open(tmp_path / "a" / labels["image"][0])
    assert img.mode == "L" and img.size == (60, 200)  # tall grayscale
    assert labels.equals(pd.read_csv(tmp_path / "b" / "labels.csv"))
    for name in labels["image"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    meta = json.loads((tmp_path / "a" / "phantom.json").read_text())
    assert meta["units"] == "years" and meta["noise_floor_mae"] == pytest.approx(2.0 * np.sqrt(2 / np.pi))
    truth = pd.read_csv(tmp_path / "a" / "phantom_truth.csv")
    noise = labels["age_years"] - truth["true_age_years"]
    assert 0.5 < noise.abs().mean() < 3.5  # labels carry the configured noise


def test_ages_and_sexes_are_distributed_like_the_paper():
    rng = np.random.default_rng(0)
    ages = W.sample_ages(20000, rng)
    assert ages.min() >= 0.67 and ages.max() <= 87.0
    assert np.mean((ages >= 40) & (ages <= 60)) == pytest.approx(0.734, abs=0.015)
    assert np.mean(ages < 40) == pytest.approx(0.085, abs=0.01)
    labels = pd.read_csv(W.render(_tmp := __import__("tempfile").mkdtemp(), n=60, seed=1, height=64, width=32,
                                  progress=False))
    assert 0.65 < (labels["sex"] == "F").mean() < 0.97  # ~83% female


def _bone_signal(img: np.ndarray) -> float:
    return float(np.clip(img - np.median(img), 0.0, None).sum())  # projected bone above background


def test_growth_then_loss_and_ageing_stronger_in_the_upper_body():
    def render(age):
        img, truth = W.render_one(age, False, 600, 180, np.random.default_rng(7))  # same nuisance
        return img, truth

    child, t_child = render(5.0)
    adult, t_adult = render(35.0)
    old, t_old = render(85.0)
    assert t_child["stature_cm"] < t_adult["stature_cm"]  # growth
    assert t_child["plate_open"] == 1.0 and t_adult["plate_open"] == 0.0
    assert t_old["height_loss_cm"] > 2.0 and t_adult["height_loss_cm"] == 0.0  # vertebral height loss
    assert t_old["cortical_thinning"] > 0.1
    h = adult.shape[0] // 2
    up_loss = 1 - _bone_signal(old[:h]) / _bone_signal(adult[:h])
    low_loss = 1 - _bone_signal(old[h:]) / _bone_signal(adult[h:])
    assert up_loss > 0.1  # density loss and thinning show in the image
    assert up_loss > 1.4 * low_loss  # the age signal is stronger in the upper body


def test_bad_sizes_raise(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        W.render(tmp_path, n=2, height=10, width=10, progress=False)
