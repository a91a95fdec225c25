"""Whole-body CT bone phantom: tall coronal bone images with age and sex (generic hospital CSV).

Stands in for the whole-body CT bone data set of Nguyen & Kim (paper 002): 813 grayscale
images of about 3000 x 900 pixels, ages 8 months to 87 years (8.5% under 40, 73.4% 40-60,
18.1% over 60), 83.5% female. Written as ``labels.csv`` (``image,age_years,sex``) with
8-bit PNGs under ``images/``, plus ``phantom.json`` and ``phantom_truth.csv``; or, with
``--format series`` / ``--format nifti``, as CT volumes in Hounsfield units (a folder of axial
DICOM slices under ``series/`` or a ``.nii.gz`` under ``volumes/`` per subject, listed in the
same ``labels.csv``) whose coronal bone-window projection is the 2-D phantom image.

How age shows (a projection of the skeleton at a fixed scanner scale of ~190 cm per image
height, so a child is small in the frame):

- growth to adulthood: stature follows a growth curve, the head-to-body ratio falls and the
  legs lengthen, bone density rises, growth plates (dark bands near the ends of long bones)
  close at 15 (girls) / 17 (boys) years;
- ageing: loss of bone density (faster in women after 50), cortical thinning, loss of
  trabecular density and of vertebral and disc height (the spine shortens);
- the ageing signal is stronger in the upper body (skull, spine, ribs, clavicles, arms) than
  in the lower body (pelvis and legs carry 30% of it), as the paper's Grad-CAM and Table 3 found.

Nuisance: stature and body width, bone-health factor, arm abduction, lateral shift,
rotation, field of view, soft-tissue envelope, exposure, contrast, noise, a text marker.
Not a claim about clinical accuracy.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from boneage.phantoms.common import (
    TRUTH_FILE,
    PhantomMetadata,
    acquisition,
    capsule,
    ellipse,
    noisy_labels,
    save_dicom,
    save_gray_png,
    text_marker,
)
from boneage.phantoms.common import progress as progress_bar

NAME = "wholebody_ct"
LABEL_FILE = "labels.csv"
DEFAULT_HEIGHT = 3000
DEFAULT_WIDTH = 900
DEFAULT_SIGMA = 2.0  # years of label noise -> floor 1.6 years
FORMATS = ("png", "series", "nifti")
DEFAULT_SLICES = 128  # axial slices of a phantom volume (small and fast; a real scan has 1000-2000)
FOV_MM = 1900.0  # the 2-D phantom's nominal scanner scale: ~190 cm per image height
BODY_DEPTH_MM = 300.0  # front-to-back depth of a phantom volume
PHANTOM_HU = (-200.0, 1500.0)  # HU of the 2-D phantom's gray 0 and 1 (the CT DataModule's default window)
AIR_HU = -1000.0
FEMALE_SHARE = 679 / 813  # paper Table 4
UPPER_BODY_SHARE = 1.0  # share of the ageing signal in the upper body ...
LOWER_BODY_SHARE = 0.3  # ... and in the lower body

# Age strata of the paper (Sec. 4.1): share, low, high (years).
AGE_STRATA = ((0.08487, 0.67, 40.0), (0.73432, 40.0, 60.0), (0.18081, 60.0, 87.0))


def sample_ages(n: int, rng: np.random.Generator) -> np.ndarray:
    """Ages distributed like the paper's data set (uniform within its three strata)."""
    shares = np.array([s for s, _, _ in AGE_STRATA])
    stratum = rng.choice(len(AGE_STRATA), size=n, p=shares / shares.sum())
    lo = np.array([a for _, a, _ in AGE_STRATA])[stratum]
    hi = np.array([b for _, _, b in AGE_STRATA])[stratum]
    return rng.uniform(lo, hi)


def _ramp(x: float, a: float, b: float) -> float:
    return float(np.clip((x - a) / (b - a), 0.0, 1.0))


def growth(age: float) -> float:
    """0 at birth -> 1 at adulthood (18 y): drives body proportions."""
    return float(np.interp(age, [0, 2, 6, 12, 18], [0.0, 0.35, 0.6, 0.85, 1.0]))


