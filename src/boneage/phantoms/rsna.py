"""RSNA-layout hand radiograph phantom.

Writes exactly the RSNA Pediatric Bone Age layout::

    OUT/boneage-training-dataset.csv      id,boneage,male      (boneage in months, male True/False)
    OUT/boneage-training-dataset/{id}.png grayscale, 8-bit (a share 16-bit), sizes varying like scans
                                          ({id}.dcm with --format dicom: see below)
    OUT/phantom.json                      noise sigma and floor (months)
    OUT/phantom_truth.csv                 id,true_boneage,male,chronological

Age is visible the way it is on real films (Greulich-Pyle / TW order, simplified):

- carpal ossification centres appear in their known order (capitate, hamate, triquetrum,
  lunate, trapezium, trapezoid, scaphoid, pisiform) and grow towards adult size;
- epiphyses of the phalanges, metacarpals, radius and ulna appear, widen to the width of
  the metaphysis, and then fuse (the growth-plate gap narrows and closes);
- bones lengthen and widen, cortex thickens;
- girls mature earlier: the appearance follows ``maturity = bone_age * tempo(sex)``
  with a female tempo above the male one, so sex is informative given the image.

Nuisance: hand rotation, scale and position, finger spread, exposure, contrast (gamma),
noise, a side marker, image size and aspect. The written label is the true bone age plus
N(0, sigma^2) (clipped to the RSNA range 1-228 months); ``phantom.json`` holds
sigma*sqrt(2/pi), the MAE a perfect model would get.

``--format dicom`` writes the same hands as ``{id}.dcm`` the way radiography systems store
them: DX (MONOCHROME2) and, for every third id, CR stored MONOCHROME1 (inverted); 12 bits
stored in 16; a rescale (slope 0.5, intercept 100: arbitrary, there so a reader that ignores
it is caught) and a window centre/width spanning the stored range, so the file's own window
("dicom") decodes to the PNG of the same sample within one grey level. Patient ids are
synthetic (``PHANTOM-<id>``), the sex is in PatientSex; no PatientAge (the label is a bone age,
not the age).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.phantoms.common import (
    CR_STORAGE,
    DX_STORAGE,
    PhantomMetadata,
    acquisition,
    full_range_window,
    noisy_labels,
    progress,
    save_dicom,
    save_gray_png,
    text_marker,
)

NAME = "rsna"
TRAIN_CSV = "boneage-training-dataset.csv"
TRAIN_DIR = "boneage-training-dataset"

# Onset of ossification (maturity months) of the carpal bones, in their known order, with the
# position (x, y) in hand coordinates and adult radii (ry, rx).
CARPALS = [
    ("capitate", 3, (0.50, 0.665), (0.045, 0.030)),
    ("hamate", 4, (0.60, 0.665), (0.040, 0.028)),
    ("triquetrum", 30, (0.66, 0.715), (0.028, 0.025)),
    ("lunate", 48, (0.555, 0.730), (0.028, 0.027)),
    ("trapezium", 60, (0.36, 0.690), (0.030, 0.026)),
    ("trapezoid", 66, (0.43, 0.675), (0.025, 0.022)),
    ("scaphoid", 72, (0.43, 0.735), (0.035, 0.024)),
    ("pisiform", 120, (0.69, 0.690), (0.016, 0.015)),
]
# Finger rays: base x on the carpal row, direction angle (radians from vertical), number of
# phalanges, adult lengths (metacarpal, proximal, middle, distal) in hand units.
RAYS = [
    (0.36, -0.62, 2, (0.150, 0.110, 0.000, 0.080)),  # thumb
    (0.44, -0.10, 3, (0.220, 0.130, 0.080, 0.060)),
    (0.51, -0.01, 3, (0.215, 0.140, 0.090, 0.062)),
    (0.58, 0.08, 3, (0.205, 0.132, 0.085, 0.060)),
    (0.64, 0.18, 3, (0.180, 0.110, 0.065, 0.055)),
]
DICOM_BITS, DICOM_RESCALE = 12, (0.5, 100.0)  # --format dicom: 12 bits stored in 16, (slope, intercept)
FEMALE_TEMPO = 1.12  # girls reach a given appearance about 12% earlier (roughly 2 y at puberty)


def tempo(male: bool) -> float:
    return 1.0 if male else FEMALE_TEMPO


def _ramp(x: float, start: float, end: float) -> float:
    return float(np.clip((x - start) / max(end - start, 1e-6), 0.0, 1.0))


class _Canvas:
    """Draws soft shapes with max-compositing, only inside each shape's bounding box."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.img = np.zeros((h, w), np.float32)

    def _window(self, y0: float, y1: float, x0: float, x1: float):
        a, b = max(int(y0) - 2, 0), min(int(math.ceil(y1)) + 2, self.h)
        c, d = max(int(x0) - 2, 0), min(int(math.ceil(x1)) + 2, self.w)
        if a >= b or c >= d:
            return None
        yy, xx = np.mgrid[a:b, c:d].astype(np.float32)
        return (slice(a, b), slice(c, d)), yy, xx

    def capsule(self, p0, p1, radius: float, value: float, soft: float = 1.0, mode: str = "max") -> None:
        (y0, x0), (y1, x1) = p0, p1
        r = radius + soft
        win = self._window(min(y0, y1) - r, max(y0, y1) + r, min(x0, x1) - r, max(x0, x1) + r)
        if win is None or radius <= 0:
            return
        sl, yy, xx = win
        py, px, by, bx = yy - y0, xx - x0, y1 - y0, x1 - x0
        t = np.clip((py * by + px * bx) / max(by * by + bx * bx, 1e-6), 0.0, 1.0)
        d = np.sqrt((py - t * by) ** 2 + (px - t * bx) ** 2)
        self._put(sl, value * np.clip((radius - d) / soft, 0.0, 1.0), mode)

    def ellipse(self, c, ry: float, rx: float, angle: float, value: float, soft: float = 1.0,
                mode: str = "max") -> None:
        cy, cx = c
        r = max(ry, rx) + soft
        win = self._window(cy - r, cy + r, cx - r, cx + r)
        if win is None or min(ry, rx) <= 0.3:
            return
        sl, yy, xx = win
        cs, sn = math.cos(angle), math.sin(angle)
        dy, dx = yy - cy, xx - cx
        u = (dx * cs + dy * sn) / rx
        v = (-dx * sn + dy * cs) / ry
        dist = (1.0 - np.sqrt(u * u + v * v)) * min(ry, rx)
        self._put(sl, value * np.clip(dist / soft, 0.0, 1.0), mode)

    def _put(self, sl, patch: np.ndarray, mode: str) -> None:
        if mode == "max":
            np.maximum(self.img[sl], patch, out=self.img[sl])
        else:  # "sub": carve (growth-plate gap)
            self.img[sl] = np.minimum(self.img[sl], 1.0 - patch)


