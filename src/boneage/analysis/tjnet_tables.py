"""TJ-Net's tables and comparison figures from finished runs.

- Table 1: MAD and RMSE (years) per method on RSNA (TJ-Net and the VGG16, InceptionV3,
  InceptionV4, ResNet50 baselines), with the paper's values beside them.
- Ablation rows (section 3.3): TJ-Net without IncRes shortcuts, without CBAM, without joint
  learning.
- Table 2: transfer to the Tongji-like data for each number of frozen blocks k = 1..4: MAD,
  RMSE, training accuracy, test accuracy.
- Fig. 6 comparison: error distribution per age group with and without joint learning, from the
  two runs' ``predictions.csv``.
- Fig. 5 comparison: the block-4 activation heat maps of the runs with and without CBAM (each
  test run draws them for the same first test images), one above the other.

A run is ``lightning_logs/<experiment>/version_N/``; its ``metrics.csv`` is Lightning's CSV log.
The newest version that holds the test metrics is used. Missing runs give a row of "n/a" and
the command names the runs and the make target that produces them (mk/tjnet.mk).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

TEST_MAD, TEST_RMSE, TEST_ACC, TRAIN_ACC = "test/mad_years", "test/rmse_years", "test/acc", "train/acc"

# (label, experiment, paper MAD, paper RMSE) — paper Table 1 (years)
TABLE1 = [
    ("VGG16", "tjnet_rsna_vgg16", 0.53, 0.62),
    ("Inception V3", "tjnet_rsna_inception_v3", 0.57, 0.58),
    ("Inception V4", "tjnet_rsna_inception_v4", 0.59, 0.97),
    ("ResNet50", "tjnet_rsna_resnet50", 0.60, 0.72),
    ("TJ-Net", "tjnet_rsna", 0.41, 0.42),
]
# (label, experiment, paper MAD) — section 3.3 (the paper gives no RMSE for these)
ABLATIONS = [
    ("TJ-Net without IncRes shortcuts", "tjnet_rsna_no_shortcut", 0.571),
    ("TJ-Net without CBAM", "tjnet_rsna_no_cbam", 0.578),
    ("TJ-Net without joint learning", "tjnet_rsna_no_joint", 0.578),
]
# (frozen blocks k, experiment, paper MAD, RMSE, training accuracy, test accuracy) — Table 2
TABLE2 = [
    (1, "tjnet_tongji_freeze1", 0.688, 1.645, 0.996, 0.797),
    (2, "tjnet_tongji_freeze2", 0.565, 0.986, 0.889, 0.875),
    (3, "tjnet_tongji_freeze3", 0.362, 0.551, 0.891, 0.922),
    (4, "tjnet_tongji_freeze4", 0.638, 1.072, 0.879, 0.883),
]


def _version_number(path: Path) -> int:
    m = re.fullmatch(r"version_(\d+)", path.name)
    return int(m.group(1)) if m else -1


def run_metrics(run_dir: str | Path) -> dict[str, float]:
    """Last logged (non-NaN) value of every metric in a run's metrics.csv."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.csv; is {run_dir} a finished Lightning run directory?")
    table = pd.read_csv(path)
    out = {}
    for col in table.columns:
        values = pd.to_numeric(table[col], errors="coerce").dropna()
        if len(values) and col not in {"epoch", "step"}:
            out[col] = float(values.iloc[-1])
    return out


def latest_run(logs: str | Path, experiment: str, need: str = TEST_MAD) -> Path | None:
    """Newest ``version_N`` of an experiment whose metrics hold ``need``; None when there is none."""
    root = Path(logs) / experiment
    versions = sorted((p for p in root.glob("version_*") if p.is_dir()), key=_version_number, reverse=True)
    for run in versions:
        try:
            if need in run_metrics(run):
                return run
        except FileNotFoundError:
            continue
    return None


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _lookup(logs: Path, experiment: str, keys: Sequence[str]) -> tuple[list[float | None], Path | None]:
    run = latest_run(logs, experiment)
    if run is None:
        return [None] * len(keys), None
    m = run_metrics(run)
    # Training accuracy: the last epoch's value lives in the fit run (another version dir).
    values: list[float | None] = [m.get(k) for k in keys]
    if TRAIN_ACC in keys and values[list(keys).index(TRAIN_ACC)] is None:
        fit = latest_run(logs, experiment, TRAIN_ACC + "_epoch") or latest_run(logs, experiment, TRAIN_ACC)
        if fit is not None:
            fm = run_metrics(fit)
            values[list(keys).index(TRAIN_ACC)] = fm.get(TRAIN_ACC + "_epoch", fm.get(TRAIN_ACC))
    return values, run


def table1(logs: str | Path, rows: Sequence[tuple] = TABLE1) -> pd.DataFrame:
    """Table 1: method, MAD, RMSE (ours, years) and the paper's values."""
    logs = Path(logs)
    records = []
    for label, exp, p_mad, p_rmse in rows:
        (mad, rmse), run = _lookup(logs, exp, [TEST_MAD, TEST_RMSE])
        records.append({"method": label, "experiment": exp, "MAD": mad, "RMSE": rmse,
                        "paper MAD": p_mad, "paper RMSE": p_rmse, "run": str(run) if run else None})
    return pd.DataFrame(records)


def ablation_table(logs: str | Path, rows: Sequence[tuple] = ABLATIONS) -> pd.DataFrame:
    """Ablation rows: variant, MAD, RMSE (years) and the paper's MAD."""
    logs = Path(logs)
    records = []
    for label, exp, p_mad in rows:
        (mad, rmse), run = _lookup(logs, exp, [TEST_MAD, TEST_RMSE])
        records.append({"method": label, "experiment": exp, "MAD": mad, "RMSE": rmse, "paper MAD": p_mad,
                        "run": str(run) if run else None})
    return pd.DataFrame(records)


