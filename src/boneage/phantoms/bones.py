"""Femur / phalange bone crops (BAPGAN data sets) in the generic hospital CSV format.

``boneage-phantom bones --bone femur|phalange --out DIR --n N --seed S [--age-distribution paper]
[--format png|dicom]``

Stands in for the two BAPGAN data sets (Nakazawa et al., ISBI 2022): crops of the distal
femur from left-leg radiographs and of the middle phalanx of the index finger from RSNA hand
radiographs, ages 0-19 years, rotation-corrected. Written as ``labels.csv`` with columns
``image`` (path relative to the CSV's folder), ``age_years``, ``sex`` ("F"/"M"), and 8-bit
grayscale PNGs under ``images/`` (``--format dicom``: DICOM files, see below).

How age shows (the way it does in real images, not a clinical model):

- femur: the distal epiphysis starts as a small ossification centre and widens until it
  spans the metaphysis, the condyles form, the growth plate (a dark band) narrows from about
  12 years and closes by about 18 (a faint physeal scar stays), the patella ossifies from
  about 4 years, bone density rises;
- phalange: the epiphyseal cap of the middle phalanx base appears at 1-3 years, widens to
  the width of the metaphysis by about 12, caps (its edges wrap the metaphysis) at 11-14 and
  fuses at 14-17; the bone widens with age.

Maturity is ``age * 1.08`` for girls (earlier maturation) and ``age`` for boys. Nuisance:
rotation up to 5 degrees (the paper's crops are rotation corrected), scale, shift, exposure,
contrast, noise, crop size. ``--age-distribution paper`` draws the age groups in the papers'
proportions (femur 42/47/56/130/42, phalange 137/1,309/2,514/2,912/293), otherwise ages are
uniform on [0, 20). The written ``age_years`` is the true age plus N(0, sigma^2) noise.

``--format dicom`` writes the same crops (same seed, same pixels) as ``images/<bone>_<n>.dcm``,
listed in ``labels.csv``: modality DX, MONOCHROME2, ImageType DERIVED/SECONDARY (a crop of a
radiograph), 12 bits stored in 16 with a rescale (slope 0.5, intercept 100, as the RSNA phantom's)
and a window spanning the stored range, so the file's own window ("dicom") decodes to the 8-bit PNG
within one grey level. Chose no MONOCHROME1 share because crops are exported from a viewer already
cropped and rotated, where MONOCHROME2 is the norm (the hand phantoms test MONOCHROME1). Patient ids
are synthetic (``PHANTOM-<n + 1>``); PatientSex and PatientAge (the true age in whole years, the
label being a chronological age here) are set.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.phantoms.common import (
    DX_STORAGE,
    TRUTH_FILE,
    PhantomMetadata,
    acquisition,
    capsule,
    ellipse,
    full_range_window,
    noisy_labels,
    save_dicom,
    save_gray_png,
)
from boneage.phantoms.common import (
    progress as _progress,
)
from boneage.phantoms.rsna import DICOM_BITS, DICOM_RESCALE

NAME = "bones"
BONES = ("femur", "phalange")
AGE_GROUPS = ((0, 4), (4, 8), (8, 12), (12, 16), (16, 20))   # [0-3] ... [16-19] in whole years
PAPER_GROUP_COUNTS = {   # images per age group in the paper's data sets (sections 2.1, 2.2)
    "femur": (42, 47, 56, 130, 42),
    "phalange": (137, 1309, 2514, 2912, 293),
}


def _smooth(x: float, lo: float, hi: float) -> float:
    t = min(max((x - lo) / (hi - lo), 0.0), 1.0)
    return t * t * (3.0 - 2.0 * t)


def _coords(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (y, x) coordinates in [0, 1] after a random rotation, scale and shift."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    angle = math.radians(rng.uniform(-5.0, 5.0))
    scale = rng.uniform(0.92, 1.08)
    dy, dx = rng.uniform(-0.04, 0.04, size=2)
    c, s = math.cos(angle), math.sin(angle)
    y0, x0 = yy - 0.5 - dy, xx - 0.5 - dx
    return (c * y0 - s * x0) / scale + 0.5, (s * y0 + c * x0) / scale + 0.5


def draw_femur(maturity: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Distal femur (knee up, joint at the bottom) in [0, 1]."""
    yy, xx = _coords(size, rng)
    S = 1.0  # shapes are drawn in normalised units; `soft` is a fraction of the side
    soft = 1.5 / size
    width = 0.85 + 0.15 * _smooth(maturity, 0, 16)
    tissue = ellipse(yy, xx, 0.5, 0.5, 0.9 * S, 0.46 * S, soft=0.05)
    shaft = capsule(yy, xx, -0.3, 0.5, 0.45, 0.5, 0.12 * width, soft=soft)
    flare = ellipse(yy, xx, 0.47, 0.5, 0.1, 0.25 * width, soft=soft)
    metaphysis = np.maximum(shaft, flare)
    canal = capsule(yy, xx, -0.3, 0.5, 0.3, 0.5, 0.055 * width, soft=4 * soft)
    plate_y = 0.56 + 0.01 * np.sin(xx * 18.0)
    gap = 0.035 * (1.0 - _smooth(maturity, 12.0, 18.0))
    band = np.clip(1.0 - np.abs(yy - plate_y) / max(gap / 2, 1e-4), 0.0, 1.0) if gap > 1e-4 else 0.0
    scar = 0.12 * _smooth(maturity, 16.0, 19.0) * np.clip(1.0 - np.abs(yy - plate_y) / 0.006, 0.0, 1.0)
    grow = _smooth(maturity, 0.0, 14.0)
    ep_w = (0.10 + 0.17 * grow) * width
    ep_h = 0.04 + 0.05 * grow
    epiphysis = ellipse(yy, xx, 0.56 + gap / 2 + ep_h, 0.5, ep_h, ep_w, soft=soft)
    cy = 0.56 + gap / 2 + 1.6 * ep_h
    condyles = (ellipse(yy, xx, cy, 0.5 - 0.55 * ep_w, 0.7 * ep_h, 0.45 * ep_w, soft=soft)
                + ellipse(yy, xx, cy, 0.5 + 0.55 * ep_w, 0.7 * ep_h, 0.45 * ep_w, soft=soft)
                ) * _smooth(maturity, 2.0, 10.0)
    # Fusion: bone bridges the closing plate (without it the curved edges leave a dark lens).
    bridge = ellipse(yy, xx, 0.565, 0.5, 0.04, 0.95 * ep_w, soft=soft) * _smooth(maturity, 13.0, 18.0)
    tibia = ellipse(yy, xx, 1.05, 0.5, 0.1, 0.26 * width, soft=soft)
    patella = ellipse(yy, xx, 0.6, 0.5, 0.06, 0.07, soft=0.02) * _smooth(maturity, 4.0, 8.0)
    density = 0.55 + 0.25 * _smooth(maturity, 0.0, 18.0)
    femur = np.clip(metaphysis * (1.0 - 0.25 * canal), 0, 1)
    if gap > 1e-4:
        femur = femur * (1.0 - np.clip(band * (yy < 0.62), 0, 1))
    bone = np.maximum(np.maximum(femur, np.clip(epiphysis + condyles, 0, 1)), bridge)
    bone = np.maximum(bone, tibia) + 0.15 * patella - scar * metaphysis
    return np.clip(0.15 + 0.15 * tissue + density * np.clip(bone, 0, 1.2), 0.0, 1.0)


