"""RSNA Pediatric Bone Age data, in the layout the challenge distributed.

``data_dir`` holds ``boneage-training-dataset.csv`` (id, boneage in months, male True/False)
and ``boneage-training-dataset/{id}.png``. The validation and test sets ship with other column
names (``Image ID, male, Bone Age (months)``; ``Case ID, Sex, Ground truth bone age (months)``)
and file names that vary between downloads, so each has its own CSV and image-folder argument.
When they are not given, the training CSV is split 80/10/10 with a fixed seed (the TJ-Net
paper's protocol). Labels are in months.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from boneage.phantoms import rsna as rsna_phantom
from data_modules.base import (
    DataError,
    ImageTableDataModule,
    missing_data,
    numeric_column,
    parse_sex,
    require_columns,
    resolve,
)

# Column names of each split's CSV in the real downloads: (id, age in months, sex).
COLUMNS = {
    "train": [("id", "boneage", "male")],
    "val": [("Image ID", "Bone Age (months)", "male"), ("id", "boneage", "male")],
    "test": [("Case ID", "Ground truth bone age (months)", "Sex"), ("id", "boneage", "male")],
}


class RSNADataModule(ImageTableDataModule):
    """RSNA Pediatric Bone Age (hand radiographs, bone age in months).

    Args:
        data_dir: folder of the RSNA download (or of a phantom made by ``boneage-phantom rsna``).
        train_csv: training CSV, relative to ``data_dir``.
        train_images: folder of the training PNGs, relative to ``data_dir``.
        val_csv: optional validation CSV (real column names accepted); with ``val_images``.
        val_images: folder of the validation images.
        test_csv: optional test CSV with ground truth; with ``test_images``.
        test_images: folder of the test images.
        **kwargs: image size, batch size, augmentation, ... see ImageTableDataModule.
    """

    age_units = "months"

    def __init__(
        self,
        data_dir: str = "data/rsna",
        train_csv: str = "boneage-training-dataset.csv",
        train_images: str = "boneage-training-dataset",
        val_csv: str | None = None,
        val_images: str | None = None,
        test_csv: str | None = None,
        test_images: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)
        self.sources = {"train": (train_csv, train_images), "val": (val_csv, val_images),
                        "test": (test_csv, test_images)}

    @property
    def root(self) -> Path:
        return self.data_dir

    def read_table(self) -> pd.DataFrame:
        if not self.data_dir.is_dir():
            raise missing_data("RSNA data folder", self.data_dir, type(self),
                               "point data.init_args.data_dir at your RSNA Pediatric Bone Age download "
                               "(the folder holding boneage-training-dataset.csv)")
        parts = []
        for split, (csv, images) in self.sources.items():
            if csv is None:
                continue
            if images is None:
                raise DataError(f"data.{split}_csv is set but data.{split}_images is not: give the image folder")
            part = self._read_split(split, resolve(self.data_dir, csv), resolve(self.data_dir, images))
            parts.append(part.assign(split=split if any(self.sources[s][0] for s in ("val", "test")) else None))
        return pd.concat(parts, ignore_index=True)

    @staticmethod
    def _read_split(split: str, csv: Path, images: Path) -> pd.DataFrame:
        if not csv.is_file():
            raise missing_data(f"RSNA {split} CSV", csv, RSNADataModule,
                               f"point data.init_args.data_dir or {split}_csv at your RSNA {split} CSV")
        frame = pd.read_csv(csv)
        for id_col, age_col, sex_col in COLUMNS[split]:
            if {id_col, age_col, sex_col} <= set(frame.columns):
                break
        else:
            id_col, age_col, sex_col = COLUMNS[split][0]
            require_columns(frame, [id_col, age_col, sex_col], csv,
                            "RSNA CSVs have columns id, boneage (months), male (True/False).")
        ids = frame[id_col].astype(str).str.replace(r"\.0$", "", regex=True)
        return pd.DataFrame({
            "id": ids,
            "path": [str(images / f"{i}.png") for i in ids],
            "age": numeric_column(frame, age_col, csv),
            "sex": parse_sex(frame[sex_col], str(csv), sex_col),
        })

    @staticmethod
    def phantom_args(root: str | Path, n: int = 64, seed: int = 0, size: int = 128) -> dict[str, Any]:
        root = Path(root)
        if not (root / "phantom.json").is_file():
            rsna_phantom.render(root, n=n, seed=seed, size=size, progress_bar=False)
        return {"data_dir": str(root)}
