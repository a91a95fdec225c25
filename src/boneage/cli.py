"""``boneage fit|validate|test|predict --config experiments/<exp>.yaml``

A LightningCLI with the framework's run layout:

- the experiment name is ``--experiment`` or the first config file's stem;
- every run writes ``lightning_logs/<exp>/version_N/`` (resolved config.yaml, metrics.csv,
  TensorBoard events, figures/, predictions.csv) through a CSV and a TensorBoard logger that
  share the version, unless the config names its own loggers;
- checkpoints (best by the system's ``monitor``/``mode``, and last) live in the experiment's
  stable ``lightning_logs/<exp>/checkpoints/``, so ``--ckpt_path last`` resumes a killed run
  and ``--ckpt_path best`` evaluates the best one from any later command;
- the config is saved into every run directory, also on re-runs and requeued jobs.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

RUNS_DIR = "lightning_logs"
VERSION_ENV = "BONEAGE_RUN_VERSION"  # shared with DDP child processes, so all ranks use one run dir


def next_version(exp_dir: Path) -> int:
    versions = [int(m.group(1)) for p in exp_dir.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(versions, default=-1) + 1


def find_checkpoint(ckpt_dir: Path, which: str) -> str:
    """``best`` or ``last`` checkpoint of an experiment, with a clear error when there is none."""
    if which == "last":
        candidates = sorted(ckpt_dir.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    else:
        candidates = sorted(ckpt_dir.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"no '{which}' checkpoint in {ckpt_dir}: train the experiment first "
                                "(make train EXP=...) or pass --ckpt_path PATH")
    return str(candidates[-1])


class BoneAgeCLI(LightningCLI):
    """LightningCLI with experiment-named run directories and default checkpointing."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--experiment", type=str | None, default=None,
                            help="experiment name (run dir lightning_logs/<experiment>); default: config file stem")
        parser.add_argument("--runs_dir", type=str, default=RUNS_DIR, help="root of all run directories")

    # --- the run layout ------------------------------------------------------------------
    def _experiment(self) -> tuple[str, Path]:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        name = cfg.get("experiment")
        if not name:
            configs = cfg.get("config") or []
            name = Path(str(configs[0])).stem if configs else "default"
        return name, Path(cfg.get("runs_dir") or RUNS_DIR) / name

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        name, exp_dir = self._experiment()
        trainer_cfg = cfg["trainer"]
        if trainer_cfg.get("default_root_dir") in (None, os.getcwd()):
            trainer_cfg["default_root_dir"] = str(exp_dir)
        if trainer_cfg.get("logger") in (None, True):
            version = int(os.environ.get(VERSION_ENV, next_version(exp_dir)))
            os.environ[VERSION_ENV] = str(version)
            common = {"save_dir": str(exp_dir.parent), "name": name, "version": version}
            trainer_cfg["logger"] = [
                {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": dict(common)},
                {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                 "init_args": {**common, "default_hp_metric": False}},
            ]
        ckpt = cfg.get("ckpt_path")
        if self.subcommand in ("validate", "test", "predict") and ckpt in ("best", "last"):
            cfg["ckpt_path"] = find_checkpoint(exp_dir / "checkpoints", ckpt)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        has_own = any(isinstance(c, ModelCheckpoint) and c.dirpath for c in trainer.callbacks)
        if trainer.checkpoint_callback is not None and not has_own:  # replace Lightning's dir-less default
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
            trainer.callbacks.append(default_checkpoint(self.model, self._experiment()[1] / "checkpoints"))
        return trainer


def default_checkpoint(model: LightningModule, dirpath: Path) -> ModelCheckpoint:
    """Best (by the system's monitor) and last checkpoints in the experiment's stable folder."""
    monitor = getattr(model, "monitor", None)
    return ModelCheckpoint(
        dirpath=str(dirpath),
        filename="best-epoch{epoch:03d}-step{step}" if monitor else "step{step}",
        monitor=monitor,
        mode=getattr(model, "mode", "min"),
        save_last=True,
        save_top_k=1,
        auto_insert_metric_name=False,
    )


def main(args: list[str] | None = None) -> None:
    BoneAgeCLI(args=args if args is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