def draw_phalange(maturity: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Middle phalanx of the index finger (distal end up, base and cap at the bottom) in [0, 1]."""
    yy, xx = _coords(size, rng)
    soft = 1.5 / size
    width = 0.8 + 0.2 * _smooth(maturity, 0, 16)
    tissue = capsule(yy, xx, -0.2, 0.5, 1.2, 0.5, 0.3, soft=0.05)
    shaft = capsule(yy, xx, 0.22, 0.5, 0.68, 0.5, 0.075 * width, soft=soft)
    head = ellipse(yy, xx, 0.2, 0.5, 0.05, 0.11 * width, soft=soft)
    base = ellipse(yy, xx, 0.71, 0.5, 0.05, 0.13 * width, soft=soft)
    canal = capsule(yy, xx, 0.3, 0.5, 0.62, 0.5, 0.03 * width, soft=4 * soft)
    phalanx = np.clip(np.maximum(np.maximum(shaft, head), base) * (1.0 - 0.2 * canal), 0, 1)
    appear = _smooth(maturity, 0.5, 3.0)
    grow = _smooth(maturity, 1.0, 12.0)
    gap = 0.03 * (1.0 - _smooth(maturity, 14.0, 17.0))
    cap_y = 0.76 + gap / 2 + 0.015
    cap_w = (0.04 + 0.1 * grow) * width
    cap = ellipse(yy, xx, cap_y, 0.5, 0.02 + 0.015 * grow, cap_w, soft=soft) * appear
    wrap = _smooth(maturity, 11.0, 14.0)
    lips = (ellipse(yy, xx, cap_y - 0.025, 0.5 - cap_w * 0.9, 0.02, 0.02, soft=soft)
            + ellipse(yy, xx, cap_y - 0.025, 0.5 + cap_w * 0.9, 0.02, 0.02, soft=soft)) * wrap
    if gap > 1e-4:
        phalanx = phalanx * (1.0 - np.clip(1.0 - np.abs(yy - 0.76) / (gap / 2), 0, 1) * (yy > 0.7))
    neighbours = (ellipse(yy, xx, 1.0, 0.5, 0.08, 0.13 * width, soft=soft)
                  + ellipse(yy, xx, -0.02, 0.5, 0.06, 0.1 * width, soft=soft))
    density = 0.55 + 0.25 * _smooth(maturity, 0.0, 18.0)
    bridge = ellipse(yy, xx, 0.76, 0.5, 0.025, 0.95 * cap_w, soft=soft) * _smooth(maturity, 14.0, 17.0)
    bone = np.clip(np.maximum(phalanx + cap + lips + neighbours, bridge), 0, 1)
    return np.clip(0.12 + 0.2 * tissue + density * bone, 0.0, 1.0)


DRAW = {"femur": draw_femur, "phalange": draw_phalange}
BODY_PART = {"femur": "KNEE", "phalange": "FINGER"}  # DICOM BodyPartExamined (PS3.16 CID 4031)


def sample_ages(n: int, rng: np.random.Generator, bone: str, age_distribution: str) -> np.ndarray:
    """True ages in years: uniform on [0, 20) or the paper's group proportions for ``bone``."""
    if age_distribution == "uniform":
        return rng.uniform(0.0, 20.0, size=n)
    if age_distribution != "paper":
        raise ValueError(f"age_distribution must be 'uniform' or 'paper', got {age_distribution!r}")
    counts = np.asarray(PAPER_GROUP_COUNTS[bone], dtype=float)
    groups = rng.choice(len(AGE_GROUPS), size=n, p=counts / counts.sum())
    lo = np.array([g[0] for g in AGE_GROUPS])[groups]
    return lo + rng.uniform(0.0, 4.0, size=n)


def render(out: str | Path, n: int = 300, seed: int = 0, label_noise_sigma: float = 0.25,
           bone: str = "femur", age_distribution: str = "uniform", size: int = 160,
           progress: bool = True, format: str = "png") -> Path:
    """Write ``n`` crops of ``bone`` with ``labels.csv`` into ``out``; returns the CSV path.

    ``format``: "png" (8-bit) or "dicom" (see the module docstring); the same seed draws the
    same crops in both."""
    if bone not in BONES:
        raise ValueError(f"bone must be one of {BONES}, got {bone!r}")
    if format not in ("png", "dicom"):
        raise ValueError(f"format must be 'png' or 'dicom', got {format!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    show = progress
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ages = sample_ages(n, rng, bone, age_distribution)
    sexes = rng.choice(["F", "M"], size=n)
    labels = noisy_labels(ages, label_noise_sigma, rng, low=0.0, high=19.99)
    rows, truth = [], []
    for i in _progress(range(n), n, f"{bone} phantom", show):
        maturity = float(ages[i]) * (1.08 if sexes[i] == "F" else 1.0)
        side = int(size * rng.uniform(0.9, 1.1))
        image = DRAW[bone](maturity, side, rng)
        image = acquisition(image, rng, noise=0.02)
        if format == "dicom":
            name = f"images/{bone}_{i:05d}.dcm"
            save_crop_dicom(out / name, image, bone, i, str(sexes[i]), float(ages[i]), seed)
        else:
            name = f"images/{bone}_{i:05d}.png"
            save_gray_png(out / name, image)
        rows.append({"image": name, "age_years": round(float(labels[i]), 3), "sex": sexes[i]})
        truth.append({"image": name, "true_age_years": float(ages[i]), "maturity": maturity,
                      "sex": sexes[i], "age_group": min(int(ages[i] // 4), 4)})
    csv = out / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    pd.DataFrame(truth).to_csv(out / TRUTH_FILE, index=False)
    PhantomMetadata(generator=f"{NAME}:{bone}", n=n, seed=seed, label_noise_sigma=label_noise_sigma,
                    units="years", label_file="labels.csv",
                    extra={"bone": bone, "age_distribution": age_distribution, "size": size,
                           "format": format}).write(out)
    if show:
        print(f"wrote {n} {bone} phantom crops to {out}/images and labels to {csv}")
    return csv


def save_crop_dicom(path: str | Path, image: np.ndarray, bone: str, index: int, sex: str, age: float,
                    seed: int = 0) -> None:
    """Crop ``index`` (values in [0, 1]) as a DX MONOCHROME2 file, 12 bits stored, with a rescale and
    a window spanning the stored range."""
    stored = np.rint(np.clip(image, 0.0, 1.0) * (2 ** DICOM_BITS - 1)).astype(np.uint16)
    save_dicom(path, stored, modality="DX", sop_class=DX_STORAGE, patient_id=f"PHANTOM-{index + 1:04d}", sex=sex,
               bits_stored=DICOM_BITS, rescale=DICOM_RESCALE, window=full_range_window(DICOM_BITS, *DICOM_RESCALE),
               age_years=age, uid_seed=(NAME, bone, seed, index), BodyPartExamined=BODY_PART[bone],
               RescaleType="US", PresentationIntentType="FOR PRESENTATION", ImageType=["DERIVED", "SECONDARY"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bone", choices=BONES, default="femur", help="which crop to draw")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--n", type=int, default=300, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma", "--label-noise-sigma", dest="label_noise_sigma", type=float, default=0.25,
                        help="label noise sigma in years")
    parser.add_argument("--age-distribution", choices=("uniform", "paper"), default="uniform",
                        help="'paper': the age-group imbalance of the paper's data set for --bone")
    parser.add_argument("--size", type=int, default=160, help="crop side in pixels (varies +-10%%)")
    parser.add_argument("--format", choices=("png", "dicom"), default="png",
                        help="png (8-bit), or dicom: <bone>_<n>.dcm as DX, 12 bits stored")


def main(args: argparse.Namespace) -> None:
    render(args.out, args.n, args.seed, args.label_noise_sigma, bone=args.bone,
           age_distribution=args.age_distribution, size=args.size, format=args.format)