def body_state(age: float, male: bool) -> dict:
    """Noise-free age-dependent skeleton parameters (also written to the truth table)."""
    g = growth(age)
    # bone mineral density: rises to a peak at 25, then declines (women faster after 50)
    d_growth = float(np.interp(age, [0, 2, 10, 18, 25], [0.55, 0.65, 0.8, 0.93, 1.0]))
    rate_early, rate_late = (0.004, 0.006) if male else (0.005, 0.012)
    loss = rate_early * max(0.0, min(age, 50.0) - 35.0) + rate_late * max(0.0, age - 50.0)
    ageing = _ramp(age, 40.0, 87.0)
    return dict(
        g=g,
        density=d_growth,
        density_loss=loss,  # fraction of peak density lost (upper body)
        cortical=float(np.interp(age, [0, 18, 30], [0.25, 0.36, 0.40])),  # cortex / radius
        cortical_thinning=0.18 * ageing,  # subtracted from ``cortical`` (upper body)
        trabecular_loss=1.6 * loss,
        vertebral_loss=0.22 * ageing,  # fraction of thoracic vertebral height lost
        disc_loss=0.35 * ageing,
        plate_open=1.0 - _ramp(age, 13.0 if not male else 15.0, 15.0 if not male else 17.0),
        epiphysis=_ramp(age, 0.5, 3.0),
    )


class _Canvas:
    """Additive projection canvas; primitives are drawn in cm of body coordinates.

    Body coordinates: ``y`` from the top of the head downwards, ``x`` from the midline.
    The spine compression (vertebral height loss) moves everything below it upwards.
    """

    def __init__(self, h: int, w: int, px_per_cm: float, top: float, cx: float, angle: float,
                 compress: tuple[np.ndarray, np.ndarray]) -> None:
        self.img = np.zeros((h, w), np.float32)
        self.h, self.w, self.s = h, w, px_per_cm
        self.top, self.cx = top, cx
        self.cos, self.sin, self.angle = math.cos(angle), math.sin(angle), angle
        self.cy_pivot = top + 0.5 * h  # rotation about the image middle
        self._cy, self._cl = compress  # y (cm) -> cumulative compression (cm)

    def to_px(self, y: float, x: float) -> tuple[float, float]:
        y = y - float(np.interp(y, self._cy, self._cl))
        py, px = self.top + y * self.s, self.cx + x * self.s
        dy, dx = py - self.cy_pivot, px - self.cx
        return self.cy_pivot + dy * self.cos + dx * self.sin, self.cx - dy * self.sin + dx * self.cos

    def _window(self, ys: list[float], xs: list[float], pad: float):
        y0 = max(int(min(ys) - pad), 0)
        y1 = min(int(max(ys) + pad) + 1, self.h)
        x0 = max(int(min(xs) - pad), 0)
        x1 = min(int(max(xs) + pad) + 1, self.w)
        if y0 >= y1 or x0 >= x1:
            return None
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        return (slice(y0, y1), slice(x0, x1)), yy, xx

    def capsule(self, a: tuple[float, float], b: tuple[float, float], r: float, value: float) -> None:
        (ya, xa), (yb, xb) = self.to_px(*a), self.to_px(*b)
        rp = r * self.s
        win = self._window([ya, yb], [xa, xb], rp + 2)
        if win is not None and rp > 0.05:
            sl, yy, xx = win
            self.img[sl] += value * capsule(yy, xx, ya, xa, yb, xb, rp, soft=1.0)

    def ellipse(self, c: tuple[float, float], ry: float, rx: float, value: float, angle: float = 0.0) -> None:
        cy, cx = self.to_px(*c)
        ryp, rxp = ry * self.s, rx * self.s
        win = self._window([cy], [cx], max(ryp, rxp) + 2)
        if win is not None and min(ryp, rxp) > 0.05:
            sl, yy, xx = win
            self.img[sl] += value * ellipse(yy, xx, cy, cx, ryp, rxp, angle=angle - self.angle, soft=1.0)

    def bone(self, a: tuple[float, float], b: tuple[float, float], r: float, dens: float, cort: float,
             marrow: float, plate_open: float = 0.0) -> None:
        """A long bone: cortical tube, darker medulla, and growth plates near both ends."""
        self.capsule(a, b, r, dens)
        self.capsule(a, b, r * (1.0 - cort), (marrow - 1.0) * dens)
        if plate_open > 0:
            for f in (0.1, 0.9):
                py = a[0] + f * (b[0] - a[0])
                px = a[1] + f * (b[1] - a[1])
                ang = math.atan2(b[1] - a[1], b[0] - a[0])
                self.ellipse((py, px), 0.12 + 0.25 * plate_open, r * 1.15, -0.8 * dens * plate_open,
                             angle=ang)


