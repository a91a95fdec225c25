"""Bone-crop DataModule: paper splits, five age groups reported, paper augmentation, bad ages."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest

from data_modules.base import DataError
from data_modules.bones import BoneCropDataModule, FemurDataModule, PhalangeDataModule


@pytest.fixture(scope="module")
def femur_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from boneage.phantoms.bones import render

    return render(tmp_path_factory.mktemp("femur317"), n=317, seed=0, bone="femur", size=40,
                  age_distribution="paper", progress=False)


def test_paper_split_sizes_and_group_report(femur_csv: Path, capsys) -> None:
    dm = FemurDataModule(csv_path=str(femur_csv), image_size=(32, 32))
    dm.setup("fit")
    sizes = {s: len(dm.table(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 223, "val": 32, "test": 62}          # the paper's femur split
    out = capsys.readouterr().out
    assert "[0-3]" in out and "[16-19]" in out and "train" in out
    assert dm.group_sizes.loc["train", "total"] == 223
    assert dm.group_sizes.loc[["train", "val", "test"], "[12-15]"].sum() == \
        int((dm.age_group(pd.read_csv(femur_csv).age_years) == 3).sum())
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (32, 1, 32, 32) and batch["image"].min() >= -1
    phal = PhalangeDataModule(csv_path=str(femur_csv), image_size=(32, 32))
    assert (phal.val_fraction, phal.test_fraction) == (717 / 7165, 1433 / 7165)


def test_paper_augmentation_pipeline(femur_csv: Path) -> None:
    dm = FemurDataModule(csv_path=str(femur_csv), image_size=(32, 32))
    rotate, some = dm.augment.transforms
    assert isinstance(rotate, A.Rotate) and tuple(rotate.limit) == (-5, 5) and rotate.p == 1.0
    assert isinstance(some, A.SomeOf) and some.n == 2 and not some.replace
    names = [type(t).__name__ for t in some.transforms]
    assert names == ["AutoContrast", "RandomBrightnessContrast", "RandomBrightnessContrast", "Sharpen",
                     "Posterize"]   # auto-contrast, contrast, brightness, sharpness, posterize
    img = (np.arange(32 * 32).reshape(32, 32) % 200 + 20).astype(np.uint8)
    outs = [dm.augment(image=img)["image"] for _ in range(5)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    assert any(not np.array_equal(o, img) for o in outs)
    assert FemurDataModule(csv_path=str(femur_csv), augment=[]).augment is None


def test_ages_outside_the_groups_name_the_row(tmp_path: Path, femur_csv: Path) -> None:
    table = pd.read_csv(femur_csv)
    table.loc[5, "age_years"] = 23.0
    table["image"] = [str(femur_csv.parent / p) for p in table.image]
    bad = tmp_path / "labels.csv"
    table.to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"row 7 has age_years = 23.0, outside the 5 age groups") as err:
        FemurDataModule(csv_path=str(bad)).setup("fit")
    # the hint widens the groups of the model too, never of the data alone (the system refuses a mismatch)
    assert "model.init_args.network.init_args.n_groups" in str(err.value)
    assert "model.init_args.age_group_years" in str(err.value)
    wider = FemurDataModule(csv_path=str(bad), n_groups=6)
    wider.setup("fit")
    assert wider.group_names()[-1] == "[20-23]" and wider.group_sizes.loc[:, "[20-23]"].sum() == 1
    with pytest.raises(ValueError, match="bone must be one of"):
        BoneCropDataModule(csv_path=str(bad), bone="tibia")
