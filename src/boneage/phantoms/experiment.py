"""The default phantom of an experiment, written where its YAML reads its data (make phantoms).

``boneage-phantom experiment tjnet_rsna`` renders the phantom of the experiment's DataModule
into the path ``experiments/tjnet_rsna.yaml`` names (``data.init_args.data_dir`` or
``csv_path``); with no name, that of every experiment, each data set once (many experiments
share one). Data already there is kept. ``--dry-run`` prints the commands; generator flags
after ``--`` replace the defaults, e.g. ``-- --n 100``. Paths are relative to the working
directory, as in ``boneage fit --config experiments/<name>.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from boneage.runs import RUNS_DIR

NAME = "experiment"
EXPERIMENTS = Path("experiments")
RUN_ENV = "BONEAGE_RUN"  # boneage.cli.RUN_ENV: the run of the command being run, if any

# Default phantom of each DataModule: (init arg naming the data, label file the generator writes,
# generator flags). Counts are those of each paper's docs page; image sizes the generators'
# real-data-like defaults (hands 512 / 600 px high, crops 160 px, whole-body scans 3000 x 900).
PHANTOMS = {
    "data_modules.rsna.RSNADataModule": ("data_dir", "boneage-training-dataset.csv",
                                         ["rsna", "--n", "2000", "--size", "512"]),
    "data_modules.tongji.TongjiDataModule": ("csv_path", "labels.csv", ["tongji", "--n", "1385", "--size", "600"]),
    "data_modules.bones.FemurDataModule": ("csv_path", "labels.csv",
                                           ["bones", "--bone", "femur", "--n", "317", "--age-distribution", "paper"]),
    "data_modules.bones.PhalangeDataModule": ("csv_path", "labels.csv",
                                              ["bones", "--bone", "phalange", "--n", "2000", "--seed", "1",
                                               "--age-distribution", "paper"]),
    "data_modules.scintigraphy.ScintigraphyDataModule": ("csv_path", "labels.csv", ["scintigraphy", "--n", "400"]),
    "data_modules.wholebody.WholeBodyCTDataModule": ("csv_path", "labels.csv", ["wholebody_ct", "--n", "813"]),
}


class PlanError(ValueError):
    """An experiment whose data cannot be made by a phantom; the message says why."""


@dataclass
class Plan:
    """Where an experiment reads its data and the ``boneage-phantom`` command that writes it there."""

    experiment: str
    path: str  # the data path the YAML names
    out: Path  # the folder the generator writes
    label_file: Path  # exists once the data set is complete (generators write it last)
    argv: list[str]  # boneage-phantom arguments
    source: str = ""  # for data another experiment's run writes: that experiment
    source_note: str = ""  # the YAML's comment above the data path

    def with_flags(self, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
        """The generator arguments, a flag in ``extra`` replacing the default's value."""
        argv, rest, i = list(self.argv), [], 0
        while i < len(extra):
            if extra[i].startswith("--") and extra[i] in argv[1:] and i + 1 < len(extra):
                argv[argv.index(extra[i]) + 1] = extra[i + 1]
                i += 2
            else:
                rest.append(extra[i])
                i += 1
        return argv + rest

    def command(self, extra: list[str] | tuple[str, ...] = ()) -> str:
        return shlex.join(["boneage-phantom", *self.with_flags(extra)])

    def state(self) -> str:
        """present (the label file is there), free (no folder or an empty one) or occupied (other files)."""
        if self.label_file.is_file():
            return "present"
        if not self.out.exists() or (self.out.is_dir() and not any(self.out.iterdir())):
            return "free"
        return "occupied"


def experiment_names(experiments: Path = EXPERIMENTS) -> list[str]:
    return sorted(p.stem for p in Path(experiments).glob("*.yaml"))


def _class_default(class_path: str, arg: str) -> str:
    import importlib
    import inspect

    module, name = class_path.rsplit(".", 1)
    return str(inspect.signature(getattr(importlib.import_module(module), name)).parameters[arg].default)


