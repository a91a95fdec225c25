"""``boneage fit|validate|test|predict --config experiments/<exp>.yaml``

A LightningCLI with the framework's run layout (:mod:`boneage.runs`):

- the experiment name is ``--experiment`` or the first config file's stem;
- every command is a run with its own directory ``lightning_logs/<exp>/<run id>/`` (run.json,
  the resolved config.yaml, checkpoints/, metrics.csv, TensorBoard events, wandb/, figures/);
  ids are claimed with an exclusive mkdir, so concurrent runs never share files; DDP ranks
  share their parent's run (``BONEAGE_RUN``), srun tasks of one SLURM job the job's run;
- ``fit --run ID`` continues run ID from its ``last.ckpt`` (a requeued SLURM job does this by
  itself: its run is ``slurm-<job id>``); ``fit --ckpt_path last`` continues the newest fit run;
- ``validate|test|predict --ckpt_path best|last [--run ID]`` evaluate the named (or newest) fit
  run: ``best`` is the best monitored score among its checkpoints; run.json records which run
  and file were used;
- the saved config.yaml is a recipe: ``boneage fit --config <run>/config.yaml`` starts a new run
  of the same experiment with the same settings;
- ``boneage predict-folder ...`` and ``boneage serve ...`` use trained runs (:mod:`boneage.predict`,
  :mod:`boneage.serve`); they are dispatched before LightningCLI parses;
- ``--exact_resume`` (on by default) adds :class:`boneage.resume.ExactResume` (RNG and sampler
  state in checkpoints, atomic writes, ``last.ckpt`` on SIGTERM/SIGUSR1 at any point of fit);
- ``--wandb true`` adds a Weights & Biases logger; a resumed run continues its W&B run;
- ``data.init_args.batch_size`` is the global batch (the papers' batch sizes): fit on several
  devices (``devices: auto`` on a multi-GPU node, several nodes) gives each device
  ``batch_size / world size`` (:func:`split_global_batch`), and refuses a batch that does not divide.

Expected problems (bad data, unknown run, missing checkpoint or weights) end with one line and
exit code 2; ``--debug`` or ``BONEAGE_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, ProgressBar
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

from boneage import runs
from boneage.callbacks import EpochLines, TimedProgressBar, TrainingSamples
from boneage.resume import ExactResume
from boneage.runs import RUN_FILE, RUNS_DIR, Run, RunError

RUN_ENV = "BONEAGE_RUN"  # {"dir": ..., "ckpt": ...} shared with DDP child processes: one run for all ranks


def _rank() -> int:
    for key in ("SLURM_PROCID", "RANK", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def inherited_run() -> dict | None:
    """The run a DDP launcher's parent process chose (``BONEAGE_RUN`` set by another process)."""
    shared = json.loads(os.environ.get(RUN_ENV) or "null")
    return shared if shared and shared.get("pid") != os.getpid() else None


def wandb_mode() -> str:
    """``online`` when wandb finds credentials for its configured host (``WANDB_API_KEY``, or the
    netrc entry that ``wandb login`` wrote, for wandb.ai or a self-hosted ``WANDB_BASE_URL``),
    else ``offline``; ``WANDB_MODE`` wins."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import wandb
        from wandb.sdk.lib.wbauth import wbnetrc

        # the host as wandb's own setup finds it: `wandb login --host` settings, then WANDB_BASE_URL
        settings = wandb.Settings()
        config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb").expanduser()
        settings.settings_system = str(config_dir / "settings")
        settings.update_from_system_settings()
        settings.update_from_env_vars(dict(os.environ))
        return "online" if wbnetrc.read_netrc_auth(host=settings.base_url) else "offline"
    except Exception:  # noqa: BLE001 - wandb moved its credential lookup: be safe, stay local
        return "offline"


class BoneAgeSaveConfig(SaveConfigCallback):
    """Saves the run's recipe (config.yaml) and sends it to W&B runs."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                config = self.config.clone().as_dict()
                config.pop("config", None)
                logger.experiment.config.update({"cli": config}, allow_val_change=True)


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


def random_init_notices(node: Any, prefix: str = "model") -> list[str]:
    """One line per network in a model config whose ``pretrained_path`` is null: it trains from random
    weights (the papers mostly start from ImageNet weights, which nothing here downloads)."""
    if hasattr(node, "as_dict"):  # a jsonargparse Namespace: its items() are flattened
        node = node.as_dict()
    if not hasattr(node, "items"):
        return []
    notes = []
    keys = {str(k).split(".")[-1]: v for k, v in node.items()}
    if "pretrained_path" in keys and keys["pretrained_path"] in (None, "None", "null"):
        what = keys.get("backbone") or "the network"
        notes.append(f"{prefix}.pretrained_path is null: {what} starts from random weights (set it to a local "
                     "weights file to start from pretrained ones, as the papers did)")
    for key, value in node.items():
        notes += random_init_notices(value, f"{prefix}.{key}")
    return notes


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


