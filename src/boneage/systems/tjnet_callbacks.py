"""Callbacks of the TJ-Net recipe.

:class:`AlphaPlateau` raises the weight ``alpha`` of the global error term ``alpha * e^2`` from
its start value (paper: 1.5) to its final value (paper: the number of classes, 77) "after the
batch losses become stable". Paper is silent on what "stable" means; the rule used here:

    At the end of every training epoch, read the epoch mean of the batch cross-entropies
    (``monitor``, default ``train/ce``: age + sex ratio-weighted cross entropy, which alpha does
    not affect). It *improves* when it is below ``best * (1 - min_delta)``. After ``patience``
    epochs in a row without improvement (and not before ``min_epochs`` epochs), the loss is
    stable: alpha is set to the final value, once.

Monitoring the cross-entropy part, not the total loss, keeps the rule independent of alpha
itself. alpha is a buffer of the LightningModule (saved in checkpoints with the weights); the
callback's own state (best, wait, the epoch it switched) is saved in checkpoints through
``state_dict``/``load_state_dict``, so a resumed run neither switches twice nor forgets a
plateau it was counting.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info


class AlphaPlateau(pl.Callback):
    """Switch ``pl_module.alpha`` from its start value to ``final`` once ``monitor`` plateaus.

    Args:
        monitor: epoch-level metric of the batch losses (logged by the system).
        patience: epochs without relative improvement of ``min_delta`` before switching.
        min_delta: relative improvement that counts (0.01 = 1 %).
        min_epochs: never switch before this many epochs.
        final: alpha after the switch; None = the module's ``num_classes`` (paper: 77).
    """

    def __init__(self, monitor: str = "train/ce", patience: int = 3, min_delta: float = 0.01,
                 min_epochs: int = 1, final: float | None = None) -> None:
        if patience < 1 or min_delta < 0:
            raise ValueError(f"AlphaPlateau needs patience >= 1 and min_delta >= 0, "
                             f"got {patience}, {min_delta}")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = min_delta
        self.min_epochs = min_epochs
        self.final = final
        self.best = math.inf
        self.wait = 0
        self.switched_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    def step(self, value: float, epoch: int) -> bool:
        """Feed one epoch's value; True when this call decides the plateau (switch now)."""
        if self.switched_epoch is not None:
            return False
        if value < self.best * (1.0 - self.min_delta):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        if self.wait >= self.patience and epoch + 1 >= self.min_epochs:
            self.switched_epoch = epoch
            return True
        return False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # A system that logs its train metrics in its own on_train_epoch_end (run after this hook)
        # hands the epoch's value over through epoch_value(); others have logged it by now.
        reader = getattr(pl_module, "epoch_value", None)
        metric = reader(self.monitor) if reader is not None else None
        if metric is None:
            metric = trainer.callback_metrics.get(self.monitor)
        if metric is None and self.switched_epoch is None:
            raise KeyError(f"AlphaPlateau monitors '{self.monitor}', which the system did not log; "
                           f"logged: {sorted(trainer.callback_metrics)}")
        if metric is not None and self.step(float(metric), trainer.current_epoch):
            final = float(self.final if self.final is not None else pl_module.num_classes)
            old = float(pl_module.alpha)
            pl_module.alpha.fill_(final)
            rank_zero_info(f"AlphaPlateau: {self.monitor} stable for {self.patience} epochs at epoch "
                           f"{trainer.current_epoch}: alpha {old:g} -> {final:g}")
        pl_module.log("train/alpha", float(pl_module.alpha), on_step=False, on_epoch=True)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "switched_epoch": self.switched_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = float(state_dict["best"])
        self.wait = int(state_dict["wait"])
        self.switched_epoch = state_dict["switched_epoch"]


__all__ = ["AlphaPlateau"]
