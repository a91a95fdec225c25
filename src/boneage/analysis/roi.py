"""Heat map -> binary mask -> bounding box -> crop from the original image (Do et al., Eq. 3).

The localization network's Grad-CAM map is computed on the resized network input (e.g.
300 wide x 1000 high); the crop is taken from the ORIGINAL-resolution image, so the box is
mapped back from the resized grid to the original pixel grid.

Conventions (the paper states only Eq. 3 and gamma = 150):

- A heat map is a float array in [0, 1] (Grad-CAM maps are min-max normalised per image).
  It is quantised to the 0-255 display scale by rounding (``round(255 * h)``), and Eq. 3
  keeps pixels with ``value >= gamma``. A pixel exactly at 150/255 is therefore inside,
  one at 149/255 outside. Paper is silent on the scale of gamma: chose 0-255 because
  gamma = 150 only makes sense on the uint8 scale heat maps are usually drawn in.
- Several blobs (paper is silent; it crops "the most discriminative region"):
  ``blobs="peak"`` (default) keeps the 8-connected component that holds the heat map's
  maximum (first in raster order on ties); ``"largest"`` keeps the component with most
  pixels; ``"union"`` boxes all mask pixels together.
- Empty mask (possible only when the map never reaches gamma, e.g. an all-zero Grad-CAM
  map when ReLU removes every contribution): ``empty="full"`` (default) returns the whole
  image, i.e. falls back to no cropping, and the caller records the fallback;
  ``"peak"`` boxes the single maximum pixel; ``"raise"`` raises ValueError.
- Boxes are half-open integer pixel boxes ``(x0, y0, x1, y1)``: columns x0..x1-1, rows
  y0..y1-1. A resized pixel i covers original rows [i*H/h, (i+1)*H/h), so a box maps to
  ``floor(x0 * W / w)``, ``ceil(x1 * W / w)`` (same for y), clipped to the image: the
  mapped box always covers every original pixel under the resized box. This assumes the
  network input is a plain (aspect-changing) resize of the whole original image, which is
  what the data modules do.
- ``margin`` (default 0, as in the paper) widens the box by that fraction of its size on
  each side, in original pixels, before clipping.

An export is a ``boneage predict`` run of the localizer: its ROI data set lies in
``<predict run>/roi_dataset/`` and stage 2 finds it by run (:func:`export_csv`;
``python -m boneage.analysis.roi [--run ID]`` prints its ``labels.csv``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from boneage.runs import RUNS_DIR, Run, RunError, find_runs, resolve_run

LOCALIZER = "roi_localizer_scinti"

Blobs = Literal["peak", "largest", "union"]
Empty = Literal["full", "peak", "raise"]


@dataclass(frozen=True)
class Box:
    """Half-open pixel box: columns ``x0 <= x < x1``, rows ``y0 <= y < y1``."""

    x0: int
    y0: int
    x1: int
    y1: int

    def __post_init__(self) -> None:
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError(f"empty box {self}")

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return self.width * self.height

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x1, self.y1

    def iou(self, other: Box) -> float:
        """Intersection over union with another box."""
        iw = min(self.x1, other.x1) - max(self.x0, other.x0)
        ih = min(self.y1, other.y1) - max(self.y0, other.y0)
        inter = max(iw, 0) * max(ih, 0)
        return inter / float(self.area + other.area - inter)

    def coverage(self, other: Box) -> float:
        """Fraction of ``other`` that lies inside this box."""
        iw = min(self.x1, other.x1) - max(self.x0, other.x0)
        ih = min(self.y1, other.y1) - max(self.y0, other.y0)
        return max(iw, 0) * max(ih, 0) / float(other.area)


def quantise(heat: np.ndarray) -> np.ndarray:
    """Heat map in [0, 1] -> uint8 0-255 by rounding (values outside [0, 1] are clipped)."""
    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim != 2:
        raise ValueError(f"heat map must be 2-D (H, W), got shape {heat.shape}")
    if not np.all(np.isfinite(heat)):
        raise ValueError("heat map contains NaN or inf")
    return np.rint(np.clip(heat, 0.0, 1.0) * 255.0).astype(np.uint8)


def binary_mask(heat: np.ndarray, gamma: float = 150.0) -> np.ndarray:
    """Eq. 3: ``M = 1 where round(255 * H) >= gamma``; gamma on the 0-255 scale."""
    if not 0.0 <= gamma <= 255.0:
        raise ValueError(f"gamma is on the 0-255 scale of the heat map, got {gamma}")
    return quantise(heat) >= gamma


def mask_box(mask: np.ndarray, heat: np.ndarray | None = None, blobs: Blobs = "peak",
             empty: Empty = "full") -> tuple[Box, bool]:
    """Bounding box of a binary mask and whether the empty-mask fallback was used.

    ``heat`` (same shape) is needed for ``blobs="peak"`` and ``empty="peak"``.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    if blobs not in ("peak", "largest", "union"):
        raise ValueError(f"blobs must be 'peak', 'largest' or 'union', got {blobs!r}")
    if empty not in ("full", "peak", "raise"):
        raise ValueError(f"empty must be 'full', 'peak' or 'raise', got {empty!r}")
    needs_heat = blobs == "peak" or empty == "peak"
    if needs_heat and (heat is None or np.shape(heat) != mask.shape):
        raise ValueError("blobs='peak' / empty='peak' need the heat map, of the mask's shape")
    if not mask.any():
        if empty == "raise":
            raise ValueError("empty ROI mask: no heat-map pixel reaches gamma; "
                             "lower gamma or use empty='full'")
        if empty == "full":
            return Box(0, 0, w, h), True
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        return Box(int(x), int(y), int(x) + 1, int(y) + 1), True
    if blobs == "union":
        keep = mask
    else:
        labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        if blobs == "largest" or count == 1:
            sizes = np.bincount(labels.ravel())[1:]
            keep = labels == (int(np.argmax(sizes)) + 1)
        else:
            # the component holding the strongest masked pixel (first in raster order on ties)
            masked = np.where(mask, heat, -np.inf)
            keep = labels == labels.flat[int(np.argmax(masked))]
    rows = np.flatnonzero(keep.any(axis=1))
    cols = np.flatnonzero(keep.any(axis=0))
    return Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1), False


