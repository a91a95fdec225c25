"""A hospital's own data: one CSV with an image path, an age and a sex per row.

The generic format of every non-RSNA data set here (a second hospital's hands, femur and
phalange crops, whole-body CT, scintigraphy)::

    labels.csv   image,age_years,sex[,patient_id][,split]   (column names configurable; .xlsx too)
    any/folder/layout/of/images.png                        (paths relative to the CSV's folder, or absolute)

Patients: a ``patient``/``patient_id`` column (found by ``patient_col: auto``) keeps each
patient's images in one split. A patient listed twice is an error unless
``images_per_patient: many`` says several images per patient are expected. An image listed
twice, a blank patient id and an age outside ``age_range`` are errors naming the row.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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

PATIENT_COLUMNS = ("patient", "patientid")  # column names (lower case, letters only) patient_col "auto" finds


class HospitalCSVDataModule(ImageTableDataModule):
    """Images listed in one CSV (or .xlsx) with age and sex columns.

    Args:
        csv_path: the label CSV (or .xlsx).
        image_col: column holding image paths (relative to ``image_root``).
        age_col: column holding the age label.
        sex_col: column holding the sex (M/F, male/female, True/False, 1/0); None when absent
            (then every sex is 0 and sex-aware models must not be used).
        patient_col: patient id column: a patient's images stay in one split. "auto" (default)
            uses a ``patient`` or ``patient_id`` column when the CSV has one (any case);
            None splits image by image.
        images_per_patient: "one" (default): a patient id that appears twice is an error naming
            both rows; "many": several images per patient are expected and kept together.
        split_col: optional column with train/val/test assignments.
        image_root: folder the image paths are relative to; default the CSV's folder.
        age_units: units of the age column ("years" or "months").
        age_range: [low, high] plausible ages in ``age_units``; a row outside is an error.
            Default ``AGE_RANGE_YEARS`` of the class (0-100 years here).
        **kwargs: image size, batch size, augmentation, ... see ImageTableDataModule.
    """

    # Chose 0-100 years because this class also reads the adult CT and scintigraphy CSVs (their
    # experiments span 0.7-87 and 40-80 years); hand data sets narrow it (Tongji: 0-22 years).
    AGE_RANGE_YEARS: tuple[float, float] = (0.0, 100.0)

    def __init__(
        self,
        csv_path: str = "data/hospital/labels.csv",
        image_col: str = "image",
        age_col: str = "age_years",
        sex_col: str | None = "sex",
        patient_col: str | None = "auto",
        images_per_patient: str = "one",
        split_col: str | None = None,
        image_root: str | None = None,
        age_units: str = "years",
        age_range: tuple[float, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if age_units not in ("years", "months"):
            raise ValueError(f"age_units must be 'years' or 'months', got {age_units!r}")
        if images_per_patient not in ("one", "many"):
            raise ValueError(f"images_per_patient must be 'one' or 'many', got {images_per_patient!r}")
        self.csv_path = Path(csv_path)
        self.image_col, self.age_col, self.sex_col = image_col, age_col, sex_col
        self.patient_col, self.images_per_patient, self.split_col = patient_col, images_per_patient, split_col
        self.image_root = Path(image_root) if image_root else self.csv_path.parent
        self.age_units = age_units
        scale = 12.0 if age_units == "months" else 1.0
        self.age_range = (tuple(float(a) for a in age_range) if age_range is not None
                          else tuple(a * scale for a in self.AGE_RANGE_YEARS))

    @property
    def root(self) -> Path:
        return self.csv_path.parent

    def read_table(self) -> pd.DataFrame:
        if not self.csv_path.is_file():
            raise missing_data("label CSV", self.csv_path, type(self),
                               f"point data.init_args.csv_path at a CSV with columns "
                               f"{self.image_col},{self.age_col},{self.sex_col}")
        frame = read_label_file(self.csv_path)
        patient_col = self._patient_column(frame)
        cols = [self.image_col, self.age_col] + [c for c in (self.sex_col, patient_col, self.split_col) if c]
        require_columns(frame, cols, self.csv_path, "Set data.init_args.image_col/age_col/sex_col to your names.")
        images = frame[self.image_col]
        blank = images.isna() | (images.astype(str).str.strip() == "")
        if blank.any():
            raise DataError(f"{self.csv_path}: row {int(np.flatnonzero(blank.to_numpy())[0]) + 2} has no image "
                            f"path in column '{self.image_col}'; fill it in or remove the row")
        table = pd.DataFrame({
            "path": [str(resolve(self.image_root, p)) for p in images.astype(str).str.strip()],
            "age": numeric_column(frame, self.age_col, self.csv_path),
            "sex": (parse_sex(frame[self.sex_col], str(self.csv_path), self.sex_col) if self.sex_col
                    else np.zeros(len(frame), np.float32)),
            **label_rows(frame, self.csv_path),
        })
        if patient_col:
            patients = frame[patient_col]
            blank = patients.isna() | (patients.astype(str).str.strip() == "")
            if blank.any():
                raise DataError(f"{self.csv_path}: row {int(np.flatnonzero(blank.to_numpy())[0]) + 2} has no "
                                f"patient id in column '{patient_col}'; fill it in, or set "
                                "data.init_args.patient_col: null to split image by image")
            table["group"] = patients.astype(str).str.strip().to_numpy()
        if self.split_col:
            split = frame[self.split_col].astype(str).str.lower().str.strip()
            bad = ~split.isin(["train", "val", "test"])
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(f"{self.csv_path}: row {i + 2} has split {frame[self.split_col].iloc[i]!r} in "
                                f"column '{self.split_col}'; expected train, val or test")
            table["split"] = split.to_numpy()
        return table

    def _patient_column(self, frame: pd.DataFrame) -> str | None:
        if self.patient_col != "auto":
            return self.patient_col
        found = [c for c in frame.columns if re.sub(r"[^a-z]", "", str(c).lower()) in PATIENT_COLUMNS]
        if len(found) > 1:
            raise DataError(f"{self.csv_path} has several patient id columns {found}; set "
                            "data.init_args.patient_col to the one that names the patient")
        return found[0] if found else None