RESUME_MAY_CHANGE = ("num_workers", "pin_memory", "persistent_workers")


def split_global_batch(datamodule: Any, world_size: int) -> None:
    """Make ``datamodule.batch_size`` (the configured, global batch) the per-device batch of a
    ``world_size``-process run, so the global batch stays the configured one (the papers' batch
    sizes: 16 for TJ-Net, 32, 256, ...). A data module without ``batch_size`` is left alone."""
    total = getattr(datamodule, "batch_size", None)
    if world_size <= 1 or not isinstance(total, int):
        return
    if total % world_size:
        raise RunError(f"data.init_args.batch_size {total} is the global batch and does not divide over "
                       f"{world_size} devices: set --trainer.devices (and num_nodes) so that it divides "
                       f"(e.g. {', '.join(str(d) for d in range(1, total + 1) if total % d == 0 and d <= 8)}), "
                       "or give a batch size that divides (it is then not the paper's)")
    datamodule.batch_size = total // world_size
    if _rank() == 0:
        print(f"global batch {total}: {datamodule.batch_size} per device on {world_size} devices", file=sys.stderr)


def setting_changes(old: dict, new: dict, sections: tuple[str, ...] = ("model", "data")) -> list[str]:
    """Keys of ``sections`` whose values differ between two configs, as ``key: old -> new`` (loader
    settings that do not change the result, such as ``num_workers``, may differ)."""

    def keep(key: str) -> bool:
        return key.split(".")[0] in sections and key.split(".")[-1] not in RESUME_MAY_CHANGE

    a = {k: v for k, v in _flatten(old).items() if keep(k)}
    b = {k: v for k, v in _flatten(new).items() if keep(k)}
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class BoneAgeCLI(LightningCLI):
    """LightningCLI with one directory per run, runs named by id, and default checkpointing."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", BoneAgeSaveConfig)
        self.run: Run | None = None
        self._recipe = None
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--experiment", type=str | None, default=None,
                            help="experiment name (runs in lightning_logs/<experiment>/); default: config file stem")
        parser.add_argument("--runs_dir", type=str, default=RUNS_DIR, help="root of all run directories")
        parser.add_argument("--run", type=str | None, default=None,
                            help="fit: continue this run (id, unique prefix or directory) or create it; "
                                 "validate/test/predict: the fit run whose --ckpt_path best|last to use "
                                 "(default: the newest fit run)")
        parser.add_argument("--exact_resume", type=bool, default=True,
                            help="RNG + sampler state in checkpoints, atomic writes, checkpoint on SIGTERM/SIGUSR1")
        parser.add_argument("--last_every_n_epochs", type=int, default=1,
                            help="how often last.ckpt is refreshed (a signal always writes it at once)")
        parser.add_argument("--wandb", type=bool, default=False,
                            help="also log to Weights & Biases (offline without credentials)")
        parser.add_argument("--wandb_project", type=str, default="boneage", help="W&B project")
        parser.add_argument("--wandb_entity", type=str | None, default=None, help="W&B entity (team or user)")

    # --- the run layout ------------------------------------------------------------------
    def _cfg(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def _experiment(self) -> tuple[str, Path]:
        cfg = self._cfg()
        name = cfg.get("experiment")
        if not name:
            configs = cfg.get("config") or []
            name = Path(str(configs[0])).stem if configs else "default"
        return name, Path(cfg.get("runs_dir") or RUNS_DIR) / name

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg()
        stage = self.subcommand or "fit"
        _null_weight_paths(cfg.get("model"))
        if stage == "fit" and _rank() == 0:
            for note in random_init_notices(cfg.get("model")):
                print(note, file=sys.stderr)
        name, exp_dir = self._experiment()
        if not self.subcommand and cfg["trainer"].get("logger") is False:
            self.run = None  # BoneAgeCLI(run=False) building objects in Python, logging off: no run
            self.save_config_callback = None  # no run folder to keep the recipe in (it would land in the cwd)
            return
        recipe = cfg.clone()
        recipe["experiment"], recipe["run"] = name, None
        if "ckpt_path" in recipe:
            recipe["ckpt_path"] = None
        self._recipe = recipe
        shared = inherited_run()
        if shared:  # a DDP child: the parent chose the run and the checkpoint
            self.run, ckpt = Run(Path(shared["dir"])), shared["ckpt"]
        elif stage == "fit":
            self.run, ckpt = self._fit_run(cfg, name, exp_dir)
        else:
            self.run, ckpt = self._eval_run(cfg, name, exp_dir, stage)
        if self.subcommand:
            cfg["ckpt_path"] = ckpt
        os.environ[RUN_ENV] = json.dumps({"dir": str(self.run.path), "ckpt": ckpt,
                                          "pid": int((shared or {}).get("pid") or os.getpid())})
        trainer_cfg = cfg["trainer"]
        if trainer_cfg.get("default_root_dir") in (None, os.getcwd()):
            trainer_cfg["default_root_dir"] = str(self.run.path)
        if trainer_cfg.get("logger") in (None, True):
            common = {"save_dir": str(exp_dir.parent), "name": name, "version": self.run.id}
            trainer_cfg["logger"] = [
                {"class_path": "boneage.loggers.RunCSVLogger", "init_args": dict(common)},
                {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                 "init_args": {**common, "default_hp_metric": False}},
            ]
            if cfg.get("wandb"):
                trainer_cfg["logger"].append(self._wandb_logger(name, cfg))

    def _fit_run(self, cfg, name: str, exp_dir: Path) -> tuple[Run, str | None]:
        ckpt = cfg.get("ckpt_path")
        wanted = cfg.get("run") or runs.slurm_job_id() and f"slurm-{runs.slurm_job_id()}"
        if ckpt == "best":
            raise RunError("fit continues from 'last' (or a checkpoint path); 'best' is for validate/test/predict")
        if ckpt == "last" and not wanted:
            try:
                wanted = runs.resolve_run(exp_dir.parent, name, None, "fit").id
            except RunError:
                print(f"no earlier fit run of {name}: starting a new run", file=sys.stderr)
                ckpt = None
        if not wanted:  # a new run
            run = Run(runs.claim_run_dir(exp_dir, "fit"))
            self._write_info(run, name, "fit", resumed_from=ckpt)
            return run, ckpt
        existing = exp_dir / wanted
        if not (existing / RUN_FILE).is_file():
            try:
                existing = runs.resolve_run(exp_dir.parent, name, wanted, "fit").path
            except RunError:
                if cfg.get("run") and ckpt == "last":
                    raise
        run = Run(existing)
        if not (run.path / RUN_FILE).is_file():  # a named run that does not exist yet: create it
            run.path.mkdir(parents=True, exist_ok=True)  # srun tasks of one job all arrive here
            self._write_info(run, name, "fit", resumed_from=ckpt)
            return run, ckpt
        if run.stage != "fit":
            raise RunError(f"{run.label} is a {run.stage} run; name a fit run to continue")
        if (run.path / "config.yaml").is_file():
            import yaml

            now = yaml.safe_load(self._parser(self.subcommand).dump(self._recipe))  # None and absent compare equal
            changed = setting_changes(run.config(), now)
            if changed:
                raise RunError(f"{run.label} was started with other settings ({'; '.join(changed[:4])}"
                               f"{' ...' if len(changed) > 4 else ''}): drop --run/RESUME to start a new run, "
                               "or give the run's own settings")
        if ckpt in (None, "last"):
            last = run.path / "checkpoints" / "last.ckpt"
            ckpt = str(last) if last.is_file() else None
        if _rank() == 0:
            print(f"continuing run {run.label} from {ckpt or 'the start (no last.ckpt yet)'}", file=sys.stderr)
            info = run.info
            info.setdefault("attempts", []).append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "ckpt": ckpt,
                                                    "slurm_restart": os.environ.get("SLURM_RESTART_COUNT")})
            info["status"] = "running"
            runs.write_json_atomic(run.path / RUN_FILE, info)
        return run, ckpt

    def _eval_run(self, cfg, name: str, exp_dir: Path, stage: str) -> tuple[Run, str | None]:
        ckpt, source = cfg.get("ckpt_path"), None
        if ckpt in ("best", "last"):
            source = runs.resolve_run(exp_dir.parent, name, cfg.get("run"), "fit")
            ckpt = str(source.checkpoint(ckpt))
            if _rank() == 0:
                print(f"{stage}: run {source.label}, checkpoint {Path(ckpt).name}", file=sys.stderr)
        elif ckpt:
            if not Path(ckpt).is_file():
                raise RunError(f"checkpoint {ckpt} not found: give a file, or --ckpt_path best|last [--run ID]")
            source = runs.run_of_checkpoint(ckpt)
        elif cfg.get("run"):
            raise RunError(f"--run names a fit run for {stage}: add --ckpt_path best or last")
        job = runs.slurm_job_id()
        if job:  # every srun task of the job computes the same directory
            run = Run(exp_dir / f"{stage}-slurm-{job}")
            run.path.mkdir(parents=True, exist_ok=True)
        else:
            run = Run(runs.claim_run_dir(exp_dir, stage))
        self._write_info(run, name, stage, source_run=source.id if source else None,
                         source_dir=str(source.path) if source else None, ckpt_path=ckpt)
        return run, ckpt

    def _write_info(self, run: Run, name: str, stage: str, **extra) -> None:
        if _rank() != 0:
            return
        info = {"id": run.id, "experiment": name, "stage": stage, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "created_ts": time.time(), "status": "running", "argv": sys.argv[1:] or None,
                "slurm_job": runs.slurm_job_id(), **{k: v for k, v in extra.items() if v is not None}}
        runs.write_json_atomic(run.path / RUN_FILE, info)

    def _wandb_logger(self, name: str, cfg) -> dict:
        mode = wandb_mode()
        os.environ["WANDB_MODE"] = mode  # offline without credentials: nothing needs the network
        run = self.run
        info = run.info
        wandb_id = info.get("wandb_id") or os.environ.get("WANDB_RUN_ID")
        if not wandb_id:
            from wandb.sdk.lib.runid import generate_id

            wandb_id = generate_id()
        if _rank() == 0 and info.get("wandb_id") != wandb_id:
            info["wandb_id"] = wandb_id
            if os.environ.get("WANDB_SWEEP_ID"):
                info["wandb_sweep"] = os.environ["WANDB_SWEEP_ID"]
            runs.write_json_atomic(run.path / RUN_FILE, info)
        if mode == "offline" and _rank() == 0:
            print(f"W&B offline (no credentials): the run is written under {run.path / 'wandb'}; "
                  f"upload later with `wandb sync {run.path / 'wandb'}/offline-run-*`", file=sys.stderr)
        return {"class_path": "pytorch_lightning.loggers.WandbLogger",
                "init_args": {"save_dir": str(run.path), "name": run.label, "group": name, "id": wandb_id,
                              "resume": "allow", "project": cfg.get("wandb_project") or "boneage",
                              "entity": cfg.get("wandb_entity"), "offline": mode == "offline",
                              "log_model": False, "job_type": self.subcommand}}

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        trainer = self._instantiate_trainer_and_callbacks(config, callbacks)
        cuda_check_without_nvml(trainer)
        return trainer

    def _instantiate_trainer_and_callbacks(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        cfg = self._cfg()
        if config.get("enable_progress_bar") is not False and not any(
                isinstance(c, ProgressBar) for c in [*(config.get("callbacks") or []), *callbacks]):
            callbacks = [*callbacks, TimedProgressBar()]  # Lightning's bar, redrawn on a clock (callbacks.py)
        if self.run is None:
            return super()._instantiate_trainer(config, callbacks)
        own = [c for c in (config.get("callbacks") or []) if isinstance(c, ModelCheckpoint)]
        ckpt_dir = str(self.run.path / "checkpoints")
        for cb in own:  # a user's checkpoint callback without a folder writes into the run
            if cb.dirpath is None:
                cb.dirpath = ckpt_dir
        if not own and config.get("enable_checkpointing") is not False and self.subcommand == "fit":
            defaults = default_checkpoints(self.model, Path(ckpt_dir), cfg.get("last_every_n_epochs") or 1)
            config["callbacks"] = [*(config.get("callbacks") or []), *defaults]
        trainer = super()._instantiate_trainer(config, callbacks)
        if self.subcommand == "fit":
            split_global_batch(self.datamodule, trainer.world_size)
        for cb in trainer.callbacks:
            if isinstance(cb, BoneAgeSaveConfig):
                cb.config = self._recipe
        if cfg.get("exact_resume", True) and not any(isinstance(c, ExactResume) for c in trainer.callbacks):
            trainer.callbacks.append(ExactResume())  # after the config's callbacks: it saves their final state
        if cfg.get("wandb") and self.subcommand == "fit":
            trainer.callbacks.append(TrainingSamples())
        if not trainer.progress_bar_callback:
            trainer.callbacks.append(EpochLines())
        return trainer


def cuda_check_without_nvml(trainer: Trainer) -> None:
    """A run on the CPU stops ``torch.cuda.is_available()`` from asking NVML on every call.

    Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (so that the check does not initialise
    CUDA before a fork), and torch's Adam asks ``torch.cuda.is_available()`` at every ``step`` (its
    CUDA-graph health check). Without a GPU, the NVML answer is never cached: every optimizer step loads
    the NVML library again, about 0.35 ms on this project's 2-core test machine (``make bench``), more
    than the rest of a small model's Adam step. A CPU run never uses CUDA, so the runtime check
    (``cudaGetDeviceCount``, cached after its first answer) is safe there; runs on a GPU are left as
    Lightning set them (there torch caches the count once CUDA is initialised)."""
    if isinstance(trainer.accelerator, CPUAccelerator) and not torch.cuda.is_initialized():
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


def default_checkpoints(model: LightningModule, dirpath: Path, last_every_n_epochs: int = 1) -> list[ModelCheckpoint]:
    """Best (by the system's monitor) and last checkpoints in the run's checkpoints/ folder.

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


# ------------------------------------------------------------------------------ entry point
EXPECTED = (RunError, FileNotFoundError, NotADirectoryError, PermissionError)


def _expected(err: BaseException) -> bool:
    from data_modules.base import DataError

    return isinstance(err, (*EXPECTED, DataError))


def _quiet_lightning() -> None:
    """Lightning's advertising tips and LightningCLI's args warning are not for our users."""
    import logging

    class _NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Tip:" not in record.getMessage()

    for name in ("pytorch_lightning", "lightning.pytorch", "pytorch_lightning.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoTips())
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    # an evaluation restores weights only; the fit's checkpoint callbacks are not needed there
    warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint need to be provided.*")


def _set_status(status: str) -> None:
    shared = json.loads(os.environ.get(RUN_ENV) or "null")
    if not shared or _rank() != 0:
        return
    path = Path(shared["dir"]) / RUN_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    info["status"] = status
    info["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    runs.write_json_atomic(path, info)


def _union_error(err: BaseException) -> str | None:
    """The error a class raised while jsonargparse built it as one subtype of a union (a model or a
    network given by class_path, e.g. a missing weights file), which jsonargparse wraps as "Does not
    validate against any of the Union subtypes" with every subtype's complaint; None for others."""
    text = str(err)
    if not isinstance(err, ValueError) or "Does not validate against any of the Union subtypes" not in text:
        return None
    causes = [line.strip()[2:] for line in text.split("Errors:", 1)[-1].splitlines() if line.strip().startswith("- ")]
    causes = [c for c in causes if not c.startswith("Expected a ") and "Does not validate" not in c]
    return causes[0] if causes else None


# commands that use trained runs rather than LightningCLI: name -> module with main(argv)
TOOLS = {"predict-folder": "boneage.predict", "serve": "boneage.serve"}


def _tool(name: str, argv: list[str], debug: bool) -> None:
    """``boneage predict-folder|serve ...``: expected problems end with one line and exit code 2."""
    import importlib

    try:
        importlib.import_module(TOOLS[name]).main(argv)
    except BaseException as err:
        if debug or not _expected(err):
            raise
        print(f"boneage {name}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def main(args: list[str] | None = None) -> None:
    """The ``boneage`` command. ``args``: the command line without the program name."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get("BONEAGE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] in TOOLS:
        return _tool(argv[0], argv[1:], debug)
    _quiet_lightning()
    inherited = inherited_run() is not None
    if not inherited:
        os.environ.pop(RUN_ENV, None)  # left by an earlier command in this process
    status = "failed"
    try:
        BoneAgeCLI(args=argv)
        status = "finished"
    except SystemExit as err:  # Lightning's SIGTERMException, argparse errors
        if type(err).__name__ != "SIGTERMException":
            status = "failed" if err.code not in (0, None) else "finished"
            raise
        status = "interrupted"
        shared = json.loads(os.environ.get(RUN_ENV) or "null")
        if shared and _rank() == 0:
            print(f"boneage: stopped by a signal; continue with --run {Path(shared['dir']).name} "
                  "(or make train ... RESUME=1)", file=sys.stderr)
        raise SystemExit(143) from None  # 128 + SIGTERM: a scheduler sees an unfinished job
    except BaseException as err:
        inner = _union_error(err)
        if debug or not (_expected(err) or inner):
            raise
        print(f"boneage: {inner or err}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if not inherited:
            _set_status(status)
            # A finished command releases its run, so the next command in this process (fit, then
            # test, as in make demo) gets a run directory of its own.
            os.environ.pop(RUN_ENV, None)


if __name__ == "__main__":
    main()
