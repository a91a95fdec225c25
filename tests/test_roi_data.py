"""ScintigraphyDataModule: auto split column, predict over every split without augmentation."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from data_modules.base import DataError
from data_modules.scintigraphy import ScintigraphyDataModule


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    return ScintigraphyDataModule.phantom_args(tmp_path_factory.mktemp("scinti"), n=30, seed=2)["csv_path"]


def test_auto_split_uses_a_split_column_when_present(csv, tmp_path):
    seeded = ScintigraphyDataModule(csv_path=csv, image_size=(64, 32), cache_dir=str(tmp_path / "c"))
    seeded.setup()
    assert [len(seeded.table(s)) for s in ("train", "val", "test")] == [24, 3, 3]
    table = pd.read_csv(csv)
    table["split"] = ["test"] * 5 + ["val"] * 5 + ["train"] * 20
    table.to_csv(tmp_path / "with_split.csv", index=False)
    for name in table.image:  # same images, CSV in another folder
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((pd.io.common.Path(csv).parent / name).read_bytes())
    shipped = ScintigraphyDataModule(csv_path=str(tmp_path / "with_split.csv"), image_size=(64, 32))
    shipped.setup()
    assert [len(shipped.table(s)) for s in ("train", "val", "test")] == [20, 5, 5]
    table.loc[3, "split"] = "holdout"
    table.to_csv(tmp_path / "with_split.csv", index=False)
    with pytest.raises(DataError, match="row 5 has split 'holdout'"):
        ScintigraphyDataModule(csv_path=str(tmp_path / "with_split.csv")).setup()


def test_predict_all_covers_every_image_unaugmented(csv, tmp_path):
    dm = ScintigraphyDataModule(csv_path=csv, image_size=(64, 32), predict_split="all", batch_size=64,
                                cache_dir=str(tmp_path / "c"), augment=[{"HorizontalFlip": {"p": 1.0}}])
    dm.setup()
    loaders = dm.predict_dataloader()
    assert dm.predict_splits() == ["train", "val", "test"] and len(loaders) == 3
    train_plain = next(iter(loaders[0]))["image"]
    train_aug = next(iter(dm.train_dataloader()))
    # the train split is predicted in table order and without the flip
    first = train_aug["index"].tolist().index(0)
    assert torch.equal(train_plain[0].flip(-1), train_aug["image"][first])
    assert sum(len(loader.dataset) for loader in loaders) == 30
    with pytest.raises(ValueError, match="predict_split"):
        ScintigraphyDataModule(csv_path=csv, predict_split="everything")
