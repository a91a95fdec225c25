"""Whole-body bone scintigraphy phantom (Do et al., ROI localization for bone age, 40-80 years).

Each image is a tall radiotracer-uptake map (real size about 900 wide x 3000 high) showing
the anterior view on the left and the posterior view on the right, as whole-body scans are
usually exported. Ages are 40-80 years; sexes and the four age groups (40-50, 50-60, 60-70,
70-80) are balanced by construction (round robin, then shuffled).

Where the age lives (one region near the centre of the body, as the paper found):

- **fine signal** (only at full resolution): the lumbar vertebrae L1-L5 of the *posterior*
  view carry a horizontal stripe texture of period ``stripe_period`` pixels whose amplitude
  grows with age (a stand-in for degenerative, trabecular uptake changes). The default
  period is ``height / 750`` pixels (4 px at 3000 high), i.e. exactly one pixel of the
  250x750 baseline resize, so area-downsizing the whole image averages it away, while a
  crop taken from the original image keeps it. At the 300x1000 localization size (factor 3)
  about a third of its contrast survives.
- **coarse signal** (survives downsizing): the lumbar uptake relative to the thoracic spine
  grows with age, with a large individual spread, so a whole-image model can learn only a
  rough age from it. It is what lets a classifier trained on downsized images find the
  region.
- **sex**: women's bone changes run ``female_shift`` years ahead, and women have a wider
  pelvis (visible, so a network can partly infer sex without the sex input).

Everything else is nuisance only: the same stripe texture with random, age-independent
amplitude on every other bone (anterior lumbar spine included), body scale and position,
bladder and kidney activity, injection-site and random hot spots, exposure, contrast,
counting noise and a text marker.

``phantom_truth.csv`` holds the noise-free age and, per image, the box of the age-carrying
region (posterior L1-L5, in original pixels: ``roi_x0, roi_y0, roi_x1, roi_y1``, half-open)
so a localization can be scored against it.

``--format dicom`` writes each scan as the NM file a gamma camera exports: two frames (frame 1
the anterior view, frame 2 the posterior view as the posterior detector sees it, i.e. mirrored
left-right against the PNG layout), counts as unsigned 16-bit (``NM_COUNTS`` counts at the
PNG's white), a synthetic patient id (``PHANTOM-<n>``), PatientSex and PatientAge. The reader
(:mod:`data_modules.dicom`) mirrors the posterior frame back, so with the window
``[0, NM_COUNTS]`` a file decodes to the PNG of the same sample within one grey level and the
boxes in ``phantom_truth.csv`` hold for both formats. The width must be even (two equal views).

Not a claim about clinical accuracy: it exists so that the ROI pipeline can be run and
tested before real data arrives, and so that "crop the right region" measurably beats
"downsize the whole image".
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.phantoms.common import (
    NM_STORAGE,
    TRUTH_FILE,
    PhantomMetadata,
    acquisition,
    capsule,
    ellipse,
    noise_floor,
    noisy_labels,
    save_dicom,
    save_gray_png,
    text_marker,
)
from boneage.phantoms.common import progress as _progress_bar

NAME = "scintigraphy"
LABEL_FILE = "labels.csv"
AGE_RANGE = (40.0, 80.0)
AGE_GROUP_EDGES = (40.0, 50.0, 60.0, 70.0, 80.0)
NM_COUNTS = 1000  # --format dicom: counts per pixel at the PNG's white (the scintigraphy YAMLs' window)


def _paint(img: np.ndarray, shape: np.ndarray, y0: int, x0: int, value: np.ndarray | float,
           mode: str = "max") -> None:
    """Composite a local patch ``value * shape`` at (y0, x0), clipped to the image."""
    h, w = img.shape
    ph, pw = shape.shape
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + ph, h), min(x0 + pw, w)
    if ya >= yb or xa >= xb:
        return
    patch = (shape * value)[ya - y0:yb - y0, xa - x0:xb - x0]
    target = img[ya:yb, xa:xb]
    if mode == "max":
        np.maximum(target, patch, out=target)
    else:
        target += patch


def _local_grid(y0: float, y1: float, x0: float, x1: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Pixel-centre coordinates of the integer box covering [y0, y1) x [x0, x1)."""
    iy0, ix0 = int(math.floor(y0)), int(math.floor(x0))
    iy1, ix1 = int(math.ceil(y1)) + 1, int(math.ceil(x1)) + 1
    yy, xx = np.mgrid[iy0:iy1, ix0:ix1].astype(np.float32)
    return yy, xx, iy0, ix0


def _stripes(yy: np.ndarray, amplitude: float, period: float, phase: float) -> np.ndarray:
    """Multiplicative horizontal stripe texture with mean 1."""
    return 1.0 + amplitude * np.sin(2.0 * math.pi * yy / period + phase)


