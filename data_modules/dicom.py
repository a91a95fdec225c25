"""DICOM images in, uint8 network inputs out: pixel data, intensity windows, two-view bone scans.

- :func:`read_dicom`: the frames of a file as float32 in modality units (stored values through
  the Modality LUT or RescaleSlope/RescaleIntercept: Hounsfield units for CT, counts for NM),
  plus what the display pipeline needs (``meta``: MONOCHROME1, VOI LUT / window, bits).
- :func:`to_uint8`: an image with more than 8 bits -> uint8 through a **window** (the DataModule
  argument ``window``):

  * ``"dicom"``: the file's own VOI LUT or WindowCenter/WindowWidth (its first one; pydicom's
    ``apply_voi_lut``, so LINEAR, LINEAR_EXACT and SIGMOID are honoured). A file without one
    (and every 16-bit PNG/TIFF) falls back to ``"percentile"``, said once per process;
  * ``[low, high]``: a fixed window in modality units (HU, counts), the same for every image;
  * ``"percentile"``: the image's own 0.5-99.5 percentiles (what the readers did before).

  8-bit files stay as they are (MONOCHROME1 inverted). MONOCHROME1 is inverted *after* the
  window, as the DICOM display pipeline does (Modality LUT -> VOI LUT -> presentation), so
  windows stay in the file's own units whatever its photometric interpretation.
- :func:`read_dicom_gray`: one file -> uint8 image. One frame is the image; two frames of an NM
  whole-body scan are the anterior and posterior views side by side (:func:`two_views`).
- :func:`header_sex_age`: PatientSex and the age (PatientAge, or PatientBirthDate with
  StudyDate) from the header, for callers whose table has no such column.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder

from data_modules.base import DataError, read_raw  # base imports this module lazily: no cycle

DICOM_SUFFIXES = (".dcm", ".dicom")
WINDOWS = ("dicom", "percentile")
PERCENTILES = (0.5, 99.5)
_said: set[str] = set()  # the "no DICOM window" fallback is said once per process


def check_window(window: Any) -> str | tuple[float, float]:
    """A valid window setting ("dicom", "percentile" or (low, high) with low < high), else ValueError."""
    if isinstance(window, str) and window in WINDOWS:
        return window
    if isinstance(window, Sequence) and not isinstance(window, str) and len(window) == 2:
        try:
            low, high = float(window[0]), float(window[1])
        except (TypeError, ValueError):
            low = high = float("nan")
        if low < high:
            return (low, high)
    raise ValueError(f"window must be 'dicom', 'percentile' or [low, high] (low < high, in the images' stored or "
                     f"Hounsfield units), got {window!r}")


def read_dicom(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Frames [F, H, W] of a DICOM file as float32 in modality units, and its display metadata.

    ``meta``: ``dataset`` (the pydicom Dataset without its pixel data), ``monochrome1``,
    ``bits_stored``, ``eight_bit`` (stored in 8 bits with no rescale: kept as it is),
    ``modality``, ``has_window`` (a VOI LUT or window centre/width to use with ``window="dicom"``).
    Raises :class:`DataError` naming the file for a non-DICOM file, a file without pixel data,
    or pixel data that no installed plugin can decode (naming the transfer syntax and the
    package to install).
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (InvalidDicomError, OSError, ValueError) as err:
        raise DataError(f"cannot read DICOM file {path}: {err}; replace it or remove its row from the label "
                        "table") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(f"DICOM file {path} has no pixel data (a report, presentation state or header-only "
                        f"file, SOP class {ds.get('SOPClassUID', '?')}); point the table at the image files or "
                        "remove its row")
    frames = _pixels(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        frames = apply_color_lut(frames, ds)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    color = int(ds.get("SamplesPerPixel", 1)) == 3 or photometric == "PALETTE COLOR"
    if color:  # screenshots, secondary captures: to gray, already display values
        frames = frames.reshape(n, *frames.shape[-3:])
        if frames.dtype != np.uint8:
            frames = (frames >> 8).astype(np.uint8)  # 16-bit palette entries
        frames = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    else:
        frames = frames.reshape(n, *frames.shape[-2:])
    rescaled = "ModalityLUTSequence" in ds or float(ds.get("RescaleSlope", 1) or 1) != 1 or float(
        ds.get("RescaleIntercept", 0) or 0) != 0
    eight_bit = color or (int(ds.get("BitsAllocated", 16)) == 8 and not rescaled)
    if not eight_bit:
        frames = apply_modality_lut(frames, ds)
    for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):  # the header only travels as meta
        if key in ds:
            del ds[key]
    meta = {"dataset": ds, "monochrome1": photometric == "MONOCHROME1", "eight_bit": eight_bit,
            "bits_stored": int(ds.get("BitsStored", 8 if eight_bit else 16)), "modality": str(ds.get("Modality", "")),
            "has_window": bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)}
    return np.asarray(frames, np.float32), meta


def _pixels(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """Decoded pixel data, or a DataError naming the file, the transfer syntax and what to install."""
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    syntax = f"'{uid.name}' ({uid})" if uid else "(no transfer syntax in the file meta)"
    if uid:
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            raise DataError(f"cannot decode {path}: transfer syntax {syntax} is not supported by pydicom; "
                            "convert the file to an uncompressed syntax (e.g. 'gdcmconv --raw' or dcmtk's "
                            "'dcmdjpeg')") from None
        if not decoder.is_available:
            raise DataError(f"cannot decode {path}: no installed pydicom plugin decodes transfer syntax {syntax}; "
                            f"install one of: {_install_hint(decoder.missing_dependencies)}")
    try:
        return ds.pixel_array
    except Exception as err:  # a plugin that exists but fails on this file
        raise DataError(f"cannot decode the pixel data of {path} (transfer syntax {syntax}): {err}".replace("\n", " ")
                        ) from None


def _install_hint(missing: Sequence[str]) -> str:
    """pydicom's missing plugin dependencies ('pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1')
    as pip commands ('pip install pylibjpeg pylibjpeg-libjpeg')."""
    pip_names = {"gdcm": "python-gdcm"}  # the only plugin whose import name is not its pip name
    commands = []
    for line in missing:
        needs = line.split("requires", 1)[-1]
        names = [pip_names.get(m, m) for m in re.findall(r"([A-Za-z][\w.-]*?)\s*(?:[<>=!~]|\band\b|$)", needs)]
        names = [m for m in names if m not in ("numpy", "and")]
        if names:
            commands.append("'pip install " + " ".join(names) + "'")
    return ", ".join(commands) or "'pip install python-gdcm'"


def to_uint8(img: np.ndarray, window: str | Sequence[float], source: str | Path = "",
             meta: dict[str, Any] | None = None) -> np.ndarray:
    """An image in stored/modality units -> uint8 through ``window`` (see the module docstring)."""
    meta = meta or {}
    if img.dtype == np.uint8 or meta.get("eight_bit"):
        out = np.asarray(img).astype(np.uint8)
        return 255 - out if meta.get("monochrome1") else out
    window = check_window(window)
    img = np.asarray(img, np.float32)
    if window == "dicom":
        if meta.get("has_window"):
            out = _scaled(*_dicom_window(img, meta["dataset"]))
            return 255 - out if meta.get("monochrome1") else out
        if "no-window" not in _said:
            _said.add("no-window")
            warnings.warn(f"window 'dicom': {source} has no DICOM window (VOI LUT or window centre/width); images "
                          f"without one are scaled to their own {PERCENTILES[0]}-{PERCENTILES[1]} percentiles "
                          "(said once; set data.init_args.window to [low, high] for a fixed window)", stacklevel=2)
        window = "percentile"
    low, high = np.percentile(img, PERCENTILES) if window == "percentile" else window
    out = _scaled(img, float(low), float(high))
    return 255 - out if meta.get("monochrome1") else out


def _dicom_window(img: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, float, float]:
    """The file's first VOI LUT or window applied by pydicom, and that output's range (its values for
    inputs far below and far above the window)."""
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if not ds.get("VOILUTSequence") and function == "LINEAR":
        # PS3.3 C.11.2.1.2.1: the linear window runs from c - 0.5 - (w - 1) / 2 to c - 0.5 + (w - 1) / 2.
        # Done here in float32: pydicom's float64 path takes 4x longer (88 against 20 ms, 2000 x 1600).
        centre, width = (float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)
                         for v in (ds.WindowCenter, ds.WindowWidth))
        return img, centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
    ends = np.array([-1e7, 1e7])
    if ds.get("VOILUTSequence"):  # a LUT indexes integers
        img = np.rint(img).astype(np.int64)
        ends = ends.astype(np.int64)
    with np.errstate(over="ignore"):  # SIGMOID at the far ends
        out = apply_voi_lut(img, ds)
        low, high = apply_voi_lut(ends, ds)
    return np.asarray(out, np.float32), float(low), float(high)


def _scaled(img: np.ndarray, low: float, high: float) -> np.ndarray:
    """[low, high] -> [0, 255], clipped, rounded (high < low, a decreasing LUT, inverts)."""
    if high == low:
        high = low + 1.0
    return np.clip(np.rint((img - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def two_views(anterior: np.ndarray, posterior: np.ndarray, source: str | Path = "") -> np.ndarray:
    """Anterior and posterior views of a whole-body scan side by side, posterior mirrored.

    Chose to mirror the posterior view because a posterior detector sees the patient from behind
    (the patient's right on the image's right); mirrored, both views show the patient's right on
    the same side, the layout of the scintigraphy phantom's PNGs (anterior left, posterior right).
    """
    if anterior.shape != posterior.shape:
        raise DataError(f"{source}: the anterior view is {anterior.shape[1]}x{anterior.shape[0]} but the posterior "
                        f"view is {posterior.shape[1]}x{posterior.shape[0]}; both views of a scan must have one size")
    return np.concatenate([anterior, posterior[:, ::-1]], axis=1)


def read_dicom_gray(path: str | Path, window: str | Sequence[float] = "dicom") -> np.ndarray:
    """One DICOM file -> uint8 image: one frame as it is; two frames of an NM file (a whole-body bone
    scan) as anterior (frame 1) and mirrored posterior (frame 2) side by side, windowed together."""
    frames, meta = read_dicom(path)
    if len(frames) == 1:
        img = frames[0]
    elif len(frames) == 2 and meta["modality"] == "NM":
        img = two_views(frames[0], frames[1], path)
    else:
        raise DataError(f"{path} has {len(frames)} frames ({meta['modality'] or 'no modality'}); a 2-D image table "
                        "reads single-frame files or two-frame NM whole-body scans (anterior, posterior); "
                        "CT series belong in a CT volume folder")
    return to_uint8(img, window, path, meta)


def read_two_files(anterior: str | Path, posterior: str | Path, window: str | Sequence[float] = "dicom") -> np.ndarray:
    """Anterior and posterior views stored as two single-frame files (DICOM or 16/8-bit images) -> one
    side-by-side uint8 image, windowed together (the window, if "dicom", is the anterior file's)."""
    (a, meta), (p, _) = read_raw(anterior), read_raw(posterior)
    return to_uint8(two_views(a, p, f"{anterior} + {posterior}"), window, anterior, meta)


def header_sex_age(path: str | Path) -> tuple[float | None, float | None]:
    """(sex: 1.0 male, 0.0 female, None unknown; age in years or None) from a DICOM header.

    Age: PatientAge ('012Y', '144M', '030W', '010D') or else PatientBirthDate to StudyDate
    (AcquisitionDate, SeriesDate when StudyDate is missing).
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as err:
        raise DataError(f"cannot read the DICOM header of {path}: {err}") from None
    sex = {"M": 1.0, "F": 0.0}.get(str(ds.get("PatientSex", "")).strip().upper())
    age = None
    match = re.fullmatch(r"(\d{1,3})\s*([DWMY])", str(ds.get("PatientAge", "")).strip().upper())
    if match:
        age = int(match.group(1)) / {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}[match.group(2)]
    else:
        born = _date(ds.get("PatientBirthDate"))
        seen = next((d for d in map(_date, (ds.get(k) for k in ("StudyDate", "AcquisitionDate", "SeriesDate"))) if d),
                    None)
        if born and seen and seen >= born:
            age = (seen - born).days / 365.25
    return sex, age


def _date(value: Any) -> date | None:
    text = str(value or "").strip()
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])) if len(text) >= 8 else None
    except ValueError:
        return None
