"""Table 1 of Do et al. (ROI localization, whole-body scintigraphy): MAE with and without sex.

Reads runs through :mod:`boneage.runs`: for each experiment the ``test/mae`` of the newest test
evaluation of its newest fit run, or of a run named with ``--run <experiment>/<run id>`` (a test
run, or a fit run: then its newest test run). Predict runs are never taken as results. An
experiment without a tested run shows as "-" and is listed with what to do.

``python -m boneage.analysis.roi_tables [--runs-dir lightning_logs] [--run EXP/ID ...] [--out table1.md] [--paper]``
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.phantoms.common import read_metadata
from boneage.runs import RUN_FILE, RUNS_DIR, Run, RunError, resolve_test_run


@dataclass(frozen=True)
class Method:
    """One row of Table 1: the experiment names of its two conditions and the paper's MAEs."""

    name: str
    with_sex: str
    without_sex: str
    paper_with_sex: float
    paper_without_sex: float


METHODS: tuple[Method, ...] = (
    Method("VGG19", "roi_vgg19_scinti", "roi_vgg19_nosex_scinti", 8.02, 8.31),
    Method("ResNet50", "roi_resnet50_scinti", "roi_resnet50_nosex_scinti", 7.42, 7.81),
    Method("Xception", "roi_xception_scinti", "roi_xception_nosex_scinti", 4.49, 5.24),
    Method("Multiple inputs VGG16", "roi_mivgg16_scinti", "roi_mivgg16_nosex_scinti", 3.40, 3.75),
    Method("Proposed (ROI + InceptionV3)", "roi_regressor_scinti", "roi_regressor_nosex_scinti", 3.35, 3.41),
)


def result_run(runs_dir: str | Path, experiment: str, name: str | None = None) -> Run:
    """The test run holding an experiment's result.

    ``name`` None: the newest test evaluation of the newest fit run. ``name`` a test run: that
    run; a fit run: its newest test evaluation. Predict runs are never results.
    """
    spec = experiment if name is None else name if Path(name).is_dir() else f"{experiment}/{name}"
    return resolve_test_run(runs_dir, spec)[1]


def run_mae(run: Run, metric: str = "test/mae") -> float:
    """The last ``metric`` logged by a test run."""
    table = run.metrics()
    if metric not in table.columns or not table[metric].notna().any():
        raise RunError(f"{run.label} logged no {metric} (the test did not finish): run it again")
    return float(table[metric].dropna().iloc[-1])


def results(runs_dir: str | Path = RUNS_DIR, methods: tuple[Method, ...] = METHODS,
            named: dict[str, str] | None = None) -> dict[str, tuple[float, Run] | RunError]:
    """Per experiment of Table 1: (test MAE, test run), or the RunError saying what is missing."""
    out: dict[str, tuple[float, Run] | RunError] = {}
    for exp in (e for m in methods for e in (m.with_sex, m.without_sex)):
        try:
            run = result_run(runs_dir, exp, (named or {}).get(exp))
            out[exp] = (run_mae(run), run)
        except RunError as err:
            out[exp] = err
    return out


def table1(runs_dir: str | Path = RUNS_DIR, methods: tuple[Method, ...] = METHODS, paper: bool = False,
           named: dict[str, str] | None = None, found: dict | None = None) -> pd.DataFrame:
    """Table 1 as a DataFrame: one row per method, MAE (years) with and without the sex input."""
    found = results(runs_dir, methods, named) if found is None else found

    def mae(exp: str) -> float | None:
        return found[exp][0] if isinstance(found[exp], tuple) else None

    rows = []
    for m in methods:
        row = {"Method": m.name, "MAE with sex": mae(m.with_sex), "MAE without sex": mae(m.without_sex)}
        if paper:
            row["paper with sex"] = m.paper_with_sex
            row["paper without sex"] = m.paper_without_sex
        rows.append(row)
    return pd.DataFrame(rows).astype({"MAE with sex": float, "MAE without sex": float})


def missing_runs(runs_dir: str | Path = RUNS_DIR, methods: tuple[Method, ...] = METHODS,
                 named: dict[str, str] | None = None, found: dict | None = None) -> list[str]:
    """Experiments of Table 1 without a test result."""
    found = results(runs_dir, methods, named) if found is None else found
    return [e for e, r in found.items() if isinstance(r, RunError)]


def named_runs(values: list[str], methods: tuple[Method, ...] = METHODS) -> dict[str, str]:
    """``--run`` values (``<experiment>/<run id>`` or a run directory) as {experiment: run}."""
    known = {e for m in methods for e in (m.with_sex, m.without_sex)}
    out = {}
    for value in values:
        path = Path(value)
        if (path / RUN_FILE).is_file():
            exp = Run(path).experiment
        elif "/" in value and not path.exists():
            exp, value = value.split("/", 1)
        else:
            raise RunError(f"--run {value}: give <experiment>/<run id> or a run directory")
        if exp not in known:
            raise RunError(f"--run {value}: {exp} is not an experiment of Table 1 ({', '.join(sorted(known))})")
        out[exp] = value
    return out


