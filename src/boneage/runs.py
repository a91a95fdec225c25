"""Runs: where every command writes, how a run is named, and how analysis gets a run back.

A run is one ``boneage fit|validate|test|predict`` command (with its resumes and requeues) and
everything it writes lives in one directory::

    lightning_logs/<experiment>/<run id>/
        run.json          id, experiment, stage, created, SLURM job, W&B id, the fit run and
                          checkpoint an evaluation used, the command line
        config.yaml       the resolved config, runnable again as a recipe
        checkpoints/      best-*.ckpt (by the system's monitor) and last.ckpt (fit runs)
        metrics.csv       CSV log; TensorBoard events beside it; wandb/ when W&B is on
        figures/ predictions.csv ...

Run ids: a fit run is ``YYYYmmdd-HHMMSS-xxxx`` (``xxxx`` random hex), or ``slurm-<job id>``
inside a SLURM batch job, so a requeued job (same job id) finds its own run; evaluation runs
are ``<stage>-YYYYmmdd-HHMMSS-xxxx``. A directory is claimed with an exclusive ``mkdir``, so
processes started at the same moment never share one.

This module is what analysis code uses to reach systems and data: :func:`find_runs`,
:func:`resolve_run`, :meth:`Run.checkpoint` and :func:`load_run` rebuild a run's system and data
module from the run's own ``config.yaml`` and checkpoint, never from ``experiments/*.yaml``.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RUNS_DIR = "lightning_logs"
RUN_FILE = "run.json"
STAGES = ("fit", "validate", "test", "predict")


class RunError(LookupError):
    """A run or checkpoint that cannot be found or used; the message says what to do."""


# ------------------------------------------------------------------------------ naming
def slurm_job_id() -> str | None:
    """``<job id>[_<array task>]`` inside a SLURM batch job (not an interactive shell), else None."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if os.environ.get("SLURM_ARRAY_JOB_ID") and task else job


def new_run_id(stage: str = "fit") -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = "" if stage == "fit" else f"{stage}-"
    return f"{prefix}{stamp}-{secrets.token_hex(2)}"


def claim_run_dir(exp_dir: Path, stage: str = "fit") -> Path:
    """A new, empty run directory, created with an exclusive mkdir (safe for concurrent starts)."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = exp_dir / new_run_id(stage)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError(f"could not claim a new run directory in {exp_dir}")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class Run:
    """A run directory and its ``run.json``."""

    path: Path

    @property
    def info(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / RUN_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def experiment(self) -> str:
        return self.info.get("experiment") or self.path.parent.name

    @property
    def stage(self) -> str:
        return self.info.get("stage", "fit")

    @property
    def created(self) -> float:
        return float(self.info.get("created_ts") or self.path.stat().st_mtime)

    @property
    def label(self) -> str:
        return f"{self.experiment}/{self.id}"

    def __str__(self) -> str:
        return str(self.path)

    # --- contents ---------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The run's resolved config (``config.yaml``) as plain data."""
        path = self.path / "config.yaml"
        if not path.is_file():
            raise RunError(f"{self.label} has no config.yaml (the run did not get past its start): "
                           "name another run")
        return yaml.safe_load(path.read_text()) or {}

    def metrics(self):
        import pandas as pd

        path = self.path / "metrics.csv"
        if not path.is_file():
            raise RunError(f"{self.label} has no metrics.csv")
        return pd.read_csv(path)

    def predictions(self, need_truth: bool = True):
        """``predictions.csv`` of a test (or predict) run; with ``need_truth`` it must hold true ages."""
        import pandas as pd

        path = self.path / "predictions.csv"
        if not path.is_file():
            raise RunError(f"{self.label} has no predictions.csv: evaluate a fit run with "
                           f"`boneage test --config <...> --run <fit run> --ckpt_path best`")
        frame = pd.read_csv(path)
        if need_truth and not any(c.startswith("true_") for c in frame.columns):
            raise RunError(f"{self.label} is a {self.stage} run without true ages (predictions.csv has no "
                           "true_* column): name a test run")
        return frame

    def checkpoints(self) -> list[Path]:
        folder = self.path / "checkpoints"
        return sorted(folder.glob("*.ckpt")) if folder.is_dir() else []

    def checkpoint(self, which: str = "best") -> Path:
        """``last``, ``best`` (the best monitored score among the run's checkpoints) or a file name."""
        files = self.checkpoints()
        if which == "last":
            lasts = [p for p in files if p.name.startswith("last")]
            if not lasts:
                raise RunError(f"{self.label} has no last.ckpt yet: it stopped before its first checkpoint")
            return max(lasts, key=lambda p: p.stat().st_mtime)
        if which == "best":
            scored = [(s, p) for p in files if not p.name.startswith("last") and (s := checkpoint_score(p))]
            if not scored:
                unscored = [p for p in files if not p.name.startswith("last")]
                if unscored:  # a system without a monitor: newest step checkpoint
                    return max(unscored, key=lambda p: p.stat().st_mtime)
                raise RunError(f"{self.label} has no best checkpoint yet (no validation finished): "
                               "use --ckpt_path last or train longer")
            mode = scored[0][0][2]
            return (min if mode == "min" else max)(scored, key=lambda sp: sp[0][1])[1]
        path = Path(which)
        if not path.is_absolute() and not path.exists():
            path = self.path / "checkpoints" / which
        if not path.is_file():
            raise RunError(f"checkpoint {which} not found in {self.label}")
        return path

    def evaluations(self, stage: str = "test") -> list[Run]:
        """Runs of ``stage`` that evaluated a checkpoint of this run, oldest first."""
        return [r for r in find_runs(self.path.parent.parent, self.experiment, stage=stage)
                if r.info.get("source_run") == self.id]


