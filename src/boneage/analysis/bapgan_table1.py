"""Table 1 of the BAPGAN paper (FID of the four ablation rows per data set) from finished runs.

For every experiment ``bapgan_<row>_<dataset>`` it takes a fit run (the newest, or the one named
with ``--run EXP=ID``) and reads, in this order:

1. the whole-data-set FID written by ``python -m boneage.analysis.bapgan_eval fid`` into the
   fit run (``<run>/bapgan_eval/fid.json``, the paper's protocol);
2. else the ``test/fid_*`` value of the run's newest test evaluation holding one
   (``boneage test --run ID --ckpt_path last``: test split only; the ``scope`` column says which).

``--run EXP=ID`` may also name a test run (``test-...``): its FID is used as it is. Predict runs
are never read. FIDs made with different feature extractors are never put in one column: a
table mixing them is refused.

The check marks (D_age, LS, SA) are read from each run's saved hyper-parameters (its
``config.yaml``): ``network.init_args.age_discriminator``, ``label_smoothing > 0`` and
``network.init_args.self_attention``; a run whose flags are not its row's in the paper is
listed with a note. Beside the FID, the age accuracy of generated images
(``bapgan_eval age``, ``<run>/bapgan_eval/age.json``; the paper has no such column) and the
same age model's accuracy on the real test images.

    python -m boneage.analysis.bapgan_table1 [--runs-dir lightning_logs] [--run EXP=ID ...] [--out table1.csv]
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from boneage.runs import RUN_FILE, RUNS_DIR, Run, RunError, find_runs, resolve_run

# (row label, experiment method name, the paper's (D_age, LS, SA) for the row), in the paper's order
ROWS = (
    ("CAAE", "bapgan_caae", (False, False, False)),
    ("+ D_age, LS", "bapgan_caae_age_ls", (True, True, False)),
    ("+ SA", "bapgan_caae_sa", (False, False, True)),
    ("BAPGAN", "bapgan", (True, True, True)),
)
FLAGS = ("D_age", "LS", "SA")
DATASETS = ("femur", "phalange")
PAPER_FID = {   # the paper's Table 1, for side-by-side reading
    ("femur", "CAAE"): 125.82, ("femur", "+ D_age, LS"): 121.12, ("femur", "+ SA"): 148.13,
    ("femur", "BAPGAN"): 102.53, ("phalange", "CAAE"): 94.98, ("phalange", "+ D_age, LS"): 76.25,
    ("phalange", "+ SA"): 79.64, ("phalange", "BAPGAN"): 43.73,
}


def test_fid(run: Run) -> tuple[str, float] | None:
    """(metric name, value) of the last ``test/fid_*`` value in a test run's metrics.csv, or None."""
    if not (run.path / "metrics.csv").is_file():
        return None
    table = run.metrics()
    for col in (c for c in table.columns if c.startswith("test/fid_")):
        values = table[col].dropna()
        if len(values):
            return col.removeprefix("test/"), float(values.iloc[-1])
    return None


def pick_run(runs_dir: str | Path, experiment: str, run: str | None = None, verbose: bool = False) -> Run | None:
    """The named fit or test run of ``experiment``, else its newest fit run (None when it has none)."""
    if run is None:
        if not find_runs(runs_dir, experiment, "fit"):
            return None
        return resolve_run(runs_dir, experiment, None, "fit", verbose=verbose)
    stage = "test" if Path(run).name.startswith("test-") else "fit"
    found = resolve_run(runs_dir, experiment, run, stage, verbose=verbose)
    if found.stage not in ("fit", "test"):
        raise RunError(f"{found.label} is a {found.stage} run: name a fit run or a test run")
    return found


def run_fid(run: Run) -> tuple[str, float, str, str] | None:
    """(metric name, value, scope, source file) of a fit run (or of a test run), or None."""
    if run.stage == "test":
        found = test_fid(run)
        return (*found, "test split", str(run.path / "metrics.csv")) if found else None
    summary = run.path / "bapgan_eval" / "fid.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text())
            return data["metric"], float(data["value"]), data.get("scope", "all splits"), str(summary)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise RunError(f"{summary} is not a bapgan_eval fid result: delete it and run "
                           f"`python -m boneage.analysis.bapgan_eval fid --experiment {run.experiment} "
                           f"--run {run.id}` again") from None
    for test in reversed(run.evaluations("test")):
        found = test_fid(test)
        if found:
            return (*found, "test split", str(test.path / "metrics.csv"))
    return None


def _defaults(cls: type) -> dict:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def run_flags(run: Run) -> tuple[bool, bool, bool] | None:
    """(D_age, LS, SA) of a run's saved hyper-parameters (config.yaml); None without a config."""
    from boneage.models.bapgan import BAPGAN
    from boneage.systems.bapgan import BAPGANSystem

    try:
        model = run.config().get("model") or {}
    except RunError:
        return None
    system = {**_defaults(BAPGANSystem), **(model.get("init_args") or {})}
    network = system.get("network") if isinstance(system.get("network"), dict) else {}
    net = {**_defaults(BAPGAN), **(network.get("init_args") or {})}
    return bool(net["age_discriminator"]), float(system["label_smoothing"]) > 0, bool(net["self_attention"])


