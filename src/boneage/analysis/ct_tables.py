"""Tables 1-4 of the whole-body CT paper (Nguyen & Kim, paper 002) from finished runs.

Each ``boneage test`` run leaves ``predictions.csv`` (one row per test image with the true and
the predicted age). A model is named by a run (:mod:`boneage.runs`):

- ``EXP``: the newest fit run of experiment EXP, and that run's newest *test* evaluation
  (predict runs are never taken: they have no true ages);
- ``EXP/<run id>``: that fit run (id or unique prefix) and its newest test evaluation, or, for a
  ``test-...`` id, that test run itself;
- a run directory (fit or test run), or a ``predictions.csv`` file.

From those:

- Tables 1/2: MAE (years) of each model, plus late fusion = the mean of the members'
  predictions per test image (the members must have predicted the same test images);
- Table 3: MAE of the model trained on the upper vs the lower half of the body;
- Table 4: MAE by sex with the counts (test images, and all images of the label CSV);
- Fig. 4: the age and sex distribution of the data set (``fig4_data_distribution.png``), read
  through the fit run's own data module (:func:`boneage.runs.build_data`).

Repeats (``--repeats``, written by ``make ct-repeat``): "each model was trained several times and
the best performances were picked" (Sec. 4.3). A model named by its experiment alone then stands
for every fit run of that experiment the repeats file lists (one per seed), and its row gives the
paper's figure, the best test MAE of the N runs (``MAE (years)``), beside the mean and sample
standard deviation over the N runs (``MAE mean (years)``, ``MAE sd (years)``) and N (``runs``): the
best of N picks on the test set and flatters; the mean is the figure to expect from one training.
Late fusion averages, seed by seed, members trained with the same seed. Table 4 and Fig. 4 use the
best run. ``runs.csv`` lists every fit and test run read, with its seed and MAE.

The label CSV is ``--labels`` or, by default, the ``data.init_args.csv_path`` in the fit run's
own config.yaml (so a model trained on another CSV is tabulated with that CSV). Where the data is
a phantom, the floor ``sigma * sqrt(2/pi)`` from ``phantom.json`` beside it is added as a column
``MAE / floor``.

Command line (``make ct-tables`` calls it)::

    python -m boneage.analysis.ct_tables --runs-dir lightning_logs --out reports/ct \
        --model "Fine-tuned VGGNet (A)=ct_vgg16" --model "Ours=ct_hvgg/20261129-213215-3fa3" ... \
        --late A,B,C ... [--repeats reports/ct/repeats/<tag>.csv]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.runs import RUNS_DIR, Run, RunError, resolve_run, resolve_test_run

__all__ = [
    "PRED_COLUMNS",
    "TARGET_COLUMNS",
    "Source",
    "labels_of",
    "late_fusion",
    "mae_table",
    "read_predictions",
    "read_repeats",
    "region_table",
    "resolve_source",
    "resolve_test_run",
    "sex_table",
    "standard_columns",
    "to_markdown",
]

# Column names accepted in predictions.csv, first match wins.
PRED_COLUMNS = ("pred_years", "pred_months", "pred_age", "prediction", "pred", "predicted_age", "age_pred", "y_pred")
TARGET_COLUMNS = ("true_years", "true_months", "age", "target", "true_age", "age_years", "y_true")
SEX_COLUMNS = ("sex", "male")
KEY_COLUMNS = ("index", "path", "image")


def _pick(df: pd.DataFrame, given: str | None, candidates: Sequence[str], what: str,
          path: str | Path) -> str | None:
    if given is not None:
        if given not in df.columns:
            raise KeyError(f"{path}: no column {given!r} ({what}); columns are {list(df.columns)}")
        return given
    for c in candidates:
        if c in df.columns:
            return c
    return None


def _sex_letters(values: pd.Series, path: str | Path) -> pd.Series:
    """'F'/'M' from 'F'/'M' strings or 0/1 (1 = male) numbers."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        out = pd.Series(np.where(values.astype(float) >= 0.5, "M", "F"), index=values.index)
    else:
        out = values.astype(str).str.strip().str.upper().str[0]
    bad = ~out.isin(["F", "M"])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}: row {row}: sex {values.iloc[row]!r} is neither F/M nor 0/1")
    return out


