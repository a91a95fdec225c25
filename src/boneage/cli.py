"""``boneage fit|validate|test|predict --config experiments/<exp>.yaml``

A LightningCLI with the framework's run layout:

- the experiment name is ``--experiment`` or the first config file's stem;
- every run writes ``lightning_logs/<exp>/version_N/`` (resolved config.yaml, metrics.csv,
  TensorBoard events, figures/, predictions.csv) through a CSV and a TensorBoard logger that
  share the version, unless the config names its own loggers;
- checkpoints (best by the system's ``monitor``/``mode``, and last) live in the experiment's
  stable ``lightning_logs/<exp>/checkpoints/``, so ``--ckpt_path last`` resumes a killed run
  and ``--ckpt_path best`` evaluates the best one from any later command;
- the config is saved into every run directory, also on re-runs and requeued jobs;
- ``--exact_resume`` (on by default) adds :class:`boneage.resume.ExactResume`: atomic checkpoint
  writes, RNG and sampler state in every checkpoint, and ``last.ckpt`` written at a batch boundary
  when SIGTERM/SIGUSR1 arrives (SLURM pre-emption), so a resumed run ends where an uninterrupted
  one ends;
- ``--wandb true`` (or ``--config experiments/presets/wandb.yaml``) adds a Weights & Biases logger
  beside CSV and TensorBoard, offline when no API key is configured; the resolved config goes to
  the W&B run, figures (and a grid of training samples) reach it through
  ``boneage.systems.base.save_figure``.

Accelerator, devices, strategy, precision and num_nodes are plain ``trainer`` keys (YAML or
command line); presets for several GPUs, a cluster and mixed precision are in
``experiments/presets/`` (see docs/scale.md).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

from boneage.callbacks import TrainingSamples
from boneage.resume import ExactResume

RUNS_DIR = "lightning_logs"
VERSION_ENV = "BONEAGE_RUN_VERSION"  # shared with DDP child processes, so all ranks use one run dir


def next_version(exp_dir: Path) -> int:
    versions = [int(m.group(1)) for p in exp_dir.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(versions, default=-1) + 1


def wandb_mode() -> str:
    """``online`` when an API key is configured (env or ~/.netrc), else ``offline``; WANDB_MODE wins."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "online" if "api.wandb.ai" in netrc.read_text() else "offline"
    except OSError:
        return "offline"


