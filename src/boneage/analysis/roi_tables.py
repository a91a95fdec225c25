"""Table 1 of Do et al. (ROI localization, whole-body scintigraphy): MAE with and without sex.

Reads finished runs from ``lightning_logs/<experiment>/version_N/metrics.csv`` (the ``test/mae``
logged by ``boneage test``); for each experiment the newest version holding a test MAE is used.
A run that is missing or not yet tested shows as "-" rather than failing, and is listed.

``python -m boneage.analysis.roi_tables [--logs lightning_logs] [--out table1.md] [--paper]``
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.phantoms.common import read_metadata


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


def _version_number(path: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", path.name)
    return int(match.group(1)) if match else -1


def logged_mae(log_root: str | Path, experiment: str, metric: str = "test/mae") -> float | None:
    """The last logged ``metric`` of the newest version of ``experiment`` that has one."""
    exp_dir = Path(log_root) / experiment
    versions = sorted(exp_dir.glob("version_*"), key=_version_number, reverse=True)
    for version in versions:
        csv = version / "metrics.csv"
        if not csv.is_file():
            continue
        table = pd.read_csv(csv)
        if metric in table.columns and table[metric].notna().any():
            return float(table[metric].dropna().iloc[-1])
    return None


def table1(log_root: str | Path = "lightning_logs", methods: tuple[Method, ...] = METHODS,
           paper: bool = False) -> pd.DataFrame:
    """Table 1 as a DataFrame: one row per method, MAE (years) with and without the sex input."""
    rows = []
    for m in methods:
        row = {"Method": m.name,
               "MAE with sex": logged_mae(log_root, m.with_sex),
               "MAE without sex": logged_mae(log_root, m.without_sex)}
        if paper:
            row["paper with sex"] = m.paper_with_sex
            row["paper without sex"] = m.paper_without_sex
        rows.append(row)
    return pd.DataFrame(rows).astype({"MAE with sex": float, "MAE without sex": float})


def missing_runs(log_root: str | Path = "lightning_logs", methods: tuple[Method, ...] = METHODS) -> list[str]:
    """Experiments of Table 1 without a tested run."""
    names = [e for m in methods for e in (m.with_sex, m.without_sex)]
    return [e for e in names if logged_mae(log_root, e) is None]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", default="lightning_logs", help="root of the run directories")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--paper", action="store_true", help="add the paper's numbers as columns")
    parser.add_argument("--data", default=None,
                        help="data folder; a phantom.json there adds its noise floor under the table")
    args = parser.parse_args(argv)
    text = to_markdown(table1(args.logs, paper=args.paper))
    meta = read_metadata(args.data) if args.data else None
    if meta is not None:
        units = meta["units"]
        text += (f"\nPhantom data ({meta['generator']}, n={meta['n']}): label noise sigma "
                 f"{meta['label_noise_sigma']} {units}, noise floor MAE {meta['noise_floor_mae']:.2f} "
                 f"{units} (no model can beat it on average).\n")
    print(text, end="")
    missing = missing_runs(args.logs)
    if missing:
        print(f"not yet tested ({len(missing)}): {', '.join(missing)}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"Table 1 written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