def map_box(box: Box, from_size: tuple[int, int], to_size: tuple[int, int], margin: float = 0.0) -> Box:
    """Map a box on a (h, w) grid to a (H, W) grid covering the same area; sizes are (height, width)."""
    (h, w), (H, W) = from_size, to_size
    sy, sx = H / h, W / w
    x0, x1 = box.x0 * sx, box.x1 * sx
    y0, y1 = box.y0 * sy, box.y1 * sy
    if margin:
        dx, dy = margin * (x1 - x0), margin * (y1 - y0)
        x0, x1, y0, y1 = x0 - dx, x1 + dx, y0 - dy, y1 + dy
    # tolerate float round-off (e.g. 3 * 10/3 = 9.999...) before floor/ceil
    fx0, fy0 = math.floor(x0 + 1e-9), math.floor(y0 + 1e-9)
    fx1, fy1 = math.ceil(x1 - 1e-9), math.ceil(y1 - 1e-9)
    return Box(max(fx0, 0), max(fy0, 0), min(fx1, W), min(fy1, H))


@dataclass(frozen=True)
class RoiResult:
    """A localized region: its box in original pixels, on the heat-map grid, the fallback flag, and
    the heat map's peak (x, y) in original pixels (the centre of the strongest heat-map cell)."""

    box: Box
    heat_box: Box
    fallback: bool
    peak: tuple[float, float] = (math.nan, math.nan)


