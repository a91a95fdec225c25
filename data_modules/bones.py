"""Bone crops for BAPGAN: femur and phalange X-ray crops with ages, in five age groups.

Nakazawa et al., "BAPGAN", ISBI 2022, sections 2.1-2.3. The generic hospital CSV format
(``image,age_years,sex``, paths relative to the CSV's folder), images resized to 128x128
(the crops are rotation-corrected upstream), five age groups [0-3] [4-7] [8-11] [12-15]
[16-19] years, seeded splits in the paper's proportions (femur 223/32/62 of 317, phalange
5,015/717/1,433 of 7,165) and the group sizes of every split printed at setup.

Augmentation (training only; paper section 2.3.1): a random rotation up to 5 degrees, then
two operations drawn without replacement from auto-contrast, contrast, brightness, sharpness
and posterize ("a limited version of RandAugment"). Paper is silent on the magnitudes and on
the rotation's probability: chose every draw applied (p = 1), contrast and brightness +-20 %,
sharpen alpha 0.2-0.5, posterize to 5-7 bits, black fill outside the rotated image (the
crops' background is dark).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_modules.base import DataError
from data_modules.hospital import HospitalCSVDataModule

# (val, test) shares of the paper's splits: femur 32 and 62 of 317, phalange 717 and 1,433 of 7,165
PAPER_SPLITS = {"femur": (32 / 317, 62 / 317), "phalange": (717 / 7165, 1433 / 7165)}
PAPER_AUGMENT: list[dict[str, Any]] = [
    {"Rotate": {"limit": 5, "border_mode": 0, "fill": 0, "p": 1.0}},
    {"SomeOf": {"n": 2, "replace": False, "p": 1.0, "transforms": [
        {"AutoContrast": {"p": 1.0}},
        {"RandomBrightnessContrast": {"brightness_limit": 0.0, "contrast_limit": 0.2, "p": 1.0}},
        {"RandomBrightnessContrast": {"brightness_limit": 0.2, "contrast_limit": 0.0, "p": 1.0}},
        {"Sharpen": {"alpha": [0.2, 0.5], "lightness": [0.9, 1.0], "p": 1.0}},
        {"Posterize": {"num_bits": [5, 7], "p": 1.0}},
    ]}},
]


class BoneCropDataModule(HospitalCSVDataModule):
    """Femur or phalange crops at 128x128 in five 4-year age groups.

    Args:
        bone: "femur" or "phalange": picks the paper's split proportions when
            ``val_fraction``/``test_fraction`` are not given.
        age_group_years: width of an age group (paper: 4 years).
        n_groups: number of groups (paper: 5, ages 0-19); ages at or beyond
            ``age_group_years * n_groups`` are an error naming the row.
        augment: albumentations spec; None = the paper's pipeline (``PAPER_AUGMENT``),
            ``[]`` = no augmentation.
        **kwargs: csv_path, column names, batch size, ... see HospitalCSVDataModule.
    """

    def __init__(self,
                 csv_path: str = "data/femur/labels.csv",
                 bone: str = "femur",
                 image_size: tuple[int, int] = (128, 128),
                 keep_aspect: bool = False,
                 batch_size: int = 32,
                 val_fraction: float | None = None,
                 test_fraction: float | None = None,
                 augment: list[dict[str, Any]] | None = None,
                 age_group_years: float = 4.0,
                 n_groups: int = 5,
                 **kwargs: Any) -> None:
        if bone not in PAPER_SPLITS:
            raise ValueError(f"bone must be one of {sorted(PAPER_SPLITS)}, got {bone!r}")
        val, test = PAPER_SPLITS[bone]
        super().__init__(csv_path=csv_path, image_size=image_size, keep_aspect=keep_aspect,
                         batch_size=batch_size,
                         val_fraction=val if val_fraction is None else val_fraction,
                         test_fraction=test if test_fraction is None else test_fraction,
                         augment=PAPER_AUGMENT if augment is None else augment, **kwargs)
        self.bone = bone
        self.age_group_years = age_group_years
        self.n_groups = n_groups
        self.group_sizes: pd.DataFrame | None = None

    def read_table(self) -> pd.DataFrame:
        table = super().read_table()
        limit = self.age_group_years * self.n_groups
        bad = (table["age"] < 0) | (table["age"] >= limit)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{self.csv_path}: row {i + 2} has {self.age_col} = {table['age'].iloc[i]}, "
                            f"outside the {self.n_groups} age groups [0, {limit:g}) years; remove the row, or "
                            "widen the groups in the data and the model alike (data.init_args.n_groups and "
                            "age_group_years, model.init_args.network.init_args.n_groups and "
                            "model.init_args.age_group_years: the system refuses groups that differ)")
        return table

    def group_names(self) -> list[str]:
        """``[0-3]``, ``[4-7]``, ... for the paper's 4-year groups (whole years, ends included)."""
        w = self.age_group_years
        return [f"[{k * w:g}-{(k + 1) * w - 1:g}]" for k in range(self.n_groups)]

    def age_group(self, age: np.ndarray) -> np.ndarray:
        return np.minimum((np.asarray(age) // self.age_group_years).astype(int), self.n_groups - 1)

    def setup(self, stage: str | None = None) -> None:
        first = not self._tables
        super().setup(stage)
        if first:
            counts = {split: np.bincount(self.age_group(self._tables[split]["age"]), minlength=self.n_groups)
                      for split in ("train", "val", "test")}
            self.group_sizes = pd.DataFrame(counts, index=self.group_names()).T
            self.group_sizes["total"] = self.group_sizes.sum(1)
            print(f"{self.bone} crops from {self.csv_path}: images per age group and split\n"
                  f"{self.group_sizes.to_string()}")

    @staticmethod
    def phantom_args(root: str | Path, n: int = 64, seed: int = 0, bone: str = "femur") -> dict[str, Any]:
        from boneage.phantoms.bones import render

        csv = render(root, n=n, seed=seed, bone=bone, size=64, progress=False)
        return {"csv_path": str(csv), "bone": bone}


class FemurDataModule(BoneCropDataModule):
    """Distal femur crops (the paper's femur data set: 317 images, 223/32/62)."""

    def __init__(self, csv_path: str = "data/femur/labels.csv", bone: str = "femur", **kwargs: Any) -> None:
        super().__init__(csv_path=csv_path, bone=bone, **kwargs)

    @staticmethod
    def phantom_args(root: str | Path, n: int = 64, seed: int = 0) -> dict[str, Any]:
        return BoneCropDataModule.phantom_args(root, n, seed, bone="femur")


class PhalangeDataModule(BoneCropDataModule):
    """Middle phalanx crops (the paper's phalange data set: 7,165 images, 5,015/717/1,433)."""

    def __init__(self, csv_path: str = "data/phalange/labels.csv", bone: str = "phalange",
                 **kwargs: Any) -> None:
        super().__init__(csv_path=csv_path, bone=bone, **kwargs)

    @staticmethod
    def phantom_args(root: str | Path, n: int = 64, seed: int = 0) -> dict[str, Any]:
        return BoneCropDataModule.phantom_args(root, n, seed, bone="phalange")
