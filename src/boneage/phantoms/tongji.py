"""Tongji-like hand radiograph phantom: a second population in the generic hospital CSV format.

Stands in for the TJ-Net paper's Tongji Hospital data (1385 hands, 0-22 years, labels in years,
768 female / 617 male, hands rotated upwards, private text masked). Written as::

    OUT/labels.csv                    image,age_years,sex      (sex "F"/"M", image relative to OUT)
    OUT/images/<sex>/<year>/tj_<n>.png 16-bit grayscale (a share 8-bit), sizes varying
                                      (tj_<n>.dcm with --format dicom: see below)
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

``--format dicom`` writes the same hands (same seed, same pixels) as ``tj_<n>.dcm``, listed in
``labels.csv``: DX (MONOCHROME2) and, for every third image, CR stored MONOCHROME1, 12 bits stored
in 16, like the RSNA phantom's files but with this site's own rescale (slope 2, intercept -1000;
chose another scaling than the RSNA phantom's so a reader that assumes one vendor's is caught) and a
window spanning the stored range, so the file's own window ("dicom") decodes to the 8-bit PNG of
the same sample within one grey level. Patient ids are synthetic (``PHANTOM-<n + 1>``), the sex is
in PatientSex; no PatientAge (the label is a bone age, not the age).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.phantoms.common import (
    CR_STORAGE,
    DX_STORAGE,
    PhantomMetadata,
    full_range_window,
    noisy_labels,
    progress,
    save_dicom,
    save_gray_png,
)
from boneage.phantoms.rsna import DICOM_BITS, render_hand

NAME = "tongji"
LABEL_FILE = "labels.csv"
TEMPO = {"M": 1.06, "F": 1.16}
MAX_AGE_YEARS = 22.0
DICOM_RESCALE = (2.0, -1000.0)  # --format dicom: (slope, intercept) of this site's files


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
           progress_bar: bool = True, format: str = "png") -> Path:
    """Write ``n`` Tongji-like hands into ``out`` (generic hospital CSV format); return ``out``.

    Args:
        label_noise_sigma: label noise in years (0.5 y, about the inter-reader spread).
        size: nominal image height in pixels (varies +-8 %).
        format: "png" (16-bit, an ``eight_bit_fraction`` 8-bit) or "dicom" (see the module
            docstring); the same seed draws the same hands in both.
    """
    if format not in ("png", "dicom"):
        raise ValueError(f"format must be 'png' or 'dicom', got {format!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ages = rng.uniform(0.0, MAX_AGE_YEARS, n)
    sexes = np.where(rng.random(n) < female_fraction, "F", "M")
    labels = noisy_labels(ages, label_noise_sigma, rng, 0.0, MAX_AGE_YEARS)
    rel_paths, suffix = [], "dcm" if format == "dicom" else "png"
    for i in progress(range(n), n, "rendering Tongji phantom", progress_bar):
        r = np.random.default_rng([seed, i])
        rel = Path("images") / sexes[i] / f"{int(ages[i]):02d}" / f"tj_{i:05d}.{suffix}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        img = render_one(float(ages[i]), str(sexes[i]), r, size)
        if format == "dicom":
            save_hand_dicom(out / rel, img, i, str(sexes[i]), seed)
        else:
            save_gray_png(out / rel, img, 8 if r.random() < eight_bit_fraction else 16)
        rel_paths.append(rel.as_posix())
    pd.DataFrame({"image": rel_paths, "age_years": np.round(labels, 2), "sex": sexes}).to_csv(
        out / LABEL_FILE, index=False)
    pd.DataFrame({"image": rel_paths, "true_age_years": ages, "sex": sexes}).to_csv(
        out / "phantom_truth.csv", index=False)
    PhantomMetadata(NAME, n, seed, label_noise_sigma, "years", LABEL_FILE,
                    extra={"size": size, "tempo": TEMPO, "age_range_years": [0.0, MAX_AGE_YEARS],
                           "format": format}).write(out)
    if progress_bar:
        print(f"wrote {n} Tongji-like phantom hands to {out}/{LABEL_FILE} "
              f"(label noise sigma {label_noise_sigma:.2f} years)")
    return out


def save_hand_dicom(path: str | Path, image: np.ndarray, index: int, sex: str, seed: int = 0) -> None:
    """Hand ``index`` (values in [0, 1]) as a DX (MONOCHROME2) or, for every third index, CR
    (MONOCHROME1) file, 12 bits stored, with this site's rescale and a window spanning the stored range."""
    inverted = index % 3 == 0
    stored = np.rint(np.clip(1.0 - image if inverted else image, 0.0, 1.0) * (2 ** DICOM_BITS - 1)).astype(np.uint16)
    save_dicom(path, stored, modality="CR" if inverted else "DX", sop_class=CR_STORAGE if inverted else DX_STORAGE,
               patient_id=f"PHANTOM-{index + 1:04d}", sex=sex, bits_stored=DICOM_BITS,
               photometric="MONOCHROME1" if inverted else "MONOCHROME2", rescale=DICOM_RESCALE,
               window=full_range_window(DICOM_BITS, *DICOM_RESCALE), uid_seed=(NAME, seed, index),
               BodyPartExamined="HAND", RescaleType="US", PresentationIntentType="FOR PRESENTATION",
               ImageType=["DERIVED", "PRIMARY"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (labels.csv + images/)")
    parser.add_argument("--n", type=int, default=400, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma", type=float, default=0.5, help="label noise sigma in years")
    parser.add_argument("--size", type=int, default=600, help="image height in pixels (varies +-8%%)")
    parser.add_argument("--format", choices=("png", "dicom"), default="png",
                        help="png, or dicom: tj_<n>.dcm as DX/CR (a third MONOCHROME1), 12 bits stored")


def main(args: argparse.Namespace) -> None:
    render(args.out, args.n, args.seed, args.sigma, args.size, format=args.format)
