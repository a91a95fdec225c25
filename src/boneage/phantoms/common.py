"""Shared conventions of the phantom data sets.

Every generator writes:

- images in the on-disk format of the real data set it stands in for;
- a label table in that data set's format (RSNA CSV, or the generic hospital CSV
  ``image,age_years,sex`` with ``sex`` in {"F", "M"});
- ``phantom.json`` beside the data, holding the generator name, seed, count, the label
  noise sigma and the irreducible MAE it implies (``sigma * sqrt(2/pi)``), in the label's
  units, so tests and the demo can report MAE divided by that floor.

The written label is the true maturity plus Gaussian noise of ``label_noise_sigma``; the
true (noise-free) age is also stored in ``phantom_truth.csv`` for analyses that need it.
Phantoms are not a claim about clinical accuracy: they make every pipeline runnable and
testable before real data arrives.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

METADATA_FILE = "phantom.json"
TRUTH_FILE = "phantom_truth.csv"


def noise_floor(sigma: float) -> float:
    """Expected absolute error of a perfect predictor when labels carry N(0, sigma^2) noise."""
    return float(sigma) * math.sqrt(2.0 / math.pi)


@dataclass
class PhantomMetadata:
    """What a phantom generator writes into ``phantom.json``."""

    generator: str
    n: int
    seed: int
    label_noise_sigma: float
    units: str  # "months" or "years": the units of the written age label
    label_file: str
    noise_floor_mae: float = field(init=False)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.noise_floor_mae = noise_floor(self.label_noise_sigma)

    def write(self, root: str | Path) -> Path:
        path = Path(root) / METADATA_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def read_metadata(root: str | Path) -> dict | None:
    """The phantom metadata of a data root, or None when the data is not a phantom."""
    path = Path(root) / METADATA_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def noisy_labels(true_age: np.ndarray, sigma: float, rng: np.random.Generator,
                 low: float | None = None, high: float | None = None) -> np.ndarray:
    """Written label = true age + N(0, sigma^2).

    Clipping to [low, high] is allowed only where the real data's labels are bounded; the
    floor in phantom.json ignores it (clipping only lowers the achievable error slightly).
    """
    labels = true_age + rng.normal(0.0, sigma, size=np.shape(true_age))
    if low is not None or high is not None:
        labels = np.clip(labels, low, high)
    return labels


def save_gray_png(path: str | Path, image: np.ndarray, bit_depth: int = 8) -> None:
    """Save a float image in [0, 1] as an 8- or 16-bit grayscale PNG."""
    image = np.clip(image, 0.0, 1.0)
    if bit_depth == 16:
        Image.fromarray((image * 65535.0 + 0.5).astype(np.uint16)).save(path)
    elif bit_depth == 8:
        Image.fromarray((image * 255.0 + 0.5).astype(np.uint8)).save(path)
    else:
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")


# SOP classes of the phantoms' DICOM files
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"  # Nuclear Medicine Image Storage


def save_dicom(path: str | Path, pixels: np.ndarray, *, modality: str, sop_class: str, patient_id: str,
               sex: str, bits_stored: int, photometric: str = "MONOCHROME2", rescale: tuple[float, float] | None = None,
               window: tuple[float, float] | None = None, age_years: float | None = None,
               uid_seed: Sequence[str] = (), **tags: object) -> None:
    """Write ``pixels`` (one frame [H, W] or frames [F, H, W], unsigned integers) as a DICOM file.

    Synthetic identifiers only: ``patient_id`` (e.g. "PHANTOM-0001") is also the patient name, no
    dates of birth, institutions or people; UIDs derive from ``uid_seed`` (the same phantom gets
    the same UIDs). ``rescale`` is (slope, intercept); ``window`` (centre, width) in modality units.
    Further ``tags`` are set by keyword (e.g. ``DetectorVector=[1, 2]``).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=["boneage-phantom", *map(str, uid_seed), kind])

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid("instance")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.Modality, ds.Manufacturer = modality, "boneage phantom (synthetic data)"
    ds.PatientName, ds.PatientID, ds.PatientSex = patient_id, patient_id, sex
    if age_years is not None:
        ds.PatientAge = f"{min(int(age_years), 999):03d}Y"
    ds.BurnedInAnnotation = "NO"
    ds.set_pixel_data(np.ascontiguousarray(pixels), photometric, bits_stored)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:g}", f"{rescale[1]:g}"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


