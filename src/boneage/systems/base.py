"""Helpers every system shares: where a run writes, and figure/image output for any logger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch


def run_dir(trainer: pl.Trainer) -> Path:
    """The run directory (``lightning_logs/<exp>/version_N``), created.

    Safe to call on one rank only (e.g. under ``if trainer.is_global_zero``): unlike
    ``trainer.log_dir`` it is not a collective under DDP (all ranks share the version anyway).
    """
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    first = trainer.loggers[0] if trainer.loggers else None
    if first is None:
        path = Path(trainer.default_root_dir)
    else:
        path = Path((first.log_dir if isinstance(first, (CSVLogger, TensorBoardLogger)) else first.save_dir)
                    or trainer.default_root_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir(trainer: pl.Trainer) -> Path:
    """``<run dir>/figures``, created."""
    path = run_dir(trainer) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(trainer: pl.Trainer, fig, name: str) -> Path:
    """Save a matplotlib figure into figures/ and hand it to every logger that shows images.

    Works with any logger: TensorBoard (``add_figure``), W&B (``log_image``) or none; modules
    never call a logger-specific API themselves.
    """
    import matplotlib.pyplot as plt

    path = figures_dir(trainer) / f"{name}.png"
    if trainer.is_global_zero:
        fig.savefig(path, dpi=110, bbox_inches="tight")
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # WandbLogger
                logger.log_image(key=f"figures/{name}", images=[str(path)], step=trainer.global_step)
            elif hasattr(getattr(logger, "experiment", None), "add_figure"):  # TensorBoard
                logger.experiment.add_figure(f"figures/{name}", fig, global_step=trainer.global_step)
    plt.close(fig)
    return path


def prediction_frame(trainer: pl.Trainer, stage: str, cols: dict[str, np.ndarray],
                     units: str) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The shared columns of a predictions.csv, one row per image in table order.

    ``cols`` holds per-sample arrays (``index``, ``pred`` and, when labelled, ``age`` and
    ``sex``) gathered from all ranks. Rows are sorted by index and the repeats that
    DistributedSampler pads with are dropped; the arrays are returned in that same order, so
    a system can add its own columns.
    """
    _, first = np.unique(cols["index"], return_index=True)
    cols = {k: v[first] for k, v in cols.items()}
    frame = pd.DataFrame({"index": cols["index"].astype(int)})
    dm = trainer.datamodule
    if dm is not None and hasattr(dm, "table"):
        frame["path"] = dm.table(stage)["path"].to_numpy()[frame["index"]]
    frame[f"pred_{units}"] = cols["pred"]
    if "age" in cols:
        frame[f"true_{units}"] = cols["age"]
        frame["sex"] = np.where(cols["sex"] > 0.5, "M", "F")
    return frame, cols


