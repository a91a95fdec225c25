"""The paper-001 test-set preset reads the RSNA download's own splits (the 200 challenge test images)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_real_data import real_download

from data_modules.rsna import RSNADataModule

ROOT = Path(__file__).resolve().parents[1]


def test_the_test200_preset_tests_on_the_challenge_test_set(tmp_path):
    root = Path(RSNADataModule.phantom_args(tmp_path / "rsna", n=40, seed=3, size=32)["data_dir"])
    truth = real_download(root)  # 20 training, 10 validation, 10 test hands in the download's layout
    preset = yaml.safe_load((ROOT / "experiments/presets/xception_rsna_test200.yaml").read_text())
    dm = RSNADataModule(data_dir=str(root), image_size=(32, 32), num_workers=0, **preset["data"]["init_args"])
    dm.setup("fit")
    assert [len(dm.table(s)) for s in ("train", "val", "test")] == [20, 10, 10]  # every training image trains
    test = dm.table("test")
    assert test["age"].tolist() == pytest.approx(truth["Ground truth bone age (months)"].tolist())