def full_range_window(bits_stored: int, slope: float, intercept: float) -> tuple[float, float]:
    """DICOM (centre, width) whose linear window maps the whole stored range [0, 2**bits - 1], in
    modality units, onto the whole display range (PS3.3 C.11.2.1.2: the window runs from
    ``c - 0.5 - (w - 1) / 2`` to ``c - 0.5 + (w - 1) / 2``)."""
    low, high = intercept, (2 ** bits_stored - 1) * slope + intercept
    return (low + high) / 2 + 0.5, high - low + 1


def progress(items: Iterable, total: int, desc: str, enabled: bool = True) -> Iterator:
    """A tqdm progress bar (rendering many images takes a while); silent when disabled."""
    if not enabled:
        yield from items
        return
    import sys

    from tqdm.auto import tqdm

    yield from tqdm(items, total=total, desc=desc, unit="img", leave=False,
                    mininterval=0.5 if sys.stderr.isatty() else 30.0)


# --- small drawing helpers shared by generators (numpy only, fast enough for tests) ---

def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) of an h x w image."""
    return np.mgrid[0:h, 0:w].astype(np.float32)


def ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float,
            angle: float = 0.0, soft: float = 1.0) -> np.ndarray:
    """Soft-edged filled ellipse in [0, 1]; ``soft`` is the edge width in pixels."""
    c, s = math.cos(angle), math.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / max(rx, 1e-3)
    v = (-dx * s + dy * c) / max(ry, 1e-3)
    r = np.sqrt(u * u + v * v)
    edge = soft / max(min(rx, ry), 1e-3)
    return np.clip((1.0 - r) / max(edge, 1e-6), 0.0, 1.0)


def capsule(yy: np.ndarray, xx: np.ndarray, y0: float, x0: float, y1: float, x1: float,
            radius: float, soft: float = 1.0) -> np.ndarray:
    """Soft-edged capsule (a bone shaft) from (y0, x0) to (y1, x1)."""
    py, px = yy - y0, xx - x0
    by, bx = y1 - y0, x1 - x0
    t = np.clip((py * by + px * bx) / max(by * by + bx * bx, 1e-6), 0.0, 1.0)
    d = np.sqrt((py - t * by) ** 2 + (px - t * bx) ** 2)
    return np.clip((radius - d) / max(soft, 1e-6), 0.0, 1.0)


def acquisition(image: np.ndarray, rng: np.random.Generator, noise: float = 0.03,
                exposure: tuple[float, float] = (0.8, 1.15),
                contrast: tuple[float, float] = (0.8, 1.25)) -> np.ndarray:
    """Exposure, contrast (gamma) and quantum-like noise of an acquisition."""
    gain = rng.uniform(*exposure)
    gamma = rng.uniform(*contrast)
    out = np.clip(image * gain, 0.0, 1.0) ** gamma
    out = out + rng.normal(0.0, noise, size=out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def text_marker(image: np.ndarray, rng: np.random.Generator, value: float = 1.0) -> np.ndarray:
    """Burn a side marker ("L"/"R"-like block glyph) into a random corner, as real films have."""
    h, w = image.shape
    s = max(4, min(h, w) // 20)
    y = int(rng.choice([s, h - 3 * s]))
    x = int(rng.choice([s, w - 3 * s]))
    out = image.copy()
    out[y:y + 2 * s, x:x + s // 2 + 1] = value
    if rng.random() < 0.5:  # an "L"
        out[y + 2 * s - s // 2:y + 2 * s, x:x + 2 * s] = value
    else:  # a "T"-ish "R" stand-in
        out[y:y + s // 2 + 1, x:x + 2 * s] = value
    return out