def checkpoint_score(path: Path) -> tuple[str, float, str] | None:
    """(monitor, score, mode) recorded by the ModelCheckpoint that wrote ``path``; None when unscored."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # noqa: BLE001 - a damaged file is reported by name
        raise RunError(f"cannot read checkpoint {path}: {err}") from None
    for key, state in (ckpt.get("callbacks") or {}).items():
        if not (str(key).startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("monitor")):
            continue
        scores = {str(k): v for k, v in (state.get("best_k_models") or {}).items()}
        score = scores.get(str(path)) or scores.get(os.path.realpath(path))
        if score is None and state.get("current_score") is not None:
            score = state["current_score"]
        if score is None:
            continue
        mode = "min"
        try:
            mode = ast.literal_eval(str(key)[len("ModelCheckpoint"):]).get("mode", "min")
        except (ValueError, SyntaxError):
            pass
        return state["monitor"], float(score), mode
    return None


def find_runs(runs_dir: str | Path = RUNS_DIR, experiment: str | None = None, stage: str | None = "fit") -> list[Run]:
    """Runs under ``runs_dir`` (of one experiment, of one stage; None: any), oldest first."""
    root = Path(runs_dir)
    exp_dirs = [root / experiment] if experiment else sorted(p for p in root.glob("*") if p.is_dir())
    runs = [Run(p.parent) for d in exp_dirs for p in d.glob(f"*/{RUN_FILE}")]
    if stage is not None:
        runs = [r for r in runs if r.stage == stage]
    return sorted(runs, key=lambda r: (r.created, r.id))


def resolve_run(runs_dir: str | Path, experiment: str, run: str | None = None, stage: str = "fit",
                verbose: bool = False) -> Run:
    """The named run of an experiment (an id, a unique prefix, or a path), or its newest ``stage`` run."""
    if run and Path(run).is_dir() and (Path(run) / RUN_FILE).is_file():
        return Run(Path(run))
    if run and "/" in run and not Path(run).exists():  # "<exp>/<id>"
        experiment, run = run.split("/", 1)
    runs = find_runs(runs_dir, experiment, stage=stage)
    exp_dir = Path(runs_dir) / experiment
    if not runs:
        raise RunError(f"no {stage} run of '{experiment}' in {exp_dir}: train it first "
                       f"(make train EXP={experiment}) or give --runs_dir")
    if run:
        exact = [r for r in runs if r.id == run]
        matches = exact or [r for r in runs if r.id.startswith(run)]
        if len(matches) != 1:
            known = ", ".join(r.id for r in runs[-8:]) or "none"
            what = "no" if not matches else "more than one"
            raise RunError(f"{what} {stage} run '{run}' in {exp_dir} (its {stage} runs: {known})")
        chosen = matches[0]
    else:
        chosen = runs[-1]
    if verbose:
        print(f"using run {chosen.label}" + ("" if run else f" (the newest {stage} run)"), flush=True)
    return chosen


def resolve_test_run(runs_dir: str | Path, spec: str) -> tuple[Run | None, Run]:
    """(fit run, test run) named by ``spec``: ``EXP``, ``EXP/<run id>`` or a run directory.

    A fit run (``EXP`` alone: the newest) gives its newest test evaluation; a test run (id
    ``test-...``) is taken as it is, with the fit run it evaluated when that is known. Predict and
    validate runs are never test results. Raises :class:`RunError` naming the run and what to do.
    """
    path = Path(spec)
    if path.is_dir() and (path / RUN_FILE).is_file():
        run = Run(path)
    else:
        experiment, _, run_id = spec.partition("/")
        stage = next((s for s in ("test", "validate", "predict") if run_id.startswith(f"{s}-")), "fit")
        run = resolve_run(runs_dir, experiment, run_id or None, stage=stage)
    if run.stage == "test":
        info = run.info
        # source_dir is absolute; a runs folder copied elsewhere still has the fit run beside the test
        candidates = [Path(info["source_dir"])] if info.get("source_dir") else []
        candidates += [run.path.parent / info["source_run"]] if info.get("source_run") else []
        fit = next((Run(p) for p in candidates if (p / RUN_FILE).is_file()), None)
        return fit, run
    if run.stage != "fit":
        raise RunError(f"{run.label} is a {run.stage} run, not a test: name its fit run or a test run")
    tests = run.evaluations("test")
    if not tests:
        raise RunError(f"fit run {run.label} has no test run yet: evaluate it with `boneage test --config "
                       f"{run.path / 'config.yaml'} --run {run.id} --ckpt_path best`")
    return run, tests[-1]


def run_of_checkpoint(path: str | Path) -> Run | None:
    """The run whose ``checkpoints/`` holds ``path``, if any."""
    folder = Path(path).resolve().parent
    if folder.name == "checkpoints" and (folder.parent / RUN_FILE).is_file():
        return Run(folder.parent)
    return None


# ------------------------------------------------------------------------------ rebuilding
def instantiate(spec: Any, skip: tuple[str, ...] = ("optimizer", "scheduler")) -> Any:
    """Build ``{class_path, init_args}`` specs recursively (the form LightningCLI saves)."""
    if isinstance(spec, dict) and "class_path" in spec:
        module, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        args = {k: instantiate(v, skip) for k, v in (spec.get("init_args") or {}).items() if k not in skip}
        return cls(**args)
    if isinstance(spec, dict):
        return {k: instantiate(v, skip) for k, v in spec.items()}
    if isinstance(spec, list):
        return [instantiate(v, skip) for v in spec]
    return spec


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build_data(run: Run, overrides: dict | None = None):
    """The run's DataModule from its saved config (``overrides``: nested dict merged into ``data``)."""
    cfg = run.config()
    if "data" not in cfg or not cfg["data"]:
        raise RunError(f"{run.label}'s config.yaml has no data section")
    return instantiate(_merge(cfg["data"], overrides or {}))


