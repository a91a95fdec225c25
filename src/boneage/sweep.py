"""``python -m boneage.sweep EXP [--count N] [--project P] [--entity E] [--create-only]``

Creates the W&B sweep ``experiments/sweeps/EXP.yaml`` through wandb's API, prints
``sweep <entity>/<project>/<id>`` and starts one agent on this machine (``wandb agent``): each
trial is a ``boneage fit`` run with its own run directory, so more agents of the same sweep
(``wandb agent <entity>/<project>/<id>``, e.g. one per GPU) never share files.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]  # the sweeps' commands name configs relative to it
DEFAULT_PROJECT = "boneage"


class SweepError(Exception):
    """An expected problem, reported in one line."""


def sweep_file(name: str | None) -> Path:
    folder = ROOT / "experiments" / "sweeps"
    known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
    if not name:
        raise SweepError(f"name a sweep (experiments/sweeps/<name>.yaml): {known}")
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise SweepError(f"no sweep '{name}' ({path.relative_to(ROOT)} does not exist); sweeps: {known}")
    return path


def check_credentials() -> None:
    """A sweep lives on the W&B server: stop early, in one line, when there is no way to reach it."""
    from boneage.cli import wandb_mode  # the CLI's credential lookup, so trials and sweep agree

    mode = wandb_mode()
    if mode == "online":
        return
    if os.environ.get("WANDB_MODE"):
        raise SweepError(f"WANDB_MODE={os.environ['WANDB_MODE']}: a sweep needs the W&B server; unset WANDB_MODE")
    raise SweepError("no W&B credentials: run `wandb login` (`wandb login --host URL` for a self-hosted server) "
                     "or set WANDB_API_KEY")


def default_entity() -> str:
    import wandb

    return wandb.Api().default_entity


def create(config: dict, project: str, entity: str | None) -> str:
    """Create the sweep; returns ``entity/project/id``."""
    import wandb

    try:
        sweep_id = wandb.sweep(config, project=project, entity=entity)
        entity = entity or default_entity()
    except wandb.errors.Error as err:
        raise SweepError(f"creating the sweep in project {project} failed: {err}") from None
    if not sweep_id:
        raise SweepError(f"wandb did not return a sweep id for project {project}")
    return f"{entity}/{project}/{sweep_id}"


def agent_command(path: str, count: int | None) -> list[str]:
    return [sys.executable, "-m", "wandb", "agent", *(["--count", str(count)] if count else []), path]


def agent_env() -> dict[str, str]:
    """The trials' ``boneage`` (the sweep command's ``${env} boneage``) is this environment's."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}


def run_agent(command: list[str], env: dict[str, str], cwd: Path) -> int:
    try:
        return subprocess.call(command, env=env, cwd=cwd)
    except KeyboardInterrupt:  # the agent got the Ctrl-C too and stops its trial
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boneage.sweep", description=__doc__.split("\n\n")[1])
    parser.add_argument("experiment", nargs="?", help="sweep name: experiments/sweeps/<experiment>.yaml")
    parser.add_argument("--count", type=int, default=None, help="trials this agent runs (default: until the "
                        "sweep ends)")
    parser.add_argument("--project", default=None, help=f"W&B project (default: the sweep file's, else "
                        f"{DEFAULT_PROJECT})")
    parser.add_argument("--entity", default=None, help="W&B team or user (default: the sweep file's, else yours)")
    parser.add_argument("--create-only", action="store_true", help="create the sweep, start no agent")
    args = parser.parse_args(argv)
    try:
        path = sweep_file(args.experiment)
        config = yaml.safe_load(path.read_text())
        if "${args}" not in (config.get("command") or []):
            raise SweepError(f"{path.relative_to(ROOT)}: its command has no ${{args}}, so the sampled parameters "
                             "would never reach the trials")
        check_credentials()
        project = args.project or config.get("project") or DEFAULT_PROJECT
        sweep = create(config, project, args.entity or config.get("entity"))
    except SweepError as err:
        print(f"boneage.sweep: {err}", file=sys.stderr)
        return 2
    print(f"sweep {sweep}", flush=True)
    if args.create_only:
        print(f"start agents with: wandb agent {sweep}", flush=True)
        return 0
    print(f"starting an agent (more agents: wandb agent {sweep})", flush=True)
    return run_agent(agent_command(sweep, args.count), agent_env(), ROOT)


if __name__ == "__main__":
    raise SystemExit(main())
