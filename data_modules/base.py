"""The base of every DataModule: a table of images with ages and sexes.

A subclass only says how to read its on-disk format (``read_table``) and how to make a
small phantom of it (``phantom_args``). This base owns the rest:

- validation of the table (missing columns, non-numeric ages, unknown sexes, missing
  files) with errors that name the file, row and key;
- seeded splits (grouped by patient where a ``group`` column exists), or the splits the
  data set ships (a ``split`` column);
- a decoded, resized uint8 cache (one ``.npy`` memmap per image size and preprocessing,
  keyed by the file list), built once with a progress bar, so later epochs and later runs
  never decode a PNG again;
- albumentations augmentation named in the YAML;
- batches as dicts: ``image`` [B, 1, H, W] in [-1, 1], ``age`` [B] in label units,
  ``sex`` [B] (1 male, 0 female), ``index`` [B] (row of ``table(stage)``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from boneage.phantoms.common import read_metadata

# OpenCV without its own thread pool, for the life of the process. Loader workers are the
# parallelism; OpenCV threads in a process that then forks workers can deadlock a worker, and on
# the small images of a loader they cost more than they give (a 2185x1669 -> 128 px resize:
# 6.1 ms on 2 threads, 1.9 ms on one, 2-core machine). The usual setting for PyTorch loaders.
cv2.setNumThreads(0)

STAGES = ("train", "val", "test", "predict")
DICOM_SUFFIXES = (".dcm", ".dicom")  # data_modules.dicom reads them (pydicom)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", *DICOM_SUFFIXES)


class DataError(ValueError):
    """Bad input data: the message names the file, row or key and what to do."""


def read_raw(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A single-frame image in its stored units, and its DICOM display metadata (``{}`` for other
    formats): uint8/uint16 for PNG/JPEG/TIFF/BMP (colour converted to gray), float32 modality units
    for DICOM (:func:`data_modules.dicom.read_dicom`)."""
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        from data_modules.dicom import read_dicom

        frames, meta = read_dicom(path)
        if len(frames) != 1:
            raise DataError(f"{path} has {len(frames)} frames where one view was expected; list single-frame files")
        return frames[0], meta
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        if not Path(path).is_file():
            raise DataError(f"image file not found: {path}")
        raise DataError(f"cannot decode image {path}: the file is not a readable PNG/JPEG/TIFF/DICOM; "
                        "replace it or remove its row from the label CSV")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    return img, {}


def read_gray(path: str | Path | Sequence[str | Path], window: str | Sequence[float] = "dicom") -> np.ndarray:
    """Decode an image file as the uint8 grayscale network input.

    PNG/JPEG/TIFF/BMP and DICOM (``.dcm``, ``.dicom``; a two-frame NM whole-body scan becomes its
    anterior and posterior views side by side). An image with more than 8 bits goes through
    ``window`` (:func:`data_modules.dicom.to_uint8`): "dicom" (the file's own VOI LUT or window;
    the image's 0.5-99.5 percentiles when it has none), "percentile", or a fixed [low, high] in
    stored units (HU, counts). 8-bit images are kept as they are. A pair of paths is a scan whose
    anterior and posterior views are two files (:func:`data_modules.dicom.read_two_files`).
    """
    from data_modules import dicom

    if isinstance(path, (tuple, list)):
        return dicom.read_two_files(path[0], path[1], window)
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        return dicom.read_dicom_gray(path, window)
    img, meta = read_raw(path)
    return dicom.to_uint8(img, window, path, meta)


