"""Whole-body bone scintigraphy (Do et al.): one CSV of image path, age in years and sex.

Images are tall (about 900 wide x 3000 high, anterior and posterior views side by side).
The same module reads the ROI data set written by the stage-1 export (crops + labels.csv
with a ``split`` column): with the default ``split_col: auto`` a CSV that has a ``split``
column keeps it, so stage 2 trains and tests on exactly stage 1's split.

Choices where the paper is silent: seeded 80/10/10 split (the paper gives no split);
whole images are stretched to the network size (``keep_aspect: false``), as the paper
"resized" them to 300x1000 and 250x750 -- both close to the real 0.3 aspect ratio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from torch.utils.data import DataLoader

from boneage.phantoms import scintigraphy as phantom
from data_modules.base import ImageTableDataset
from data_modules.hospital import HospitalCSVDataModule

SPLITS = ("train", "val", "test")


class ScintigraphyDataModule(HospitalCSVDataModule):
    """Scintigraphy CSV data (or its ROI crops).

    Args:
        csv_path: the label CSV (columns image, age_years, sex by default).
        image_size: (height, width) of the network input; 1000 x 300 for the localization
            network, 750 x 250 for the whole-image baselines.
        keep_aspect: letterbox instead of stretching.
        predict_split: which split(s) ``predict`` runs over: "all" (train, val and test: the
            ROI export needs crops of every image), or one of train/val/test.
        split_col: column with train/val/test; "auto" (default) uses a ``split`` column when
            the CSV has one (the ROI export does) and a seeded split otherwise; None always
            splits by seed.
        **kwargs: see HospitalCSVDataModule / ImageTableDataModule (batch_size, seed, ...).
    """

    def __init__(self, csv_path: str = "data/scintigraphy/labels.csv",
                 image_size: tuple[int, int] = (1000, 300), keep_aspect: bool = False,
                 predict_split: str = "test", split_col: str | None = "auto", **kwargs: Any) -> None:
        self._auto_split = split_col == "auto"
        super().__init__(csv_path=csv_path, image_size=image_size, keep_aspect=keep_aspect,
                         split_col=None if self._auto_split else split_col, **kwargs)
        if predict_split not in ("all", *SPLITS):
            raise ValueError(f"predict_split must be 'all', 'train', 'val' or 'test', got {predict_split!r}")
        self.predict_split = predict_split

    def read_table(self) -> pd.DataFrame:
        if self._auto_split and self.csv_path.is_file():
            self.split_col = "split" if "split" in pd.read_csv(self.csv_path, nrows=0).columns else None
        return super().read_table()

    def predict_splits(self) -> list[str]:
        """The split names of the predict loaders, in loader order."""
        if self.predict_dir is not None:
            return ["predict"]
        return list(SPLITS) if self.predict_split == "all" else [self.predict_split]

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.predict_dir is not None:
            return super().predict_dataloader()
        loaders = [self._plain_loader(s) for s in self.predict_splits()]
        return loaders if len(loaders) > 1 else loaders[0]

    def _plain_loader(self, split: str) -> DataLoader:
        """A split's images in table order without augmentation (the train split included)."""
        if not self._datasets:
            self.setup()
        dataset = ImageTableDataset(self._tables[split], self._datasets[split].cache, None, self.use_cache)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          pin_memory=self.pin_memory)

    @staticmethod
    def phantom_args(root: str | Path, n: int = 64, seed: int = 0) -> dict[str, Any]:
        """A small scintigraphy phantom (96 x 320 px) in ``root``; init args that read it."""
        root = Path(root)
        if not (root / "phantom.json").is_file():
            phantom.render(root, n=n, seed=seed, width=96, height=320, progress=False)
        return {"csv_path": str(root / phantom.LABEL_FILE)}