def _comment_above(text: str, key: str) -> str:
    """The comment lines right above ``key:`` in a YAML text, joined."""
    lines = text.splitlines()
    at = next((i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:")), None)
    notes: list[str] = []
    i = (at if at is not None else 0) - 1
    while at is not None and i >= 0 and lines[i].strip().startswith("#"):
        notes.insert(0, lines[i].strip().lstrip("#").strip())
        i -= 1
    return "; ".join(notes)


def _argv(flags: list[str], out: Path) -> list[str]:
    return [flags[0], "--out", str(out), *flags[1:]]


def plan(experiment: str, experiments: Path = EXPERIMENTS) -> Plan:
    """The phantom of ``experiment``; raises PlanError when its data is not a phantom's."""
    file = Path(experiments) / f"{experiment}.yaml"
    if not file.is_file():
        raise PlanError(f"no experiment {experiment!r} ({file} does not exist); experiments: "
                        f"{' '.join(experiment_names(experiments))}")
    text = file.read_text()
    data = (yaml.safe_load(text) or {}).get("data") or {}
    class_path = data.get("class_path", "")
    if class_path not in PHANTOMS:
        raise PlanError(f"{file}: no default phantom for data class {class_path or '(none)'}; "
                        f"classes with one: {', '.join(sorted(PHANTOMS))}")
    arg, label_name, flags = PHANTOMS[class_path]
    path = str((data.get("init_args") or {}).get(arg) or _class_default(class_path, arg))
    parts = Path(path).parts
    if len(parts) > 2 and parts[0] == RUNS_DIR and parts[1] != experiment \
            and (Path(experiments) / f"{parts[1]}.yaml").is_file():
        # data written by a run of another experiment (e.g. the ROI export): that one's phantom
        upstream = plan(parts[1], experiments)
        upstream.experiment, upstream.path = experiment, path
        upstream.source, upstream.source_note = parts[1], _comment_above(text, arg)
        return upstream
    out = Path(path) if arg == "data_dir" else Path(path).parent
    if arg != "data_dir" and Path(path).name != label_name:
        raise PlanError(f"{file}: data.init_args.{arg} is {path}, but the phantom writes {label_name}; "
                        f"point it at {out / label_name} or make the data yourself")
    return Plan(experiment, path, out, out / label_name, _argv(flags, out))


def plans(experiments: Path = EXPERIMENTS) -> tuple[list[Plan], list[str]]:
    """Plans of every experiment, and the messages of those without one."""
    found, skipped = [], []
    for name in experiment_names(experiments):
        try:
            found.append(plan(name, experiments))
        except PlanError as err:
            skipped.append(str(err))
    return found, skipped


def _same(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def hint(missing: str | Path, class_path: str, experiments: Path = EXPERIMENTS) -> str:
    """How to make the missing data folder or label file ``missing`` of a ``class_path`` DataModule.

    ``make phantoms EXP=<experiment>`` when an experiment's YAML names this path (the one being
    run when it is among them), else the ``boneage-phantom`` command for this DataModule's
    phantom; "" when a phantom cannot go there (a folder holding other files).
    """
    matches = []
    if Path(experiments).is_dir():
        matches = [p for p in plans(experiments)[0]
                   if _same(missing, p.path) or (not p.source and _same(missing, p.label_file))]
    if matches:
        running = json.loads(os.environ.get(RUN_ENV) or "null") or {}
        current = Path(running.get("dir", "")).parent.name
        chosen = next((p for p in matches if p.experiment == current), matches[0])
        if chosen.source:  # a run's output (e.g. the ROI export), not a phantom
            note = f" ({chosen.experiment}.yaml: {chosen.source_note})" if chosen.source_note else ""
            return (f"a {chosen.source} run writes it{note}; the data of {chosen.source} (a phantom): "
                    f"`make phantoms EXP={chosen.source}`")
        if chosen.state() == "occupied":
            return ""
        return f"make a phantom there with `make phantoms EXP={chosen.experiment}`"
    if class_path in PHANTOMS:  # a path no experiment names (an override): the generator's own command
        arg, label_name, flags = PHANTOMS[class_path]
        out = Path(missing) if arg == "data_dir" else Path(missing).parent
        if (arg == "data_dir" or Path(missing).name == label_name) and not (out.is_dir() and any(out.iterdir())):
            return f"make a phantom there with `{shlex.join(['boneage-phantom', *_argv(flags, out)])}`"
    return ""


def render(p: Plan, extra: list[str] | tuple[str, ...] = (), dry_run: bool = False) -> bool:
    """Render ``p``'s phantom unless its data is there; False when a folder with other files is in the way."""
    from boneage.phantoms.cli import main as phantom_main

    state = p.state()
    if state == "present":
        print(f"already there ({p.label_file}): keeping it")
        return True
    if state == "occupied":
        print(f"boneage-phantom: {p.out} holds files but no {p.label_file.name}: not writing a phantom into it; "
              "move it away (an interrupted phantom: delete it) and run again", file=sys.stderr)
        return False
    print(("would run: " if dry_run else "") + p.command(extra))
    if not dry_run:
        phantom_main(p.with_flags(extra))
    return True


def run(names: list[str], extra: list[str] | tuple[str, ...] = (), dry_run: bool = False,
        experiments: Path = EXPERIMENTS) -> int:
    """Render the phantoms of ``names`` (all experiments when empty), each data set once; exit status."""
    if names:
        try:
            chosen = [plan(n, experiments) for n in names]
        except PlanError as err:
            print(f"boneage-phantom: {err}", file=sys.stderr)
            return 2
        skipped: list[str] = []
    else:
        chosen, skipped = plans(experiments)
    ok, done, written = True, {}, {}
    for p in chosen:
        key = p.out.resolve()
        if key not in done:
            users = [q.experiment for q in chosen if q.out.resolve() == key]
            print(f"== {p.out}: data of {' '.join(users)}")
            done[key] = render(p, extra, dry_run)
            ok &= done[key]
        if p.source:
            written.setdefault(p.path, []).append(p)
    for path, readers in written.items():
        p = readers[0]
        verb = "reads" if len(readers) == 1 else "read"
        print(f"note: {' '.join(q.experiment for q in readers)} {verb} {path}, which a {p.source} run writes, "
              f"not a phantom; {p.out} is {p.source}'s data. {p.experiment}.yaml: {p.source_note}")
    for message in skipped:
        print(f"skipped: {message}")
    return 0 if ok else 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiments", nargs="*", help="experiment names (experiments/<name>.yaml); default: all")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, render nothing")
    parser.epilog = "Generator flags after --, e.g. '-- --n 100', replace the defaults."


def main(args: argparse.Namespace) -> int:
    return run(args.experiments, getattr(args, "generator_args", []), args.dry_run)