def read_predictions(path: str | Path, pred_col: str | None = None, target_col: str | None = None,
                     sex_col: str | None = None) -> pd.DataFrame:
    """A predictions.csv as columns ``key``, ``age``, ``pred`` (and ``sex`` 'F'/'M' when present)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: evaluate the fit run first "
                                "(make eval EXP=<exp> [ARGS='--run <id>'])")
    return standard_columns(pd.read_csv(path), path, pred_col, target_col, sex_col)


def standard_columns(df: pd.DataFrame, path: str | Path, pred_col: str | None = None,
                     target_col: str | None = None, sex_col: str | None = None) -> pd.DataFrame:
    """:func:`read_predictions` for a table already read (``path`` names it in messages)."""
    pc = _pick(df, pred_col, PRED_COLUMNS, "predicted age", path)
    tc = _pick(df, target_col, TARGET_COLUMNS, "true age", path)
    if pc is None or tc is None:
        raise KeyError(f"{path}: needs a predicted-age column (one of {list(PRED_COLUMNS)}) and a true-age "
                       f"column (one of {list(TARGET_COLUMNS)}); columns are {list(df.columns)}")
    out = pd.DataFrame({"age": df[tc].astype(float), "pred": df[pc].astype(float)})
    for name in ("age", "pred"):
        bad = ~np.isfinite(out[name].to_numpy())
        if bad.any():
            raise ValueError(f"{path}: row {int(np.flatnonzero(bad)[0])}: {name} is not a finite number")
    key = next((c for c in KEY_COLUMNS if c in df.columns), None)
    out["key"] = df[key].astype(str) if key else df.index.astype(str)
    sc = _pick(df, sex_col, SEX_COLUMNS, "sex", path)
    if sc is not None:
        out["sex"] = _sex_letters(df[sc], path)
    return out


def _mae(df: pd.DataFrame) -> float:
    return float((df["pred"] - df["age"]).abs().mean())


def late_fusion(paths: Sequence[str | Path | pd.DataFrame], **read_kwargs) -> pd.DataFrame:
    """Mean of the members' predictions per test image (Table 2, late fusion).

    ``paths``: the members' predictions.csv files (or tables from :func:`read_predictions`).
    """
    if not paths:
        raise ValueError("late fusion needs at least one member's predictions.csv")
    members = [(p if isinstance(p, pd.DataFrame) else read_predictions(p, **read_kwargs)).set_index("key")
               for p in paths]
    paths = [p if not isinstance(p, pd.DataFrame) else f"member {i}" for i, p in enumerate(paths)]
    first = members[0]
    for p, m in zip(paths[1:], members[1:]):
        if set(m.index) != set(first.index):
            raise ValueError(f"{p} and {paths[0]} predict different test images: late fusion needs members "
                             "evaluated on the same split (same data, seed and split fractions)")
        if not np.allclose(m.loc[first.index, "age"].to_numpy(), first["age"].to_numpy(), atol=1e-4):
            raise ValueError(f"{p} and {paths[0]} disagree on the true ages of the same test images")
    fused = first.copy()
    fused["pred"] = np.mean([m.loc[first.index, "pred"].to_numpy() for m in members], axis=0)
    return fused.reset_index()


def _with_floor(table: pd.DataFrame, floor: float | Mapping[str, float | None] | None,
                names: Sequence[str]) -> pd.DataFrame:
    """``MAE / floor`` per row; ``floor`` is one value or one per row name (runs on other data)."""
    floors = [floor.get(n) if isinstance(floor, Mapping) else floor for n in names]
    if any(floors):
        table["MAE / floor"] = [round(m / f, 2) if f else float("nan")
                                for m, f in zip(table["MAE (years)"], floors)]
    return table


def mae_table(models: Mapping[str, str | Path | pd.DataFrame | Sequence[str | Path | pd.DataFrame]],
              floor: float | Mapping[str, float | None] | None = None) -> pd.DataFrame:
    """Tables 1/2: one row per model (name -> predictions.csv or a read table, or a list of them: the
    repeated runs of one model). With repeats, ``MAE (years)`` is the best run's (the paper's
    protocol), beside the mean and sample sd over the runs and their number."""
    rows = []
    for name, src in models.items():
        frames = [f if isinstance(f, pd.DataFrame) else read_predictions(f)
                  for f in (src if isinstance(src, (list, tuple)) else [src])]
        maes = np.array([_mae(f) for f in frames])
        best = int(np.argmin(maes))
        rows.append({"Model": name, "MAE (years)": round(float(maes[best]), 3), "n test": len(frames[best]),
                     "MAE mean (years)": round(float(maes.mean()), 3),
                     "MAE sd (years)": round(float(maes.std(ddof=1)), 3) if len(maes) > 1 else float("nan"),
                     "runs": len(maes)})
    table = pd.DataFrame(rows)
    if (table["runs"] == 1).all():  # single runs: the paper's columns only
        table = table.drop(columns=["MAE mean (years)", "MAE sd (years)", "runs"])
    return _with_floor(table, floor, list(models))


def region_table(upper, lower, floor: float | Mapping[str, float | None] | None = None) -> pd.DataFrame:
    """Table 3: MAE of the models trained on the upper and on the lower half of the body (each a
    predictions.csv, a read table, or a list of them for repeated runs).

    ``floor``: one value, or ``{"Upper body": ..., "Lower body": ...}``."""
    table = mae_table({"Upper body": upper, "Lower body": lower}, floor)
    return table.rename(columns={"Model": "Data type"})


def sex_table(predictions: str | Path | pd.DataFrame, labels_csv: str | Path | None = None,
              sex_col: str = "sex", floor: float | None = None) -> pd.DataFrame:
    """Table 4: MAE by sex, with the test counts and (given the label CSV) the counts of all data."""
    df = predictions if isinstance(predictions, pd.DataFrame) else read_predictions(predictions)
    if "sex" not in df.columns:
        what = "the predictions" if isinstance(predictions, pd.DataFrame) else predictions
        raise KeyError(f"{what} have no sex column (one of {list(SEX_COLUMNS)})")
    rows = []
    all_counts = None
    if labels_csv is not None:
        if not Path(labels_csv).is_file():
            raise FileNotFoundError(f"label CSV {labels_csv} not found: give the data's CSV with --labels")
        labels = pd.read_csv(labels_csv)
        if sex_col not in labels.columns:
            raise KeyError(f"{labels_csv}: no column {sex_col!r}; columns are {list(labels.columns)}")
        all_counts = _sex_letters(labels[sex_col], Path(labels_csv)).value_counts()
    for sex, name in (("F", "Female"), ("M", "Male")):
        part = df[df["sex"] == sex]
        row = {"Gender": name}
        if all_counts is not None:
            row["Number of data"] = int(all_counts.get(sex, 0))
        row["n test"] = len(part)
        row["MAE (years)"] = round(_mae(part), 3) if len(part) else float("nan")
        rows.append(row)
    return _with_floor(pd.DataFrame(rows), floor, ["Female", "Male"])


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (written by hand: pandas' to_markdown needs `tabulate`)."""
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ runs
def labels_of(run: Run | None) -> Path | None:
    """The label CSV (``data.init_args.csv_path``) of a run's own config.yaml, when it names one."""
    if run is None or not (run.path / "config.yaml").is_file():
        return None
    csv = ((run.config().get("data") or {}).get("init_args") or {}).get("csv_path")
    return Path(csv) if csv else None


