"""AlphaPlateau: the documented plateau rule, the switch in a real Trainer, state in checkpoints."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from boneage.systems.tjnet_callbacks import AlphaPlateau


def test_plateau_rule():
    cb = AlphaPlateau(patience=2, min_delta=0.1)
    # 10 -> 8 (improves) -> 7.5 (not 10 % better than 8) -> 7.3 (not) => switch at epoch 3
    decisions = [cb.step(v, e) for e, v in enumerate([10.0, 8.0, 7.5, 7.3, 1.0])]
    assert decisions == [False, False, False, True, False]
    assert cb.switched_epoch == 3 and cb.best == 8.0
    cb2 = AlphaPlateau(patience=1, min_delta=0.0, min_epochs=3)
    assert [cb2.step(5.0, e) for e in range(4)] == [False, False, True, False]  # waits for min_epochs
    with pytest.raises(ValueError):
        AlphaPlateau(patience=0)


class _Toy(pl.LightningModule):
    """Logs a scripted 'train/ce' per epoch; holds alpha as a buffer like the TJ-Net system."""

    def __init__(self, ce_per_epoch: list[float]) -> None:
        super().__init__()
        self.num_classes = 77
        self.layer = torch.nn.Linear(1, 1)
        self.register_buffer("alpha", torch.tensor(1.5))
        self.ce = ce_per_epoch

    def training_step(self, batch, batch_idx):
        self.log("train/ce", self.ce[self.current_epoch], on_step=False, on_epoch=True)
        return self.layer(batch[0]).sum() * 0.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=2)


def _trainer(tmp_path, epochs, cb, **kw):
    return pl.Trainer(max_epochs=epochs, callbacks=[cb], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False,
                      default_root_dir=tmp_path, accelerator="cpu", **kw)


def test_alpha_switches_in_training_and_resumes_from_checkpoint(tmp_path):
    ce = [3.0, 2.0, 1.99, 1.98, 1.97, 1.96]
    model, cb = _Toy(ce), AlphaPlateau(patience=2)
    trainer = _trainer(tmp_path, 3, cb)
    trainer.fit(model)
    assert float(model.alpha) == 1.5 and cb.wait == 1  # one flat epoch so far
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)
    assert any(v == {"best": 2.0, "wait": 1, "switched_epoch": None} for v in state["callbacks"].values())

    # resume: the plateau count continues from the checkpoint (switch after one more flat epoch)
    model2, cb2 = _Toy(ce), AlphaPlateau(patience=2)
    t2 = _trainer(tmp_path, 4, cb2)
    t2.fit(model2, ckpt_path=ckpt)
    assert cb2.switched_epoch == 3 and float(model2.alpha) == 77.0
    # a run resumed after the switch keeps alpha (a buffer) and does not switch again
    end = tmp_path / "end.ckpt"
    t2.save_checkpoint(end)
    model3, cb3 = _Toy(ce), AlphaPlateau(patience=2, final=10.0)
    _trainer(tmp_path, 6, cb3).fit(model3, ckpt_path=end)
    assert float(model3.alpha) == 77.0 and cb3.switched_epoch == 3
    assert math.isclose(cb3.best, 2.0)


def test_alpha_callback_names_missing_metric(tmp_path):
    class _Silent(_Toy):
        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum() * 0.0

    with pytest.raises(KeyError, match="train/ce"):
        _trainer(tmp_path, 1, AlphaPlateau()).fit(_Silent([1.0]))
