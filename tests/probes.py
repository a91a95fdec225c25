"""Callbacks that record what happened inside training, given by class path to runs in tests
(``--trainer.callbacks+=probes.<Name> --trainer.callbacks.out_dir=<dir>``): the autocast state
inside the training step, and which samples each DDP rank trained on."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback
from scale_helpers import RankWeights


class AutocastProbe(Callback):
    """Every forward of a leaf module during a training batch: (autocast on?, autocast dtype, output
    dtype), written as a sorted list to ``out_dir/autocast.json`` when training ends."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.seen: set[tuple] = set()
        self.active = False
        self.handles: list = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.handles = [m.register_forward_hook(self._record) for m in pl_module.modules()
                        if next(m.children(), None) is None]

    def _record(self, module, args, output) -> None:
        if self.active and torch.is_tensor(output) and output.is_floating_point():
            device = output.device.type
            on = torch.is_autocast_enabled(device)
            self.seen.add((on, str(torch.get_autocast_dtype(device)) if on else None, str(output.dtype)))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.active = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.active = False

    def on_train_end(self, trainer, pl_module) -> None:
        for handle in self.handles:
            handle.remove()
        (Path(self.out_dir) / "autocast.json").write_text(json.dumps(sorted(self.seen, key=str)))


class RankBatches(RankWeights):
    """RankWeights, and the dataset indices (``batch["index"]``) of every training batch this rank
    saw, in order, to ``out_dir/rank<N>_indices.json``."""

    def __init__(self, out_dir: str) -> None:
        super().__init__(out_dir)
        self.indices: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if isinstance(batch, dict) and "index" in batch:
            self.indices += [int(i) for i in batch["index"]]

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        (Path(self.out_dir) / f"rank{trainer.global_rank}_indices.json").write_text(json.dumps(self.indices))
