"""Tables 1-4 of the whole-body CT paper (Nguyen & Kim, paper 002) from finished runs.

Each finished ``boneage test`` run leaves ``predictions.csv`` (one row per test image with the
true and the predicted age). From those files:

- Tables 1/2: MAE (years) of each model, plus late fusion = the mean of the members'
  predictions per test image (the members must have predicted the same test images);
- Table 3: MAE of the model trained on the upper vs the lower half of the body;
- Table 4: MAE by sex with the counts (test images, and all images when the label CSV is given).

Where the data is a phantom, the floor ``sigma * sqrt(2/pi)`` from ``phantom.json`` is added as
a column ``MAE / floor``.

Command line (``make ct-tables`` calls it)::

    python -m boneage.analysis.ct_tables --logs lightning_logs --out reports/ct \
        --model "Fine-tuned VGGNet (A)=ct_vgg16_wholebody" ... --late A,B,C ...
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "PRED_COLUMNS",
    "TARGET_COLUMNS",
    "late_fusion",
    "latest_predictions",
    "mae_table",
    "read_predictions",
    "region_table",
    "sex_table",
    "to_markdown",
]

# Column names accepted in predictions.csv, first match wins.
PRED_COLUMNS = ("pred_years", "pred_months", "pred_age", "prediction", "pred", "predicted_age", "age_pred", "y_pred")
TARGET_COLUMNS = ("true_years", "true_months", "age", "target", "true_age", "age_years", "y_true")
SEX_COLUMNS = ("sex", "male")
KEY_COLUMNS = ("index", "path", "image")


def _pick(df: pd.DataFrame, given: str | None, candidates: Sequence[str], what: str,
          path: Path) -> str | None:
    if given is not None:
        if given not in df.columns:
            raise KeyError(f"{path}: no column {given!r} ({what}); columns are {list(df.columns)}")
        return given
    for c in candidates:
        if c in df.columns:
            return c
    return None


def _sex_letters(values: pd.Series, path: Path) -> pd.Series:
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
        raise FileNotFoundError(f"{path} not found: run `boneage test --config experiments/<exp>.yaml` "
                                "(make eval EXP=<exp>) for that experiment first")
    df = pd.read_csv(path)
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


def _with_floor(table: pd.DataFrame, floor: float | None) -> pd.DataFrame:
    if floor:
        table["MAE / floor"] = (table["MAE (years)"] / floor).round(2)
    return table


def mae_table(models: Mapping[str, str | Path | pd.DataFrame], floor: float | None = None) -> pd.DataFrame:
    """Tables 1/2: one row per model (name -> predictions.csv or a read table)."""
    rows = []
    for name, src in models.items():
        df = src if isinstance(src, pd.DataFrame) else read_predictions(src)
        rows.append({"Model": name, "MAE (years)": round(_mae(df), 3), "n test": len(df)})
    return _with_floor(pd.DataFrame(rows), floor)


def region_table(upper: str | Path | pd.DataFrame, lower: str | Path | pd.DataFrame,
                 floor: float | None = None) -> pd.DataFrame:
    """Table 3: MAE of the models trained on the upper and on the lower half of the body."""
    table = mae_table({"Upper body": upper, "Lower body": lower}, floor)
    return table.rename(columns={"Model": "Data type"})


def sex_table(predictions: str | Path | pd.DataFrame, labels_csv: str | Path | None = None,
              sex_col: str = "sex", floor: float | None = None) -> pd.DataFrame:
    """Table 4: MAE by sex, with the test counts and (given the label CSV) the counts of all data."""
    df = predictions if isinstance(predictions, pd.DataFrame) else read_predictions(predictions)
    if "sex" not in df.columns:
        raise KeyError(f"{predictions}: predictions have no sex column (one of {list(SEX_COLUMNS)})")
    rows = []
    all_counts = None
    if labels_csv is not None:
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
    return _with_floor(pd.DataFrame(rows), floor)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (written by hand: pandas' to_markdown needs `tabulate`)."""
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def latest_predictions(logs: str | Path, experiment: str) -> Path:
    """predictions.csv of the newest ``lightning_logs/<experiment>/version_N`` that has one."""
    root = Path(logs) / experiment
    found = []
    for d in root.glob("version_*"):
        m = re.fullmatch(r"version_(\d+)", d.name)
        if m and (d / "predictions.csv").is_file():
            found.append((int(m.group(1)), d / "predictions.csv"))
    if not found:
        raise FileNotFoundError(f"no {root}/version_*/predictions.csv: train and evaluate first "
                                f"(make train EXP={experiment} && make eval EXP={experiment})")
    return max(found)[1]


