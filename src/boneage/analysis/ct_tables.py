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
- Table 4: MAE by sex with the counts (test images, and all images of the label CSV).

The label CSV is ``--labels`` or, by default, the ``data.init_args.csv_path`` in the fit run's
own config.yaml (so a model trained on another CSV is tabulated with that CSV). Where the data is
a phantom, the floor ``sigma * sqrt(2/pi)`` from ``phantom.json`` beside it is added as a column
``MAE / floor``.

Command line (``make ct-tables`` calls it)::

    python -m boneage.analysis.ct_tables --runs-dir lightning_logs --out reports/ct \
        --model "Fine-tuned VGGNet (A)=ct_vgg16" --model "Ours=ct_hvgg/20261129-213215-3fa3" ... \
        --late A,B,C ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.runs import RUNS_DIR, Run, RunError, resolve_test_run

__all__ = [
    "PRED_COLUMNS",
    "TARGET_COLUMNS",
    "Source",
    "labels_of",
    "late_fusion",
    "mae_table",
    "read_predictions",
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


def mae_table(models: Mapping[str, str | Path | pd.DataFrame],
              floor: float | Mapping[str, float | None] | None = None) -> pd.DataFrame:
    """Tables 1/2: one row per model (name -> predictions.csv or a read table)."""
    rows = []
    for name, src in models.items():
        df = src if isinstance(src, pd.DataFrame) else read_predictions(src)
        rows.append({"Model": name, "MAE (years)": round(_mae(df), 3), "n test": len(df)})
    return _with_floor(pd.DataFrame(rows), floor, list(models))


def region_table(upper: str | Path | pd.DataFrame, lower: str | Path | pd.DataFrame,
                 floor: float | Mapping[str, float | None] | None = None) -> pd.DataFrame:
    """Table 3: MAE of the models trained on the upper and on the lower half of the body.

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
    """One table row's predictions and where they came from."""

    name: str
    predictions: pd.DataFrame
    origin: str                # the test run (or file) read
    labels: Path | None        # label CSV: Table 4 counts, phantom floor

    @property
    def floor(self) -> float | None:
        return _floor_of(self.labels)


def resolve_source(runs_dir: str | Path, name: str, spec: str, labels: str | Path | None = None,
                   verbose: bool = True) -> Source:
    """A :class:`Source` from a predictions.csv path or a run spec (see :func:`resolve_test_run`)."""
    if spec.endswith(".csv"):
        return Source(name, read_predictions(spec), spec, Path(labels) if labels else None)
    fit, test = resolve_test_run(runs_dir, spec)
    frame = standard_columns(test.predictions(need_truth=True), test.path / "predictions.csv")
    own = labels_of(fit) or labels_of(test)
    if verbose:
        print(f"{name}: {f'fit run {fit.label}, ' if fit else ''}test run {test.label}", flush=True)
    return Source(name, frame, test.label, Path(labels) if labels else own)


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
                    help="label CSV for all rows (Table 4 counts, phantom floor); default: the csv_path "
                         "in each run's own config.yaml")
    args = ap.parse_args(argv)
    try:
        return _tables(args)
    except (RunError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"ct_tables: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2


def _tables(args: argparse.Namespace) -> int:
    def source(name: str, spec: str) -> Source:
        return resolve_source(args.runs_dir, name, spec, args.labels)

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
        fused = late_fusion([models[n].predictions for n in members])
        first = models[members[0]]
        names = list(models)
        anchor = max([names.index(n) for n in members] + [i for i, n in enumerate(names) if "early" in n.lower()])
        names.insert(anchor + 1, args.late_name)  # paper order: members, early fusion, late fusion, ours
        late = Source(args.late_name, fused, "+".join(models[n].origin for n in members), first.labels)
        models = {n: (late if n == args.late_name else models[n]) for n in names}

    def table(rows: Mapping[str, Source]) -> pd.DataFrame:
        return mae_table({n: s.predictions for n, s in rows.items()}, {n: s.floor for n, s in rows.items()})

    if args.table1:
        a, b = args.table1.split(",")
        missing = [n for n in (a, b) if n not in models]
        if missing:
            raise ValueError(f"--table1 names {missing}, not among the --model names {list(models)}")
        tables["table1"] = table({a: models[a], b: models[b]})
    if models:
        tables["table2"] = table(models)
    if args.upper and args.lower:
        up, low = source("Upper body", args.upper), source("Lower body", args.lower)
        tables["table3"] = region_table(up.predictions, low.predictions,
                                        {"Upper body": up.floor, "Lower body": low.floor})
    if args.sex:
        by_sex = source("By sex", args.sex)
        tables["table4"] = sex_table(by_sex.predictions, by_sex.labels, floor=by_sex.floor)
    if not tables:
        raise ValueError("nothing to tabulate: give --model, --upper/--lower or --sex")
    out.mkdir(parents=True, exist_ok=True)
    md = []
    for name, frame in tables.items():
        frame.to_csv(out / f"{name}.csv", index=False)
        md += [f"### {name}", "", to_markdown(frame), ""]
    floors = sorted({f for f in (s.floor for s in models.values()) if f})
    if floors:
        md.append(f"Phantom label-noise floor: {', '.join(f'{f:.3f}' for f in floors)} years (sigma * sqrt(2/pi)).")
    (out / "tables.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {', '.join(tables)} to {out}/ (csv + tables.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