def render_one(age: float, male: bool, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One whole-body CT bone image (float [0, 1], h x w) and its noise-free parameters."""
    st = body_state(age, male)
    g = st["g"]
    # stature (cm) by a growth curve; adult height and build are nuisance
    adult = rng.normal(174.0, 7.0) if male else rng.normal(162.0, 6.0)
    frac = float(np.interp(age, [0, 1, 2, 5, 10, 14, 18], [0.31, 0.46, 0.53, 0.67, 0.82, 0.93, 1.0]))
    stature = adult * frac
    build = rng.normal(1.0, 0.06) * (1.08 if male else 1.0)
    health = rng.normal(1.0, 0.04)
    fov = 190.0 * rng.uniform(0.95, 1.05)
    px_per_cm = h / fov
    # landmark fractions of stature: infant -> adult
    chin, sh, crest, hip, knee, ankle = (
        float(np.interp(g, [0, 1], [a, b]))
        for a, b in ((0.25, 0.13), (0.30, 0.18), (0.55, 0.40), (0.62, 0.49), (0.80, 0.72), (0.965, 0.96))
    )
    y_chin, y_sh, y_crest, y_hip = chin * stature, sh * stature, crest * stature, hip * stature
    y_knee, y_ankle = knee * stature, ankle * stature
    width = stature * build * float(np.interp(g, [0, 1], [1.15, 1.0]))
    sh_hw = 0.11 * width * (1.05 if male else 1.0)
    pel_hw = 0.085 * width * (0.95 if male else 1.06)

    # vertebral column (C1 below the skull base .. L5 above the sacrum), young heights
    y_c1, y_t1 = 0.75 * y_chin, y_sh + 0.01 * stature
    y_l1, y_s1 = y_crest - 0.11 * stature, y_crest + 0.02 * stature
    segments = [(7, y_c1, y_t1, 0.4 * st["vertebral_loss"]),
                (12, y_t1, y_l1, st["vertebral_loss"]),
                (5, y_l1, y_s1, 0.6 * st["vertebral_loss"])]
    vertebrae = []  # (y_top, height, disc, loss)
    comp_y, comp_l, total = [0.0], [0.0], 0.0
    for count, y0, y1, vloss in segments:
        step = (y1 - y0) / count
        for i in range(count):
            top = y0 + i * step
            body_h, disc = 0.75 * step, 0.25 * step
            lost = body_h * vloss + disc * st["disc_loss"]
            vertebrae.append((top, body_h, disc, vloss))
            total += lost
            comp_y.append(top + step)
            comp_l.append(total)
    comp = (np.array(comp_y), np.array(comp_l))

    top_margin = rng.uniform(0.01, 0.04) * h
    cx = w / 2 + rng.uniform(-0.05, 0.05) * w
    cv = _Canvas(h, w, px_per_cm, top_margin, cx, rng.uniform(-0.035, 0.035), comp)

    up_loss = UPPER_BODY_SHARE * st["density_loss"]
    lo_loss = LOWER_BODY_SHARE * st["density_loss"]
    d_up = st["density"] * health * (1.0 - up_loss)
    d_lo = st["density"] * health * (1.0 - lo_loss)
    c_up = st["cortical"] - UPPER_BODY_SHARE * st["cortical_thinning"]
    c_lo = st["cortical"] - LOWER_BODY_SHARE * st["cortical_thinning"]
    m_up = 0.45 * (1.0 - UPPER_BODY_SHARE * st["trabecular_loss"])
    m_lo = 0.45 * (1.0 - LOWER_BODY_SHARE * st["trabecular_loss"])
    plate = st["plate_open"]
    s = stature / 100.0  # bone thicknesses scale with size

    # soft-tissue envelope (faint)
    soft = 0.07 * rng.uniform(0.7, 1.3)
    cv.ellipse((0.5 * y_chin, 0.0), 0.55 * y_chin, 0.42 * y_chin * 0.9, soft)
    cv.ellipse(((y_sh + y_hip) / 2, 0.0), (y_hip - y_sh) * 0.62, sh_hw * 1.05, soft)
    for side in (-1, 1):
        cv.capsule((y_hip, side * pel_hw * 0.55), (y_ankle, side * pel_hw * 0.35),
                   0.07 * stature * build, soft)

    # skull: cortical shell, face, mandible
    sk_c = (0.42 * y_chin, 0.0)
    sk_ry, sk_rx = 0.45 * y_chin, 0.36 * y_chin
    cv.ellipse(sk_c, sk_ry, sk_rx, d_up)
    shell = 0.06 + 0.05 * c_up
    cv.ellipse(sk_c, sk_ry * (1 - shell), sk_rx * (1 - shell), -d_up * (1 - m_up * 0.6))
    cv.capsule((0.93 * y_chin, -0.22 * y_chin), (y_chin, 0.0), 0.5 * s, d_up * 0.8)
    cv.capsule((0.93 * y_chin, 0.22 * y_chin), (y_chin, 0.0), 0.5 * s, d_up * 0.8)

    # spine
    for top, body_h, _, _ in vertebrae:
        yc = top + body_h / 2
        region_w = float(np.interp(yc, [y_c1, y_t1, y_l1, y_s1], [1.1, 1.5, 2.0, 2.6])) * s
        f = 1.0 - (0.7 if yc < y_l1 else 0.5) * st["vertebral_loss"]
        ry = body_h / 2 * f
        dens = d_up if yc < y_crest else d_lo
        cv.ellipse((yc, 0.0), ry, region_w, dens * 0.9)
        cv.ellipse((yc, 0.0), ry * (1 - c_up), region_w * (1 - c_up), dens * 0.9 * (m_up - 1.0))
    # sacrum
    cv.ellipse((y_s1 + 0.04 * stature, 0.0), 0.045 * stature, 0.03 * stature, d_lo * 0.6)

    # ribs (12 pairs from the thoracic vertebrae), sternum, clavicles, scapulae
    for i, (top, _, _, _) in enumerate(vertebrae[7:19]):
        span = sh_hw * (0.55 + 0.45 * math.sin(math.pi * (i + 2) / 15))
        drop = (0.02 + 0.004 * i) * stature
        pts = [(top, 0.8 * s), (top + 0.2 * drop, 0.6 * span), (top + 0.6 * drop, span),
               (top + drop, 0.85 * span)]
        for side in (-1, 1):
            for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
                cv.capsule((y0, side * x0), (y1, side * x1), 0.45 * s * (1 - 0.3 * st["vertebral_loss"]),
                           d_up * 0.3)
    cv.capsule((y_sh + 0.01 * stature, 0.0), (y_sh + 0.11 * stature, 0.0), 0.9 * s, d_up * 0.5)
    for side in (-1, 1):
        cv.bone((y_sh - 0.004 * stature, side * 1.5 * s), (y_sh - 0.012 * stature, side * sh_hw * 0.95),
                0.7 * s, d_up, c_up, m_up, plate)
        cv.ellipse((y_sh + 0.05 * stature, side * sh_hw * 0.62), 0.055 * stature, 0.035 * stature,
                   d_up * 0.3)

    # arms
    abd = math.radians(rng.uniform(3.0, 12.0))
    for side in (-1, 1):
        a = abd + rng.normal(0, math.radians(2))
        sh_pt = (y_sh + 0.01 * stature, side * sh_hw)
        dy, dx = math.cos(a), side * math.sin(a)
        hum, fore, hand = 0.186 * stature, 0.146 * stature, 0.09 * stature
        elbow = (sh_pt[0] + hum * dy, sh_pt[1] + hum * dx)
        wrist = (elbow[0] + fore * dy, elbow[1] + fore * dx + side * 0.01 * stature)
        cv.ellipse(sh_pt, 1.6 * s * (0.6 + 0.4 * st["epiphysis"]), 1.6 * s, d_up * 0.6)
        cv.bone(sh_pt, elbow, 1.2 * s, d_up, c_up, m_up, plate)
        for off in (-0.6, 0.6):
            cv.bone((elbow[0], elbow[1] + off * s), (wrist[0], wrist[1] + off * s), 0.55 * s,
                    d_up, c_up, m_up, plate)
        cv.ellipse((wrist[0] + hand / 2, wrist[1]), hand / 2, 0.035 * stature, d_up * 0.45)

    # pelvis: iliac wings, pubis
    for side in (-1, 1):
        wing = (y_crest + 0.045 * stature, side * pel_hw * 0.6)
        cv.ellipse(wing, 0.05 * stature, pel_hw * 0.5, d_lo * 0.7)
        cv.ellipse(wing, 0.05 * stature * (1 - c_lo), pel_hw * 0.5 * (1 - c_lo), d_lo * 0.7 * (m_lo - 1.0))
        cv.capsule((y_hip + 0.01 * stature, side * pel_hw * 0.5), (y_hip + 0.04 * stature, side * 0.5 * s),
                   0.8 * s, d_lo * 0.6)

    # legs
    for side in (-1, 1):
        hip_pt = (y_hip, side * pel_hw * 0.62)
        knee_pt = (y_knee, side * pel_hw * 0.42)
        ankle_pt = (y_ankle, side * pel_hw * 0.40)
        cv.ellipse(hip_pt, 1.9 * s * (0.5 + 0.5 * st["epiphysis"]), 1.9 * s, d_lo * 0.7)
        cv.bone(hip_pt, knee_pt, 1.45 * s, d_lo, c_lo, m_lo, plate)
        cv.ellipse((y_knee + 0.005 * stature, knee_pt[1]), 1.2 * s, 1.2 * s, d_lo * 0.5 * st["epiphysis"])
        cv.bone((y_knee + 0.015 * stature, knee_pt[1] - side * 0.3 * s), ankle_pt, 1.15 * s, d_lo, c_lo, m_lo,
                plate)
        cv.bone((y_knee + 0.02 * stature, knee_pt[1] + side * 1.6 * s),
                (y_ankle, ankle_pt[1] + side * 1.7 * s), 0.45 * s, d_lo, c_lo, m_lo, plate)
        cv.ellipse((y_ankle + 0.02 * stature, ankle_pt[1]), 0.018 * stature, 0.03 * stature, d_lo * 0.5)

    img = np.clip(cv.img * 0.7, 0.0, 1.0)
    img = acquisition(img, rng, noise=0.02, exposure=(0.85, 1.15), contrast=(0.85, 1.2))
    img = text_marker(img, rng, value=0.9)
    truth = {k: round(float(v), 6) for k, v in st.items()}
    truth.update(stature_cm=round(stature - total, 3), height_loss_cm=round(total, 3))
    return img, truth


def volume_geometry(slices: int) -> dict:
    """The voxel grid of a phantom volume with ``slices`` axial slices: a 2-D phantom image of
    ``2 * slices`` x ``0.3 * 2 * slices`` px (the paper's 3000 x 900 shape) at the 2-D phantom's
    scanner scale; slices twice as thick as the in-plane pixels (CT's usual anisotropy)."""
    if slices < 16:
        raise ValueError(f"slices must be >= 16, got {slices}")
    height = 2 * slices
    pixel = round(FOV_MM / height, 4)  # DICOM decimal strings carry 16 characters; NIfTI gets the same value
    return {"height": height, "width": max(16, round(0.3 * height)), "pixel_mm": pixel, "slice_mm": round(2 * pixel, 4),
            "depth": max(4, round(BODY_DEPTH_MM / pixel))}


def body_volume(image: np.ndarray, slices: int, depth: int) -> np.ndarray:
    """Hounsfield units [slice (head first), row (front to back), column (patient's right to left)]
    whose coronal maximum-intensity projection in the window ``PHANTOM_HU`` is ``image`` with each
    pair of rows averaged into one slice.

    The 2-D image is extruded front to back: every column of a slice holds its gray value at the
    body's mid-plane, falling off parabolically to the front and back of a slab ``depth`` rows
    deep, air outside it. Chose extrusion over modelling the skeleton in 3-D because it carries
    every age cue of the 2-D phantom through the projection unchanged, and is fast.
    """
    low, high = PHANTOM_HU
    per_slice = cv2.resize(image.astype(np.float32), (image.shape[1], slices), interpolation=cv2.INTER_AREA)
    rows = np.arange(depth, dtype=np.float32)
    profile = 1.0 - ((rows - depth // 2) / (0.45 * depth)) ** 2  # exactly 1 at the mid-plane row
    hu = low + per_slice[:, None, :] * (high - low) * profile[None, :, None]
    return np.rint(np.where(profile[None, :, None] >= 0, hu, AIR_HU)).astype(np.float32)  # whole HU, as stored


def _origin(hu: np.ndarray, pixel: float) -> tuple[float, float]:
    """(x, y) in mm (DICOM patient coordinates, LPS) of the first voxel: the body centred."""
    return round(-(hu.shape[2] - 1) / 2 * pixel, 3), round(-(hu.shape[1] - 1) / 2 * pixel, 3)


def write_series(folder: str | Path, hu: np.ndarray, pixel_mm: float, slice_mm: float, subject: str,
                 sex: str, uid_seed: list[int]) -> None:
    """An axial CT series, one file per slice (head first): 12 bits stored in 16 as HU + 1024
    (RescaleIntercept -1024), position, orientation and spacing tags; synthetic ids only."""
    from pydicom.uid import CTImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored = (hu + 1024.0).clip(0, 4095).astype(np.uint16)
    study, series, frame = (generate_uid(entropy_srcs=["boneage-phantom", *map(str, uid_seed), kind])
                            for kind in ("study", "series", "frame"))
    x0, y0 = _origin(hu, pixel_mm)
    for k in range(hu.shape[0]):
        z = round(-k * slice_mm, 4)
        save_dicom(folder / f"slice_{k:04d}.dcm", stored[k], modality="CT", sop_class=CTImageStorage,
                   patient_id=f"PHANTOM-{subject}", sex=sex, bits_stored=12, rescale=(1, -1024),
                   window=(650, 1700), uid_seed=[*map(str, uid_seed), str(k)],  # window: PHANTOM_HU
                   StudyInstanceUID=study, SeriesInstanceUID=series, FrameOfReferenceUID=frame,
                   SeriesNumber=1, InstanceNumber=k + 1, ImageType=["DERIVED", "SECONDARY", "AXIAL"],
                   SeriesDescription="whole-body CT phantom (synthetic)", RescaleType="HU",
                   ImagePositionPatient=[x0, y0, z], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                   SliceLocation=z, SliceThickness=slice_mm, PixelSpacing=[pixel_mm, pixel_mm])


def write_nifti(path: str | Path, hu: np.ndarray, pixel_mm: float, slice_mm: float) -> None:
    """The same volume as :func:`write_series` as int16 HU in a NIfTI file, stored as a DICOM
    converter often leaves it (x to the patient's left, y to the back, slices head first: "LPI"),
    so readers must use the affine."""
    import nibabel as nib

    x0, y0 = _origin(hu, pixel_mm)
    affine = np.array([[-pixel_mm, 0, 0, -x0], [0, -pixel_mm, 0, -y0], [0, 0, -slice_mm, 0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(hu.astype(np.int16).transpose(2, 1, 0), affine)  # (x, y, z)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))


def render(out: str | Path, n: int = 300, seed: int = 0, label_noise_sigma: float = DEFAULT_SIGMA,
           height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH, progress: bool = True,
           format: str = "png", slices: int = DEFAULT_SLICES) -> Path:
    """Write ``n`` whole-body CT phantom subjects with ``labels.csv``; returns the CSV's path.

    ``format``: "png" (2-D images of ``height`` x ``width``; the paper's average is 3000 x 900;
    tests use e.g. 320 x 96), "series" (a folder of axial DICOM slices per subject under
    ``series/``) or "nifti" (a ``.nii.gz`` per subject under ``volumes/``); volumes have
    ``slices`` slices (see :func:`volume_geometry`), and their projection is the 2-D phantom
    (:func:`body_volume`). The same seed gives the same subjects in every format. Labels are the
    true age + N(0, sigma^2) years, clipped at 0.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    geometry = volume_geometry(slices) if format != "png" else None
    if geometry:
        height, width = geometry["height"], geometry["width"]
    if height < 32 or width < 16:
        raise ValueError(f"image size {height}x{width} is too small (at least 32x16)")
    out = Path(out)
    folder = {"png": "images", "series": "series", "nifti": "volumes"}[format]
    (out / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ages = sample_ages(n, rng)
    male = rng.random(n) >= FEMALE_SHARE
    labels = noisy_labels(ages, label_noise_sigma, rng, low=0.0)
    rows, truth_rows = [], []
    for i in progress_bar(range(n), n, "whole-body CT phantom", progress):
        img, truth = render_one(float(ages[i]), bool(male[i]), height, width,
                                np.random.default_rng([seed, i]))
        sex = "M" if male[i] else "F"
        if format == "png":
            name = f"images/ct_{i:05d}.png"
            save_gray_png(out / name, img)
        else:
            hu = body_volume(img, slices, geometry["depth"])
            pixel, thick = geometry["pixel_mm"], geometry["slice_mm"]
            if format == "series":
                name = f"series/ct_{i:05d}"
                write_series(out / name, hu, pixel, thick, f"ct_{i:05d}", sex, [seed, i])
            else:
                name = f"volumes/ct_{i:05d}.nii.gz"
                write_nifti(out / name, hu, pixel, thick)
        rows.append({"image": name, "age_years": round(float(labels[i]), 3), "sex": sex})
        truth_rows.append({"image": name, "true_age_years": round(float(ages[i]), 4), "sex": sex, **truth})
    csv = out / LABEL_FILE
    pd.DataFrame(rows).to_csv(csv, index=False)
    pd.DataFrame(truth_rows).to_csv(out / TRUTH_FILE, index=False)
    extra = {"format": format, "height": height, "width": width, "female_share": float(1 - male.mean())}
    if geometry:
        extra.update(slices=slices, depth=geometry["depth"], pixel_mm=geometry["pixel_mm"],
                     slice_mm=geometry["slice_mm"], hu_of_gray_0_and_1=list(PHANTOM_HU))
    PhantomMetadata(generator=NAME, n=n, seed=seed, label_noise_sigma=label_noise_sigma, units="years",
                    label_file=LABEL_FILE, extra=extra).write(out)
    if progress:
        what = (f"images ({height}x{width})" if format == "png" else
                f"{'DICOM series' if format == 'series' else 'NIfTI volumes'} ({slices} slices of "
                f"{geometry['depth']}x{width} voxels)")
        print(f"wrote {n} whole-body CT phantom {what} and {csv}")
    return csv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=300, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-noise-sigma", type=float, default=DEFAULT_SIGMA, help="years")
    parser.add_argument("--format", choices=FORMATS, default="png",
                        help="png: 2-D images; series: an axial DICOM series folder per subject; "
                             "nifti: a .nii.gz volume per subject")
    parser.add_argument("--height", type=int, default=None,
                        help=f"png image height (default {DEFAULT_HEIGHT}; paper: ~3000)")
    parser.add_argument("--width", type=int, default=None,
                        help=f"png image width (default {DEFAULT_WIDTH}; paper: ~900)")
    parser.add_argument("--slices", type=int, default=None,
                        help=f"series/nifti: axial slices per volume (default {DEFAULT_SLICES})")


def main(args: argparse.Namespace) -> None:
    volume = args.format != "png"
    for flag, value, ok in (("--height", args.height, not volume), ("--width", args.width, not volume),
                            ("--slices", args.slices, volume)):
        if value is not None and not ok:
            raise SystemExit(f"boneage-phantom wholebody_ct: {flag} does not apply to --format {args.format} "
                             "(--height/--width size the PNGs, --slices the volumes)")
    render(args.out, n=args.n, seed=args.seed, label_noise_sigma=args.label_noise_sigma,
           height=args.height or DEFAULT_HEIGHT, width=args.width or DEFAULT_WIDTH, format=args.format,
           slices=args.slices or DEFAULT_SLICES)