@dataclass
class _Pose:
    """Maps hand coordinates (x, y in [0, 1], y down) to pixels."""

    h: int
    w: int
    angle: float
    scale: float
    cx: float
    cy: float

    def __call__(self, x: float, y: float) -> tuple[float, float]:
        s = self.scale * self.h
        dx, dy = (x - 0.5) * s, (y - 0.6) * s
        c, n = math.cos(self.angle), math.sin(self.angle)
        return (self.cy + dx * n + dy * c, self.cx + dx * c - dy * n)

    def length(self, v: float) -> float:
        return v * self.scale * self.h


def render_hand(maturity: float, rng: np.random.Generator, height: int = 512, width: int | None = None,
                nuisance: bool = True) -> np.ndarray:
    """Render one hand radiograph in [0, 1] for a maturity in months (0-240)."""
    width = width or int(height * 0.8)
    m = float(maturity)
    grow = 0.55 + 0.45 * (1.0 - math.exp(-m / 80.0))  # bone length relative to adult
    widen = 0.65 + 0.35 * _ramp(m, 0, 200)
    density = 0.55 + 0.35 * _ramp(m, 0, 180)
    if nuisance:
        pose = _Pose(height, width, angle=rng.normal(0, 0.12), scale=rng.uniform(0.82, 1.0),
                     cx=width * rng.uniform(0.45, 0.55), cy=height * rng.uniform(0.55, 0.62))
        spread = rng.uniform(0.7, 1.3)
    else:
        pose = _Pose(height, width, 0.0, 0.92, width * 0.5, height * 0.58)
        spread = 1.0
    L = pose.length
    soft_edge = max(1.0, height / 400)

    tissue = _Canvas(height, width)
    bones = _Canvas(height, width)
    # forearm: radius (thumb side) and ulna
    wrist_y = 0.66 + 0.06 * grow
    for x, rad, epi_onset, fuse in ((0.42, 0.045, 12, (150, 205)), (0.60, 0.032, 80, (145, 200))):
        p0, p1 = pose(x, 1.15), pose(x + (0.02 if x < 0.5 else -0.01), wrist_y + 0.045)
        tissue.capsule(p0, p1, L(0.20 * widen), 0.28, soft=3 * soft_edge)
        bones.capsule(p0, p1, L(rad * widen), density, soft=soft_edge)
        if m >= epi_onset:
            size = _ramp(m, epi_onset, epi_onset + 90)
            gap = 1.0 - _ramp(m, *fuse)
            cy = wrist_y + 0.045 - 0.012 * size - 0.012 * gap
            bones.ellipse(pose(x + (0.02 if x < 0.5 else -0.01), cy), L(0.012 + 0.012 * size),
                          L(rad * widen * (0.5 + 0.55 * size)), pose.angle, density, soft_edge)
            if gap > 0:
                bones.capsule(pose(x - rad, wrist_y + 0.045 - 0.002), pose(x + rad, wrist_y + 0.045 - 0.002),
                              L(0.004 * gap + 0.002), 1.0, soft_edge, mode="sub")
    # carpals appear in order and grow
    for _, onset, (x, y), (ry, rx) in CARPALS:
        if m >= onset:
            size = 0.25 + 0.75 * _ramp(m, onset, onset + 110)
            bones.ellipse(pose(x, y - 0.02 * (1 - grow)), L(ry * size), L(rx * size), pose.angle,
                          density, soft_edge)
    # palm soft tissue
    tissue.ellipse(pose(0.52, 0.58), L(0.16), L(0.19 * widen + 0.03), pose.angle, 0.28, 6 * soft_edge)
    # finger rays: metacarpal then phalanges, each with a growth plate that closes
    for i, (bx, ang, nphal, lengths) in enumerate(RAYS):
        ang = ang * spread
        dx, dy = math.sin(ang), -math.cos(ang)
        y = 0.635 - 0.02 * (1 - grow)
        x = bx
        segs = [lengths[0], lengths[1]] + ([lengths[2]] if nphal == 3 else []) + [lengths[3]]
        for k, seg in enumerate(segs):
            seg_len = seg * grow
            p0 = (x, y)
            p1 = (x + dx * seg_len, y + dy * seg_len)
            radius = (0.016 if k == 0 else 0.013 - 0.002 * k) * widen
            tissue.capsule(pose(*p0), pose(*p1), L(radius + 0.022), 0.28, soft=3 * soft_edge)
            bones.capsule(pose(*p0), pose(*p1), L(radius), density, soft=soft_edge)
            # epiphysis: proximal end of phalanges and thumb metacarpal, distal end of metacarpals 2-5
            proximal = k > 0 or i == 0
            onset = 14 + 6 * k + 3 * i
            if m >= onset:
                size = _ramp(m, onset, onset + 100)
                gap = 1.0 - _ramp(m, 150 + 5 * k, 200 + 4 * k)
                end = p0 if proximal else p1
                sign = -1.0 if proximal else 1.0
                off = sign * (0.006 + 0.006 * gap)
                ep = (end[0] + dx * off, end[1] + dy * off)
                bones.ellipse(pose(*ep), L(0.004 + 0.004 * size), L(radius * (0.45 + 0.6 * size)),
                              pose.angle + ang, density, soft_edge)
                if gap > 0:
                    gp = (end[0] + dx * sign * 0.002, end[1] + dy * sign * 0.002)
                    bones.ellipse(pose(*gp), L(0.0015 + 0.0025 * gap), L(radius * 1.1), pose.angle + ang,
                                  1.0, soft_edge, mode="sub")
            x, y = p1[0] + dx * 0.012, p1[1] + dy * 0.012
    # cortical shell is brighter: approximate with a sharpened bone map
    img = 0.06 + tissue.img + 0.9 * bones.img * (1.0 - 0.6 * tissue.img)
    img = img / 1.2
    if nuisance:
        img = text_marker(img, rng, value=float(rng.uniform(0.85, 1.0)))
        img = acquisition(img, rng, noise=rng.uniform(0.01, 0.04))
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def sample_population(n: int, rng: np.random.Generator, mean: float = 127.0, sd: float = 41.0,
                      low: float = 1.0, high: float = 228.0, male_fraction: float = 0.54):
    """Bone ages (months) and sexes distributed like the RSNA training set."""
    ages = np.clip(rng.normal(mean, sd, n), low, high)
    male = rng.random(n) < male_fraction
    return ages, male