def build_system(run: Run, ckpt: str | Path | None = "best"):
    """The run's LightningModule from its saved config, with the checkpoint's weights, in eval mode.

    ``ckpt``: ``best``, ``last``, a path, or None (the config's initial weights).
    """
    import torch

    cfg = run.config()
    if "model" not in cfg:
        raise RunError(f"{run.label}'s config.yaml has no model section")
    system = instantiate(cfg["model"])
    path = None
    if ckpt is not None:
        path = run.checkpoint(str(ckpt))
        state = torch.load(path, map_location="cpu", weights_only=False)
        system.load_state_dict(state["state_dict"])
    system.ckpt_path = str(path) if path else None
    return system.eval()


def load_run(run: Run, ckpt: str | Path | None = "best", stage: str | None = "test",
             data_overrides: dict | None = None):
    """(system in eval mode, data module set up for ``stage``, checkpoint path) of a fit run."""
    system = build_system(run, ckpt)
    dm = build_data(run, data_overrides)
    if stage is not None:
        dm.setup(stage)
    return system, dm, system.ckpt_path


def add_run_arguments(parser, experiment: str | None = None, required: bool = False) -> None:
    """``--runs-dir``, ``--experiment`` and ``--run`` for an analysis command's argparse parser."""
    parser.add_argument("--runs-dir", default=RUNS_DIR, help="root of the run directories")
    parser.add_argument("--experiment", default=experiment, required=required and experiment is None,
                        help="experiment name (lightning_logs/<experiment>)")
    parser.add_argument("--run", default=None,
                        help="run id (or unique prefix, or run directory); default: the newest fit run")


# ------------------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    """``python -m boneage.runs list|path|checkpoint``: find runs from the shell (make targets use it)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m boneage.runs", description=main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, text in (("list", "runs of an experiment (or all), oldest first"),
                       ("path", "the run directory of the named (default newest) fit run"),
                       ("checkpoint", "the best/last checkpoint of the named (default newest) fit run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--runs-dir", "--runs_dir", default=RUNS_DIR)
        p.add_argument("--experiment", required=name != "list")
        p.add_argument("--run", default=None)
        p.add_argument("--stage", default="fit" if name != "list" else None)
        if name == "checkpoint":
            p.add_argument("--which", default="best", help="best, last or a file name")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "list":
            for run in find_runs(args.runs_dir, args.experiment, stage=args.stage):
                info = run.info
                print(f"{run.label}\t{run.stage}\t{info.get('status', '?')}\t{info.get('created', '')}"
                      + (f"\tfrom {info['source_run']}" if info.get("source_run") else ""))
            return 0
        run = resolve_run(args.runs_dir, args.experiment, args.run, args.stage)
        print(run.checkpoint(args.which) if args.cmd == "checkpoint" else run.path)
        print(f"run {run.label}" + ("" if args.run else " (the newest)"), file=sys.stderr)
        return 0
    except RunError as err:
        print(f"boneage.runs: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