@dataclass
class Source:
    """One table row's predictions (one per repeated run, keyed by seed) and where they came from."""

    name: str
    runs: dict[str | None, pd.DataFrame]   # seed (None: a single run) -> predictions
    origins: dict[str | None, str]         # seed -> the test run (or file) read
    labels: Path | None                    # label CSV: Table 4 counts, phantom floor
    fits: dict[str | None, Run | None] = field(default_factory=dict)  # seed -> the fit run

    @property
    def best(self) -> str | None:
        """The seed of the run with the lowest test MAE (the paper's pick)."""
        return min(self.runs, key=lambda seed: _mae(self.runs[seed]))

    @property
    def predictions(self) -> pd.DataFrame:
        return self.runs[self.best]

    @property
    def origin(self) -> str:
        return self.origins[self.best]

    @property
    def frames(self) -> list[pd.DataFrame]:
        return list(self.runs.values())

    @property
    def floor(self) -> float | None:
        return _floor_of(self.labels)


def read_repeats(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """A repeats file (``experiment,seed,run`` rows, as ``make ct-repeat`` writes it): experiment ->
    [(seed, fit run id), ...] in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"repeats file {path} not found: make ct-repeat writes it")
    frame = pd.read_csv(path, dtype=str)
    missing = [c for c in ("experiment", "seed", "run") if c not in frame.columns]
    if missing:
        raise KeyError(f"{path}: no column {missing[0]!r}; expected experiment,seed,run")
    out: dict[str, list[tuple[str, str]]] = {}
    for row in frame.itertuples(index=False):
        runs = out.setdefault(row.experiment, [])
        if any(seed == row.seed for seed, _ in runs):
            raise ValueError(f"{path}: experiment {row.experiment} lists seed {row.seed} twice")
        runs.append((row.seed, row.run))
    return out


def resolve_source(runs_dir: str | Path, name: str, spec: str, labels: str | Path | None = None,
                   verbose: bool = True, repeats: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> Source:
    """A :class:`Source` from a predictions.csv path or a run spec (see :func:`resolve_test_run`);
    an experiment named alone that ``repeats`` lists stands for each of its listed fit runs."""
    if spec.endswith(".csv"):
        return Source(name, {None: read_predictions(spec)}, {None: spec}, Path(labels) if labels else None)
    listed = (repeats or {}).get(spec) if "/" not in spec and not Path(spec).is_dir() else None
    specs = {seed: f"{spec}/{run}" for seed, run in listed} if listed else {None: spec}
    runs, origins, fits, own = {}, {}, {}, None
    for seed, one in specs.items():
        fit, test = resolve_test_run(runs_dir, one)
        runs[seed] = standard_columns(test.predictions(need_truth=True), test.path / "predictions.csv")
        origins[seed], fits[seed] = test.label, fit
        own = own or labels_of(fit) or labels_of(test)
        if verbose:
            print(f"{name}{f' (seed {seed})' if seed is not None else ''}: "
                  f"{f'fit run {fit.label}, ' if fit else ''}test run {test.label}", flush=True)
    return Source(name, runs, origins, Path(labels) if labels else own, fits)


def _fuse(name: str, members: Sequence[Source]) -> Source:
    """Late fusion of ``members``, seed by seed where they were repeated (a single-run member joins
    every seed)."""
    seeded = [set(m.runs) for m in members if None not in m.runs]
    seeds = sorted(set.intersection(*seeded)) if seeded else [None]
    if not seeds:
        raise ValueError(f"late fusion: the repeated members {[m.name for m in members]} share no seed; repeat them "
                         "with the same seeds (make ct-repeat SEEDS=...)")

    def run(member: Source, seed: str | None) -> str | None:
        return None if None in member.runs else seed

    runs = {s: late_fusion([m.runs[run(m, s)] for m in members]) for s in seeds}
    origins = {s: "+".join(m.origins[run(m, s)] for m in members) for s in seeds}
    return Source(name, runs, origins, members[0].labels)


def _floor_of(labels_csv: str | Path | None) -> float | None:
    if labels_csv is None:
        return None
    from boneage.phantoms.common import read_metadata

    meta = read_metadata(Path(labels_csv).parent)
    return float(meta["noise_floor_mae"]) if meta else None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", "--logs", dest="runs_dir", default=RUNS_DIR, help="root of the run directories")
    ap.add_argument("--out", default="reports/ct", help="folder for the tables (csv + markdown)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=RUN",
                    help="a Table 2 row; RUN is EXP (newest fit run), EXP/<run id>, a run directory or a "
                         "predictions.csv; its name's '(X)' letter can be used in --late")
    ap.add_argument("--late", default=None, metavar="A,B,C", help="late-fusion members by letter or name")
    ap.add_argument("--late-name", default="Late fusion of (A), (B), and (C)")
    ap.add_argument("--table1", default=None, metavar="BASE,OURS", help="the two names for Table 1")
    ap.add_argument("--upper", default=None, metavar="RUN", help="Table 3: upper-body run")
    ap.add_argument("--lower", default=None, metavar="RUN", help="Table 3: lower-body run")
    ap.add_argument("--sex", default=None, metavar="RUN", help="Table 4: the run to split by sex")
    ap.add_argument("--labels", default=None,
                    help="label CSV for all rows (Table 4 counts, Fig. 4, phantom floor); default: the csv_path "
                         "in each run's own config.yaml")
    ap.add_argument("--repeats", default=None, metavar="CSV",
                    help="experiment,seed,run rows (make ct-repeat): an experiment named alone stands for each "
                         "of its listed fit runs; tables give the best of them and mean +- sd")
    ap.add_argument("--fig4", default=None, metavar="RUN",
                    help="Fig. 4 (age and sex distribution) from this run's data (EXP, EXP/<run id> or a run "
                         "directory); default: the --sex run's fit run (the best one with --repeats)")
    args = ap.parse_args(argv)
    try:
        return _tables(args)
    except (RunError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"ct_tables: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2


def _tables(args: argparse.Namespace) -> int:
    repeats = read_repeats(args.repeats) if args.repeats else None

    def source(name: str, spec: str) -> Source:
        return resolve_source(args.runs_dir, name, spec, args.labels, repeats=repeats)

    out = Path(args.out)
    tables: dict[str, pd.DataFrame] = {}
    models: dict[str, Source] = {}
    for spec in args.model:
        if "=" not in spec:
            raise ValueError(f"--model {spec!r}: expected NAME=EXP, NAME=EXP/<run id> or NAME=path/predictions.csv")
        name, src = spec.split("=", 1)
        models[name] = source(name, src)
    if args.late:
        members = []
        for m in args.late.split(","):
            # a member is named exactly, or by the one "(X)" its name ends with ("Fine-tuned VGGNet (A)")
            hits = [n for n in models if n == m or (n.endswith(f"({m})") and n.count("(") == 1)]
            if len(hits) != 1:
                raise ValueError(f"--late member {m!r} matches {hits or 'no'} --model names {list(models)}")
            members.append(hits[0])
        late = _fuse(args.late_name, [models[n] for n in members])
        names = list(models)
        anchor = max([names.index(n) for n in members] + [i for i, n in enumerate(names) if "early" in n.lower()])
        names.insert(anchor + 1, args.late_name)  # paper order: members, early fusion, late fusion, ours
        models = {n: (late if n == args.late_name else models[n]) for n in names}

    def table(rows: Mapping[str, Source]) -> pd.DataFrame:
        return mae_table({n: s.frames for n, s in rows.items()}, {n: s.floor for n, s in rows.items()})

    if args.table1:
        a, b = args.table1.split(",")
        missing = [n for n in (a, b) if n not in models]
        if missing:
            raise ValueError(f"--table1 names {missing}, not among the --model names {list(models)}")
        tables["table1"] = table({a: models[a], b: models[b]})
    if models:
        tables["table2"] = table(models)
    regions: dict[str, Source] = {}
    if args.upper and args.lower:
        regions = {"Upper body": source("Upper body", args.upper), "Lower body": source("Lower body", args.lower)}
        tables["table3"] = region_table(regions["Upper body"].frames, regions["Lower body"].frames,
                                        {n: s.floor for n, s in regions.items()})
    by_sex = source("By sex", args.sex) if args.sex else None
    if by_sex is not None:  # the best run, as the paper's picked model
        tables["table4"] = sex_table(by_sex.predictions, by_sex.labels, floor=by_sex.floor)
    fig4 = _fig4_run(args.runs_dir, args.fig4) if args.fig4 else by_sex.fits.get(by_sex.best) if by_sex else None
    if by_sex is not None and fig4 is None:
        print(f"Fig. 4: {by_sex.origin} names no fit run (its data): give --fig4 EXP for the figure", flush=True)
    if not tables and fig4 is None:
        raise ValueError("nothing to tabulate: give --model, --upper/--lower, --sex or --fig4")
    out.mkdir(parents=True, exist_ok=True)
    md = []
    for name, frame in tables.items():
        frame.to_csv(out / f"{name}.csv", index=False)
        md += [f"### {name}", "", to_markdown(frame), ""]
    if any("runs" in t.columns for t in tables.values()):
        md.append("MAE (years): the best of the runs (the paper's protocol: 'each model was trained several times "
                  "and the best performances were picked'); mean and sample sd over the runs beside it.\n")
    floors = sorted({f for f in (s.floor for s in models.values()) if f})
    if floors:
        md.append(f"Phantom label-noise floor: {', '.join(f'{f:.3f}' for f in floors)} years (sigma * sqrt(2/pi)).\n")
    if fig4 is not None:
        md += _figure4(fig4, args.labels, out)
    _run_list({**models, **regions, **({"By sex": by_sex} if by_sex else {})}).to_csv(out / "runs.csv", index=False)
    (out / "tables.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    written = list(tables) + (["fig4_data_distribution.png"] if fig4 is not None else [])
    print(f"wrote {', '.join(written)} to {out}/ (csv + tables.md; runs.csv lists the runs read)")
    return 0


def _fig4_run(runs_dir: str | Path, spec: str) -> Run:
    """The run named by ``--fig4``: EXP (its newest fit run), EXP/<run id> or a run directory."""
    path = Path(spec)
    if path.is_dir() and (path / "run.json").is_file():
        return Run(path)
    experiment, _, run_id = spec.partition("/")
    stage = next((s for s in ("test", "validate", "predict") if run_id.startswith(f"{s}-")), "fit")
    return resolve_run(runs_dir, experiment, run_id or None, stage=stage)


def _figure4(fit: Run, labels: str | None, out: Path) -> list[str]:
    """Fig. 4 from the data module of a run (its own config.yaml), on ``labels`` when given."""
    from boneage.runs import build_data

    dm = build_data(fit, {"init_args": {"csv_path": str(labels)}} if labels else None)
    if not hasattr(dm, "distribution_figure"):
        raise ValueError(f"{fit.label}'s data module {type(dm).__name__} draws no Fig. 4: name a whole-body CT run")
    c = dm.distribution_figure(out / "fig4_data_distribution.png")
    shares = ", ".join(f"{r} y {c[r]:.1f}% (paper {c[f'paper_{r}']:.1f}%)" for r in ("0-39", "40-60", "61+"))
    return ["### fig4", "",
            f"Fig. 4 (fig4_data_distribution.png, data of {fit.label}): {c['n']} images, ages "
            f"{c['age_min']:.1f}-{c['age_max']:.1f} years; {shares}; female {c['female']}, male {c['male']} "
            f"({100 * c['female'] / max(c['n'], 1):.1f}% female).", ""]


def _run_list(sources: Mapping[str, Source]) -> pd.DataFrame:
    """Every run a table read: row name, seed, fit run, test run(s), test MAE."""
    rows = []
    for name, src in sources.items():
        for seed, frame in src.runs.items():
            fit = src.fits.get(seed)
            rows.append({"row": name, "seed": seed, "fit run": fit.label if fit else "",
                         "test run": src.origins[seed], "MAE (years)": round(_mae(frame), 3),
                         "picked": seed == src.best})
    return pd.DataFrame(rows, columns=["row", "seed", "fit run", "test run", "MAE (years)", "picked"])


if __name__ == "__main__":
    raise SystemExit(main())