class _Body:
    """Draws one view of the skeleton into an image (local patches only: fast at 900x3000)."""

    def __init__(self, img: np.ndarray, cx: float, top: float, sx: float, sy: float,
                 period: float, rng: np.random.Generator) -> None:
        self.img, self.cx, self.top, self.sx, self.sy = img, cx, top, sx, sy
        self.period, self.rng = period, rng

    def xy(self, u: float, v: float) -> tuple[float, float]:
        """Body coordinates (u across the view from -0.5 to 0.5, v from head 0 to feet 1) -> px."""
        return self.top + v * self.sy, self.cx + u * self.sx

    def bone_ellipse(self, u: float, v: float, ru: float, rv: float, value: float,
                     amp: float | None = None, phase: float | None = None, mode: str = "max") -> None:
        cy, cx = self.xy(u, v)
        ry, rx = rv * self.sy, ru * self.sx
        r = max(ry, rx) + 2
        yy, xx, iy0, ix0 = _local_grid(cy - r, cy + r, cx - r, cx + r)
        shape = ellipse(yy, xx, cy, cx, ry, rx, soft=1.5)
        val = value * self._texture(yy, amp, phase)
        _paint(self.img, shape, iy0, ix0, val, mode)

    def bone_capsule(self, u0: float, v0: float, u1: float, v1: float, ru: float, value: float,
                     amp: float | None = None) -> None:
        y0, x0 = self.xy(u0, v0)
        y1, x1 = self.xy(u1, v1)
        rad = ru * self.sx
        yy, xx, iy0, ix0 = _local_grid(min(y0, y1) - rad - 2, max(y0, y1) + rad + 2,
                                       min(x0, x1) - rad - 2, max(x0, x1) + rad + 2)
        shape = capsule(yy, xx, y0, x0, y1, x1, rad, soft=1.5)
        _paint(self.img, shape, iy0, ix0, value * self._texture(yy, amp, None))

    def _texture(self, yy: np.ndarray, amp: float | None, phase: float | None) -> np.ndarray | float:
        """Age-independent nuisance stripes unless an amplitude is given."""
        if amp is None:
            amp = float(self.rng.uniform(0.05, 0.6))
        if phase is None:
            phase = float(self.rng.uniform(0, 2 * math.pi))
        return _stripes(yy, amp, self.period, phase)


def _draw_view(img: np.ndarray, body: _Body, rng: np.random.Generator, bone: float, female: bool,
               posterior: bool, lumbar_gain: float,
               lumbar_amp: float | None) -> tuple[float, float, float, float]:
    """One anterior or posterior skeleton; returns the lumbar L1-L5 box (y0, y1, x0, x1) in px."""
    spine_gain = 1.25 if posterior else 0.9  # the spine is nearer the posterior detector
    # soft tissue: faint body outline
    body.bone_ellipse(0.0, 0.30, 0.36, 0.20, 0.06, amp=0.0, mode="add")
    body.bone_ellipse(0.0, 0.62, 0.30, 0.30, 0.05, amp=0.0, mode="add")
    # skull and face
    body.bone_ellipse(0.0, 0.065, 0.17, 0.045, bone * rng.uniform(0.8, 1.2))
    body.bone_capsule(0.0, 0.11, 0.0, 0.165, 0.035, bone * spine_gain * 0.8)
    # shoulders, clavicles, arms, hands
    for s in (-1, 1):
        body.bone_capsule(s * 0.05, 0.16, s * 0.30, 0.155, 0.025, bone)
        body.bone_ellipse(s * 0.31, 0.165, 0.06, 0.015, bone * 1.1)
        body.bone_capsule(s * 0.33, 0.17, s * 0.38, 0.33, 0.03, bone * 0.9)
        body.bone_capsule(s * 0.38, 0.34, s * 0.41, 0.47, 0.025, bone * 0.8)
        body.bone_ellipse(s * 0.42, 0.50, 0.05, 0.03, bone * 0.9)
        # ribs
        for k in range(10):
            v = 0.185 + 0.016 * k
            body.bone_capsule(s * 0.04, v, s * 0.22, v + 0.02, 0.012, bone * 0.7)
    # thoracic spine: 12 vertebrae
    for k in range(12):
        body.bone_ellipse(0.0, 0.175 + 0.0155 * k, 0.05, 0.006, bone * spine_gain)
    # lumbar spine L1-L5: the age-carrying region on the posterior view
    lumbar_top, lumbar_step = 0.365, 0.021
    for k in range(5):
        v = lumbar_top + lumbar_step * k
        body.bone_ellipse(0.0, v, 0.075, 0.0085, bone * spine_gain * (lumbar_gain if posterior else 1.0),
                          amp=lumbar_amp if posterior else None)
    ly0, lx0 = body.xy(-0.075, lumbar_top - 0.0085)
    ly1, lx1 = body.xy(0.075, lumbar_top + 4 * lumbar_step + 0.0085)
    # pelvis: sacrum, iliac wings (wider in women), hips
    wing = 0.21 if female else 0.17
    body.bone_ellipse(0.0, 0.49, 0.05, 0.025, bone * spine_gain)
    for s in (-1, 1):
        body.bone_ellipse(s * wing * 0.7, 0.48, wing * 0.45, 0.03, bone * 0.85)
        body.bone_ellipse(s * 0.14, 0.535, 0.035, 0.012, bone * 1.1)
        # femurs, knees, tibiae, feet
        body.bone_capsule(s * 0.15, 0.545, s * 0.12, 0.75, 0.035, bone * 0.8)
        body.bone_ellipse(s * 0.12, 0.765, 0.05, 0.012, bone * 1.0)
        body.bone_capsule(s * 0.12, 0.78, s * 0.11, 0.95, 0.03, bone * 0.75)
        body.bone_ellipse(s * 0.11, 0.97, 0.045, 0.012, bone * 0.9)
    # soft-tissue activity: bladder (anterior, strong and variable) or kidneys (posterior)
    if posterior:
        for s in (-1, 1):
            body.bone_ellipse(s * 0.13, 0.37, 0.045, 0.02, rng.uniform(0.05, 0.25), amp=0.0, mode="add")
    else:
        body.bone_ellipse(0.0, 0.53, 0.07, 0.02, rng.uniform(0.1, 0.9), amp=0.0, mode="add")
    return ly0, ly1, lx0, lx1


