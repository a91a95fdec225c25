"""Tongji-like hand radiograph phantom: a second population in the generic hospital CSV format.

Stands in for the TJ-Net paper's Tongji Hospital data (1385 hands, 0-22 years, labels in years,
768 female / 617 male, hands rotated upwards, private text masked). Written as::

    OUT/labels.csv                    image,age_years,sex      (sex "F"/"M", image relative to OUT)
    OUT/images/<sex>/<year>/tj_<n>.png 16-bit grayscale (a share 8-bit), sizes varying
    OUT/phantom.json                  label noise sigma and floor (years)
    OUT/phantom_truth.csv             image,true_age_years,sex

It reuses the RSNA phantom's hand renderer (:func:`boneage.phantoms.rsna.render_hand`: carpal
order, epiphysis appearance and fusion, growth) with what makes it a *different* population:

- maturation tempo: appearance follows ``maturity = bone_age * tempo`` with ``TEMPO`` 1.06 (boys)
  and 1.16 (girls) instead of RSNA's 1.00 / 1.12, so the same label looks older than in RSNA;
- age range 0-22 years, roughly uniform (the hospital sees all ages), with more girls (55 %);
  after full maturity (about 19-20 y of maturity) the hand no longer changes, like real adults;
- acquisition: brighter soft tissue and background (a different generator/plate), stronger
  gamma, more noise, larger films (600 px), 16-bit PNGs, a black rectangle where patient text
  was masked, and small rotations only (the paper rotated hands upwards).

The written label is the true bone age plus N(0, sigma^2) years, clipped to [0, 22].
Not a claim about clinical accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.phantoms.common import PhantomMetadata, noisy_labels, progress, save_gray_png
from boneage.phantoms.rsna import render_hand

NAME = "tongji"
LABEL_FILE = "labels.csv"
TEMPO = {"M": 1.06, "F": 1.16}
MAX_AGE_YEARS = 22.0


def _acquire(hand: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Second-site acquisition on top of the renderer's own nuisance."""
    img = 0.10 + 0.85 * hand  # brighter floor (different plate / processing)
    img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.0)
    img = img + rng.normal(0.0, rng.uniform(0.02, 0.05), img.shape)
    h, w = img.shape
    # masked private text: a black bar near the top or bottom edge
    bh, bw = int(h * rng.uniform(0.04, 0.07)), int(w * rng.uniform(0.25, 0.45))
    y = int(rng.choice([int(h * 0.02), h - bh - int(h * 0.02)]))
    x = int(rng.uniform(0.05, 0.95 - bw / w) * w)
    img[y:y + bh, x:x + bw] = 0.0
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def render_one(age_years: float, sex: str, rng: np.random.Generator, size: int = 600) -> np.ndarray:
    """One Tongji-like hand for a bone age in years and sex "F"/"M", values in [0, 1]."""
    h = int(size * rng.uniform(0.92, 1.08))
    w = int(h * rng.uniform(0.75, 0.9))
    maturity_months = age_years * 12.0 * TEMPO[sex]
    return _acquire(render_hand(maturity_months, rng, h, w), rng)


def render(out: str | Path, n: int = 400, seed: int = 0, label_noise_sigma: float = 0.5,
           size: int = 600, female_fraction: float = 0.55, eight_bit_fraction: float = 0.2,
           progress_bar: bool = True) -> Path:
    """Write ``n`` Tongji-like hands into ``out`` (generic hospital CSV format); return ``out``.

    Args:
        label_noise_sigma: label noise in years (0.5 y, about the inter-reader spread).
        size: nominal image height in pixels (varies +-8 %).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ages = rng.uniform(0.0, MAX_AGE_YEARS, n)
    sexes = np.where(rng.random(n) < female_fraction, "F", "M")
    labels = noisy_labels(ages, label_noise_sigma, rng, 0.0, MAX_AGE_YEARS)
    rel_paths = []
    for i in progress(range(n), n, "rendering Tongji phantom", progress_bar):
        r = np.random.default_rng([seed, i])
        rel = Path("images") / sexes[i] / f"{int(ages[i]):02d}" / f"tj_{i:05d}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        save_gray_png(out / rel, render_one(float(ages[i]), str(sexes[i]), r, size),
                      8 if r.random() < eight_bit_fraction else 16)
        rel_paths.append(rel.as_posix())
    pd.DataFrame({"image": rel_paths, "age_years": np.round(labels, 2), "sex": sexes}).to_csv(
        out / LABEL_FILE, index=False)
    pd.DataFrame({"image": rel_paths, "true_age_years": ages, "sex": sexes}).to_csv(
        out / "phantom_truth.csv", index=False)
    PhantomMetadata(NAME, n, seed, label_noise_sigma, "years", LABEL_FILE,
                    extra={"size": size, "tempo": TEMPO, "age_range_years": [0.0, MAX_AGE_YEARS]}).write(out)
    if progress_bar:
        print(f"wrote {n} Tongji-like phantom hands to {out}/{LABEL_FILE} "
              f"(label noise sigma {label_noise_sigma:.2f} years)")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (labels.csv + images/)")
    parser.add_argument("--n", type=int, default=400, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma", type=float, default=0.5, help="label noise sigma in years")
    parser.add_argument("--size", type=int, default=600, help="image height in pixels (varies +-8%%)")


def main(args: argparse.Namespace) -> None:
    render(args.out, args.n, args.seed, args.sigma, args.size)