def _whole_factor(factor: float) -> int:
    """The whole factor of the first, fast area step of `shrink` on one axis."""
    return max(1, int(factor // 3) if factor >= 6 else int(factor))


def shrink(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to exactly (height, width), area-averaging every axis that shrinks.

    OpenCV's area resize is fast only at whole-number factors (a 2185x1669 radiograph to 128x98:
    10 ms at its own factors, 17.07x17.03), so each axis is first area-averaged by a whole factor
    of its own, k (after trimming fewer than k edge rows or columns, split between both sides, so
    the geometry moves by under one output pixel), and the small remainder is then area-resized to
    the exact size (bilinear on an axis that grows). Chose k = factor // 3 from a factor of 6 up,
    so that at least 3x is left for the exact area step: with k = the whole factor the remainder is
    near 1x and lets the first step's residue of fine patterns through (thin 1-2 px bands, 3000x900
    to 256x256: row-to-row std 7.7 against one INTER_AREA's 2.9; 1.0 this way). Below 6x, k is the
    whole factor (within 1.3x of INTER_AREA there).
    """
    kh, kw = _whole_factor(img.shape[0] / height), _whole_factor(img.shape[1] / width)
    if kh > 1 or kw > 1:
        h, w = img.shape[0] // kh * kh, img.shape[1] // kw * kw
        top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        img = cv2.resize(img[top:top + h, left:left + w], (w // kw, h // kh), interpolation=cv2.INTER_AREA)
    if img.shape[0] >= height and img.shape[1] >= width:
        if img.shape[:2] != (height, width):
            img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
        return img
    # an axis grows: OpenCV's INTER_AREA is no area average on the other axis then, so one axis at a time
    for size in ((img.shape[1], height), (width, height)):
        if img.shape[:2] != size[::-1]:
            grows = size[0] > img.shape[1] or size[1] > img.shape[0]
            img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR if grows else cv2.INTER_AREA)
    return img


def resize_gray(img: np.ndarray, size: tuple[int, int], keep_aspect: bool) -> np.ndarray:
    """Resize to (height, width); with ``keep_aspect`` the image is letterboxed (black pad)."""
    h, w = size
    if not keep_aspect:
        return shrink(img, h, w)
    scale = min(h / img.shape[0], w / img.shape[1])
    nh, nw = max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))
    small = shrink(img, nh, nw)
    out = np.zeros((h, w), np.uint8)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[top:top + nh, left:left + nw] = small
    return out


def build_augment(spec: Sequence[dict[str, Any]] | None) -> A.Compose | None:
    """albumentations pipeline from YAML: a list like ``[{"HorizontalFlip": {"p": 0.5}}, ...]``.

    Nested pipelines use ``{"OneOf": {"transforms": [...], "p": 0.5}}`` or ``SomeOf``.
    """
    if not spec:
        return None
    return A.Compose([_transform(item) for item in spec])


def _transform(item: dict[str, Any]) -> A.BasicTransform:
    if not isinstance(item, dict) or len(item) != 1:
        raise ValueError(f"each augmentation must be a one-key mapping {{Name: {{args}}}}, got {item!r}")
    (name, kwargs), = item.items()
    cls = getattr(A, name, None)
    if cls is None:
        raise ValueError(f"unknown albumentations transform {name!r} in data.augment; "
                         "see https://albumentations.ai/docs for the names")
    kwargs = dict(kwargs or {})
    if "transforms" in kwargs:
        kwargs["transforms"] = [_transform(t) for t in kwargs["transforms"]]
    return cls(**kwargs)


class ImageCache:
    """Decoded, resized uint8 images of one file list, as a memory-mapped ``.npy``."""

    def __init__(self, paths: Sequence[str], size: tuple[int, int], keep_aspect: bool, cache_dir: Path,
                 crop: str = "full", window: str | Sequence[float] = "dicom") -> None:
        from data_modules.dicom import check_window

        self.paths = list(paths)  # a path, or an (anterior, posterior) pair of a scan stored as two files
        self.size = tuple(size)
        self.keep_aspect = keep_aspect
        self.crop = crop
        self.window = check_window(window)
        key = hashlib.sha1(json.dumps([self.paths, self.size, keep_aspect, crop, self.window, 2]).encode()
                           ).hexdigest()[:16]
        self.file = Path(cache_dir) / f"images-{self.size[0]}x{self.size[1]}-{key}.npy"
        self._array: np.ndarray | None = None

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` decoded through the cache's window and preprocessed."""
        return self.preprocess(read_gray(self.paths[i], self.window))

    def preprocess(self, img: np.ndarray) -> np.ndarray:
        if self.crop == "upper":
            img = img[: img.shape[0] // 2]
        elif self.crop == "lower":
            img = img[img.shape[0] // 2:]
        return resize_gray(img, self.size, self.keep_aspect)

    def build(self, progress: bool = True, workers: int = 0) -> None:
        """Decode and resize every image once, in ``workers`` processes (0: this one); a finished
        cache is reused as it is."""
        if self.file.is_file():
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(f".tmp{os.getpid()}.npy")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(self.paths), *self.size))
        chunk = 16
        # its own generator: a loader draws its workers' base seed from the global RNG otherwise,
        # and a run would then train differently depending on whether the cache already existed
        loader = DataLoader(_Decoded(self), batch_size=chunk, num_workers=workers, collate_fn=np.stack,
                            generator=torch.Generator())
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(self.paths), desc=f"caching {len(self.paths)} images at "
                       f"{self.size[0]}x{self.size[1]}", unit="img", leave=False)
        try:
            for k, images in enumerate(loader):
                arr[k * chunk:k * chunk + len(images)] = images
                if bar is not None:
                    bar.update(len(images))
            arr.flush()
        except BaseException:
            del arr
            tmp.unlink(missing_ok=True)  # a bad file stops the build: leave no half cache behind
            raise
        finally:
            if bar is not None:
                bar.close()
        del arr
        os.replace(tmp, self.file)  # atomic: a killed build never leaves a half cache behind
        if progress:
            print(f"cached {len(self.paths)} images in {self.file}")

    @property
    def array(self) -> np.ndarray:
        if self._array is None:  # opened lazily, once per worker process
            self.build(progress=False)  # a no-op unless the DataModule decodes on the fly (use_cache=False)
            self._array = np.load(self.file, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None
        return state


class _Decoded(Dataset):
    """The decoded, preprocessed images of a cache's file list, in order (for building it)."""

    def __init__(self, cache: ImageCache) -> None:
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.cache.load(i)


class ImageTableDataset(Dataset):
    """Rows of a table, images from the cache (or decoded on the fly when there is none)."""

    def __init__(self, table: pd.DataFrame, cache: ImageCache, augment: A.Compose | None,
                 use_cache: bool = True) -> None:
        self.age = torch.tensor(table["age"].to_numpy(np.float32))
        self.sex = torch.tensor(table["sex"].to_numpy(np.float32))
        self.cache = cache
        self.augment = augment
        self.use_cache = use_cache

    def __len__(self) -> int:
        return len(self.age)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        seed = getattr(i, "augment_seed", None)  # boneage.resume.SeededIndex: exact resume, any worker
        i = int(i)
        if seed is not None and self.augment is not None:
            self.augment.set_random_seed(seed)
        if self.use_cache:
            img = np.array(self.cache.array[i])  # a writable copy of the cached row
        else:
            img = self.cache.load(i)
        if self.augment is not None:
            img = self.augment(image=img)["image"]
        image = torch.from_numpy(np.ascontiguousarray(img)).unsqueeze(0).float().div_(127.5).sub_(1.0)
        return {"image": image, "age": self.age[i], "sex": self.sex[i], "index": torch.tensor(i)}


class ImageTableDataModule(pl.LightningDataModule):
    """Base DataModule for image tables with ages and sexes.

    Args:
        image_size: (height, width) the images are resized to and cached at.
        keep_aspect: letterbox instead of stretching when resizing.
        batch_size: batch size of every loader.
        num_workers: loader worker processes (0 loads in the main process).
        val_fraction: share of the data for validation when the data set ships no split.
        test_fraction: share of the data for testing when the data set ships no split.
        seed: seed of the split (independent of the training seed, so splits stay fixed).
        augment: albumentations transforms for training, e.g. ``[{"HorizontalFlip": {"p": 0.5}}]``.
        cache_dir: where decoded images are cached; default ``<user cache>/images``, the user cache
            being ``$BONEAGE_CACHE_DIR`` when set, else ``platformdirs.user_cache_dir("boneage")``
            (``~/.cache/boneage`` on Linux): nothing is written into the data folder.
        use_cache: decode on the fly instead (for benchmarking the cold path).
        predict_dir: a folder of images to predict on; default the test split.
        pin_memory: page-locked batches for faster host-to-GPU copies.
        window: how an image with more than 8 bits (DICOM, 16-bit PNG/TIFF) becomes the uint8
            input: "dicom" (the file's own VOI LUT / window centre and width; the image's own
            0.5-99.5 percentiles when it has none, said once), "percentile" (always those), or
            [low, high] fixed in stored units (Hounsfield units for CT, counts for NM). 8-bit
            images are kept as they are. Part of the cache key; the ROI export crops with it.
    """

    age_units: str = "years"

    def __init__(
        self,
        image_size: tuple[int, int] = (256, 256),
        keep_aspect: bool = True,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 42,
        augment: list[dict[str, Any]] | None = None,
        cache_dir: str | None = None,
        use_cache: bool = True,
        predict_dir: str | None = None,
        pin_memory: bool = False,
        window: str | tuple[float, float] = "dicom",
    ) -> None:
        super().__init__()
        from data_modules.dicom import check_window

        self.window = check_window(window)
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in "
                             "[0, 1) and sum to less than 1")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.keep_aspect = keep_aspect
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.augment_spec = augment
        self.augment = build_augment(augment)  # validates names at construction
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.predict_dir = predict_dir
        self.pin_memory = pin_memory
        self.crop = "full"
        self._tables: dict[str, pd.DataFrame] = {}
        self._datasets: dict[str, ImageTableDataset] = {}

    # --- what a subclass provides -------------------------------------------------------
    def read_table(self) -> pd.DataFrame:
        """The whole labelled table: columns ``path`` (absolute), ``age`` (label units),
        ``sex`` (1 male, 0 female); optional ``split`` (train/val/test), ``group`` (patient),
        ``id``. Raise :class:`DataError` for bad input."""
        raise NotImplementedError

    @property
    def root(self) -> Path:
        """Data root, where phantom metadata lives (the image cache is in the user cache folder: _cache_for)."""
        raise NotImplementedError

    @staticmethod
    def phantom_args(root: str | Path, n: int = 64, seed: int = 0) -> dict[str, Any]:
        """Render a small phantom of this format into ``root``; return the init args reading it."""
        raise NotImplementedError

    # --- shared machinery ---------------------------------------------------------------
    def phantom_metadata(self) -> dict | None:
        """``phantom.json`` of the data root (noise floor), or None for real data."""
        return read_metadata(self.root)

    def prepare_data(self) -> None:
        # One process builds the caches; the others find them in setup.
        if not self.use_cache:
            return
        for table in self._split(self._checked_table()).values():
            self._cache_for(table).build(workers=self.num_workers)

    def setup(self, stage: str | None = None) -> None:
        if not self._tables:
            self._tables = self._split(self._checked_table())
            for name, table in self._tables.items():
                cache = self._cache_for(table)
                if self.use_cache:  # a no-op when prepare_data (or an earlier run) built it
                    cache.build(workers=self.num_workers)
                augment = self.augment if name == "train" else None
                self._datasets[name] = ImageTableDataset(table, cache, augment, self.use_cache)
        if stage == "predict" and self.predict_dir is not None and "predict" not in self._datasets:
            table = self._folder_table(Path(self.predict_dir))
            self._tables["predict"] = table
            self._datasets["predict"] = ImageTableDataset(table, self._cache_for(table), None, use_cache=False)
            for name, t in self._tables.items():
                if name == "predict":
                    print(f"predicting on {len(t)} images from {self.predict_dir}")

    def table(self, stage: str) -> pd.DataFrame:
        """The table of a split (``train``, ``val``, ``test``, ``predict``), rows in loader order."""
        if not self._tables:
            self.setup()
        stage = {"fit": "train", "validate": "val"}.get(stage, stage)
        if stage == "predict" and "predict" not in self._tables:
            stage = "test"
        return self._tables[stage]

    def dataset(self, stage: str, augment: bool = True) -> ImageTableDataset:
        """The Dataset of a split (``train``, ``val``, ``test``, ``predict``); ``augment=False``
        gives the training split as evaluation sees it (a copy without augmentation)."""
        name = {"fit": "train", "validate": "val"}.get(stage, stage)
        if name not in self._datasets:
            self.setup("predict" if name == "predict" else None)
        if name == "predict" and "predict" not in self._datasets:
            name = "test"
        if name not in self._datasets:
            raise KeyError(f"no {stage!r} split; splits: {sorted(self._datasets)}")
        ds = self._datasets[name]
        if not augment and ds.augment is not None:
            ds = copy.copy(ds)
            ds.augment = None
        return ds

    def age_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of the training labels (for target standardisation)."""
        age = self.table("train")["age"].to_numpy(np.float64)
        return float(age.mean()), float(max(age.std(), 1e-6))

    def _cache_for(self, table: pd.DataFrame) -> ImageCache:
        # chose a user cache folder over <data root>/.cache because hospital data shares are
        # read-only; one flat folder, since the cache file's name hashes the file list and the
        # settings: the same files with the same settings share one cache, whichever run asks
        if self.cache_dir:
            cache_dir = Path(self.cache_dir).expanduser()
        else:
            import platformdirs

            root = os.environ.get("BONEAGE_CACHE_DIR") or platformdirs.user_cache_dir("boneage")
            cache_dir = Path(root).expanduser() / "images"
        return ImageCache(table["path"].tolist(), self.image_size, self.keep_aspect, cache_dir, self.crop,
                          window=self.window)

    def _checked_table(self) -> pd.DataFrame:
        table = self.read_table().reset_index(drop=True)
        for key in ("path", "age", "sex"):
            if key not in table.columns:
                raise DataError(f"{type(self).__name__}.read_table() returned no '{key}' column")
        if table.empty:
            raise DataError(f"{type(self).__name__}: the label table has no rows; check the label file argument")
        table["age"] = numeric_column(table, "age", f"{type(self).__name__} table")
        table["sex"] = table["sex"].astype(np.float32)
        # a subclass may set age_range (label units) and images_per_patient ("one" or "many")
        check_age_range(table, getattr(self, "age_range", None), self.age_units)
        if "id" in table.columns:
            check_unique(table, table["id"].astype(str), "image id", "remove one of the rows")
        check_unique(table, table["path"].map(os.path.normpath), "image",
                     "a duplicated image could land in train and test: remove one of the rows")
        if "group" in table.columns and getattr(self, "images_per_patient", "many") == "one":
            check_unique(table, table["group"].astype(str), "patient",
                         "set data.init_args.images_per_patient: many if several images per patient are "
                         "expected (they are then kept in one split), or fix the patient id")
        missing = [p for p in table["path"] if not Path(p).is_file()]
        if missing:
            listed = "\n  ".join(missing[:10])
            raise DataError(f"{len(missing)} of {len(table)} images listed in the label table do not exist, e.g.\n"
                            f"  {listed}\nCheck the image folder argument or remove those rows.")
        return table

    def _split(self, table: pd.DataFrame) -> dict[str, pd.DataFrame]:
        if "split" in table.columns and table["split"].notna().all():
            parts = {s: table[table["split"] == s] for s in ("train", "val", "test")}
            if len(parts["train"]) == 0:
                raise DataError(f"{label_files(table)}: the split column has no 'train' rows; mark the training "
                                "rows 'train', or drop the split column for a seeded split")
            if len(parts["val"]) == 0 or len(parts["test"]) == 0:
                # split the missing share(s) off the training rows, seeded
                extra = self._seeded_split(parts["train"], self.val_fraction if len(parts["val"]) == 0 else 0,
                                           self.test_fraction if len(parts["test"]) == 0 else 0)
                parts = {"train": extra["train"],
                         "val": parts["val"] if len(parts["val"]) else extra["val"],
                         "test": parts["test"] if len(parts["test"]) else extra["test"]}
        else:
            parts = self._seeded_split(table, self.val_fraction, self.test_fraction)
        parts = {k: v.reset_index(drop=True) for k, v in parts.items()}
        check_patients_apart(parts)  # a shipped split column may put one patient in two splits
        return parts

    def _seeded_split(self, table: pd.DataFrame, val: float, test: float) -> dict[str, pd.DataFrame]:
        # Whole patients (``group``) are drawn, so the fractions count patients, not images: chose
        # that because a patient's images must never sit in two splits.
        groups = table["group"] if "group" in table.columns else pd.Series(np.arange(len(table)))
        unique = groups.unique()
        order = np.random.default_rng(self.seed).permutation(len(unique))
        n_test, n_val = round(len(unique) * test), round(len(unique) * val)
        which = np.empty(len(unique), dtype=object)
        which[order[:n_test]] = "test"
        which[order[n_test:n_test + n_val]] = "val"
        which[order[n_test + n_val:]] = "train"
        assign = groups.map(dict(zip(unique, which, strict=True)))
        return {s: table[assign.to_numpy() == s] for s in ("train", "val", "test")}

    def _folder_table(self, folder: Path) -> pd.DataFrame:
        if not folder.is_dir():
            raise DataError(f"predict_dir {folder} is not a folder of images")
        paths = sorted(str(p.resolve()) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise DataError(f"predict_dir {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return pd.DataFrame({"path": paths, "age": np.nan, "sex": np.nan})

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        if not self._datasets:
            self.setup()
        dataset = self._datasets[stage]
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
                          drop_last=shuffle and len(dataset) > self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        if "predict" in self._datasets:
            return self._loader("predict", shuffle=False)
        return self._loader("test", shuffle=False)


def resolve(root: Path, path: str | Path) -> Path:
    """A path relative to ``root`` unless absolute."""
    p = Path(path)
    return p if p.is_absolute() else root / p


def parse_sex(values: pd.Series, source: str, key: str) -> np.ndarray:
    """Sex column to 1.0 (male) / 0.0 (female): accepts M/F, male/female, True/False, 1/0."""
    mapping = {"m": 1.0, "male": 1.0, "true": 1.0, "1": 1.0, "1.0": 1.0,
               "f": 0.0, "female": 0.0, "false": 0.0, "0": 0.0, "0.0": 0.0}
    out = values.astype(str).str.strip().str.lower().map(mapping)
    if out.isna().any():
        i = int(np.flatnonzero(out.isna().to_numpy())[0])
        raise DataError(f"{source}: row {i + 2} (line in the file) has sex {values.iloc[i]!r} in column '{key}'; "
                        "expected M/F, male/female, True/False or 1/0")
    return out.to_numpy(np.float32)


def missing_data(what: str, path: str | Path, owner: type, alternative: str) -> DataError:
    """The one-line error for a missing data folder or label file: its path, the command that makes a
    phantom there (``make phantoms EXP=<the experiment whose YAML names the path>``, see
    :func:`boneage.phantoms.experiment.hint`), then ``alternative``."""
    from boneage.phantoms.experiment import hint

    how = hint(path, f"{owner.__module__}.{owner.__qualname__}")
    return DataError(f"{what} {path} does not exist: {how + '; or ' if how else ''}{alternative}")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], source: str | Path, hint: str = "") -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source} has no column(s) {missing}; it has {list(frame.columns)}. {hint}".strip())


def numeric_column(frame: pd.DataFrame, key: str, source: str | Path) -> np.ndarray:
    values = pd.to_numeric(frame[key], errors="coerce")
    bad = values.isna() | ~np.isfinite(values.to_numpy(np.float64, na_value=np.nan))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{source}: row {i + 2} (line in the file) has a non-numeric value {frame[key].iloc[i]!r} "
                        f"in column '{key}'; fix or remove the row")
    return values.to_numpy(np.float32)


# --- label files, row names and the checks every label table goes through -------------------

def read_label_file(path: str | Path) -> pd.DataFrame:
    """A label table from a ``.csv`` or ``.xlsx`` file (RSNA's test ground truth ships as .xlsx).

    An empty or unreadable file, or one with a header but no rows, is a :class:`DataError`
    naming the file."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm"):
            frame = pd.read_excel(path, engine="openpyxl")
        else:
            frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"label file {path} is empty (no header, no rows): point at the label file of your "
                        "images, or write its header and one row per image") from None
    except Exception as err:  # pandas, openpyxl and zip errors of a damaged or mislabelled file
        raise DataError(f"cannot read label file {path} ({type(err).__name__}: {err}); save it as a "
                        "comma-separated UTF-8 .csv or as .xlsx") from None
    if frame.empty:
        raise DataError(f"label file {path} has a header but no rows: add one row per image")
    return frame


