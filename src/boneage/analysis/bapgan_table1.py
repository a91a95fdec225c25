"""Table 1 of the BAPGAN paper (FID of the four ablation rows per data set) from finished runs.

For every experiment ``bapgan_<row>_<dataset>`` it takes a fit run (the newest, or the one named
with ``--run EXP=ID``) and reads, in this order:

1. the whole-data-set FID written by ``python -m boneage.analysis.bapgan_eval fid`` into the
   fit run (``<run>/bapgan_eval/fid.json``, the paper's protocol);
2. else the ``test/fid_*`` value of the run's newest test evaluation holding one
   (``boneage test --run ID --ckpt_path best``: test split only; the ``scope`` column says which).

``--run EXP=ID`` may also name a test run (``test-...``): its FID is used as it is. Predict runs
are never read. FIDs made with different feature extractors are never put in one column: a
table mixing them is refused.

    python -m boneage.analysis.bapgan_table1 [--runs-dir lightning_logs] [--run EXP=ID ...] [--out table1.csv]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from boneage.runs import RUN_FILE, RUNS_DIR, Run, RunError, find_runs, resolve_run

# (row label, experiment method name, D_age, LS, SA), in the paper's order
ROWS = (
    ("CAAE", "bapgan_caae", False, False, False),
    ("+ D_age, LS", "bapgan_caae_age_ls", True, True, False),
    ("+ SA", "bapgan_caae_sa", False, False, True),
    ("BAPGAN", "bapgan", True, True, True),
)
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
        for label, method, d_age, ls, sa in ROWS:
            exp = f"{method}_{dataset}"
            run = pick_run(runs_dir, exp, runs.get(exp), verbose)
            found = run_fid(run) if run else None
            rows.append({"dataset": dataset, "model": label, "D_age": d_age, "LS": ls, "SA": sa,
                         "experiment": exp, "run": run.id if run else "",
                         "metric": found[0] if found else None,
                         "FID": found[1] if found else float("nan"), "scope": found[2] if found else "",
                         "paper FID": PAPER_FID[(dataset, label)], "source": found[3] if found else ""})
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
    shown = table.drop(columns=["source", "metric"]).round(2)
    print(f"Table 1 (FID, {metric}; paper values use Inception-v3):\n{shown.to_string(index=False)}")
    untrained = table.loc[table["run"] == "", "experiment"].tolist()
    if untrained:
        print(f"no fit run in {args.runs_dir} (train them first): {', '.join(untrained)}")
    unevaluated = table.loc[(table["run"] != "") & table["FID"].isna(), "experiment"].tolist()
    if unevaluated:
        print("no FID yet (make bapgan-eval, or boneage test --ckpt_path best): " + ", ".join(unevaluated))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
