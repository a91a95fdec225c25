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
    """A localized region: its box in original pixels, on the heat-map grid, and the fallback flag."""

    box: Box
    heat_box: Box
    fallback: bool


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
    return RoiResult(box, heat_box, fallback)


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
            split: str = "") -> dict:
        """Locate, crop and save one sample; returns its CSV row. ``source``: the original's file, or
        the (anterior, posterior) files of a scan (the CSV's ``source`` is then the anterior one)."""
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
               "order": int(order)}
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

def export_csv(runs_dir: str | Path = RUNS_DIR, run: str | None = None,
               experiment: str = LOCALIZER) -> tuple[Path, Run]:
    """``labels.csv`` of an ROI export (a predict run of the localizer; default the newest) and the run."""
    if run is None and not find_runs(runs_dir, experiment, stage="predict"):
        raise RunError(f"no ROI export (predict run) of {experiment} in {Path(runs_dir) / experiment}: "
                       "run `make roi-stage1 roi-export` first (or give the runs folder)")
    chosen = resolve_run(runs_dir, experiment, run, stage="predict")
    csv = chosen.path / "roi_dataset" / "labels.csv"
    if not csv.is_file():
        raise RunError(f"{chosen.label} has no roi_dataset/labels.csv (the export did not finish): "
                       f"run `make roi-export`, or name another export with EXPORT_RUN=<id>")
    return csv, chosen


def main(argv: list[str] | None = None) -> int:
    """Print the ``labels.csv`` of an ROI export (stdout) and which runs it comes from (stderr)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m boneage.analysis.roi", description=main.__doc__)
    parser.add_argument("--runs-dir", default=RUNS_DIR, help="root of the run directories")
    parser.add_argument("--experiment", default=LOCALIZER, help="the stage-1 experiment")
    parser.add_argument("--run", default=None, help="export (predict) run id, prefix or directory; "
                                                    "default: the newest")
    args = parser.parse_args(argv)
    try:
        csv, chosen = export_csv(args.runs_dir, args.run, args.experiment)
    except RunError as err:
        print(f"roi: {err}", file=sys.stderr)
        return 2
    source = chosen.info.get("source_run") or "unknown"
    how = "named" if args.run else "the newest"
    print(f"ROI export: {chosen.label} ({how} export; stage-1 fit run {source}, checkpoint "
          f"{Path(chosen.info.get('ckpt_path') or '?').name}) -> {csv}", file=sys.stderr)
    print(csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