def render_one(true_age: float, female: bool, rng: np.random.Generator, width: int = 900,
               height: int = 3000, stripe_period: float | None = None,
               female_shift: float = 4.0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One image in [0, 1] (height x width) and its age-region box (x0, y0, x1, y1), half-open."""
    period = stripe_period if stripe_period is not None else max(4.0, height / 750.0)
    img = np.zeros((height, width), np.float32)
    t = float(np.clip((true_age + (female_shift if female else 0.0) - AGE_RANGE[0]) / 44.0, 0.0, 1.0))
    bone = rng.uniform(0.35, 0.5)
    lumbar_gain = 1.0 + 0.35 * t + rng.normal(0.0, 0.04)  # coarse signal, wide individual spread
    lumbar_amp = float(np.clip(0.06 + 0.5 * t + rng.normal(0.0, 0.015), 0.0, 0.8))  # fine signal
    scale = rng.uniform(0.92, 1.04)
    view_w = width / 2.0
    boxes = []
    for k, posterior in enumerate((False, True)):
        cx = view_w * (k + 0.5) + rng.normal(0.0, 0.02) * view_w
        sy = 0.94 * height * scale
        top = rng.uniform(0.01, 0.99 * height - sy) if 0.99 * height > sy + 0.01 * height else 0.0
        body = _Body(img, cx, top, 0.95 * view_w * scale, sy, period, rng)
        boxes.append(_draw_view(img, body, rng, bone, female, posterior, lumbar_gain, lumbar_amp))
    # nuisance hot spots (injection site in an arm, random benign uptake) outside the lumbar region
    for _ in range(rng.integers(1, 4)):
        y, x = rng.uniform(0.08, 0.95) * height, rng.uniform(0.05, 0.95) * width
        r = rng.uniform(0.004, 0.01) * height
        yy, xx, iy0, ix0 = _local_grid(y - r - 2, y + r + 2, x - r - 2, x + r + 2)
        _paint(img, ellipse(yy, xx, y, x, r, r, soft=1.5), iy0, ix0, rng.uniform(0.3, 0.8), "add")
    img = acquisition(img, rng, noise=0.03)
    img = text_marker(img, rng, value=0.9)
    ly0, ly1, lx0, lx1 = boxes[1]
    box = (max(int(math.floor(lx0)), 0), max(int(math.floor(ly0)), 0),
           min(int(math.ceil(lx1)), width), min(int(math.ceil(ly1)), height))
    return img, box


def _balanced_design(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """True ages (uniform within round-robin age groups) and sexes, both balanced, shuffled."""
    groups = np.arange(n) % 4
    sexes = (np.arange(n) + np.arange(n) // 4) % 2  # 2 of every 4 are women; groups alternate sexes
    order = rng.permutation(n)
    groups, sexes = groups[order], sexes[order]
    low = np.asarray(AGE_GROUP_EDGES[:-1])[groups]
    ages = low + rng.uniform(0.0, 10.0, size=n)
    return ages, sexes.astype(bool)  # True = female


def render(out: str | Path, n: int = 200, seed: int = 0, label_noise_sigma: float = 2.0,
           width: int = 900, height: int = 3000, stripe_period: float | None = None,
           female_shift: float = 4.0, bit_depth: int = 8, progress: bool = True, format: str = "png") -> Path:
    """Write ``n`` phantom scans as PNGs (or two-frame NM DICOM files, ``format="dicom"``) plus
    ``labels.csv`` (image, age_years, sex) into ``out``.

    ``width`` x ``height`` is the original image size (real data: about 900 x 3000; use e.g.
    144 x 480 for tests). Returns the path of ``labels.csv``.
    """
    show = progress
    if width < 32 or height < 96:
        raise ValueError(f"scintigraphy phantom needs at least 32 x 96 pixels, got {width} x {height}")
    if format not in ("png", "dicom"):
        raise ValueError(f"format must be 'png' or 'dicom', got {format!r}")
    if format == "dicom" and width % 2:
        raise ValueError(f"--format dicom stores the two views as two frames of one size: the width must be even, "
                         f"got {width}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ages, female = _balanced_design(n, rng)
    labels = noisy_labels(ages, label_noise_sigma, rng)
    rows, truth = [], []
    for i in _progress_bar(range(n), n, "scintigraphy phantom", show):
        img_rng = np.random.default_rng([seed, i])
        img, box = render_one(float(ages[i]), bool(female[i]), img_rng, width, height,
                              stripe_period, female_shift)
        sex = "F" if female[i] else "M"
        if format == "dicom":
            name = f"images/scan_{i:05d}.dcm"
            save_scan_dicom(out / name, img, f"PHANTOM-{i + 1:04d}", sex, float(ages[i]), (seed, i))
        else:
            name = f"images/scan_{i:05d}.png"
            save_gray_png(out / name, img, bit_depth=bit_depth)
        rows.append({"image": name, "age_years": round(float(labels[i]), 3), "sex": sex})
        truth.append({"image": name, "true_age": round(float(ages[i]), 4), "age_years": rows[-1]["age_years"],
                      "sex": sex, "roi_x0": box[0], "roi_y0": box[1], "roi_x1": box[2], "roi_y1": box[3]})
    csv = out / LABEL_FILE
    pd.DataFrame(rows).to_csv(csv, index=False)
    pd.DataFrame(truth).to_csv(out / TRUTH_FILE, index=False)
    PhantomMetadata(generator=NAME, n=n, seed=seed, label_noise_sigma=label_noise_sigma, units="years",
                    label_file=LABEL_FILE,
                    extra={"width": width, "height": height,
                           "stripe_period": stripe_period or max(4.0, height / 750.0),
                           "female_shift": female_shift, "age_range": list(AGE_RANGE), "format": format,
                           "age_region": "posterior lumbar spine L1-L5 (boxes in phantom_truth.csv)"}
                    ).write(out)
    if show:
        print(f"scintigraphy phantom: {n} images of {width}x{height} written to {out} "
              f"(labels {csv}, noise floor MAE {noise_floor(label_noise_sigma):.2f} years)")
    return csv


def save_scan_dicom(path: str | Path, image: np.ndarray, patient_id: str, sex: str, age: float,
                    uid_seed: tuple = ()) -> None:
    """A side-by-side scan in [0, 1] as a two-frame NM file: anterior (left half), then the posterior
    (right half) mirrored as its detector records it; counts ``NM_COUNTS`` at 1."""
    half = image.shape[1] // 2
    counts = np.rint(np.clip(image, 0.0, 1.0) * NM_COUNTS).astype(np.uint16)
    frames = np.stack([counts[:, :half], counts[:, half:][:, ::-1]])
    save_dicom(path, frames, modality="NM", sop_class=NM_STORAGE, patient_id=patient_id, sex=sex, bits_stored=16,
               age_years=age, uid_seed=("scintigraphy", *uid_seed),
               ImageType=["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"], NumberOfDetectors=2,
               DetectorVector=[1, 2], FrameIncrementPointer=0x00540020,  # frames indexed by DetectorVector
               BodyPartExamined="WHOLEBODY")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=200, help="number of scans")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-noise-sigma", type=float, default=2.0, help="label noise in years")
    parser.add_argument("--width", type=int, default=900, help="image width (real data: ~900)")
    parser.add_argument("--height", type=int, default=3000, help="image height (real data: ~3000)")
    parser.add_argument("--stripe-period", type=float, default=None,
                        help="period in px of the fine age texture (default height/750, at least 4)")
    parser.add_argument("--bit-depth", type=int, default=8, choices=(8, 16), help="PNG bit depth")
    parser.add_argument("--format", choices=("png", "dicom"), default="png",
                        help="png (views side by side), or dicom: two-frame NM files (anterior, posterior)")


def main(args: argparse.Namespace) -> None:
    render(args.out, n=args.n, seed=args.seed, label_noise_sigma=args.label_noise_sigma,
           width=args.width, height=args.height, stripe_period=args.stripe_period,
           bit_depth=args.bit_depth, format=args.format)