def table2(logs: str | Path, rows: Sequence[tuple] = TABLE2) -> pd.DataFrame:
    """Table 2: frozen blocks, MAD, RMSE, training and test accuracy, with the paper's values."""
    logs = Path(logs)
    records = []
    for k, exp, p_mad, p_rmse, p_tr, p_te in rows:
        (mad, rmse, tr, te), run = _lookup(logs, exp, [TEST_MAD, TEST_RMSE, TRAIN_ACC, TEST_ACC])
        records.append({"pretrained blocks": "Block 1" if k == 1 else f"Blocks 1-{k}", "experiment": exp,
                        "MAD": mad, "RMSE": rmse, "Training Accuracy": tr, "Test Accuracy": te,
                        "paper MAD": p_mad, "paper RMSE": p_rmse, "paper Training Accuracy": p_tr,
                        "paper Test Accuracy": p_te, "run": str(run) if run else None})
    return pd.DataFrame(records)


def to_markdown(table: pd.DataFrame, title: str) -> str:
    """A GitHub markdown table (no extra dependency), runs column left out."""
    cols = [c for c in table.columns if c not in {"run", "experiment"}]
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        cells = [(_fmt(row[c]) if isinstance(row[c], float) or row[c] is None else str(row[c])) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    missing = table.loc[table["run"].isna(), "experiment"].tolist()
    if missing:
        lines += ["", "n/a: no finished test run yet for " + ", ".join(missing)
                  + " (make tjnet-rsna, tjnet-ablations, tjnet-baselines or tjnet-transfer; docs/tjnet.md)"]
    return "\n".join(lines) + "\n"


def error_by_age_group(predictions: Mapping[str, pd.DataFrame], out: str | Path,
                       group_years: float = 2.0, max_age: float = 20.0) -> Path:
    """Box plots of the prediction error (years) per age group, one panel per run (paper Fig. 6).

    Each table needs columns ``age_years`` (label) and ``pred_years``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    edges = np.arange(0.0, max_age + group_years, group_years)
    fig, axes = plt.subplots(1, len(predictions), figsize=(5.5 * len(predictions), 4), sharey=True,
                             squeeze=False)
    for ax, (name, df) in zip(axes[0], predictions.items()):
        for col in ("age_years", "pred_years"):
            if col not in df.columns:
                raise KeyError(f"predictions for '{name}' lack column '{col}'; columns: {list(df.columns)}")
        err = df["pred_years"] - df["age_years"]
        group = np.clip(np.digitize(df["age_years"], edges) - 1, 0, len(edges) - 2)
        data = [err[group == g].to_numpy() for g in range(len(edges) - 1)]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(edges)), [f"{int(a)}-{int(a + group_years)}" for a in edges[:-1]],
                      rotation=45, fontsize=8)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(f"{name} (MAD {err.abs().mean():.2f} y)")
        ax.set_xlabel("age group (years)")
    axes[0][0].set_ylabel("prediction error (years)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def side_by_side(images: Mapping[str, str | Path], out: str | Path) -> Path:
    """Stack finished runs' figure PNGs (e.g. block-4 heat maps with and without CBAM, paper Fig. 5)
    one above the other, each titled, into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    fig, axes = plt.subplots(len(images), 1, figsize=(10, 3.6 * len(images)), squeeze=False)
    for ax, (title, path) in zip(axes[:, 0], images.items()):
        ax.imshow(plt.imread(str(path)))
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TJ-Net Table 1, ablations and Table 2 from finished runs.")
    parser.add_argument("--logs", default="lightning_logs", help="root of the run directories")
    parser.add_argument("--out", default="lightning_logs/tjnet_tables", help="where to write tables/figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = [("Table 1: RSNA test (years)", "table1", table1(args.logs)),
             ("Ablations: RSNA test (years)", "ablations", ablation_table(args.logs)),
             ("Table 2: transfer to the Tongji-like data (years)", "table2", table2(args.logs))]
    text = []
    for title, stem, table in parts:
        table.to_csv(out / f"{stem}.csv", index=False)
        text.append(to_markdown(table, title))
    (out / "tables.md").write_text("\n".join(text))
    print("\n".join(text))
    written = [f"{s}.csv" for _, s, _ in parts] + ["tables.md"]
    runs = {name: latest_run(args.logs, exp) for name, exp in
            (("with joint learning", "tjnet_rsna"), ("without joint learning", "tjnet_rsna_no_joint"))}
    preds = {name: run / "predictions.csv" for name, run in runs.items() if run is not None}
    if len(preds) == 2 and all(p.is_file() for p in preds.values()):
        error_by_age_group({n: pd.read_csv(p) for n, p in preds.items()}, out / "fig6_error_by_age_group.png")
        written.append("fig6_error_by_age_group.png")
    runs = {name: latest_run(args.logs, exp) for name, exp in
            (("without CBAM", "tjnet_rsna_no_cbam"), ("with CBAM", "tjnet_rsna"))}
    maps = {name: run / "figures" / "block4_activation.png" for name, run in runs.items() if run is not None}
    if len(maps) == 2 and all(p.is_file() for p in maps.values()):
        side_by_side(maps, out / "fig5_block4_activation_cbam.png")
        written.append("fig5_block4_activation_cbam.png")
    print(f"wrote {', '.join(written)} to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