def render(out: str | Path, n: int = 500, seed: int = 0, label_noise_sigma: float = 6.0,
           size: int = 512, sixteen_bit_fraction: float = 0.1, start_id: int = 1377,
           progress_bar: bool = True, format: str = "png") -> Path:
    """Write an RSNA-layout phantom of ``n`` hands into ``out`` and return ``out``.

    ``format``: "png" (8-bit, a ``sixteen_bit_fraction`` 16-bit) or "dicom" (see the module
    docstring); the same seed draws the same hands in both."""
    if format not in ("png", "dicom"):
        raise ValueError(f"format must be 'png' or 'dicom', got {format!r}")
    out = Path(out)
    img_dir = out / TRAIN_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ages, male = sample_population(n, rng)
    labels = noisy_labels(ages, label_noise_sigma, rng, 1.0, 228.0)
    ids = np.arange(start_id, start_id + n)
    for i in progress(range(n), n, "rendering RSNA phantom", progress_bar):
        r = np.random.default_rng([seed, int(ids[i])])
        h = int(size * r.uniform(0.9, 1.1))
        w = int(h * r.uniform(0.72, 0.86))
        img = render_hand(ages[i] * tempo(bool(male[i])), r, h, w)
        if format == "dicom":
            save_hand_dicom(img_dir / f"{ids[i]}.dcm", img, int(ids[i]), bool(male[i]), seed)
        else:
            save_gray_png(img_dir / f"{ids[i]}.png", img, 16 if r.random() < sixteen_bit_fraction else 8)
    pd.DataFrame({"id": ids, "boneage": np.round(labels).astype(int), "male": male}).to_csv(
        out / TRAIN_CSV, index=False)
    pd.DataFrame({"id": ids, "true_boneage": ages, "male": male}).to_csv(out / "phantom_truth.csv", index=False)
    # Labels are rounded to whole months like RSNA's: that adds 1/12 month^2 of variance.
    sigma = math.sqrt(label_noise_sigma ** 2 + 1.0 / 12.0)
    PhantomMetadata("rsna", n, seed, sigma, "months", TRAIN_CSV,
                    extra={"size": size, "female_tempo": FEMALE_TEMPO, "format": format}).write(out)
    if progress_bar:
        print(f"wrote {n} RSNA-layout phantom hands to {out} (label noise sigma {sigma:.2f} months)")
    return out


