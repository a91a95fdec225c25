"""RSNA Pediatric Bone Age data, as the challenge and its Kaggle copy distribute it.

``data_dir`` holds ``boneage-training-dataset.csv`` (id, boneage in months, male True/False)
and the images ``{id}.png`` (or ``{id}.dcm``) in ``boneage-training-dataset/``. The three
splits of the real download come with other names::

    training    boneage-training-dataset.csv (train.csv in some copies)   boneage-training-dataset/
    validation  Bone Age Validation Set/Validation Dataset.csv            .../boneage-validation-dataset-1/
                (Image ID, male, Bone Age (months))                       .../boneage-validation-dataset-2/
    test        Bone Age Test Set/Bone age ground truth.xlsx              Bone Age Test Set/Test Set Images/
                (Case ID, Sex M/F, Ground truth bone age (months))

so each split has its own label-file argument (.csv or .xlsx, any of the three column sets)
and image-folder argument. An image folder may be a list of folders, and a folder that holds
no images itself stands for its subfolders that do: ``Bone Age Validation Set`` finds both
validation folders, and the Kaggle copy's ``boneage-training-dataset/boneage-training-dataset/``
is found from ``boneage-training-dataset``. An id found in two folders, or in none, is an error.
When no validation or test labels are given, the training CSV is split 80/10/10 with a fixed
seed (the TJ-Net paper's protocol). Labels are in months.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from boneage.phantoms import rsna as rsna_phantom
from data_modules.base import (
    DataError,
    ImageTableDataModule,
    label_rows,
    missing_data,
    numeric_column,
    parse_sex,
    read_label_file,
    require_columns,
    resolve,
)

# Column sets (id, age in months, sex) of the real files; each split accepts any of them, so the
# validation file can serve as a test set.
COLUMNS = [
    ("id", "boneage", "male"),                                       # training CSV
    ("Image ID", "Bone Age (months)", "male"),                       # Validation Dataset.csv
    ("Case ID", "Ground truth bone age (months)", "Sex"),            # Bone age ground truth.xlsx
]
IMAGE_TYPES = (".png", ".dcm")


class RSNADataModule(ImageTableDataModule):
    """RSNA Pediatric Bone Age (hand radiographs, bone age in months).

    Args:
        data_dir: folder of the RSNA download (or of a phantom made by ``boneage-phantom rsna``).
        train_csv: training labels (.csv or .xlsx), relative to ``data_dir``.
        train_images: folder(s) of the training images ``{id}.png`` or ``{id}.dcm``, relative to
            ``data_dir``; a folder without images stands for its subfolders that hold some.
        val_csv: optional validation labels (real column names accepted); with ``val_images``.
        val_images: folder(s) of the validation images.
        test_csv: optional test labels with ground truth (e.g. ``Bone age ground truth.xlsx``);
            with ``test_images``.
        test_images: folder(s) of the test images.
        age_range: [low, high] plausible bone ages in months; a row outside is an error
            (hands: 0-240 months, the RSNA labels span 1-228).
        **kwargs: image size, batch size, augmentation, ... see ImageTableDataModule.
    """

    age_units = "months"

    def __init__(
        self,
        data_dir: str = "data/rsna",
        train_csv: str = "boneage-training-dataset.csv",
        train_images: list[str] | str = "boneage-training-dataset",
        val_csv: str | None = None,
        val_images: list[str] | str | None = None,
        test_csv: str | None = None,
        test_images: list[str] | str | None = None,
        age_range: tuple[float, float] = (0.0, 240.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)
        self.sources = {"train": (train_csv, train_images), "val": (val_csv, val_images),
                        "test": (test_csv, test_images)}
        self.age_range = (float(age_range[0]), float(age_range[1]))

    @property
    def root(self) -> Path:
        return self.data_dir

    def read_table(self) -> pd.DataFrame:
        if not self.data_dir.is_dir():
            raise missing_data("RSNA data folder", self.data_dir, type(self),
                               "point data.init_args.data_dir at your RSNA Pediatric Bone Age download "
                               "(the folder holding boneage-training-dataset.csv)")
        shipped = any(self.sources[s][0] for s in ("val", "test"))
        parts = []
        for split, (csv, images) in self.sources.items():
            if csv is None:
                if images is not None and split != "train":
                    raise DataError(f"data.init_args.{split}_images is set but {split}_csv is not: give the "
                                    f"{split} labels file too")
                continue
            if images is None:
                raise DataError(f"data.init_args.{split}_csv is set but {split}_images is not: give the image folder")
            folders = [resolve(self.data_dir, f) for f in ([images] if isinstance(images, str) else images)]
            part = self._read_split(split, resolve(self.data_dir, csv), folders)
            parts.append(part.assign(split=split if shipped else None))
        return pd.concat(parts, ignore_index=True)

    def _read_split(self, split: str, csv: Path, folders: list[Path]) -> pd.DataFrame:
        if not csv.is_file():
            found = sorted(p.name for p in csv.parent.glob("*") if p.suffix.lower() in (".csv", ".xlsx"))
            raise missing_data(f"RSNA {split} labels", csv, RSNADataModule,
                               f"set data.init_args.{split}_csv to your {split} labels file"
                               + (f" (label files in {csv.parent}: {', '.join(found)})" if found else ""))
        frame = read_label_file(csv)
        for id_col, age_col, sex_col in COLUMNS:
            if {id_col, age_col, sex_col} <= set(frame.columns):
                break
        else:
            id_col, age_col, sex_col = next((c for c in COLUMNS if c[0] in frame.columns), COLUMNS[0])
            no_truth = " (the Kaggle copy's boneage-test-dataset.csv has no ages: use the RSNA test set's " \
                       "'Bone age ground truth.xlsx')" if id_col == "Case ID" and age_col not in frame else ""
            require_columns(frame, [id_col, age_col, sex_col], csv,
                            f"RSNA label files have columns {'; '.join(', '.join(c) for c in COLUMNS)}{no_truth}.")
        ids = frame[id_col].astype(str).str.strip().str.replace(r"\.0$", "", regex=True)
        index: dict[str, Path] = {}
        for listing in image_folders(split, folders).values():
            for key, path in listing.items():
                if key in index and index[key] != path:
                    raise DataError(f"image {key} is in two places, {index[key]} and {path}; give "
                                    f"data.init_args.{split}_images only the folder(s) that hold this split")
                index[key] = path
        missing = [i for i in ids if i not in index]
        if missing:
            names = ", ".join(f"{i}{IMAGE_TYPES[0]}" for i in missing[:5])
            raise DataError(f"{len(missing)} of {len(ids)} images listed in {csv} are not in "
                            f"{', '.join(map(str, folders))} as {{id}}.png or {{id}}.dcm, e.g. {names}; point "
                            f"data.init_args.{split}_images at their folder(s) or remove those rows")
        return pd.DataFrame({
            "id": ids,
            "path": [str(index[i]) for i in ids],
            "age": numeric_column(frame, age_col, csv),
            "sex": parse_sex(frame[sex_col], str(csv), sex_col),
            **label_rows(frame, csv),
        })

    @staticmethod
    def phantom_args(root: str | Path, n: int = 64, seed: int = 0, size: int = 128) -> dict[str, Any]:
        root = Path(root)
        if not (root / "phantom.json").is_file():
            rsna_phantom.render(root, n=n, seed=seed, size=size, progress_bar=False)
        return {"data_dir": str(root)}


def list_images(folder: Path) -> dict[str, Path]:
    """``{id: path}`` of the ``{id}.png`` / ``{id}.dcm`` files directly in ``folder`` (hidden files,
    such as macOS's ``._1377.png``, are not images). Both kinds for one id is an error."""
    out: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in IMAGE_TYPES and not entry.name.startswith(".") and entry.is_file():
                if stem in out:
                    raise DataError(f"image {stem} is there twice, {out[stem]} and {entry.path}: keep one")
                out[stem] = Path(entry.path)
    return out


def image_folders(split: str, folders: list[Path]) -> dict[Path, dict[str, Path]]:
    """The folders that hold a split's images, with their listings: each given folder that holds
    images, or else its subfolders that do (the validation set's two folders, the Kaggle copy's
    nested folder)."""
    out: dict[Path, dict[str, Path]] = {}
    for folder in folders:
        if not folder.is_dir():
            raise DataError(f"RSNA {split} image folder {folder} does not exist; set "
                            f"data.init_args.{split}_images to the folder holding the {{id}}.png images")
        listing = list_images(folder)
        if listing:
            out[folder] = listing
            continue
        subs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith((".", "__MACOSX")))
        holding = {d: listing for d in subs if (listing := list_images(d))}
        if not holding:
            zips = sorted(p.name for p in folder.glob("*.zip"))
            raise DataError(f"RSNA {split} image folder {folder} holds no {{id}}.png or {{id}}.dcm images, nor do "
                            f"its subfolders ({', '.join(d.name for d in subs) or 'none'})"
                            + (f"; unzip {', '.join(zips)} there first" if zips else "")
                            + f"; set data.init_args.{split}_images to the folder holding the images")
        out.update(holding)
    return out
