"""Whole-body CT DataModule: the paper's split, crops, normalisation and body halves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_modules.base import DataError, read_gray, resize_gray
from data_modules.wholebody import WholeBodyCTDataModule


@pytest.fixture(scope="module")
def ct_phantom(tmp_path_factory) -> dict:
    return WholeBodyCTDataModule.phantom_args(tmp_path_factory.mktemp("ct"), n=40, seed=0)


def _dm(args: dict, tmp_path, **kw) -> WholeBodyCTDataModule:
    kw = {"image_size": (40, 40), "crop_size": (32, 32), "batch_size": 8, "cache_dir": str(tmp_path), **kw}
    dm = WholeBodyCTDataModule(**args, **kw)
    dm.setup("fit")
    return dm


def test_split_is_70_30_with_validation_taken_from_training(ct_phantom, tmp_path):
    dm = _dm(ct_phantom, tmp_path)
    n = {s: len(dm.table(s)) for s in ("train", "val", "test")}
    assert n["test"] == 12 and n["val"] + n["train"] == 28 and n["val"] == round(40 * 0.1 * 0.7)
    # the test set is the paper's 30% whatever the validation share, and fixed by the seed
    other = _dm(ct_phantom, tmp_path, val_fraction=0.25)
    assert set(other.table("test")["path"]) == set(dm.table("test")["path"])
    assert len(other.table("val")) == 7
    moved = _dm(ct_phantom, tmp_path, seed=7)
    assert set(moved.table("test")["path"]) != set(dm.table("test")["path"])


def test_random_crop_for_training_centre_crop_for_evaluation_and_standardised(ct_phantom, tmp_path):
    dm = _dm(ct_phantom, tmp_path)
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (8, 1, 32, 32)
    val = dm.val_dataloader().dataset[0]["image"]
    full = dm.dataset("val").cache.array[0]
    expect = full[4:36, 4:36].astype(np.float32) / 127.5 - 1.0  # centre 32 of 40
    np.testing.assert_allclose(val[0].numpy(), expect, atol=1e-6)
    # paper: zero mean, unit variance with the training images' statistics
    pixels = np.asarray(dm.dataset("train").cache.array, np.float64) / 127.5 - 1.0
    assert dm.pixel_mean == pytest.approx(pixels.mean(), abs=1e-6)
    assert dm.pixel_std == pytest.approx(pixels.std(), rel=1e-5)
    image = torch.from_numpy(full[None, None].astype(np.float32) / 127.5 - 1.0)
    batch = dm.on_after_batch_transfer({"image": image}, 0)
    expected_mean = (full.mean() / 127.5 - 1.0 - dm.pixel_mean) / dm.pixel_std
    assert abs(float(batch["image"].mean()) - expected_mean) < 1e-4
    raw = _dm(ct_phantom, tmp_path, standardize=False)  # the framework's [-1, 1] scaling, untouched,
    raw.load_state_dict(dm.state_dict())                # even with a checkpoint's statistics loaded
    b = raw.on_after_batch_transfer({"image": image.clone()}, 0)
    torch.testing.assert_close(b["image"], image, rtol=0, atol=0)


def test_upper_and_lower_body_are_the_halves_of_the_image_rows(ct_phantom, tmp_path):
    upper = _dm(ct_phantom, tmp_path, region="upper", crop_size=None, flip=False)
    lower = _dm(ct_phantom, tmp_path, region="lower", crop_size=None, flip=False)
    path = upper.table("train")["path"][0]
    img = read_gray(path)
    h = img.shape[0] // 2
    upper_img, lower_img = upper.dataset("train").cache.array[0], lower.dataset("train").cache.array[0]
    np.testing.assert_array_equal(upper_img, resize_gray(img[:h], (40, 40), False))
    np.testing.assert_array_equal(lower_img, resize_gray(img[h:], (40, 40), False))


def test_bad_options_and_missing_csv_raise_clear_errors(ct_phantom, tmp_path):
    with pytest.raises(ValueError, match="region"):
        WholeBodyCTDataModule(**ct_phantom, region="legs")
    with pytest.raises(ValueError, match="crop_size"):
        WholeBodyCTDataModule(**ct_phantom, image_size=(32, 32), crop_size=(64, 64))
    with pytest.raises(DataError, match="nowhere/labels.csv"):
        WholeBodyCTDataModule(csv_path=str(tmp_path / "nowhere" / "labels.csv")).setup("fit")