def to_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-markdown table (no tabulate dependency); missing values print as "-"."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if isinstance(v, (float, np.floating)):
                cells.append("-" if np.isnan(v) else f"{v:.{digits}f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _export_of(fit_config: dict) -> Path:
    """The ROI data set (labels.csv) a stage-2 run read, from its own config."""
    return Path(fit_config["data"]["init_args"]["csv_path"])


def demo_summary(runs_dir: str | Path, data: str | Path | None = None, stage2: str = "roi_regressor_scinti",
                 baseline: str = "roi_resnet50_scinti") -> dict:
    """The miniature's figures: ROI pipeline and whole-image test MAE on the same test images, the
    training-mean predictor, the noise floor, the localizer's hit rates and coverage, and the oracle
    (stage 2 on the true regions, runs in ``<runs_dir>/oracle``) when it was run."""
    import json

    runs_dir = Path(runs_dir)
    roi_run = result_run(runs_dir, stage2)
    base_run = result_run(runs_dir, baseline)
    fit = Run(roi_run.path.parent / roi_run.info["source_run"]) if roi_run.info.get("source_run") else roi_run
    csv = _export_of(fit.config())
    labels = pd.read_csv(csv)
    roi_pred = roi_run.predictions()
    source = dict(zip([str((csv.parent / p).resolve()) for p in labels["image"]], labels["source"]))
    roi_images = sorted(str(Path(source[str(Path(p).resolve())]).resolve()) for p in roi_pred["path"])
    base_images = sorted(str(Path(p).resolve()) for p in base_run.predictions()["path"])
    if roi_images != base_images:
        raise RunError(f"{roi_run.label} and {base_run.label} tested different images: give both the same CSV, "
                       "seed and split fractions")
    train_mean = float(labels.loc[labels["split"] == "train", "age_years"].mean())
    out = {"roi_mae": run_mae(roi_run), "whole_image_mae": run_mae(base_run),
           "mean_predictor_mae": float((roi_pred["true_years"] - train_mean).abs().mean()),
           "n_test": len(roi_pred), "roi_run": roi_run.label, "whole_image_run": base_run.label,
           "export": str(csv.parent.parent.name)}
    meta = read_metadata(data) if data else None
    if meta is not None:
        out["noise_floor"] = float(meta["noise_floor_mae"])
    loc = csv.parent / "localization.json"
    if loc.is_file():
        figures = json.loads(loc.read_text())
        out |= {k: figures[k] for k in ("train_hit_rate", "val_hit_rate", "test_hit_rate", "test_coverage")
                if k in figures}
    try:
        out["oracle_mae"] = run_mae(result_run(runs_dir / "oracle", stage2))
    except RunError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default=RUNS_DIR, help="root of the run directories")
    parser.add_argument("--run", action="append", default=[],
                        help="use this run for its experiment: <experiment>/<run id> or a run directory, a test "
                             "run or a fit run (then its newest test run); repeat for several")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--paper", action="store_true", help="add the paper's numbers as columns")
    parser.add_argument("--data", default=None,
                        help="data folder; a phantom.json there adds its noise floor under the table")
    parser.add_argument("--summary", default=None,
                        help="also write the miniature's summary JSON here (ROI vs whole image, mean predictor, "
                             "noise floor, localization, oracle)")
    args = parser.parse_args(argv)
    try:
        named = named_runs(args.run)
        for exp, name in named.items():  # a named run must exist: a typo is an error, not a "-"
            result_run(args.runs_dir, exp, name)
    except RunError as err:
        print(f"roi_tables: {err}", file=sys.stderr)
        return 2
    found = results(args.runs_dir, named=named)
    text = to_markdown(table1(args.runs_dir, paper=args.paper, found=found))
    meta = read_metadata(args.data) if args.data else None
    if meta is not None:
        units = meta["units"]
        text += (f"\nPhantom data ({meta['generator']}, n={meta['n']}): label noise sigma "
                 f"{meta['label_noise_sigma']} {units}, noise floor MAE {meta['noise_floor_mae']:.2f} "
                 f"{units} (no model can beat it on average).\n")
    print(text, end="")
    for exp, res in found.items():
        if isinstance(res, tuple):
            run = res[1]
            print(f"{exp}: {run.label} (fit run {run.info.get('source_run') or 'unknown'})")
    missing = missing_runs(found=found)
    if missing:
        print(f"not yet tested ({len(missing)}):")
        for exp in missing:
            print(f"  {found[exp]}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"Table 1 written to {args.out}")
    if args.summary:
        import json

        try:
            summary = demo_summary(args.runs_dir, args.data)
        except (RunError, KeyError) as err:
            print(f"roi_tables: no summary: {err}", file=sys.stderr)
            return 2
        Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\nsummary ({args.summary}):")
        for key, value in summary.items():
            print(f"  {key:20s} {value:.2f}" if isinstance(value, float) else f"  {key:20s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
