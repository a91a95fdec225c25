"""Metric inputs kept over steps and handed over together give the epoch values of per-step updates,
and a checkpoint taken between two hand-overs holds every step; the progress bar redrawn on a clock
still shows the epoch's last batch."""

from __future__ import annotations

import re

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from boneage.callbacks import TimedProgressBar
from boneage.systems.base import MetricInputs


def _metrics() -> nn.ModuleDict:
    return nn.ModuleDict({
        "reg": MetricCollection({"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)}),
        "acc": MulticlassAccuracy(5, average="micro", validate_args=False),
        "loss": MeanMetric(nan_strategy="disable"),
    })


def _steps(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        b = 3 + i % 4  # batches of different sizes (a last, smaller batch)
        yield (torch.randn(b, generator=g), torch.randn(b, generator=g), torch.randint(0, 5, (b,), generator=g),
               torch.randint(0, 5, (b,), generator=g), torch.rand((), generator=g))


def _values(m: nn.ModuleDict) -> dict[str, float]:
    out = {k: float(v) for k, v in m["reg"].compute().items()}
    return {**out, "acc": float(m["acc"].compute()), "loss": float(m["loss"].compute())}


def test_kept_inputs_give_the_values_of_per_step_updates():
    direct, kept = _metrics(), _metrics()
    inputs = MetricInputs(every=4)
    for pred, age, cls, target, loss in _steps(11):  # 11 steps: two hand-overs, then a flush of three
        direct["reg"].update(pred, age)
        direct["acc"].update(cls, target)
        direct["loss"].update(loss)
        inputs.add(kept["reg"], pred, age)
        inputs.add(kept["acc"], cls, target)
        inputs.add(kept["loss"], loss)
    inputs.flush()
    want, got = _values(direct), _values(kept)
    assert got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) < 1e-6 for k in want), (got, want)


def test_a_state_dict_between_hand_overs_holds_every_step():
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = _metrics()
            for metric in self.m.modules():
                if hasattr(metric, "persistent"):
                    metric.persistent(True)  # as ExactResume makes them, so checkpoints carry the sums
            self.inputs = MetricInputs(every=50)
            self.register_state_dict_pre_hook(self.inputs.flush)

    direct, holder = _metrics(), Holder()
    for pred, age, _cls, _target, loss in _steps(7):
        direct["reg"].update(pred, age)
        direct["loss"].update(loss)
        holder.inputs.add(holder.m["reg"], pred, age)
        holder.inputs.add(holder.m["loss"], loss)
    saved = holder.state_dict()  # 7 steps kept, none handed over yet
    restored = Holder()
    restored.load_state_dict(saved)
    assert abs(float(restored.m["loss"].compute()) - float(direct["loss"].compute())) < 1e-6
    assert abs(float(restored.m["reg"]["mae"].compute()) - float(direct["reg"]["mae"].compute())) < 1e-6


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.net(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_timed_progress_bar_redraws_on_the_clock_and_always_shows_the_last_batch(tmp_path, capsys):
    loader = torch.utils.data.DataLoader(torch.randn(40, 4), batch_size=2)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         default_root_dir=tmp_path, callbacks=[TimedProgressBar(interval=3600)])
    trainer.fit(_Tiny(), loader)
    shown = capsys.readouterr()
    drawn = {int(n) for n in re.findall(r"(\d+)/20\b", shown.out + shown.err)}
    assert 20 in drawn  # the epoch's last batch is drawn
    assert drawn <= {0, 1, 20}, drawn  # with an hour between redraws: only the first batch and the last
