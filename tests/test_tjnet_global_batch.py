"""The configured batch is the global batch on several devices (the papers' batch sizes, 16 for
TJ-Net): `boneage fit` splits it over the devices or refuses. A faked world size stands in for a
multi-GPU node (no processes are started)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from boneage.cli import split_global_batch
from boneage.runs import RunError
from boneage.systems.tjnet import TJNetSystem
from data_modules.rsna import RSNADataModule


def test_split_global_batch_divides_or_refuses():
    for world, per_device in ((1, 16), (2, 8), (4, 4), (16, 1)):
        dm = SimpleNamespace(batch_size=16)
        split_global_batch(dm, world)
        assert dm.batch_size == per_device
    with pytest.raises(RunError, match=r"batch_size 16 is the global batch and does not divide over 3 devices") as err:
        split_global_batch(SimpleNamespace(batch_size=16), 3)
    assert "--trainer.devices" in str(err.value) and "1, 2, 4, 8" in str(err.value)
    split_global_batch(SimpleNamespace(), 4)  # a data module without a batch size is left alone


@pytest.fixture
def tiny_rsna(tmp_path):
    root = RSNADataModule.phantom_args(tmp_path / "rsna", n=24, seed=0, size=64)["data_dir"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster, and far faster on a busy machine
    yield ["--config", "experiments/tjnet_rsna.yaml", "--config", "tests/configs/tjnet_rsna.yaml",
           "--data.init_args.data_dir", root, "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1",
           "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
           "--trainer.num_sanity_val_steps", "0"]
    torch.set_num_threads(threads)


def test_fit_on_two_devices_keeps_the_configured_global_batch(run_cli, tiny_rsna, monkeypatch, capsys):
    """data.batch_size 4 on a (faked) 2-device run: each device trains on batches of 2, and the
    loss takes its class counts from the gathered whole batch."""
    monkeypatch.setattr(pl.Trainer, "world_size", property(lambda self: 2))
    seen: list[int] = []
    gathered: list[int] = []
    step = TJNetSystem.training_step
    gather = TJNetSystem.all_gather

    def spy_step(self, batch, batch_idx):
        seen.append(len(batch["image"]))
        return step(self, batch, batch_idx)

    def spy_gather(self, data, *args, **kwargs):
        gathered.append(len(data))
        return gather(self, data, *args, **kwargs)

    monkeypatch.setattr(TJNetSystem, "training_step", spy_step)
    monkeypatch.setattr(TJNetSystem, "all_gather", spy_gather)
    run_cli("fit", *tiny_rsna)
    assert seen == [2, 2]
    assert gathered == [2, 2, 2, 2]  # age and sex targets of each step
    assert "global batch 4: 2 per device on 2 devices" in capsys.readouterr().err


def test_fit_refuses_a_global_batch_that_does_not_divide(run_cli, tiny_rsna, monkeypatch, capsys):
    monkeypatch.setattr(pl.Trainer, "world_size", property(lambda self: 3))
    with pytest.raises(SystemExit) as stop:
        run_cli("fit", *tiny_rsna)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("boneage: data.init_args.batch_size 4 is the global batch and does not divide over 3")