def label_rows(frame: pd.DataFrame, path: str | Path) -> dict[str, Any]:
    """Columns that name each row's file and row (row 1 is the header, as a spreadsheet counts),
    for a ``read_table`` to add so that errors can name both rows of a duplicate."""
    return {"label_file": str(path), "label_row": np.arange(len(frame)) + 2}


def row_name(table: pd.DataFrame, i: int) -> str:
    """``<file> row <n>`` for row ``i`` of a table (``label_file``/``label_row`` columns)."""
    if "label_file" in table.columns:
        return f"{table['label_file'].iloc[i]} row {table['label_row'].iloc[i]}"
    return f"row {i + 1} of the label table"


def label_files(table: pd.DataFrame) -> str:
    """The label file(s) a table was read from, for messages."""
    if "label_file" not in table.columns:
        return "the label table"
    return ", ".join(sorted(table["label_file"].astype(str).unique()))


def check_age_range(table: pd.DataFrame, age_range: Sequence[float] | None, units: str) -> None:
    """Ages outside ``age_range`` (label units, both ends included; None: only negative ages)
    are a :class:`DataError` naming the first such row and the range."""
    low, high = (0.0, np.inf) if age_range is None else (float(age_range[0]), float(age_range[1]))
    age = table["age"].to_numpy(np.float64)
    bad = (age < low) | (age > high)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        plausible = f"outside the plausible range {low:g}-{high:g} {units}" if np.isfinite(high) else "negative"
        raise DataError(f"{row_name(table, i)}: age {age[i]:g} {units} is {plausible} ({int(bad.sum())} such rows); "
                        "fix or remove the row, or set data.init_args.age_range [low, high] if such ages are real")


