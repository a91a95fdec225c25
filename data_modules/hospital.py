"""A hospital's own data: one CSV with an image path, an age and a sex per row.

The generic format of every non-RSNA data set here (a second hospital's hands, femur and
phalange crops, whole-body CT, scintigraphy)::

    labels.csv   image,age_years,sex          (column names configurable)
    any/folder/layout/of/images.png           (paths relative to the CSV's folder, or absolute)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_modules.base import (
    DataError,
    ImageTableDataModule,
    missing_data,
    numeric_column,
    parse_sex,
    require_columns,
    resolve,
)


class HospitalCSVDataModule(ImageTableDataModule):
    """Images listed in one CSV with age and sex columns.

    Args:
        csv_path: the label CSV.
        image_col: column holding image paths (relative to ``image_root``).
        age_col: column holding the age label.
        sex_col: column holding the sex (M/F, male/female, True/False, 1/0); None when absent
            (then every sex is 0 and sex-aware models must not be used).
        group_col: optional patient id column: splits keep a patient's images together.
        split_col: optional column with train/val/test assignments.
        image_root: folder the image paths are relative to; default the CSV's folder.
        age_units: units of the age column ("years" or "months").
        **kwargs: image size, batch size, augmentation, ... see ImageTableDataModule.
    """

    def __init__(
        self,
        csv_path: str = "data/hospital/labels.csv",
        image_col: str = "image",
        age_col: str = "age_years",
        sex_col: str | None = "sex",
        group_col: str | None = None,
        split_col: str | None = None,
        image_root: str | None = None,
        age_units: str = "years",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if age_units not in ("years", "months"):
            raise ValueError(f"age_units must be 'years' or 'months', got {age_units!r}")
        self.csv_path = Path(csv_path)
        self.image_col, self.age_col, self.sex_col = image_col, age_col, sex_col
        self.group_col, self.split_col = group_col, split_col
        self.image_root = Path(image_root) if image_root else self.csv_path.parent
        self.age_units = age_units

    @property
    def root(self) -> Path:
        return self.csv_path.parent

    def read_table(self) -> pd.DataFrame:
        if not self.csv_path.is_file():
            raise missing_data("label CSV", self.csv_path, type(self),
                               f"point data.init_args.csv_path at a CSV with columns "
                               f"{self.image_col},{self.age_col},{self.sex_col}")
        frame = pd.read_csv(self.csv_path)
        cols = [self.image_col, self.age_col] + [c for c in (self.sex_col, self.group_col, self.split_col) if c]
        require_columns(frame, cols, self.csv_path, "Set data.init_args.image_col/age_col/sex_col to your names.")
        if frame.empty:
            raise DataError(f"label CSV {self.csv_path} has no rows")
        table = pd.DataFrame({
            "path": [str(resolve(self.image_root, p)) for p in frame[self.image_col].astype(str)],
            "age": numeric_column(frame, self.age_col, self.csv_path),
            "sex": (parse_sex(frame[self.sex_col], str(self.csv_path), self.sex_col) if self.sex_col
                    else np.zeros(len(frame), np.float32)),
        })
        if self.group_col:
            table["group"] = frame[self.group_col].astype(str).to_numpy()
        if self.split_col:
            split = frame[self.split_col].astype(str).str.lower().str.strip()
            bad = ~split.isin(["train", "val", "test"])
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(f"{self.csv_path}: row {i + 2} has split {frame[self.split_col].iloc[i]!r} in "
                                f"column '{self.split_col}'; expected train, val or test")
            table["split"] = split.to_numpy()
        return table
