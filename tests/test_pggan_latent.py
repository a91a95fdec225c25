"""Latent-space analysis: LASSO recovers a planted age direction; neighbours; aging walk; control."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from boneage.analysis.latent import (
    age_direction,
    aging_walk,
    control_summary,
    fit_lasso,
    interpolate_latents,
    lasso_figure,
    loess,
    move_to_age,
    nearest_neighbours,
    neighbour_age_sd,
    walk_figure,
    write_gif,
)


def _planted(n: int = 1500, d: int = 64, noise: float = 3.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d))
    w = np.zeros(d)
    w[[3, 10, 20, 41, 60]] = [12.0, -8.0, 6.0, 5.0, -4.0]  # months per latent unit
    ages = 120.0 + z @ w + rng.normal(0, noise, n)
    return z, ages, w


def test_lasso_recovers_a_planted_linear_age_direction(tmp_path):
    z, ages, w = _planted()
    res = fit_lasso(z, ages, cv=10, seed=0)
    cosine = res.coef @ w / (np.linalg.norm(res.coef) * np.linalg.norm(w))
    assert cosine > 0.99
    assert res.intercept == pytest.approx(120.0, abs=1.0)
    # held-out error is near the planted noise floor 3 * sqrt(2/pi) = 2.39 months
    assert res.summary["test_abs_error_mean"] < 1.3 * 3.0 * np.sqrt(2 / np.pi)
    assert abs(res.summary["train_abs_error_mean"] - res.summary["test_abs_error_mean"]) < 0.5
    # the sparse penalty drops most of the 59 unused dimensions
    assert res.summary["nonzero_coefficients"] < 40
    assert lasso_figure(res, tmp_path / "lasso.png").stat().st_size > 0


def test_lasso_finds_nothing_in_pure_noise():
    rng = np.random.default_rng(1)
    res = fit_lasso(rng.standard_normal((400, 32)), rng.normal(120, 30, 400), cv=10)
    assert res.summary["test_r2"] < 0.05


def test_nearest_neighbours_find_planted_copies_and_age_spread():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((50, 1, 8, 8))
    queries = reference[[7, 21]] + 0.01 * rng.standard_normal((2, 1, 8, 8))
    idx, dist = nearest_neighbours(queries, reference, k=3)
    assert idx[:, 0].tolist() == [7, 21]
    assert (np.diff(dist, axis=1) >= 0).all()
    ages = np.arange(50, dtype=float)
    sd = neighbour_age_sd(np.array([[1, 2, 3], [10, 20, 30]]), ages)
    assert sd.tolist() == pytest.approx([1.0, 10.0])


def test_aging_walk_steps_about_two_years_to_nearby_latents():
    z, _, w = _planted(n=3000, noise=0.0)
    ages = 120.0 + 3.5 * z @ w  # spread of ~5 years, so there are young and old latents
    path = aging_walk(z, ages, start_range=(36, 48), step=24, tolerance=6, max_steps=6)
    a = ages[path]
    assert 36 <= a[0] <= 48
    assert len(path) >= 4
    assert np.all(np.abs(np.diff(a) - 24) <= 6)
    # each step goes to the nearest qualifying latent
    for i in range(1, len(path)):
        cand = [j for j in np.flatnonzero(np.abs(ages - (a[i - 1] + 24)) <= 6) if j not in path[:i]]
        dists = np.linalg.norm(z[cand] - z[path[i - 1]], axis=1)
        assert np.linalg.norm(z[path[i]] - z[path[i - 1]]) == pytest.approx(dists.min())
    with pytest.raises(ValueError, match="no latent has a predicted age"):
        aging_walk(z, ages, start_range=(-100, -90))


def test_interpolation_animation_and_trend(tmp_path):
    keys = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, 2.0]])
    frames, pos = interpolate_latents(keys, frames_per_step=4)
    assert len(frames) == 9 and pos.tolist() == [0, 4, 8]
    assert np.allclose(frames[pos], keys)
    assert np.allclose(frames[2], [0.5, 1.0])
    gif = write_gif(np.stack([np.full((8, 8), v, np.uint8) for v in (0, 128, 255)]), tmp_path / "walk.gif")
    with Image.open(gif) as im:
        assert im.n_frames == 3
    x = np.arange(40.0)
    y = 2 * x + 5
    assert np.allclose(loess(x, y), y)  # LOESS reproduces a line exactly
    noisy = y + np.random.default_rng(0).normal(0, 5, 40)
    assert np.abs(loess(x, noisy) - y).mean() < np.abs(noisy - y).mean()
    assert walk_figure(noisy, pos, tmp_path / "walk.png").stat().st_size > 0


def test_move_to_age_reaches_target_under_the_linear_model():
    z, ages, w = _planted(n=600, noise=1.0)
    res = fit_lasso(z, ages, cv=5)
    targets = np.linspace(40, 200, 20)
    moved = move_to_age(z[:20], res.coef, res.intercept, targets)
    assert np.allclose(res.predict(moved), targets)
    # the planted age function follows the target closely
    achieved = 120 + moved @ w
    summary = control_summary(targets, achieved)
    assert summary["pearson_r"] > 0.99 and summary["mae"] < 5
    d = age_direction(res.coef)
    assert np.linalg.norm(d) == pytest.approx(1.0)