def gather_outputs(module: pl.LightningModule, outputs: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Per-sample tensors collected over an epoch's steps, concatenated and gathered from all
    ranks (every rank must call it), as numpy arrays for :func:`prediction_frame`."""
    cols = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
    return {k: module.all_gather(v).reshape(-1).cpu().numpy() for k, v in cols.items()}


def write_predict_outputs(module: pl.LightningModule, frame_fn, units: str) -> None:
    """predictions.csv of a predict run: ``frame_fn("predict", cols)`` of the steps' outputs."""
    outputs = module.trainer.predict_loop.predictions
    if not outputs or not isinstance(outputs[0], dict):
        return
    cols = {k: torch.cat([o[k] for o in outputs]).cpu().numpy() for k in ("index", "pred")}
    frame = frame_fn("predict", cols)
    path = run_dir(module.trainer) / "predictions.csv"
    frame.to_csv(path, index=False)
    print(f"wrote {len(frame)} predicted bone ages ({units}) to {path}")


def logs_this_step(module: pl.LightningModule) -> bool:
    """Whether the loggers write this training step's values (Lightning writes on_step values every
    ``trainer.log_every_n_steps`` steps and drops the others).

    Each ``self.log`` call costs Lightning's result bookkeeping (tens to hundreds of microseconds of
    Python, ``_ResultMetric.to`` walking every logged value); a GAN logging a dozen terms per step
    spent several milliseconds per step on values no logger wrote. Logging only on these steps keeps
    metrics.csv and TensorBoard the same; ``trainer.callback_metrics`` then holds the last written
    step's values (``trainer.log_every_n_steps: 1`` logs every step).
    """
    connector = getattr(module.trainer, "_logger_connector", None)  # Lightning's own rule, as it decides
    return connector is None or bool(connector.should_update_logs)


class NonFiniteWatch:
    """Non-finite loss values looked for on the host only every ``every`` steps.

    Reading a loss on the host (``bool(t)``, ``float(t)``, ``.item()``) waits for the device to
    finish everything queued so far: on a GPU, doing it every step stops the CPU from queueing the
    next step's kernels. ``update`` only keeps (detached) references to the step's loss terms;
    ``check`` stacks everything kept since the last check, finds the first non-finite value on the
    device and reads one number (one device-to-host copy and, under DDP, one collective), and says
    where it was. The systems call ``check`` every ``every`` training steps, before every
    checkpoint is written and at the epoch and training end, so a run that diverged never writes a
    checkpoint after the bad step. Paper is silent (not a paper setting): every 50 steps by
    default, Lightning's own ``log_every_n_steps``, where the loggers read the losses anyway.
    """

    NONE = 2**62  # code of "all finite"

    def __init__(self, every: int = 50) -> None:
        if int(every) < 1:
            raise ValueError(f"check_finite_every_n_steps must be at least 1, got {every}")
        self.every = int(every)
        self._kept: list[tuple[object, tuple[str, ...], list[torch.Tensor]]] = []
        self._steps = 0

    def update(self, terms: dict[str, torch.Tensor], where: object) -> None:
        """Keep ``terms`` (scalar losses) for the next check; ``where`` says when (any object)."""
        self._kept.append((where, tuple(terms), [v.detach() for v in terms.values()]))

    def due(self) -> bool:
        """Count one training step; True every ``every`` steps (the caller then calls ``check``)."""
        self._steps += 1
        return self._steps % self.every == 0

    def check(self, strategy: object | None = None) -> tuple[object, str, str] | None:
        """``(where, term, "nan" or "inf")`` of the first non-finite value since the last check on any
        rank (``strategy.reduce`` takes the minimum over ranks: every rank must call it at the same
        point), or None when all were finite. Starts a new window."""
        kept, self._kept = self._kept, []
        if not kept:
            return None
        values = torch.stack([v.float().reshape(()) for _, _, vals in kept for v in vals])
        codes = torch.arange(len(values), device=values.device) * 2 + values.isnan().long()  # +1: nan
        first = torch.where(values.isfinite(), self.NONE, codes).min()
        if strategy is not None:
            first = strategy.reduce(first, reduce_op="min")
        code = int(first)
        if code >= self.NONE:
            return None
        index, is_nan = divmod(code, 2)
        for where, names, vals in kept:
            if index < len(vals):
                return where, names[index], "nan" if is_nan else "inf"
            index -= len(vals)
        raise AssertionError("unreachable")


class MetricInputs:
    """A step's metric inputs kept on the device and handed to their torchmetrics objects together.

    One torchmetrics ``update`` is dozens of small tensor operations and Python checks (a tenth of a
    millisecond or more on a CPU); a system updating five to ten metrics per training step spent
    more on them than a small model's step (``make bench``). ``add`` keeps detached references
    instead; every ``every`` steps, and whenever the metrics are read or saved (``flush``: before an
    epoch's logging, a ``compute`` and every ``state_dict``, hence every checkpoint), each metric
    gets one ``update`` with its kept inputs concatenated along the batch dimension. The metrics
    here (mean absolute and squared errors, means, classification statistics) are sums and counts,
    so the result is the same as updating at every step. Paper is silent (not a paper setting):
    chose 50 steps, Lightning's ``log_every_n_steps``, which keeps a few MB of inputs at most.
    """

    def __init__(self, every: int = 50) -> None:
        self.every = int(every)
        self._kept: dict[int, tuple[object, list[tuple[torch.Tensor, ...]]]] = {}

    @classmethod
    def attached_to(cls, module: torch.nn.Module, every: int = 50) -> MetricInputs:
        """Kept inputs of ``module``'s metrics, flushed before every ``module.state_dict()`` (so a
        checkpoint holds every step's)."""
        inputs = cls(every)
        module.register_state_dict_pre_hook(inputs.flush)
        return inputs

    def add(self, metric: object, *inputs: torch.Tensor) -> None:
        """Keep ``inputs`` of ``metric.update`` (a torchmetrics Metric or MetricCollection)."""
        calls = self._kept.setdefault(id(metric), (metric, []))[1]
        calls.append(tuple(torch.atleast_1d(x.detach()) for x in inputs))
        if len(calls) >= self.every:
            self._update(metric, self._kept.pop(id(metric))[1])

    def flush(self, *_: object) -> None:
        """Give every metric its kept inputs (call before reading or saving metric states)."""
        kept, self._kept = self._kept, {}
        for metric, calls in kept.values():
            self._update(metric, calls)

    @staticmethod
    def _update(metric: object, calls: list[tuple[torch.Tensor, ...]]) -> None:
        metric.update(*(torch.cat(parts) for parts in zip(*calls)))
