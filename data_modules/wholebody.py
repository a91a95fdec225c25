"""Whole-body CT bone images (Nguyen & Kim, paper 002): one CSV of image path, age (years), sex.

Tall grayscale images (about 3000 x 900) in the generic hospital format (``labels.csv`` with
``image,age_years,sex``; see :mod:`data_modules.hospital`). The paper's preprocessing
(Sec. 4.2): rescale to 256 x 256 (331 x 331 for Inception-style networks), random crop to
224 x 224 (299 x 299), random horizontal flip, normalisation to zero mean and unit variance.

What the paper leaves unsaid, and what we chose:

- paper is silent on the validation set its learning-rate schedule watches: chose 10% of the
  training part (``val_fraction`` is a share of the training part), so the test set is the
  paper's 30% whatever the validation share.
- paper is silent on test-time cropping: chose the centre crop (the standard companion of
  random-crop training).
- "rescaled to 256 x 256": the tall image is stretched to a square (``keep_aspect=False``), as
  written; ``keep_aspect=True`` letterboxes instead.
- normalisation statistics: mean and standard deviation of the training images (one number
  each, the images are grayscale), applied to every batch after transfer.
- Table 3's upper / lower body: the upper / lower half of the image rows, before resizing.

CT volumes: a row of the CSV may name a DICOM series folder or a NIfTI file (``.nii``,
``.nii.gz``) instead of a 2-D image; it becomes the 2-D whole-body bone image by a coronal
projection of a bone window (:mod:`data_modules.volume`: ``volume_projection``, ``hu_window``,
``projection_spacing_mm``; the paper is silent on how its 2-D images were made). Each volume
is read once: its projection is cached as a PNG in ``ct-projections/`` of the image cache
folder, keyed by the volume's files and the settings. Tables, predictions and figures name the
volume itself. ``window`` (of the base class) applies to 2-D images with more than 8 bits only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from data_modules.base import DICOM_SUFFIXES, IMAGE_SUFFIXES, DataError
from data_modules.hospital import HospitalCSVDataModule
from data_modules.volume import (
    DEFAULT_HU_WINDOW,
    NIFTI_SUFFIXES,
    PROJECTIONS,
    is_volume,
    projection_file,
    write_projection,
)

REGIONS = ("full", "upper", "lower")
# Fig. 4's age ranges as the paper counts them (whole years): 0-39, 40-60, 61-87
AGE_RANGES = (("0-39", 0.0, 40.0), ("40-60", 40.0, 61.0), ("61+", 61.0, float("inf")))
PAPER_AGE_SHARES = {"0-39": 8.487, "40-60": 73.432, "61+": 18.081}  # % of the 813 images (Sec. 4.1)


def _pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of uint8 images in the [-1, 1] units of the batches."""
    total, total_sq, count = 0.0, 0.0, 0
    for img in images:  # one image at a time: the cache is a memory map
        x = np.asarray(img, dtype=np.float64) / 127.5 - 1.0
        total, total_sq, count = total + x.sum(), total_sq + (x * x).sum(), count + x.size
    mean = total / max(count, 1)
    return float(mean), float(max(np.sqrt(max(total_sq / max(count, 1) - mean * mean, 0.0)), 1e-6))


