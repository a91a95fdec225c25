"""predictions.csv rows: one per image, in table order, whatever the DDP padding."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from boneage.systems.base import prediction_frame


def test_prediction_frame_sorts_drops_padding_repeats_and_adds_paths():
    table = pd.DataFrame({"path": ["a.png", "b.png", "c.png"]})
    trainer = SimpleNamespace(datamodule=SimpleNamespace(table=lambda stage: table))
    # two ranks' shares, interleaved, with index 0 repeated as DistributedSampler pads
    cols = {"index": np.array([2, 0, 1, 0]), "pred": np.array([12.0, 10.0, 11.0, 10.0]),
            "age": np.array([13.0, 9.0, 11.0, 9.0]), "sex": np.array([1.0, 0.0, 1.0, 0.0])}
    frame, sorted_cols = prediction_frame(trainer, "test", cols, "months")
    assert frame["index"].tolist() == [0, 1, 2]
    assert frame["path"].tolist() == ["a.png", "b.png", "c.png"]
    assert frame["pred_months"].tolist() == [10.0, 11.0, 12.0]
    assert frame["true_months"].tolist() == [9.0, 11.0, 13.0]
    assert frame["sex"].tolist() == ["F", "M", "M"]
    assert sorted_cols["age"].tolist() == [9.0, 11.0, 13.0]  # aligned for extra columns


def test_prediction_frame_without_labels_has_only_predictions():
    trainer = SimpleNamespace(datamodule=None)
    frame, _ = prediction_frame(trainer, "predict", {"index": np.array([1, 0]), "pred": np.array([5.0, 4.0])},
                                "years")
    assert list(frame.columns) == ["index", "pred_years"] and frame["pred_years"].tolist() == [4.0, 5.0]
