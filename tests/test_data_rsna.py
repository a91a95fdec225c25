"""RSNA DataModule: real layout, splits, cache, augmentation, and clear errors on bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import data_modules.base as base
from data_modules.base import DataError, resize_gray
from data_modules.rsna import RSNADataModule


def make(root, **kw) -> RSNADataModule:
    kw.setdefault("image_size", (64, 64))
    kw.setdefault("batch_size", 8)
    kw.setdefault("cache_dir", str(root / ".cache"))
    return RSNADataModule(data_dir=str(root), **kw)


@pytest.fixture
def phantom_copy(rsna_phantom, tmp_path):
    dst = tmp_path / "rsna"
    shutil.copytree(rsna_phantom, dst, ignore=shutil.ignore_patterns(".cache"))
    return dst


def test_seeded_80_10_10_split_and_batches(rsna_phantom):
    dm = make(rsna_phantom)
    dm.setup("fit")
    sizes = {s: len(dm.table(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 128, "val": 16, "test": 16}
    paths = [set(dm.table(s)["path"]) for s in ("train", "val", "test")]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    again = make(rsna_phantom)
    again.setup("fit")
    assert list(again.table("test")["path"]) == list(dm.table("test")["path"])
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 1, 64, 64)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1 and batch["image"].std() > 0.05
    assert set(batch["sex"].tolist()) <= {0.0, 1.0}
    table = pd.read_csv(rsna_phantom / "boneage-training-dataset.csv").set_index("id")
    ids = dm.table("train")["id"].iloc[batch["index"].numpy()]
    # the shuffled batch's labels are those of its rows in the table
    assert np.allclose(table.loc[ids.astype(int), "boneage"].to_numpy(), batch["age"].numpy())


def test_cache_is_built_once_and_reused(phantom_copy, monkeypatch):
    make(phantom_copy).setup("fit")
    assert list((phantom_copy / ".cache").glob("*.npy"))

    def no_decoding(path, window=None):
        raise AssertionError(f"decoded {path} although the cache exists")

    monkeypatch.setattr(base, "read_gray", no_decoding)
    dm = make(phantom_copy)
    dm.setup("fit")
    next(iter(dm.train_dataloader()))


def test_reads_16_bit_pngs(phantom_copy):
    path = sorted((phantom_copy / "boneage-training-dataset").glob("*.png"))[0]
    img8 = base.read_gray(path).astype(np.uint16)
    Image.fromarray(img8 * 64).save(path)  # a 14-bit film in a 16-bit PNG
    decoded = base.read_gray(path)
    assert decoded.dtype == np.uint8 and decoded.max() >= 250
    assert np.corrcoef(decoded.ravel(), img8.ravel())[0, 1] > 0.99


def test_real_validation_and_test_csv_names(phantom_copy):
    table = pd.read_csv(phantom_copy / "boneage-training-dataset.csv")
    val, test, train = table.iloc[:20], table.iloc[20:40], table.iloc[40:]
    train.to_csv(phantom_copy / "boneage-training-dataset.csv", index=False)
    val.rename(columns={"id": "Image ID", "boneage": "Bone Age (months)"}).to_csv(phantom_copy / "val.csv", index=False)
    test.assign(Sex=np.where(test["male"], "M", "F")).drop(columns="male").rename(
        columns={"id": "Case ID", "boneage": "Ground truth bone age (months)"}).to_csv(phantom_copy / "test.csv",
                                                                                       index=False)
    dm = make(phantom_copy, val_csv="val.csv", val_images="boneage-training-dataset",
              test_csv="test.csv", test_images="boneage-training-dataset")
    dm.setup("fit")
    assert (len(dm.table("train")), len(dm.table("val")), len(dm.table("test"))) == (120, 20, 20)
    assert dm.table("test")["sex"].tolist() == test["male"].astype(float).tolist()


def test_missing_data_dir_says_how_to_make_a_phantom(tmp_path):
    with pytest.raises(DataError, match="boneage-phantom rsna --out"):
        make(tmp_path / "nowhere").setup("fit")


def test_csv_missing_a_column_names_it(phantom_copy):
    csv = phantom_copy / "boneage-training-dataset.csv"
    pd.read_csv(csv).drop(columns="male").to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"boneage-training-dataset.csv has no column\(s\) \['male'\]"):
        make(phantom_copy).setup("fit")


def test_non_numeric_age_names_the_row(phantom_copy):
    csv = phantom_copy / "boneage-training-dataset.csv"
    table = pd.read_csv(csv).astype({"boneage": object})
    table.loc[5, "boneage"] = "ten"
    table.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"row 7 .*'ten'.*'boneage'"):
        make(phantom_copy).setup("fit")


def test_missing_image_names_the_file(phantom_copy):
    victim = sorted((phantom_copy / "boneage-training-dataset").glob("*.png"))[3]
    victim.unlink()
    with pytest.raises(DataError, match=victim.name):
        make(phantom_copy).setup("fit")


def test_unreadable_image_names_the_file(phantom_copy):
    victim = sorted((phantom_copy / "boneage-training-dataset").glob("*.png"))[2]
    victim.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"cannot decode image .*{victim.name}"):
        make(phantom_copy).setup("fit")


def test_cache_built_by_worker_processes_is_the_same(phantom_copy, tmp_path):
    """num_workers decode the cache in parallel, into the same array as one process."""
    one = make(phantom_copy, cache_dir=str(tmp_path / "one"))
    two = make(phantom_copy, cache_dir=str(tmp_path / "two"), num_workers=2)
    one.setup("fit")
    two.setup("fit")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(one.dataset(split).cache.array, two.dataset(split).cache.array)


def test_use_cache_false_decodes_on_the_fly_and_writes_no_cache(phantom_copy, monkeypatch):
    dm = make(phantom_copy, use_cache=False)
    dm.prepare_data()
    dm.setup("fit")
    assert not (phantom_copy / ".cache").exists()
    calls = []
    monkeypatch.setattr(base, "read_gray", lambda p, window=None: calls.append(p) or np.zeros((90, 70), np.uint8))
    assert next(iter(dm.train_dataloader()))["image"].shape == (8, 1, 64, 64) and len(calls) == 8


def test_building_the_cache_leaves_the_global_rng_alone(phantom_copy):
    """A seeded run trains the same whether or not its cache had to be built first."""
    torch.manual_seed(0)
    make(phantom_copy).setup("fit")  # builds
    after_build = torch.rand(3)
    torch.manual_seed(0)
    make(phantom_copy).setup("fit")  # finds it
    assert torch.equal(torch.rand(3), after_build)


def test_unreadable_image_in_a_worker_names_the_file_and_leaves_no_cache(phantom_copy):
    victim = sorted((phantom_copy / "boneage-training-dataset").glob("*.png"))[5]
    victim.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"cannot decode image .*{victim.name}"):
        make(phantom_copy, num_workers=2).setup("fit")
    assert not list((phantom_copy / ".cache").glob("*.npy"))


def test_unknown_augmentation_is_rejected_at_construction(rsna_phantom):
    with pytest.raises(ValueError, match="unknown albumentations transform 'Flipp'"):
        make(rsna_phantom, augment=[{"Flipp": {"p": 0.5}}])


def test_augmentation_changes_training_images_only(rsna_phantom):
    dm = make(rsna_phantom, augment=[{"HorizontalFlip": {"p": 1.0}}])
    dm.setup("fit")
    train, val = dm.dataset("train"), dm.dataset("val")
    raw = train.cache.array[0].astype(np.float32) / 127.5 - 1
    assert np.allclose(train[0]["image"][0].numpy(), raw[:, ::-1], atol=1e-5)
    assert np.allclose(val[0]["image"][0].numpy(), val.cache.array[0].astype(np.float32) / 127.5 - 1, atol=1e-5)
    plain = dm.dataset("train", augment=False)  # the training images as evaluation sees them
    assert np.allclose(plain[0]["image"][0].numpy(), raw, atol=1e-5)
    assert dm.dataset("train") is train and train.augment is not None  # the loader's copy is untouched


@pytest.mark.parametrize("src", [(1911, 1456), (273, 208), (130, 97), (64, 64), (50, 300)])
def test_resize_keeps_size_geometry_and_averages(src):
    """The two-step shrink gives the exact letterboxed size, keeps a feature where the
    letterbox puts it (within a pixel), and averages a fine checkerboard to flat gray
    instead of aliasing it."""
    h, w = src
    img = np.zeros(src, np.uint8)
    img[h // 4:h // 2, w // 4:w // 2] = 255  # a bright block in the upper-left quarter
    out = resize_gray(img, (128, 128), keep_aspect=True)
    assert out.shape == (128, 128) and out.dtype == np.uint8
    scale = min(128 / h, 128 / w)
    nh, nw = round(h * scale), round(w * scale)
    top, left = (128 - nh) // 2, (128 - nw) // 2
    rows, cols = np.nonzero(out > 127)
    assert abs(rows.min() - (top + nh / 4)) <= 1.5 and abs(rows.max() + 1 - (top + nh / 2)) <= 1.5
    assert abs(cols.min() - (left + nw / 4)) <= 1.5 and abs(cols.max() + 1 - (left + nw / 2)) <= 1.5
    assert resize_gray(img, (40, 60), keep_aspect=False).shape == (40, 60)
    if min(h, w) >= 256:
        board = ((np.indices(src).sum(0) % 2) * 255).astype(np.uint8)
        flat = resize_gray(board, (64, 64), keep_aspect=False)
        assert abs(float(flat.mean()) - 127.5) < 3 and flat.std() < 10