class BoneAgeSaveConfig(SaveConfigCallback):
    """Saves config.yaml into the run directory and sends the resolved config to W&B runs."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                config = self.config.clone().as_dict()
                config.pop("config", None)
                logger.experiment.config.update({"cli": config}, allow_val_change=True)


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


def _null_weight_paths(node) -> None:
    """``--model...network.init_args.pretrained_path null`` reaches a nested subclass as the string
    'None' (jsonargparse 4.53 parses a dotted override of a subclass inside a subclass that way);
    a weights path of 'None' or 'null' means no weights, as in YAML."""
    if not hasattr(node, "items"):
        return
    for key, value in list(node.items()):
        if str(key).split(".")[-1] in ("pretrained_path", "pretrained_paths"):
            if isinstance(value, str) and value in ("None", "null"):
                node[key] = None
            elif isinstance(value, list):
                node[key] = [None if v in ("None", "null") else v for v in value]
        elif hasattr(value, "items"):
            _null_weight_paths(value)


class BoneAgeCLI(LightningCLI):
    """LightningCLI with experiment-named run directories and default checkpointing."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", BoneAgeSaveConfig)
        inherited = VERSION_ENV in os.environ  # set by a DDP launcher parent: keep it
        try:
            super().__init__(*args, **kwargs)
        finally:
            # A finished command releases its run version, so the next command in this process
            # (fit, then test, as in make demo) starts a new run directory instead of having its
            # loggers overwrite this one's metrics.csv. run=False: the caller still has to run it.
            if not inherited and kwargs.get("run", True):
                os.environ.pop(VERSION_ENV, None)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--experiment", type=str | None, default=None,
                            help="experiment name (run dir lightning_logs/<experiment>); default: config file stem")
        parser.add_argument("--runs_dir", type=str, default=RUNS_DIR, help="root of all run directories")
        parser.add_argument("--exact_resume", type=bool, default=True,
                            help="RNG + sampler state in checkpoints, atomic writes, checkpoint on SIGTERM/SIGUSR1")
        parser.add_argument("--last_every_n_epochs", type=int, default=1,
                            help="how often last.ckpt is refreshed (a signal always writes it at once)")
        parser.add_argument("--wandb", type=bool, default=False,
                            help="also log to Weights & Biases (offline without an API key)")
        parser.add_argument("--wandb_project", type=str, default="boneage", help="W&B project")
        parser.add_argument("--wandb_entity", type=str | None, default=None, help="W&B entity (team or user)")

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
        _null_weight_paths(cfg.get("model"))
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
            if cfg.get("wandb"):
                trainer_cfg["logger"].append(self._wandb_logger(name, exp_dir, version, cfg))
        ckpt = cfg.get("ckpt_path")
        if self.subcommand in ("validate", "test", "predict") and ckpt in ("best", "last"):
            cfg["ckpt_path"] = find_checkpoint(exp_dir / "checkpoints", ckpt)

    def _wandb_logger(self, name: str, exp_dir: Path, version: int, cfg) -> dict:
        mode = wandb_mode()
        os.environ["WANDB_MODE"] = mode  # offline without a key: nothing needs the network
        if mode == "offline" and os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"W&B offline (no API key): the run is written under {exp_dir / 'wandb'}; "
                  f"upload later with `wandb sync {exp_dir / 'wandb'}/offline-run-*`", file=sys.stderr)
        return {"class_path": "pytorch_lightning.loggers.WandbLogger",
                "init_args": {"save_dir": str(exp_dir), "name": f"{name}/version_{version}", "group": name,
                              "project": cfg.get("wandb_project") or "boneage", "entity": cfg.get("wandb_entity"),
                              "offline": mode == "offline", "log_model": False, "job_type": self.subcommand}}

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if cfg.get("exact_resume", True) and not any(isinstance(c, ExactResume) for c in trainer.callbacks):
            trainer.callbacks.append(ExactResume())  # after the config's callbacks: it saves their final state
        if cfg.get("wandb") and self.subcommand == "fit":
            trainer.callbacks.append(TrainingSamples())
        has_own = any(isinstance(c, ModelCheckpoint) and c.dirpath for c in trainer.callbacks)
        if trainer.checkpoint_callback is not None and not has_own:  # replace Lightning's dir-less default
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
            trainer.callbacks.extend(default_checkpoints(self.model, self._experiment()[1] / "checkpoints",
                                                         cfg.get("last_every_n_epochs") or 1))
        return trainer


def default_checkpoints(model: LightningModule, dirpath: Path, last_every_n_epochs: int = 1) -> list[ModelCheckpoint]:
    """Best (by the system's monitor) and last checkpoints in the experiment's stable folder.

    ``last.ckpt`` has its own callback that overwrites it at every checkpointing point (epoch or
    validation end): Lightning's ``save_last=True`` only refreshes "last" when a top-k checkpoint
    is written, so after a plateau "last" would lag behind and a resume would redo epochs.
    """
    monitor = getattr(model, "monitor", None)
    best = ModelCheckpoint(
        dirpath=str(dirpath),
        filename="best-epoch{epoch:03d}-step{step}" if monitor else "step{step}",
        monitor=monitor,
        mode=getattr(model, "mode", "min"),
        save_last=False,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    last = LastCheckpoint(dirpath=str(dirpath), filename=ModelCheckpoint.CHECKPOINT_NAME_LAST, monitor=None,
                          save_top_k=1, save_last=False, enable_version_counter=False,
                          save_on_train_epoch_end=True, every_n_epochs=last_every_n_epochs)
    return [best, last]


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: overwritten at the end of every (n-th) training epoch, whether or not the epoch
    validated (GANs validate rarely), and once more when training ends (e.g. max_steps mid-epoch)."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer) and not trainer.received_sigterm:
            self._save_checkpoint(trainer, self.format_checkpoint_name(self._monitor_candidates(trainer)))


def default_checkpoint(model: LightningModule, dirpath: Path) -> ModelCheckpoint:
    """The best-checkpoint callback of :func:`default_checkpoints` (kept for callers of the first version)."""
    return default_checkpoints(model, dirpath)[0]


def main(args: list[str] | None = None) -> None:
    BoneAgeCLI(args=args if args is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
