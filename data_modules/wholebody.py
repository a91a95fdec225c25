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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch

from data_modules.hospital import HospitalCSVDataModule

REGIONS = ("full", "upper", "lower")


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
        **kwargs: Any,
    ) -> None:
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

    def setup(self, stage: str | None = None) -> None:
        fresh = not self._tables
        super().setup(stage)
        if self.crop_size is not None:
            centre = A.Compose([A.CenterCrop(*self.crop_size)])
            for name, dataset in self._datasets.items():
                if name != "train":
                    dataset.augment = centre
        if fresh and self.standardize:
            self.pixel_mean, self.pixel_std = _pixel_stats(self._datasets["train"].cache.array)

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
                     width: int = 72) -> dict[str, Any]:
        """Render a small whole-body CT phantom into ``root``; return the args that read it."""
        from boneage.phantoms import wholebody_ct

        root = Path(root)
        if not (root / "phantom.json").is_file():
            wholebody_ct.render(root, n=n, seed=seed, height=height, width=width, progress=False)
        return {"csv_path": str(root / wholebody_ct.LABEL_FILE)}