def check_unique(table: pd.DataFrame, keys: pd.Series, what: str, hint: str) -> None:
    """A key (image id, image path, patient) that appears twice is a :class:`DataError` naming both rows."""
    keys = keys.reset_index(drop=True)
    dup = keys.duplicated(keep=False).to_numpy()
    if dup.any():
        first = keys[dup].iloc[0]
        a, b = np.flatnonzero((keys == first).to_numpy())[:2]
        n = int(keys[dup].nunique())
        raise DataError(f"{what} {first} appears twice: {row_name(table, a)} and {row_name(table, b)}"
                        f"{f' ({n} duplicated in all)' if n > 1 else ''}; {hint}")


def check_patients_apart(parts: dict[str, pd.DataFrame]) -> None:
    """A patient (``group``) with rows in two splits is a :class:`DataError` naming both rows."""
    if not all("group" in p.columns for p in parts.values()):
        return
    rows = pd.concat([p.assign(_split=name) for name, p in parts.items()], ignore_index=True)
    spread = (rows.groupby(rows["group"].astype(str))["_split"].transform("nunique") > 1).to_numpy()
    if spread.any():
        same = rows[rows["group"].astype(str) == str(rows["group"][spread].iloc[0])]
        a = 0
        b = int(np.flatnonzero((same["_split"] != same["_split"].iloc[0]).to_numpy())[0])
        raise DataError(f"patient {same['group'].iloc[0]} is in the {same['_split'].iloc[a]} and "
                        f"{same['_split'].iloc[b]} splits ({row_name(same, a)}, {row_name(same, b)}): a patient's "
                        "images must stay in one split; fix the split column")
