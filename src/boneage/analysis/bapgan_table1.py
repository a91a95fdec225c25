"""Table 1 of the BAPGAN paper (FID of the four ablation rows per data set) from finished runs.

Reads, for every experiment ``bapgan_<row>_<dataset>``, the whole-data-set FID written by
``python -m boneage.analysis.bapgan_eval fid`` (``lightning_logs/<exp>/bapgan_eval/fid.json``,
the paper's protocol), or else the newest ``lightning_logs/<exp>/version_*/metrics.csv``
holding a ``test/fid_*`` value (``boneage test``: test split only; the ``scope`` column says
which), and prints/writes the table. FIDs made with
different feature extractors are never put in one column: a table mixing them raises.

    python -m boneage.analysis.bapgan_table1 [--logs lightning_logs] [--out table1.csv]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

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


def latest_fid(logs: Path, experiment: str) -> tuple[str, float, str, str] | None:
    """(metric name, value, scope, source file) of ``experiment``'s FID, or None."""
    summary = logs / experiment / "bapgan_eval" / "fid.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        return data["metric"], float(data["value"]), data.get("scope", "all splits"), str(summary)

    def version(path: Path) -> int:
        tail = path.parent.name.split("_")[-1]
        return int(tail) if tail.isdigit() else -1

    runs = sorted((logs / experiment).glob("version_*/metrics.csv"), key=version)
    for path in reversed(runs):
        table = pd.read_csv(path)
        cols = [c for c in table.columns if c.startswith("test/fid_")]
        for col in cols:
            values = table[col].dropna()
            if len(values):
                return col.removeprefix("test/"), float(values.iloc[-1]), "test split", str(path)
    return None


def table1(logs: str | Path = "lightning_logs") -> pd.DataFrame:
    """One row per (data set, ablation row); FID NaN where the run is missing."""
    logs = Path(logs)
    rows = []
    for dataset in DATASETS:
        for label, method, d_age, ls, sa in ROWS:
            exp = f"{method}_{dataset}"
            found = latest_fid(logs, exp)
            rows.append({"dataset": dataset, "model": label, "D_age": d_age, "LS": ls, "SA": sa,
                         "experiment": exp, "metric": found[0] if found else None,
                         "FID": found[1] if found else float("nan"), "scope": found[2] if found else "",
                         "paper FID": PAPER_FID[(dataset, label)], "source": found[3] if found else ""})
    table = pd.DataFrame(rows)
    metrics = set(table["metric"].dropna())
    if len(metrics) > 1:
        detail = table[["experiment", "metric"]].dropna().to_string(index=False)
        raise ValueError(f"runs used different FID feature extractors {sorted(metrics)}; re-evaluate them "
                         f"with one extractor (model.fid_feature_extractor) before tabulating:\n{detail}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boneage.analysis.bapgan_table1", description=__doc__)
    parser.add_argument("--logs", type=Path, default=Path("lightning_logs"))
    parser.add_argument("--out", type=Path, default=None, help="CSV to write")
    args = parser.parse_args(argv)
    table = table1(args.logs)
    metric = next(iter(table["metric"].dropna()), "no finished runs")
    shown = table.drop(columns=["source", "metric"]).round(2)
    print(f"Table 1 (FID, {metric}; paper values use Inception-v3):\n{shown.to_string(index=False)}")
    missing = table.loc[table["FID"].isna(), "experiment"].tolist()
    if missing:
        print(f"missing runs (train and test them first): {', '.join(missing)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
