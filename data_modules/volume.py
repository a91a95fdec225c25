"""CT volumes in, the 2-D whole-body bone image of paper 002 out.

:func:`read_volume` reads a DICOM series folder or a NIfTI file (``.nii``, ``.nii.gz``) and
returns a :class:`Volume`: Hounsfield units, voxel spacing in mm, and the orientation of the
array's axes, always ``RAS`` (axis 0 towards the patient's right, 1 anterior, 2 superior),
whatever the source's. :func:`project` turns it into the coronal image the CT DataModule
trains on; :func:`projection_file` / :func:`write_projection` cache that image as a PNG.

Library choice: pydicom for DICOM series (the project already reads DICOM images with it)
and nibabel for NIfTI, whose orientation tools (``as_closest_canonical``) also reorient the
DICOM series, so both sources meet in one convention. Chose these rather than SimpleITK (a
large binary dependency for two readers we need) or MONAI (its loaders wrap these same
libraries and bring torch-side transforms we do not use).

Projection (paper 002 is silent on how its "whole-body CT bone images" were made from the
scans; it only gives their size, about 3000 x 900 px):

- chose a coronal maximum-intensity projection (MIP) of a bone window, because a MIP over
  the front-to-back axis shows the whole skeleton in one image, bone over soft tissue, as
  the paper's figures do; ``"mean"`` (an average along the same rays, a radiograph-like
  image) is the alternative;
- chose the window [-200, 1500] HU: from fat and soft tissue (a faint body outline, black
  air) to dense cortical bone, mostly unsaturated; close to the usual bone window (width
  1800-2000 HU around 400-500 HU);
- aspect: the image is resampled to square pixels of ``spacing_mm`` (default the finer of
  the left-right and head-foot spacings, so no detail is lost: about 0.7-1 mm for a
  whole-body scan, near the paper's ~0.6 mm per pixel), height from the head-foot extent
  and width from the left-right extent in mm; area averaging where an axis shrinks,
  linear interpolation where it grows;
- orientation: head up, the patient's right on the image's left (the radiological
  convention, as a coronal image is read), as the 2-D CT phantom images are.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import cv2
import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale

from data_modules.base import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PROJECTIONS = ("mip", "mean")
DEFAULT_HU_WINDOW = (-200.0, 1500.0)
MAX_GAP = 1.5  # a step between slices over this many median steps is a missing slice
_VERSION = 1  # part of the projection cache key: bump when the projection changes


class Volume(NamedTuple):
    """A CT volume: ``hu`` float32 Hounsfield units with axes (x, y, z); ``spacing`` mm along
    them; ``orientation`` the axis codes of the array (``"RAS"``)."""

    hu: np.ndarray
    spacing: tuple[float, float, float]
    orientation: str


def is_volume(path: str | Path) -> bool:
    """A folder (a DICOM series) or a NIfTI file name."""
    p = Path(path)
    return p.is_dir() or p.name.lower().endswith(NIFTI_SUFFIXES)


def read_volume(path: str | Path) -> Volume:
    """A DICOM series folder or a NIfTI file, in Hounsfield units, reoriented to RAS."""
    p = Path(path)
    if p.is_dir():
        return read_dicom_series(p)
    if p.name.lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(p)
    raise DataError(f"{p} is not a CT volume: give a folder holding one DICOM series or a .nii/.nii.gz file")


def _canonical(image: nib.Nifti1Image) -> Volume:
    canon = nib.as_closest_canonical(image)
    hu = np.asarray(canon.dataobj, dtype=np.float32)
    spacing = tuple(float(s) for s in nib.affines.voxel_sizes(canon.affine))
    return Volume(hu, spacing, "".join(nib.aff2axcodes(canon.affine)))


def read_nifti(path: str | Path) -> Volume:
    """A 3-D NIfTI file (a 4-D one with a single volume is accepted); scaling applied."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CT volume file not found: {path}")
    try:
        image = nib.load(path)
        if len(image.shape) == 4 and image.shape[3] == 1:
            image = nib.funcs.squeeze_image(image)
        if len(image.shape) != 3 or min(image.shape) < 2:
            raise DataError(f"{path} is not a CT volume: its data has shape {tuple(image.shape)}, expected three "
                            "axes of at least 2 voxels; give one 3-D volume per row")
        # as float: scl_slope / scl_inter applied, integer HU kept exact
        image = nib.Nifti1Image(image.get_fdata(dtype=np.float32), image.affine)
    except DataError:
        raise
    except Exception as e:  # nibabel raises ImageFileError, gzip / OS errors for broken files
        raise DataError(f"cannot read NIfTI volume {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                        "replace the file or remove its row") from None
    return _canonical(image)


def _slice_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _read_header(file: Path, folder: Path) -> pydicom.Dataset:
    """A slice's header (no pixel data: the series is checked before anything is decoded)."""
    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
    except InvalidDicomError:
        raise DataError(f"DICOM series {folder}: {file.name} is not a DICOM file; keep only the series' slices "
                        "in the folder") from None
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
        if tag not in ds:
            raise DataError(f"DICOM series {folder}: {file.name} has no {tag}; a CT volume needs axial slices "
                            "with position, orientation and spacing")
    return ds


def _read_hu(file: Path, folder: Path) -> np.ndarray:
    """A slice's pixels in Hounsfield units (RescaleSlope / RescaleIntercept or a Modality LUT)."""
    ds = pydicom.dcmread(file)
    if "PixelData" not in ds:
        raise DataError(f"DICOM series {folder}: {file.name} has no pixel data; remove it or replace it")
    try:
        return apply_rescale(ds.pixel_array, ds)
    except Exception as e:  # compressed pixel data without a decoder plugin, or a broken file
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise DataError(f"DICOM series {folder}: cannot decode {file.name} (transfer syntax "
                        f"{getattr(ts, 'name', ts)}): {_first_line(e)}; install pydicom's decoders "
                        "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm)") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_dicom_series(folder: str | Path) -> Volume:
    """One DICOM series (every file in ``folder``): slices sorted by their position along the
    slice normal, rescale slope / intercept applied, spacing from PixelSpacing and the slice
    positions. Mixed spacing, orientation or size, duplicated or missing slices, fewer than two
    slices or several series in the folder are errors naming the folder."""
    folder = Path(folder)
    files = _slice_files(folder)
    if not files:
        raise DataError(f"DICOM series {folder}: the folder holds no files; put one series' slices in it")
    slices = [(f, _read_header(f, folder)) for f in files]
    if len(slices) < 2:
        f, ds = slices[0]
        multi = int(ds.get("NumberOfFrames", 1) or 1) > 1
        raise DataError(f"DICOM series {folder}: fewer than 2 slices (one file, {f.name}"
                        f"{', a multi-frame image: convert it to NIfTI, e.g. with dcm2niix' if multi else ''}); "
                        "a CT volume needs its axial slices")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise DataError(f"DICOM series {folder}: the folder holds {len(series)} series (SeriesInstanceUID); "
                        "put each series in its own folder")

    def value(ds: pydicom.Dataset, tag: str) -> np.ndarray:
        return np.atleast_1d(np.asarray(ds.get(tag), np.float64))

    first, ref = slices[0]
    for tag, what in (("ImageOrientationPatient", "orientation"), ("PixelSpacing", "pixel spacing"),
                      ("Rows", "image size"), ("Columns", "image size")):
        for f, ds in slices[1:]:
            a, b = value(ref, tag), value(ds, tag)
            if a.shape != b.shape or not np.allclose(a, b, atol=1e-4):
                raise DataError(f"DICOM series {folder}: mixed {what} ({tag} {a.round(4).tolist()} in {first.name}, "
                                f"{b.round(4).tolist()} in {f.name}); a volume has one geometry: keep one series "
                                "per folder")

    iop = np.asarray(slices[0][1].ImageOrientationPatient, np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    pos = np.array([np.dot(np.asarray(ds.ImagePositionPatient, np.float64), normal) for _, ds in slices])
    order = np.argsort(pos, kind="stable")
    slices, pos = [slices[i] for i in order], pos[order]
    steps = np.diff(pos)
    median = float(np.median(steps))
    if steps.min() < 1e-3 * max(median, 1e-3):
        i = int(np.argmin(steps))
        raise DataError(f"DICOM series {folder}: {slices[i][0].name} and {slices[i + 1][0].name} lie at the same "
                        "position; the folder holds a slice twice or two series: keep one")
    if steps.max() > MAX_GAP * median:
        i = int(np.argmax(steps))
        raise DataError(f"DICOM series {folder}: missing slices, a gap of {steps[i]:.2f} mm between "
                        f"{slices[i][0].name} and {slices[i + 1][0].name} where the slices are {median:.2f} mm apart")

    stack = np.empty((len(slices), int(ref.Rows), int(ref.Columns)), np.float32)
    for k, (f, _) in enumerate(slices):  # one decoded slice in memory at a time
        stack[k] = _read_hu(f, folder)

    row_spacing, col_spacing = (float(s) for s in slices[0][1].PixelSpacing)
    step = (pos[-1] - pos[0]) / (len(pos) - 1)  # the mean step keeps the volume's physical extent
    # the stack's axes: (along the normal, down a column, along a row); DICOM is LPS, NIfTI RAS. No
    # transposed copy: reorienting gives a view, and the projection reduces it as it lies in memory
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = normal * step, col_dir * row_spacing, row_dir * col_spacing
    lps[:3, 3] = np.asarray(slices[0][1].ImagePositionPatient, np.float64)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return _canonical(nib.Nifti1Image(stack, ras))


def project(volume: Volume, projection: str = "mip", hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
            spacing_mm: float | None = None) -> np.ndarray:
    """The coronal projection of a RAS volume as a uint8 image, head up, patient's right on the
    left, square pixels of ``spacing_mm`` (default the finer of the x and z spacings)."""
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    low, high = float(hu_window[0]), float(hu_window[1])
    if projection == "mip":
        flat = volume.hu.max(axis=1)  # clipping is monotone: the max of the clipped = the clipped max
    else:
        flat = np.clip(volume.hu, low, high).mean(axis=1)
    flat = np.clip(flat, low, high)
    image = np.ascontiguousarray(flat.T[::-1, ::-1], dtype=np.float32)  # rows: superior first; cols: right first
    sx, _, sz = volume.spacing
    pixel = float(spacing_mm) if spacing_mm else min(sx, sz)
    height = max(1, round(image.shape[0] * sz / pixel))
    width = max(1, round(image.shape[1] * sx / pixel))
    for axis, n in ((0, height), (1, width)):  # one axis at a time: area when shrinking, linear when growing
        if image.shape[axis] != n:
            size = (image.shape[1], n) if axis == 0 else (n, image.shape[0])
            how = cv2.INTER_AREA if n < image.shape[axis] else cv2.INTER_LINEAR
            image = cv2.resize(image, size, interpolation=how)
    return np.clip(np.rint((image - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def projection_file(source: str | Path, folder: str | Path, projection: str = "mip",
                    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW, spacing_mm: float | None = None) -> Path:
    """Where the projection of ``source`` with these settings is cached in ``folder``: a PNG named
    by the source and a key of its files (path, size, modification time) and the settings."""
    source = Path(source)
    files = _slice_files(source) if source.is_dir() else [source]
    stats = [[str(f.resolve()), *((f.stat().st_size, f.stat().st_mtime_ns) if f.exists() else ())] for f in files]
    key = json.dumps([stats, projection, [float(v) for v in hu_window], spacing_mm, _VERSION])
    name = next((source.name[: -len(x)] for x in NIFTI_SUFFIXES[::-1] if source.name.lower().endswith(x)),
                source.name)
    return Path(folder) / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.png"


def write_projection(source: str | Path, out: str | Path, projection: str = "mip",
                     hu_window: tuple[float, float] = DEFAULT_HU_WINDOW, spacing_mm: float | None = None) -> Path:
    """Read ``source``, project it and write the PNG ``out`` atomically; returns ``out``."""
    out = Path(out)
    image = project(read_volume(source), projection, hu_window, spacing_mm)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.tmp{os.getpid()}.png")
    if not cv2.imwrite(str(tmp), image):
        raise DataError(f"cannot write the projection of {source} to {out}: check that the cache folder is writable")
    os.replace(tmp, out)
    return out
