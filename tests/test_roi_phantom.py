"""Scintigraphy phantom: format, balance, determinism, and age visible only at full resolution."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage.phantoms import cli
from boneage.phantoms.scintigraphy import render

W, H = 144, 480


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("scinti")
    render(root, n=48, seed=1, width=W, height=H, progress=False)
    return root


def test_format_and_balance(phantom):
    labels = pd.read_csv(phantom / "labels.csv")
    assert list(labels.columns) == ["image", "age_years", "sex"]
    assert set(labels.sex) == {"F", "M"} and (labels.sex == "F").sum() == 24
    truth = pd.read_csv(phantom / "phantom_truth.csv")
    assert truth.true_age.between(40, 80).all()
    groups = np.digitize(truth.true_age, [50, 60, 70])
    assert np.bincount(groups).tolist() == [12, 12, 12, 12]
    for g in range(4):  # each age group holds both sexes equally
        assert (truth.sex[groups == g] == "F").sum() == 6
    img = np.array(Image.open(phantom / labels.image[0]))
    assert img.shape == (H, W) and img.dtype == np.uint8
    meta = json.loads((phantom / "phantom.json").read_text())
    assert meta["units"] == "years" and meta["noise_floor_mae"] == pytest.approx(2.0 * np.sqrt(2 / np.pi))
    # the age region is the posterior (right-hand) lumbar spine, near the centre of the body
    assert (truth.roi_x0 >= W // 2).all() and (truth.roi_x1 <= W).all()
    centre = (truth.roi_y0 + truth.roi_y1) / 2 / H
    assert centre.between(0.3, 0.6).all()
    # label noise matches the written sigma roughly
    assert np.std(truth.age_years - truth.true_age) == pytest.approx(2.0, rel=0.35)


def test_deterministic_by_seed(tmp_path):
    def images(out, seed):
        render(out, n=3, seed=seed, width=64, height=200, progress=False)
        return [np.array(Image.open(out / f"images/scan_{i:05d}.png")) for i in range(3)]

    a, b, c = images(tmp_path / "a", 5), images(tmp_path / "b", 5), images(tmp_path / "c", 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert (tmp_path / "a/labels.csv").read_text() == (tmp_path / "b/labels.csv").read_text()


def _stripe_energy(a: np.ndarray) -> float:
    a = a.astype(np.float64)
    return float(np.abs(a[1:-1] - (a[:-2] + a[2:]) / 2).mean())


def test_age_texture_needs_full_resolution(phantom):
    """Stripe energy in the true region tracks age at full resolution, much less after the
    250x750-style downsizing (factor 4 in height), and not at all in the anterior view."""
    truth = pd.read_csv(phantom / "phantom_truth.csv")
    full, small, anterior = [], [], []
    for _, r in truth.iterrows():
        im = np.array(Image.open(phantom / r.image)).astype(np.float32)
        q = (r.roi_x1 - r.roi_x0) // 4
        full.append(_stripe_energy(im[r.roi_y0:r.roi_y1, r.roi_x0 + q:r.roi_x1 - q]))
        anterior.append(_stripe_energy(im[r.roi_y0:r.roi_y1, r.roi_x0 + q - W // 2:r.roi_x1 - q - W // 2]))
        sm = cv2.resize(im, (W * 250 // 900, H // 4), interpolation=cv2.INTER_AREA)
        y0, y1 = r.roi_y0 // 4, -(-r.roi_y1 // 4)
        x0, x1 = int(r.roi_x0 * 250 / 900) + 1, int(np.ceil(r.roi_x1 * 250 / 900)) - 1
        small.append(_stripe_energy(sm[y0:y1, x0:x1]))
    corr = {k: np.corrcoef(v, truth.true_age)[0, 1] for k, v in
            {"full": full, "small": small, "anterior": anterior}.items()}
    assert corr["full"] > 0.75
    assert corr["small"] < corr["full"] - 0.2
    assert abs(corr["anterior"]) < 0.4


def test_cli_subcommand(tmp_path):
    assert "scintigraphy" in cli.generators()
    cli.main(["scintigraphy", "--out", str(tmp_path), "--n", "2", "--width", "64", "--height", "200"])
    assert len(pd.read_csv(tmp_path / "labels.csv")) == 2


def test_too_small_raises(tmp_path):
    with pytest.raises(ValueError, match="at least 32 x 96"):
        render(tmp_path, n=1, width=16, height=50, progress=False)