def unletterbox(heat: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """The part of a heat map that covers the image when the network input was letterboxed
    (scaled to fit, centred, black padding; ``data_modules.base.resize_gray(keep_aspect=True)``)."""
    h, w = np.shape(heat)
    H, W = original_size
    scale = min(h / H, w / W)
    nh, nw = max(1, round(H * scale)), max(1, round(W * scale))
    top, left = (h - nh) // 2, (w - nw) // 2
    return np.asarray(heat)[top:top + nh, left:left + nw]


def locate_roi(heat: np.ndarray, original_size: tuple[int, int], gamma: float = 150.0,
               blobs: Blobs = "peak", empty: Empty = "full", margin: float = 0.0,
               letterboxed: bool = False) -> RoiResult:
    """Heat map on the network-input grid -> box on the original (height, width) grid.

    ``letterboxed``: the network input was a letterboxed resize; the padding is dropped
    first (``heat_box`` is then on the unpadded grid).
    """
    heat = np.asarray(heat, dtype=np.float64)
    if letterboxed:
        heat = unletterbox(heat, original_size)
    mask = binary_mask(heat, gamma)
    heat_box, fallback = mask_box(mask, heat, blobs=blobs, empty=empty)
    box = map_box(heat_box, heat.shape, tuple(original_size), margin=margin)
    py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
    peak = ((px + 0.5) * original_size[1] / heat.shape[1], (py + 0.5) * original_size[0] / heat.shape[0])
    return RoiResult(box, heat_box, fallback, peak)


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    """The box's pixels of an (H, W) or (H, W, C) image; raises if the box leaves the image."""
    h, w = image.shape[:2]
    if box.x1 > w or box.y1 > h or box.x0 < 0 or box.y0 < 0:
        raise ValueError(f"box {box.as_tuple()} lies outside the image of {w}x{h}")
    return image[box.y0:box.y1, box.x0:box.x1]


# --- the ROI data set: crops from the original images plus a CSV in the hospital format ---

def read_original(path: str | Path | tuple, window: str | tuple[float, float] = "dicom") -> np.ndarray:
    """An original image as the stage-1 network saw it before resizing: uint8 through ``window``
    (the stage-1 DataModule's, :func:`data_modules.base.read_gray`), so stage 2 trains on crops of
    the same scaling. Chose a window of the whole image over keeping the original bit depth because
    a crop windowed on its own (its own percentiles) would be scaled differently from stage 1's input.
    ``path`` may be an (anterior, posterior) pair of files of one scan."""
    from data_modules.base import read_gray

    for p in (path if isinstance(path, tuple) else (path,)):
        if not Path(p).is_file():
            raise FileNotFoundError(f"original image {p} not found (the ROI export crops from the originals)")
    return read_gray(path, window)


def save_crop(path: str | Path, patch: np.ndarray) -> None:
    """Save a crop as a grayscale PNG with its array's bit depth (8-bit for :func:`read_original`'s)."""
    patch = np.ascontiguousarray(patch)
    if patch.dtype == np.int32:
        patch = np.clip(patch, 0, 65535).astype(np.uint16)
    Image.fromarray(patch).save(path)


class RoiExporter:
    """Writes the ROI data set: ``crops/*.png`` plus ``labels.csv`` (image, age_years, sex, ...).

    The CSV has the generic hospital columns first, then provenance: ``source`` (original
    path), ``split``, the box ``x0, y0, x1, y1`` in original pixels, ``fallback`` (True
    where the mask was empty and the whole image was kept) and the original's
    ``orig_height, orig_width``. Rows keep the order in which
    samples are added; ``finish`` sorts them by ``order`` so the ROI data set lists images in
    the same order as the source CSV (same seeded split in stage 2).
    """

    def __init__(self, out: str | Path, gamma: float = 150.0, blobs: Blobs = "peak",
                 empty: Empty = "full", margin: float = 0.0, figures: str | Path | None = None,
                 max_figures: int | None = None, letterboxed: bool = False,
                 window: str | tuple[float, float] = "dicom") -> None:
        self.out = Path(out)
        self.window = window  # the stage-1 input's: crops keep its scaling
        self.letterboxed = letterboxed
        (self.out / "crops").mkdir(parents=True, exist_ok=True)
        self.gamma, self.blobs, self.empty, self.margin = gamma, blobs, empty, margin
        self.figures = Path(figures) if figures is not None else None
        if self.figures is not None:
            self.figures.mkdir(parents=True, exist_ok=True)
        self.max_figures = max_figures
        self.rows: list[dict] = []

    def add(self, source: str | Path | tuple, age: float, sex: str, heat: np.ndarray, order: int,
            split: str = "", **extra: object) -> dict:
        """Locate, crop and save one sample; returns its CSV row. ``source``: the original's file, or
        the (anterior, posterior) files of a scan (the CSV's ``source`` is then the anterior one);
        ``extra`` columns (e.g. the predicted group) go into the row."""
        original = read_original(source, self.window)
        source = source[0] if isinstance(source, tuple) else source
        res = locate_roi(heat, original.shape[:2], self.gamma, self.blobs, self.empty, self.margin,
                         self.letterboxed)
        patch = crop(original, res.box)
        name = f"crops/{order:06d}_{Path(source).stem}.png"
        save_crop(self.out / name, patch)
        row = {"image": name, "age_years": round(float(age), 4), "sex": sex, "source": str(source), "split": split,
               "x0": res.box.x0, "y0": res.box.y0, "x1": res.box.x1, "y1": res.box.y1,
               "fallback": res.fallback, "orig_height": original.shape[0], "orig_width": original.shape[1],
               "peak_x": round(res.peak[0], 2), "peak_y": round(res.peak[1], 2), **extra, "order": int(order)}
        self.rows.append(row)
        if self.figures is not None and (self.max_figures is None or len(self.rows) <= self.max_figures):
            note = " (empty mask: whole image)" if res.fallback else ""
            shown = unletterbox(heat, original.shape[:2]) if self.letterboxed else heat
            roi_figure(original, shown, res.box, patch, self.figures / f"{Path(name).stem}.png",
                       title=f"age {age:.1f} y, sex {sex}{note}")
        return row

    def finish(self, extra_files: dict[str, str] | None = None) -> Path:
        """Write ``labels.csv`` (and copy ``extra_files`` {name: text}); returns the CSV path."""
        if not self.rows:
            raise ValueError(f"no sample was exported to {self.out}: is the predict split empty?")
        table = pd.DataFrame(self.rows).sort_values("order").drop(columns="order")
        dup = table.image.duplicated()
        if dup.any():
            raise ValueError(f"duplicate crop names in the ROI export, e.g. {table.image[dup].iloc[0]}")
        csv = self.out / "labels.csv"
        table.to_csv(csv, index=False)
        for name, text in (extra_files or {}).items():
            (self.out / name).write_text(text)
        return csv

    def summary(self) -> str:
        n = len(self.rows)
        fb = sum(r["fallback"] for r in self.rows)
        return (f"ROI export: {n} crops and labels.csv written to {self.out} "
                f"({fb} with an empty mask kept whole)")


def roi_figure(original: np.ndarray, heat: np.ndarray, box: Box, patch: np.ndarray, path: str | Path,
               title: str = "") -> Path:
    """Fig. 3 of the paper for one sample: original, heat map, overlay with the box, crop."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    h, w = original.shape[:2]
    heat_big = np.asarray(Image.fromarray(np.asarray(heat, np.float32)).resize((w, h), Image.BILINEAR))
    fig, axes = plt.subplots(1, 4, figsize=(8, 6), gridspec_kw={"width_ratios": [1, 1, 1, 1.2]})
    axes[0].imshow(original, cmap="gray")
    axes[1].imshow(heat_big, cmap="jet", vmin=0, vmax=1)
    axes[2].imshow(original, cmap="gray")
    axes[2].imshow(heat_big, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[2].add_patch(Rectangle((box.x0 - 0.5, box.y0 - 0.5), box.width, box.height, fill=False,
                                edgecolor="white", linewidth=1.5))
    axes[3].imshow(patch, cmap="gray")
    for ax, label in zip(axes, ("(a) original", "(b) heat map", "(c) overlay", "(d) crop")):
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


# --- which export stage 2 reads ----------------------------------------------------------

def _fold_of(run: Run) -> int | None:
    """The cross-fitting fold a stage-1 run (fit or predict) holds out, None when it is not one."""
    try:
        fold = ((run.config().get("data") or {}).get("init_args") or {}).get("fold")
    except RunError:
        return None
    return None if fold is None else int(fold)


def export_runs(runs_dir: str | Path = RUNS_DIR, experiment: str = LOCALIZER) -> list[Run]:
    """Complete ROI exports, oldest first: cross-fitted exports (``export-*``) and predict runs of a
    localizer trained on every training image. A predict run of one fold is a part, never an export."""
    runs = find_runs(runs_dir, experiment, stage="export")
    runs += [r for r in find_runs(runs_dir, experiment, stage="predict") if _fold_of(r) is None]
    return sorted(runs, key=lambda r: (r.created, r.id))


def export_csv(runs_dir: str | Path = RUNS_DIR, run: str | None = None,
               experiment: str = LOCALIZER) -> tuple[Path, Run]:
    """``labels.csv`` of an ROI export (default the newest; see :func:`export_runs`) and the run."""
    if run is None:
        exports = export_runs(runs_dir, experiment)
        if not exports:
            raise RunError(f"no ROI export of {experiment} in {Path(runs_dir) / experiment}: "
                           "run `make roi-stage1 roi-export` first (or give the runs folder)")
        chosen = exports[-1]
    else:
        stage = "export" if Path(run).name.startswith("export-") else "predict"
        chosen = resolve_run(runs_dir, experiment, run, stage=stage)
    csv = chosen.path / "roi_dataset" / "labels.csv"
    if not csv.is_file():
        raise RunError(f"{chosen.label} has no roi_dataset/labels.csv (the export did not finish): "
                       f"run `make roi-export`, or name another export with EXPORT_RUN=<id>")
    return csv, chosen


# --- cross-fitting: one export from the K fold localizers ---------------------------------

def fold_fit_runs(runs_dir: str | Path = RUNS_DIR, group: str | None = None,
                  experiment: str = LOCALIZER) -> list[Run]:
    """The fit runs of one cross-fitting group (ids ``<group>-fold<k>``), fold 0 first; default the
    newest group."""
    fits = [r for r in find_runs(runs_dir, experiment, stage="fit") if "-fold" in r.id]
    if not fits:
        raise RunError(f"no cross-fitting fit runs (<group>-fold<k>) of {experiment} in {Path(runs_dir) / experiment}: "
                       "run `make roi-stage1` first")
    group = group or fits[-1].id.rsplit("-fold", 1)[0]
    members = sorted((r for r in fits if r.id.rsplit("-fold", 1)[0] == group), key=lambda r: r.id)
    if not members:
        raise RunError(f"no fit runs {group}-fold<k> of {experiment} in {Path(runs_dir) / experiment}")
    return members


def merge_folds(parts: list[Run], runs_dir: str | Path = RUNS_DIR, experiment: str = LOCALIZER) -> Run:
    """One ROI export (a new ``export-*`` run) from the predict runs of every fold of a cross-fit: each
    image's crop comes from the localizer that did not train on it. Crops are copied, so the export
    stands alone."""
    import shutil
    import time

    from boneage.runs import RUN_FILE, claim_run_dir, write_json_atomic

    folds = [_fold_of(p) for p in parts]
    configs = [p.config() for p in parts]
    k_of = {int(c["data"]["init_args"].get("folds") or 1) for c in configs}
    if None in folds or len(k_of) != 1 or sorted(folds) != list(range(k_of.pop())):
        got = ", ".join(f"{p.label} (fold {f})" for p, f in zip(parts, folds))
        raise RunError(f"a cross-fitted export needs one predict run of each fold 0..K-1 of one K; got {got}")
    csvs = {str(c["data"]["init_args"].get("csv_path")) for c in configs}
    if len(csvs) != 1:
        raise RunError(f"the fold exports read different CSVs ({', '.join(sorted(csvs))}): export every fold from one")
    out_run = Run(claim_run_dir(Path(runs_dir) / experiment, "export"))
    out = out_run.path / "roi_dataset"
    (out / "crops").mkdir(parents=True)
    tables = []
    for part in parts:
        src = part.path / "roi_dataset"
        table = pd.read_csv(src / "labels.csv")
        for name in table["image"]:
            shutil.copy2(src / name, out / name)
        tables.append(table)
    merged = pd.concat(tables, ignore_index=True)
    merged = merged.sort_values(["split", "image"], key=lambda c: c.map({"train": 0, "val": 1, "test": 2})
                                if c.name == "split" else c, kind="stable")
    if merged["image"].duplicated().any():
        raise RunError(f"the fold exports overlap ({merged['image'][merged['image'].duplicated()].iloc[0]}): "
                       "were they made with the same folds?")
    merged.to_csv(out / "labels.csv", index=False)
    for extra in (parts[0].path / "roi_dataset").glob("*.json"):
        shutil.copy2(extra, out / extra.name)
    write_json_atomic(out_run.path / RUN_FILE, {
        "id": out_run.id, "experiment": experiment, "stage": "export", "status": "finished",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "created_ts": time.time(), "folds": len(parts),
        "parts": [p.id for p in parts], "source_runs": [p.info.get("source_run") for p in parts]})
    print(f"cross-fitted ROI export {out_run.label}: {len(merged)} crops from {len(parts)} fold localizers "
          f"({', '.join(str(p.info.get('source_run')) for p in parts)})")
    return out_run


# --- localization against a phantom's truth (analysis only: the system never reads it) -----

def truth_file(export_dir: Path) -> Path | None:
    """The ``phantom_truth.csv`` of the data set an export was cropped from, when there is one."""
    import json

    meta = export_dir / "phantom.json"
    if not meta.is_file():
        return None
    root = json.loads(meta.read_text()).get("extra", {}).get("roi_export_of")
    path = Path(root or "") / "phantom_truth.csv"
    return path if root and path.is_file() else None


def localization(rows: pd.DataFrame, truth_csv: str | Path) -> pd.DataFrame:
    """Per exported crop: whether the heat map's peak lies in the true region (``hit``) and the share of
    the true region the crop covers (``coverage``). ``rows``: an export's labels.csv."""
    truth_csv = Path(truth_csv)
    truth = pd.read_csv(truth_csv)
    truth["source"] = [str((truth_csv.parent / p).resolve()) for p in truth["image"]]
    rows = rows.assign(source=[str(Path(p).resolve()) for p in rows["source"]])
    merged = rows.merge(truth.drop(columns=["image", "age_years", "sex"], errors="ignore"), on="source",
                        how="inner", validate="one_to_one")
    if len(merged) < len(rows):
        raise RunError(f"{len(rows) - len(merged)} exported images are not in {truth_csv}: "
                       "was the export made from another data set?")
    iw = (np.minimum(merged.x1, merged.roi_x1) - np.maximum(merged.x0, merged.roi_x0)).clip(lower=0)
    ih = (np.minimum(merged.y1, merged.roi_y1) - np.maximum(merged.y0, merged.roi_y0)).clip(lower=0)
    area = (merged.roi_x1 - merged.roi_x0) * (merged.roi_y1 - merged.roi_y0)
    merged["coverage"] = iw * ih / area
    merged["hit_strict"] = ((merged.peak_x >= merged.roi_x0) & (merged.peak_x < merged.roi_x1)
                            & (merged.peak_y >= merged.roi_y0) & (merged.peak_y < merged.roi_y1))
    # A heat map is known to one cell of its grid (10 x 32 cells for ResNet50 on 300 x 1000), and an
    # upsampled Grad-CAM map sits up to about a cell up-left of its features' true centre (the
    # resize places cell i's value at the cell's centre, a stride-s stack of padded convolutions
    # centres it near s*i): a peak within one cell of the true region is a hit.
    if {"grid_w", "grid_h"} <= set(merged.columns):
        cw, ch = merged.orig_width / merged.grid_w, merged.orig_height / merged.grid_h
    else:
        cw = ch = 0.0
    merged["hit"] = ((merged.peak_x >= merged.roi_x0 - cw) & (merged.peak_x < merged.roi_x1 + cw)
                     & (merged.peak_y >= merged.roi_y0 - ch) & (merged.peak_y < merged.roi_y1 + ch))
    merged["crop_share"] = (merged.x1 - merged.x0) * (merged.y1 - merged.y0) / (merged.orig_width * merged.orig_height)
    return merged


def localization_summary(scored: pd.DataFrame) -> pd.DataFrame:
    """Hit rate and coverage per split and predicted group (``all`` rows: the whole split), with three
    references per split: the image centre (a fixed centre crop), the mean true-region centre of the
    training images (the best fixed guess, which knows where the region usually is) and chance (a
    random point: the true region's share of the image)."""
    train = scored[scored["split"] == "train"]
    cx = float(((train.roi_x0 + train.roi_x1) / 2).mean()) if len(train) else math.nan
    cy = float(((train.roi_y0 + train.roi_y1) / 2).mean()) if len(train) else math.nan
    out = []
    for split in ("train", "val", "test"):
        part = scored[scored["split"] == split]
        if part.empty:
            continue
        groups = [("all", part)] + ([(int(g), p) for g, p in part.groupby("pred_group")]
                                    if "pred_group" in part.columns else [])
        fixed = float(((part.roi_x0 <= cx) & (cx < part.roi_x1) & (part.roi_y0 <= cy) & (cy < part.roi_y1)).mean())
        mx, my = part.orig_width / 2, part.orig_height / 2
        centre = float(((part.roi_x0 <= mx) & (mx < part.roi_x1) & (part.roi_y0 <= my) & (my < part.roi_y1)).mean())
        chance = float(((part.roi_x1 - part.roi_x0) * (part.roi_y1 - part.roi_y0)
                        / (part.orig_width * part.orig_height)).mean())
        for group, p in groups:
            out.append({"split": split, "pred_group": group, "n": len(p), "hit_rate": float(p["hit"].mean()),
                        "hit_rate_strict": float(p["hit_strict"].mean()),
                        "coverage": float(p["coverage"].mean()), "crop_share": float(p["crop_share"].mean()),
                        "centre_hit_rate": centre if group == "all" else math.nan,
                        "mean_position_hit_rate": fixed if group == "all" else math.nan,
                        "chance_hit_rate": chance if group == "all" else math.nan})
    return pd.DataFrame(out)


def gate(summary: pd.DataFrame, min_hit: float = 0.7, split: str = "val") -> str | None:
    """None when the localizer's hit rate on ``split`` reaches ``min_hit``; else why and what to try."""
    row = summary[(summary["split"] == split) & (summary["pred_group"] == "all")]
    if row.empty:
        return f"no {split} rows in the export: cannot check the localization"
    hit = float(row["hit_rate"].iloc[0])
    if hit >= min_hit:
        return None
    return (f"the localizer's {split} hit rate is {hit:.2f} (< {min_hit:.2f}; the image centre scores "
            f"{float(row['centre_hit_rate'].iloc[0]):.2f}, the mean training position "
            f"{float(row['mean_position_hit_rate'].iloc[0]):.2f}, chance {float(row['chance_hit_rate'].iloc[0]):.2f}): "
            "its crops would mostly miss the age region. Try more epochs, a larger stage-1 input or pretrained "
            "weights, check the figures in the export's figures/roi/, or pass ROI_FORCE=1 (--force) to go on")


def oracle_export(data_root: str | Path, like: Run, margin: float = 0.1, runs_dir: str | Path = RUNS_DIR,
                  experiment: str = LOCALIZER) -> Run:
    """An ROI data set of the phantom's TRUE regions (plus ``margin`` per side) with the splits of the
    export ``like``: stage 2 on it is the oracle row (what perfect localization would give)."""
    import shutil
    import sys
    import time

    from boneage.runs import RUN_FILE, claim_run_dir, write_json_atomic

    root = Path(data_root)
    truth_csv = root / "phantom_truth.csv"
    if not truth_csv.is_file():
        raise RunError(f"{truth_csv} not found: the oracle needs a phantom's true regions (make roi-demo makes one)")
    rows = pd.read_csv(like.path / "roi_dataset" / "labels.csv")
    scored = localization(rows, truth_csv)
    out_run = Run(claim_run_dir(Path(runs_dir) / experiment, "oracle"))
    out = out_run.path / "roi_dataset"
    (out / "crops").mkdir(parents=True)
    stage1 = Run(like.path.parent / like.info["parts"][0]) if like.info.get("parts") else like
    window = (stage1.config().get("data") or {}).get("init_args", {}).get("window", "dicom")
    window = tuple(window) if isinstance(window, list) else window
    table = []
    for _, r in scored.iterrows():
        box = map_box(Box(int(r.roi_x0), int(r.roi_y0), int(r.roi_x1), int(r.roi_y1)),
                      (int(r.orig_height), int(r.orig_width)), (int(r.orig_height), int(r.orig_width)), margin)
        patch = crop(read_original(r.source, window), box)
        name = f"crops/{Path(r.image).name}"
        save_crop(out / name, patch)
        table.append({"image": name, "age_years": r.age_years, "sex": r.sex, "source": r.source, "split": r.split,
                      "x0": box.x0, "y0": box.y0, "x1": box.x1, "y1": box.y1})
    pd.DataFrame(table).to_csv(out / "labels.csv", index=False)
    for extra in (like.path / "roi_dataset").glob("*.json"):
        shutil.copy2(extra, out / extra.name)
    write_json_atomic(out_run.path / RUN_FILE, {
        "id": out_run.id, "experiment": experiment, "stage": "oracle", "status": "finished",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "created_ts": time.time(), "splits_of": like.id,
        "margin": margin})
    print(f"oracle ROI data set {out_run.label}: the true regions (+{margin:.0%} per side) of {len(table)} images, "
          f"splits of {like.label}", file=sys.stderr)
    return out_run


def main(argv: list[str] | None = None) -> int:
    """ROI export tools. Default: print the ``labels.csv`` of an export (stdout) and which runs it
    comes from (stderr). ``folds``: print the fit run ids of a cross-fitting group. ``merge``: one
    export from the fold exports. ``localization``: score an export against the phantom's truth,
    write localization.csv beside it and stop (exit 3) below ``--min-hit``. ``oracle``: an export
    of the true regions."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m boneage.analysis.roi", description=main.__doc__)
    parser.add_argument("command", nargs="?", default="show", choices=("show", "folds", "merge", "localization",
                                                                       "oracle"))
    parser.add_argument("--runs-dir", default=RUNS_DIR, help="root of the run directories")
    parser.add_argument("--experiment", default=LOCALIZER, help="the stage-1 experiment")
    parser.add_argument("--run", action="append", default=None,
                        help="export run (show, localization, oracle: default the newest), fold predict runs "
                             "(merge, repeated), cross-fitting group (folds)")
    parser.add_argument("--min-hit", type=float, default=0.7, help="localization: validation hit rate to go on")
    parser.add_argument("--force", action="store_true", help="localization: go on below --min-hit")
    parser.add_argument("--data", default=None, help="oracle: the phantom data folder")
    args = parser.parse_args(argv)
    one = args.run[-1] if args.run else None
    try:
        if args.command == "folds":
            print(" ".join(r.id for r in fold_fit_runs(args.runs_dir, one, args.experiment)))
            return 0
        if args.command == "merge":
            parts = [resolve_run(args.runs_dir, args.experiment, r, stage="predict") for r in args.run or []]
            merge_folds(parts, args.runs_dir, args.experiment)
            return 0
        csv, chosen = export_csv(args.runs_dir, one, args.experiment)
        if args.command == "oracle":
            oracle = oracle_export(args.data or "", chosen, runs_dir=args.runs_dir, experiment=args.experiment)
            print(oracle.path / "roi_dataset" / "labels.csv")
            return 0
        if args.command == "localization":
            return _localization_command(csv, chosen, args.min_hit, args.force)
    except RunError as err:
        print(f"roi: {err}", file=sys.stderr)
        return 2
    fits = chosen.info.get("source_runs") or [chosen.info.get("source_run") or "unknown"]
    how = "named" if one else "the newest"
    print(f"ROI export: {chosen.label} ({how} export; stage-1 fit run{'s' if len(fits) > 1 else ''} "
          f"{', '.join(fits)}) -> {csv}", file=sys.stderr)
    print(csv)
    return 0


def _localization_command(csv: Path, export: Run, min_hit: float, force: bool) -> int:
    import json
    import sys

    truth = truth_file(csv.parent)
    if truth is None:
        print(f"roi: {export.label} was not cropped from a phantom (no phantom_truth.csv): localization not "
              "measured, nothing to check it against; going on", file=sys.stderr)
        return 0
    scored = localization(pd.read_csv(csv), truth)
    summary = localization_summary(scored)
    summary.to_csv(csv.parent / "localization.csv", index=False)
    overall = summary[summary["pred_group"] == "all"].set_index("split")
    figures = {f"{s}_{k}": round(float(overall.loc[s, c]), 4) for s in overall.index
               for k, c in (("hit_rate", "hit_rate"), ("coverage", "coverage"))}
    (csv.parent / "localization.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"localization of {export.label} against {truth}:")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    why = gate(summary, min_hit)
    if why is None:
        return 0
    if force:
        print(f"roi: warning: {why} (forced: going on)", file=sys.stderr)
        return 0
    print(f"roi: {why}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    raise SystemExit(main())