def run_age(run: Run) -> tuple[float, float, str] | None:
    """(age accuracy of generated images, the age model's accuracy on real images, source) of a fit run."""
    path = run.path / "bapgan_eval" / "age.json"
    if run.stage != "fit" or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return float(data["accuracy"]), float(data["real_accuracy"]), str(path)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise RunError(f"{path} is not a bapgan_eval age result: delete it and run `python -m boneage.analysis."
                       f"bapgan_eval age --experiment {run.experiment} --run {run.id}` again") from None


def table1(runs_dir: str | Path = RUNS_DIR, runs: Mapping[str, str] | None = None,
           verbose: bool = False) -> pd.DataFrame:
    """One row per (data set, ablation row); FID NaN where the experiment has no run or no FID yet.

    ``runs`` maps an experiment to the run id to read (default: its newest fit run).
    """
    runs = dict(runs or {})
    known = {f"{method}_{dataset}" for dataset in DATASETS for _, method, *_ in ROWS}
    unknown = sorted(set(runs) - known)
    if unknown:
        raise RunError(f"--run names {', '.join(unknown)}, not a Table 1 experiment ({', '.join(sorted(known))})")
    rows = []
    for dataset in DATASETS:
        for label, method, paper_flags in ROWS:
            exp = f"{method}_{dataset}"
            run = pick_run(runs_dir, exp, runs.get(exp), verbose)
            found = run_fid(run) if run else None
            flags = run_flags(run) if run else None
            age = run_age(run) if run else None
            rows.append({"dataset": dataset, "model": label,
                         **{f: (flags[i] if flags else None) for i, f in enumerate(FLAGS)},
                         "experiment": exp, "run": run.id if run else "",
                         "metric": found[0] if found else None,
                         "FID": found[1] if found else float("nan"), "scope": found[2] if found else "",
                         "paper FID": PAPER_FID[(dataset, label)],
                         "age acc %": 100 * age[0] if age else float("nan"),
                         "age acc real %": 100 * age[1] if age else float("nan"),
                         "note": ("" if flags is None or flags == paper_flags else
                                  "flags differ from the paper's row: " + ", ".join(
                                      f"{f} {'on' if v else 'off'}" for f, v in zip(FLAGS, flags))),
                         "source": found[3] if found else ""})
    table = pd.DataFrame(rows)
    metrics = set(table["metric"].dropna())
    if len(metrics) > 1:
        detail = table[["experiment", "run", "metric"]].dropna().to_string(index=False)
        raise RunError(f"runs used different FID feature extractors {sorted(metrics)}; re-evaluate them "
                       f"with one extractor (model.fid_feature_extractor) before tabulating:\n{detail}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boneage.analysis.bapgan_table1", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", "--runs_dir", "--logs", dest="runs_dir", type=Path, default=Path(RUNS_DIR),
                        help="root of the run directories")
    parser.add_argument("--run", action="append", default=[], metavar="EXP=ID",
                        help="read this fit (or test) run of EXP instead of its newest fit run (also EXP/ID or "
                             "a run directory); repeatable")
    parser.add_argument("--out", type=Path, default=None, help="CSV to write")
    args = parser.parse_args(argv)
    named = {}
    for item in args.run:
        if "=" in item:
            exp, _, rid = item.partition("=")
        elif (Path(item) / RUN_FILE).is_file():
            exp, rid = Run(Path(item)).experiment, item
        else:
            exp, _, rid = item.partition("/")
        if not exp or not rid:
            parser.error(f"--run expects EXP=ID, EXP/ID or a run directory, got {item!r}")
        named[exp] = rid
    try:
        table = table1(args.runs_dir, named, verbose=True)
    except RunError as err:
        print(f"bapgan_table1: {err}", file=sys.stderr)
        return 2
    metric = next(iter(table["metric"].dropna()), "no finished runs")
    shown = table.drop(columns=["source", "metric", "note"]).round(2)
    marks = {True: "yes", False: "no", None: "?"}
    for flag in FLAGS:   # check marks as the paper prints them; "?" where the run left no config
        shown[flag] = [marks[v] for v in table[flag]]
    print(f"Table 1 (FID, {metric}; paper values use Inception-v3; D_age/LS/SA from each run's config; "
          f"age acc: generated images in their target age group, bapgan_eval age):\n{shown.to_string(index=False)}")
    for _, row in table[table["note"] != ""].iterrows():
        print(f"note: {row['experiment']}/{row['run']} is listed as '{row['model']}' but its {row['note']}")
    untrained = table.loc[table["run"] == "", "experiment"].tolist()
    if untrained:
        print(f"no fit run in {args.runs_dir} (train them first): {', '.join(untrained)}")
    unevaluated = table.loc[(table["run"] != "") & table["FID"].isna(), "experiment"].tolist()
    if unevaluated:
        print("no FID yet (make bapgan-eval, or boneage test --ckpt_path last): " + ", ".join(unevaluated))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