class WholeBodyCTDataModule(HospitalCSVDataModule):
    """Whole-body CT bone images with the paper's split and preprocessing.

    Args:
        csv_path: the label CSV (``image,age_years,sex``).
        region: "full", "upper" or "lower": the whole image or one half of its rows (Table 3).
        image_size: (height, width) the images are rescaled to (paper: 256 x 256; 331 x 331
            for Inception-style networks).
        crop_size: (height, width) of the random training crop and of the centre crop at
            evaluation (paper: 224 x 224; 299 x 299); None: no crop.
        flip: random horizontal flip in training.
        standardize: scale batches to zero mean and unit variance with the training set's
            pixel statistics (paper); False keeps the framework's [-1, 1] scaling.
        test_fraction: share of all images for testing (paper: 30%).
        val_fraction: share of the *training part* held out for validation.
        keep_aspect: letterbox instead of stretching to ``image_size``.
        batch_size: paper 256.
        augment: further albumentations transforms, applied after crop and flip.
        volume_projection: how a CT volume row becomes a 2-D image: "mip" (coronal maximum-
            intensity projection, default) or "mean" (coronal mean, radiograph-like).
        hu_window: [low, high] Hounsfield units of the bone window the projection is clipped
            to and that maps to 0-255 (default [-200, 1500]).
        projection_spacing_mm: pixel size of the projection in mm (square pixels, the
            volume's physical aspect kept); None: the finer of its left-right and head-foot
            voxel spacings.
        **kwargs: see HospitalCSVDataModule / ImageTableDataModule (seed, num_workers, ...).
    """

    def __init__(
        self,
        csv_path: str = "data/wholebody_ct/labels.csv",
        region: str = "full",
        image_size: tuple[int, int] = (256, 256),
        crop_size: tuple[int, int] | None = (224, 224),
        flip: bool = True,
        standardize: bool = True,
        test_fraction: float = 0.3,
        val_fraction: float = 0.1,
        keep_aspect: bool = False,
        batch_size: int = 256,
        augment: list[dict[str, Any]] | None = None,
        volume_projection: str = "mip",
        hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
        projection_spacing_mm: float | None = None,
        **kwargs: Any,
    ) -> None:
        if volume_projection not in PROJECTIONS:
            raise ValueError(f"volume_projection must be one of {PROJECTIONS}, got {volume_projection!r}")
        if len(hu_window) != 2 or not float(hu_window[0]) < float(hu_window[1]):
            raise ValueError(f"hu_window must be [low, high] in Hounsfield units with low < high, got {hu_window!r}")
        if projection_spacing_mm is not None and not projection_spacing_mm > 0:
            raise ValueError(f"projection_spacing_mm must be > 0 mm or null, got {projection_spacing_mm!r}")
        if region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError("val_fraction is a share of the training part and must be in [0, 1), "
                             f"got {val_fraction}")
        if crop_size is not None and (crop_size[0] > image_size[0] or crop_size[1] > image_size[1]):
            raise ValueError(f"crop_size {tuple(crop_size)} is larger than image_size {tuple(image_size)}")
        train_aug: list[dict[str, Any]] = []
        if crop_size is not None:
            train_aug.append({"RandomCrop": {"height": int(crop_size[0]), "width": int(crop_size[1])}})
        if flip:
            train_aug.append({"HorizontalFlip": {"p": 0.5}})
        super().__init__(csv_path=csv_path, image_size=image_size, keep_aspect=keep_aspect,
                         batch_size=batch_size,
                         test_fraction=test_fraction, val_fraction=val_fraction * (1.0 - test_fraction),
                         augment=train_aug + list(augment or []), **kwargs)
        self.region = region
        self.crop = region  # the image cache keeps the upper / lower half of the rows
        self.crop_size = tuple(int(c) for c in crop_size) if crop_size is not None else None
        self.standardize = standardize
        self.pixel_mean, self.pixel_std = 0.0, 1.0
        self.volume_projection = volume_projection
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.projection_spacing_mm = float(projection_spacing_mm) if projection_spacing_mm is not None else None
        self.projections: dict[str, str] = {}  # CT volume (as the CSV names it, resolved) -> its projection PNG

    def read_table(self) -> pd.DataFrame:
        """The CSV's rows; a volume row's ``path`` is its cached projection (projected here when
        missing) and ``source`` the volume, which replaces it again once the caches are built."""
        return self._with_projections(super().read_table())

    def _folder_table(self, folder: Path) -> pd.DataFrame:
        """A predict folder: its ``.nii``/``.nii.gz`` files and every sub-folder holding ``.dcm``
        files (one series each) are CT volumes; other images as the base class finds them."""
        if not folder.is_dir():
            return super()._folder_table(folder)
        files = [p for p in folder.rglob("*") if p.is_file()]
        series = {p.parent for p in files if p.suffix.lower() in DICOM_SUFFIXES and p.parent != folder}
        volumes = [p for p in files if p.name.lower().endswith(NIFTI_SUFFIXES)] + sorted(series)
        if not volumes:
            return super()._folder_table(folder)
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and p.parent not in series]
        paths = sorted(str(p.resolve()) for p in volumes + images)
        return self._with_projections(pd.DataFrame({"path": paths, "age": np.nan, "sex": np.nan}))

    def _with_projections(self, table: pd.DataFrame) -> pd.DataFrame:
        volumes = [p for p in table["path"] if is_volume(p) and Path(p).exists()]
        if not volumes:
            return table
        self.projections.update(self._project(volumes, self._cache_for(table).file.parent / "ct-projections"))
        return table.assign(source=table["path"], path=[self.projections.get(p, p) for p in table["path"]])

    def _project(self, volumes: list[str], folder: Path) -> dict[str, str]:
        """Projection PNGs of ``volumes``, made in ``num_workers`` processes where not cached."""
        settings = {"projection": self.volume_projection, "hu_window": self.hu_window,
                    "spacing_mm": self.projection_spacing_mm}
        made = {v: str(projection_file(v, folder, **settings)) for v in volumes}
        todo = [(v, out) for v, out in made.items() if not Path(out).is_file()]
        if todo:
            from tqdm.auto import tqdm

            # its own generator: the global RNG stays untouched whether or not the cache existed
            loader = DataLoader(_Projections(todo, settings), batch_size=None, num_workers=self.num_workers,
                                generator=torch.Generator())
            for result in tqdm(loader, total=len(todo), desc=f"projecting {len(todo)} CT volumes", unit="vol",
                               leave=False):
                if isinstance(result, DataError):
                    raise result
            print(f"projected {len(todo)} CT volumes into {folder}")
        return made

    def setup(self, stage: str | None = None) -> None:
        fresh = not self._tables
        super().setup(stage)
        # the caches are built from the projections; tables (and so predictions.csv) name the volumes
        self._tables = {name: t.assign(path=t["source"]).drop(columns="source") if "source" in t.columns else t
                        for name, t in self._tables.items()}
        if fresh and stage == "fit" and getattr(self, "trainer", None) is not None:
            self._save_projection_figure()
        if self.crop_size is not None:
            centre = A.Compose([A.CenterCrop(*self.crop_size)])
            for name, dataset in self._datasets.items():
                if name != "train":
                    dataset.augment = centre
        if fresh and self.standardize:
            self.pixel_mean, self.pixel_std = _pixel_stats(self._datasets["train"].cache.array)

    def _save_projection_figure(self, n: int = 6) -> None:
        """``figures/ct_projection.png`` of the run: the first ``n`` training volumes' projections
        as the cache was built from them (before resizing), with their ages."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from boneage.systems.base import save_figure

        train = self._tables["train"]
        rows = train[train["path"].isin(list(self.projections))].head(n)
        if rows.empty:
            return
        fig, axes = plt.subplots(1, len(rows), figsize=(1.5 * len(rows) + 0.5, 4.8), squeeze=False)
        unit = "y" if self.age_units == "years" else "mo"
        for ax, (_, row) in zip(axes[0], rows.iterrows()):
            ax.imshow(cv2.imread(self.projections[row["path"]], cv2.IMREAD_GRAYSCALE), cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{row['age']:.1f} {unit}, {'M' if row['sex'] > 0.5 else 'F'}", fontsize=8)
            ax.set_xlabel(Path(row["path"]).name, fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
        pixel = f"{self.projection_spacing_mm:g} mm" if self.projection_spacing_mm else "finest-voxel"
        fig.suptitle(f"CT volumes: coronal {self.volume_projection} of [{self.hu_window[0]:g}, "
                     f"{self.hu_window[1]:g}] HU, {pixel} pixels", fontsize=8)
        save_figure(self.trainer, fig, "ct_projection")

    def label_table(self) -> pd.DataFrame:
        """Every row of the label CSV (``path``, ``age`` in years, ``sex`` 1 = male), volumes not projected."""
        return HospitalCSVDataModule.read_table(self)

    def distribution_figure(self, path: str | Path, bin_years: float = 5.0) -> dict[str, Any]:
        """Fig. 4 of the paper: (a) the age distribution of all images, by sex, in ``bin_years`` bins
        (paper is silent on its bins: chose 5 years, fine enough for the 40-60 peak), (b) the number
        of images per sex. Writes ``path`` (png) and returns the counts: ``n``, ``female``,
        ``male``, ``age_min``, ``age_max``, and the share in % of the paper's ranges (``0-39``,
        ``40-60``, ``61+``, whole years) beside the paper's (``paper_<range>``)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        table = self.label_table()
        age, male = table["age"].to_numpy(float), table["sex"].to_numpy(float) > 0.5
        edges = np.arange(0.0, max(90.0, float(age.max()) + bin_years), bin_years)
        fig, (ax_age, ax_sex) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [3, 1]})
        ax_age.hist([age[~male], age[male]], bins=edges, stacked=True, color=["tab:red", "tab:blue"],
                    label=["female", "male"])
        ax_age.set(xlabel="age (years)", ylabel="images", title=f"(a) age, {len(age)} images")
        ax_age.legend()
        counts = [int((~male).sum()), int(male.sum())]
        bars = ax_sex.bar(["female", "male"], counts, color=["tab:red", "tab:blue"])
        ax_sex.bar_label(bars)
        ax_sex.margins(y=0.15)
        ax_sex.set(title="(b) sex", ylabel="images")
        fig.suptitle(f"Fig. 4: data distribution ({self.csv_path})", fontsize=8)
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        summary: dict[str, Any] = {"n": len(age), "female": counts[0], "male": counts[1],
                                   "age_min": float(age.min()), "age_max": float(age.max())}
        whole = np.floor(age)
        for name, low, high in AGE_RANGES:
            summary[name] = round(100.0 * float(((whole >= low) & (whole < high)).mean()), 3)
            summary[f"paper_{name}"] = PAPER_AGE_SHARES[name]
        return summary

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict:
        if self.standardize and isinstance(batch, dict) and "image" in batch:
            batch["image"] = (batch["image"] - self.pixel_mean) / self.pixel_std
        return batch

    def state_dict(self) -> dict[str, float]:
        """Checkpoints carry the normalisation statistics of the training set."""
        return {"pixel_mean": self.pixel_mean, "pixel_std": self.pixel_std}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.pixel_mean = float(state.get("pixel_mean", self.pixel_mean))
        self.pixel_std = float(state.get("pixel_std", self.pixel_std))

    @staticmethod
    def phantom_args(root: str | Path, n: int = 64, seed: int = 0, height: int = 240,
                     width: int = 72, format: str = "png", slices: int = 32) -> dict[str, Any]:
        """Render a small whole-body CT phantom into ``root``; return the args that read it.

        ``format``: "png" (``height`` x ``width`` images), "series" (DICOM series folders) or
        "nifti" (``.nii.gz`` files) of ``slices`` axial slices."""
        from boneage.phantoms import wholebody_ct

        root = Path(root)
        if not (root / "phantom.json").is_file():
            wholebody_ct.render(root, n=n, seed=seed, height=height, width=width, progress=False,
                                format=format, slices=slices)
        return {"csv_path": str(root / wholebody_ct.LABEL_FILE)}


class _Projections(Dataset):
    """Writes the projection of each (volume, PNG) pair; a bad volume's DataError is returned, not
    raised, so that the loader hands it over with its one-line message intact."""

    def __init__(self, todo: list[tuple[str, str]], settings: dict[str, Any]) -> None:
        self.todo, self.settings = todo, settings

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i: int) -> str | DataError:
        try:
            return str(write_projection(*self.todo[i], **self.settings))
        except DataError as err:
            return err
