"""Whole-body bone scintigraphy (Do et al.): one CSV of image path, age in years and sex.

Images are tall (about 900 wide x 3000 high, anterior and posterior views side by side).
The same module reads the ROI data set written by the stage-1 export (crops + labels.csv
with a ``split`` column): with the default ``split_col: auto`` a CSV that has a ``split``
column keeps it, so stage 2 trains and tests on exactly stage 1's split.

Choices where the paper is silent: seeded 80/10/10 split (the paper gives no split);
whole images are stretched to the network size (``keep_aspect: false``), as the paper
"resized" them to 300x1000 and 250x750 -- both close to the real 0.3 aspect ratio.

DICOM scans (see :mod:`data_modules.dicom`): a two-frame NM file (frame 1 anterior, frame 2
posterior, as whole-body bone scans are exported) becomes the side-by-side image above, the
posterior view mirrored so both views show the patient's right on the same side (the layout
of the phantom's PNGs). When the two views are separate files, the CSV lists the posterior
one in a second column (``image_posterior`` by default; chose a second column over one path
with a separator because each cell then stays a plain path that spreadsheets and scripts
handle)::

    image,image_posterior,age_years,sex
    scans/0001_ant.dcm,scans/0001_post.dcm,63.5,F
    scans/0002.dcm,,71.0,M            <- empty: a two-frame file (or an image with both views)

Both views of a scan go through one window (``window``): "dicom" takes the anterior file's.

Cross-fitting (``folds: K``, ``fold: k``): every split's rows are dealt into K seeded folds; the
localizer of fold k trains on the training rows outside fold k (validation and test stay whole)
and its predict (the ROI export) runs over the rows of fold k in every split, so each crop comes
from a localizer that never trained on that image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader, Dataset

from boneage.phantoms import scintigraphy as phantom
from data_modules.base import DataError, ImageCache, ImageTableDataset, read_label_file, require_columns, resolve
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
        posterior_col: column with the posterior view's file where a scan's two views are two
            files (an empty cell: the row's one file holds both views); "auto" (default) uses an
            ``image_posterior`` column when the CSV has one; None never reads one.
        folds: cross-fitting folds (1: none).
        fold: which fold this run holds out of training and exports (with ``folds`` > 1).
        **kwargs: see HospitalCSVDataModule / ImageTableDataModule (batch_size, seed, ...).
    """

    def __init__(self, csv_path: str = "data/scintigraphy/labels.csv",
                 image_size: tuple[int, int] = (1000, 300), keep_aspect: bool = False,
                 predict_split: str = "test", split_col: str | None = "auto",
                 posterior_col: str | None = "auto", folds: int = 1, fold: int | None = None,
                 **kwargs: Any) -> None:
        self._auto_split = split_col == "auto"
        self.posterior_col = posterior_col
        super().__init__(csv_path=csv_path, image_size=image_size, keep_aspect=keep_aspect,
                         split_col=None if self._auto_split else split_col, **kwargs)
        if predict_split not in ("all", *SPLITS):
            raise ValueError(f"predict_split must be 'all', 'train', 'val' or 'test', got {predict_split!r}")
        self.predict_split = predict_split
        if folds < 1 or (folds > 1) != (fold is not None) or (fold is not None and not 0 <= fold < folds):
            raise ValueError(f"cross-fitting needs folds >= 2 and 0 <= fold < folds (or folds 1 and fold null), "
                             f"got folds {folds}, fold {fold}")
        self.folds, self.fold = folds, fold

    def read_table(self) -> pd.DataFrame:
        if self._auto_split and self.csv_path.is_file():
            self.split_col = "split" if "split" in read_label_file(self.csv_path).columns else None
        table = super().read_table()
        if self.posterior_col is None:
            return table
        frame = read_label_file(self.csv_path)
        column = "image_posterior" if self.posterior_col == "auto" else self.posterior_col
        if column not in frame.columns:
            if self.posterior_col == "auto":
                return table
            require_columns(frame, [column], self.csv_path, "Set data.init_args.posterior_col to your name or null.")
        cells = frame[column]
        given = cells.notna() & (cells.astype(str).str.strip() != "")
        table["posterior"] = [str(resolve(self.image_root, str(p).strip())) if g else None
                              for p, g in zip(cells, given)]
        for i in np.flatnonzero(given.to_numpy()):
            if not Path(table["posterior"].iloc[i]).is_file():
                raise DataError(f"{self.csv_path}: row {i + 2} lists the posterior view "
                                f"{table['posterior'].iloc[i]} in column '{column}', which does not exist; "
                                "fix the path or empty the cell")
        return table

    def source(self, row: pd.Series) -> str | tuple[str, str]:
        """What one table row's image is read from: its file, or its (anterior, posterior) files."""
        posterior = row.get("posterior")
        return (row["path"], posterior) if isinstance(posterior, str) else row["path"]

    def _cache_for(self, table: pd.DataFrame) -> ImageCache:
        if "posterior" not in table.columns:
            return super()._cache_for(table)
        # the cache reads a pair of files where a scan's views are two files (read_gray takes pairs)
        return super()._cache_for(table.assign(path=[self.source(row) for _, row in table.iterrows()]))

    def setup(self, stage: str | None = None) -> None:
        fresh = not self._datasets
        super().setup(stage)
        if fresh and self.fold is not None:  # train on the rows outside this fold
            keep = np.flatnonzero(self.fold_ids("train") != self.fold)
            self._datasets["train"] = _Rows(self._datasets["train"], keep)

    def fold_ids(self, split: str) -> np.ndarray:
        """Each row's cross-fitting fold in a split (seeded, balanced; zeros without folds)."""
        n = len(self.table(split))
        if self.folds == 1:
            return np.zeros(n, dtype=int)
        ids = np.empty(n, dtype=int)
        order = np.random.default_rng([self.seed, self.folds, SPLITS.index(split)]).permutation(n)
        ids[order] = np.arange(n) % self.folds
        return ids

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
        dataset: Dataset = ImageTableDataset(self._tables[split], self._datasets[split].cache, None, self.use_cache)
        if self.fold is not None:  # the export of one fold: its own rows only
            dataset = _Rows(dataset, np.flatnonzero(self.fold_ids(split) == self.fold))
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          pin_memory=self.pin_memory)

    @staticmethod
    def phantom_args(root: str | Path, n: int = 64, seed: int = 0) -> dict[str, Any]:
        """A small scintigraphy phantom (96 x 320 px) in ``root``; init args that read it."""
        root = Path(root)
        if not (root / "phantom.json").is_file():
            phantom.render(root, n=n, seed=seed, width=96, height=320, progress=False)
        return {"csv_path": str(root / phantom.LABEL_FILE)}


class _Rows(Dataset):
    """Some rows of a dataset; an index keeps its augmentation seed (boneage.resume.SeededIndex), and
    ``index`` in a sample stays the row's position in the split's table."""

    def __init__(self, base: ImageTableDataset, rows: np.ndarray) -> None:
        self.base, self.rows = base, np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        j = int(self.rows[int(i)])
        seed = getattr(i, "augment_seed", None)
        return self.base[type(i)(j, seed) if seed is not None else j]

    @property
    def cache(self) -> ImageCache:
        return self.base.cache