def save_hand_dicom(path: str | Path, image: np.ndarray, image_id: int, male: bool, seed: int = 0) -> None:
    """One hand in [0, 1] as a DX (MONOCHROME2) or, for every third id, CR (MONOCHROME1) file, 12 bits
    stored, with a rescale and a window spanning the stored range."""
    inverted = image_id % 3 == 0
    stored = np.rint(np.clip(1.0 - image if inverted else image, 0.0, 1.0) * (2 ** DICOM_BITS - 1)).astype(np.uint16)
    save_dicom(path, stored, modality="CR" if inverted else "DX", sop_class=CR_STORAGE if inverted else DX_STORAGE,
               patient_id=f"PHANTOM-{image_id:04d}", sex="M" if male else "F", bits_stored=DICOM_BITS,
               photometric="MONOCHROME1" if inverted else "MONOCHROME2", rescale=DICOM_RESCALE,
               window=full_range_window(DICOM_BITS, *DICOM_RESCALE), uid_seed=("rsna", seed, image_id),
               BodyPartExamined="HAND", RescaleType="US", PresentationIntentType="FOR PRESENTATION",
               ImageType=["DERIVED", "PRIMARY"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (RSNA layout)")
    parser.add_argument("--n", type=int, default=500, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma", type=float, default=6.0, help="label noise sigma in months")
    parser.add_argument("--size", type=int, default=512, help="image height in pixels (varies +-10%%)")
    parser.add_argument("--sixteen-bit-fraction", type=float, default=0.1, help="share of 16-bit PNGs")
    parser.add_argument("--format", choices=("png", "dicom"), default="png",
                        help="png, or dicom: {id}.dcm as DX/CR (a third MONOCHROME1), 12 bits stored")


def main(args: argparse.Namespace) -> None:
    render(args.out, args.n, args.seed, args.sigma, args.size, args.sixteen_bit_fraction, format=args.format)