def _floor_of(labels_csv: str | Path | None) -> float | None:
    if labels_csv is None:
        return None
    from boneage.phantoms.common import read_metadata

    meta = read_metadata(Path(labels_csv).parent)
    return float(meta["noise_floor_mae"]) if meta else None


def _resolve(logs: str, spec: str) -> Path:
    """A predictions.csv path, or an experiment name resolved to its latest run."""
    p = Path(spec)
    return p if p.suffix == ".csv" else latest_predictions(logs, spec)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logs", default="lightning_logs", help="run root (lightning_logs)")
    ap.add_argument("--out", default="reports/ct", help="folder for the tables (csv + markdown)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=EXP_OR_CSV",
                    help="a Table 2 row; its name's '(X)' letter can be used in --late")
    ap.add_argument("--late", default=None, metavar="A,B,C", help="late-fusion members by letter or name")
    ap.add_argument("--late-name", default="Late fusion of (A), (B), and (C)")
    ap.add_argument("--table1", default=None, metavar="BASE,OURS", help="the two names for Table 1")
    ap.add_argument("--upper", default=None, metavar="EXP_OR_CSV", help="Table 3: upper-body run")
    ap.add_argument("--lower", default=None, metavar="EXP_OR_CSV", help="Table 3: lower-body run")
    ap.add_argument("--sex", default=None, metavar="EXP_OR_CSV", help="Table 4: the run to split by sex")
    ap.add_argument("--labels", default=None,
                    help="labels.csv of the data (counts of Table 4, phantom floor)")
    args = ap.parse_args(argv)

    floor = _floor_of(args.labels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, pd.DataFrame] = {}
    models: dict[str, pd.DataFrame] = {}
    for spec in args.model:
        if "=" not in spec:
            raise SystemExit(f"--model {spec!r}: expected NAME=EXPERIMENT or NAME=path/predictions.csv")
        name, src = spec.split("=", 1)
        models[name] = read_predictions(_resolve(args.logs, src))
    if args.late:
        members = []
        for m in args.late.split(","):
            # a member is named exactly, or by the one "(X)" its name ends with ("Fine-tuned VGGNet (A)")
            hits = [n for n in models if n == m or (n.endswith(f"({m})") and n.count("(") == 1)]
            if len(hits) != 1:
                raise SystemExit(f"--late member {m!r} matches {hits or 'no'} --model names {list(models)}")
            members.append(hits[0])
        fused = late_fusion([models[n] for n in members])
        names = list(models)
        anchor = max([names.index(n) for n in members] + [i for i, n in enumerate(names) if "early" in n.lower()])
        names.insert(anchor + 1, args.late_name)  # paper order: members, early fusion, late fusion, ours
        models = {n: (fused if n == args.late_name else models[n]) for n in names}
    if args.table1:
        a, b = args.table1.split(",")
        tables["table1"] = mae_table({a: models[a], b: models[b]}, floor)
    if models:
        tables["table2"] = mae_table(models, floor)
    if args.upper and args.lower:
        tables["table3"] = region_table(read_predictions(_resolve(args.logs, args.upper)),
                                        read_predictions(_resolve(args.logs, args.lower)), floor)
    if args.sex:
        tables["table4"] = sex_table(read_predictions(_resolve(args.logs, args.sex)), args.labels,
                                     floor=floor)
    if not tables:
        raise SystemExit("nothing to tabulate: give --model, --upper/--lower or --sex")
    md = []
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
        md += [f"### {name}", "", to_markdown(table), ""]
    if floor:
        md.append(f"Phantom label-noise floor: {floor:.3f} years (sigma * sqrt(2/pi)).")
    (out / "tables.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {', '.join(tables)} to {out}/ (csv + tables.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
