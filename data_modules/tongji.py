"""A second hospital's hand radiographs (the TJ-Net paper's Tongji data) in the generic CSV format.

Exactly :class:`data_modules.hospital.HospitalCSVDataModule` (``labels.csv`` with ``image``,
``age_years``, ``sex``; column names configurable; any folder layout), with its phantom: the
Tongji-like second population of :mod:`boneage.phantoms.tongji` (0-22 years, another maturation
tempo and acquisition), so the transfer experiment runs before real data arrives::

    boneage-phantom tongji --out data/tongji --n 1385
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boneage.phantoms import tongji as tongji_phantom
from data_modules.hospital import HospitalCSVDataModule


class TongjiDataModule(HospitalCSVDataModule):
    """Hand radiographs with ages in years from one CSV (see HospitalCSVDataModule for the args)."""

    AGE_RANGE_YEARS = (0.0, 22.0)  # the paper's Tongji data span 0-22 years

    def __init__(self, csv_path: str = "data/tongji/labels.csv", **kwargs: Any) -> None:
        super().__init__(csv_path=csv_path, **kwargs)

    @staticmethod
    def phantom_args(root: str | Path, n: int = 64, seed: int = 0, size: int = 128) -> dict[str, Any]:
        root = Path(root)
        if not (root / "phantom.json").is_file():
            tongji_phantom.render(root, n=n, seed=seed, size=size, progress_bar=False)
        return {"csv_path": str(root / tongji_phantom.LABEL_FILE)}
