"""TJ-Net's tables and comparison figures from finished runs.

- Table 1: MAD and RMSE (years) per method on RSNA (TJ-Net and the VGG16, InceptionV3,
  InceptionV4, ResNet50 baselines), with the paper's values beside them. ``MAD``/``RMSE`` are
  the paper's way, from class labels (|true class - predicted class| x class width: 3 months on
  RSNA, a year on the second hospital); the paper's numbers compare to these. ``MAD (expected
  age)``/``RMSE (expected age)`` beside them are the run's age readout (the expected age under
  the softmax unless the run set ``readout: argmax``). The paper's Inception V3 row is 16bit's
  released model tested on its online server; ours is trained here like the other baselines.
- Ablation rows (section 3.3): TJ-Net without IncRes shortcuts, without CBAM, without joint
  learning.
- Table 2: transfer to the Tongji-like data for each number of frozen blocks k = 1..4: MAD,
  RMSE, training accuracy, test accuracy.
- Fig. 6 comparison: error distribution per age group with and without joint learning, from the
  two runs' ``predictions.csv``.
- Fig. 5 comparison: the block-4 activation heat maps of the runs with and without CBAM (each
  test run draws them for the same first test images), one above the other.
- Fig. 7: the block-6 weights of the sex input without and with joint learning (the 512 x 64
  block of block 6's first dense layer that reads the sex input's 64 units; from the checkpoint
  each test run evaluated), grey = |weight| (black 0), and their Hoyer sparsity to test the
  paper's "joint learning makes the sex input weight matrix sparser".

Runs are read through :mod:`boneage.runs`: for each experiment, its newest fit run and that run's
newest *test* evaluation (test metrics, ``predictions.csv``, ``figures/``; training accuracy
comes from the fit run's own ``metrics.csv``). ``--run EXP/<run id>`` (a fit run, or a
``test-...`` run; or a run directory) names the run of one experiment instead. Predict runs
are never read. An experiment without a tested run gives a row of "n/a" and the command names
the make target that produces it (mk/tjnet.mk); a named run that cannot be found is an error.

    python -m boneage.analysis.tjnet_tables [--runs-dir lightning_logs] [--out reports/tjnet] \
        [--run tjnet_rsna/20261129-213215-3fa3 ...]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.runs import RUN_FILE, RUNS_DIR, Run, RunError, find_runs, resolve_test_run

TEST_MAD, TEST_RMSE, TEST_ACC, TRAIN_ACC = "test/mad_years", "test/rmse_years", "test/acc", "train/acc"
# the paper's MAD/RMSE: from class labels (|true class - predicted class| x class width)
TEST_MAD_CLASS, TEST_RMSE_CLASS = "test/mad_class_years", "test/rmse_class_years"
INCEPTION_V3_NOTE = ("Inception V3 (trained here): the paper's row is 16bit's released model (the RSNA challenge "
                     "winner) tested on 16bit's online server, not a model trained with TJ-Net's sex input and "
                     "head; ours is trained here with the same protocol as the other baselines.")

# (label, experiment, paper MAD, paper RMSE) — paper Table 1 (years)
TABLE1 = [
    ("VGG16", "tjnet_rsna_vgg16", 0.53, 0.62),
    ("Inception V3 (trained here)", "tjnet_rsna_inception_v3", 0.57, 0.58),
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


def run_metrics(run: Run | str | Path) -> dict[str, float]:
    """Last logged (non-NaN) value of every metric in a run's metrics.csv."""
    table = (run if isinstance(run, Run) else Run(Path(run))).metrics()
    out = {}
    for col in table.columns:
        values = pd.to_numeric(table[col], errors="coerce").dropna()
        if len(values) and col not in {"epoch", "step"}:
            out[col] = float(values.iloc[-1])
    return out


def finished_run(runs_dir: str | Path, experiment: str,
                 named: Mapping[str, str] | None = None) -> tuple[Run | None, Run | None]:
    """(fit run, test run) of an experiment: the run named for it in ``named`` (``EXP/<id>`` or a
    run directory; errors are raised), else its newest fit run and that run's newest test run
    (None when it has not been tested yet; (None, None) when the experiment has no fit run)."""
    spec = (named or {}).get(experiment)
    if spec:
        return resolve_test_run(runs_dir, spec)
    try:
        return resolve_test_run(runs_dir, experiment)
    except RunError:
        fits = find_runs(runs_dir, experiment, stage="fit")
        return (fits[-1] if fits else None), None


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _lookup(runs_dir: str | Path, experiment: str, keys: Sequence[str],
            named: Mapping[str, str] | None) -> tuple[list[float | None], Run | None, Run | None]:
    fit, test = finished_run(runs_dir, experiment, named)
    if test is None:
        return [None] * len(keys), fit, None
    m = run_metrics(test)
    values: list[float | None] = [m.get(k) for k in keys]
    if TRAIN_ACC in keys and fit is not None:  # the last epoch's training accuracy: in the fit run
        try:
            fm = run_metrics(fit)
        except RunError:
            fm = {}
        values[list(keys).index(TRAIN_ACC)] = fm.get(TRAIN_ACC + "_epoch", fm.get(TRAIN_ACC))
    return values, fit, test


def _runs(fit: Run | None, test: Run | None) -> dict[str, str | None]:
    return {"run": test.label if test else None, "fit run": fit.label if fit else None}


ERRORS = [TEST_MAD_CLASS, TEST_RMSE_CLASS, TEST_MAD, TEST_RMSE]


def _errors(values: Sequence[float | None]) -> dict[str, float | None]:
    """MAD/RMSE from class labels (the paper's way) and of the age readout, by column name."""
    mad, rmse, mad_age, rmse_age = values
    return {"MAD": mad, "RMSE": rmse, "MAD (expected age)": mad_age, "RMSE (expected age)": rmse_age}


def table1(runs_dir: str | Path, rows: Sequence[tuple] = TABLE1,
           named: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Table 1: method, MAD, RMSE (years; class labels, the paper's way), the paper's values, and
    MAD/RMSE of the expected-age readout."""
    records = []
    for label, exp, p_mad, p_rmse in rows:
        values, fit, test = _lookup(runs_dir, exp, ERRORS, named)
        err = _errors(values)
        records.append({"method": label, "experiment": exp, "MAD": err.pop("MAD"), "RMSE": err.pop("RMSE"),
                        "paper MAD": p_mad, "paper RMSE": p_rmse, **err, **_runs(fit, test)})
    return pd.DataFrame(records)


def ablation_table(runs_dir: str | Path, rows: Sequence[tuple] = ABLATIONS,
                   named: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Ablation rows: variant, MAD, RMSE (years; class labels), the paper's MAD, expected-age MAD/RMSE."""
    records = []
    for label, exp, p_mad in rows:
        values, fit, test = _lookup(runs_dir, exp, ERRORS, named)
        err = _errors(values)
        records.append({"method": label, "experiment": exp, "MAD": err.pop("MAD"), "RMSE": err.pop("RMSE"),
                        "paper MAD": p_mad, **err, **_runs(fit, test)})
    return pd.DataFrame(records)


def table2(runs_dir: str | Path, rows: Sequence[tuple] = TABLE2,
           named: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Table 2: frozen blocks, MAD, RMSE (years; yearly class labels), training and test accuracy,
    with the paper's values, and expected-age MAD/RMSE."""
    records = []
    for k, exp, p_mad, p_rmse, p_tr, p_te in rows:
        values, fit, test = _lookup(runs_dir, exp, [*ERRORS, TRAIN_ACC, TEST_ACC], named)
        err = _errors(values[:4])
        records.append({"pretrained blocks": "Block 1" if k == 1 else f"Blocks 1-{k}", "experiment": exp,
                        "MAD": err.pop("MAD"), "RMSE": err.pop("RMSE"), "Training Accuracy": values[4],
                        "Test Accuracy": values[5], "paper MAD": p_mad, "paper RMSE": p_rmse,
                        "paper Training Accuracy": p_tr, "paper Test Accuracy": p_te, **err, **_runs(fit, test)})
    return pd.DataFrame(records)


# ------------------------------------------------------------------------------ Fig. 7
def sex_input_weights(network) -> np.ndarray:
    """Block 6's weights on the sex input: the columns of its first dense layer (FC 512) that read
    the sex-input layer's units (FC 64), as [512, 64]. Paper is silent which matrix Fig. 7 shows:
    chose this one because it is the matrix through which the sex input reaches the age classifier
    (the FC 64 layer itself has one weight per unit, a vector)."""
    sex_units = network.sex_fc[0].out_features
    first = next(m for m in network.age_head if hasattr(m, "weight"))
    return first.weight.detach().float().cpu().numpy()[:, -sex_units:]


def hoyer_sparsity(weights: np.ndarray) -> float:
    """Hoyer's sparseness (Hoyer 2004), (sqrt(n) - |w|_1 / |w|_2) / (sqrt(n) - 1): 0 when all
    weights have the same magnitude, 1 when one is non-zero; scale-invariant, no threshold."""
    w = np.abs(np.asarray(weights, dtype=np.float64)).ravel()
    n, l2 = w.size, float(np.linalg.norm(w))
    if n < 2 or l2 == 0.0:
        raise ValueError(f"Hoyer sparsity needs at least 2 weights, not all zero (got {n})")
    return float((np.sqrt(n) - w.sum() / l2) / (np.sqrt(n) - 1.0))


def fig7_sex_input_weights(matrices: Mapping[str, np.ndarray], out: str | Path) -> Path:
    """The sex-input weight matrices one above the other (paper Fig. 7: without joint learning on
    top, with it below), grey = |weight| scaled to each matrix's largest, black = 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    fig, axes = plt.subplots(len(matrices), 1, figsize=(10, 2.6 * len(matrices)), squeeze=False)
    for ax, (name, w) in zip(axes[:, 0], matrices.items()):
        a = np.abs(w).T  # [64 sex units, 512 outputs]: wide, like the paper's figure
        ax.imshow(a / max(float(a.max()), 1e-12), cmap="gray", vmin=0.0, vmax=1.0, aspect="auto",
                  interpolation="nearest")
        ax.set_title(f"{name}: Hoyer sparsity {hoyer_sparsity(w):.3f}")
        ax.set_xlabel("FC 512 unit")
        ax.set_ylabel("sex-input unit")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


FIG7 = [("without joint learning", "tjnet_rsna_no_joint"), ("with joint learning", "tjnet_rsna")]


def fig7_table(runs_dir: str | Path, named: Mapping[str, str] | None = None
               ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Fig. 7's rows (Hoyer sparsity of each run's sex-input weights) and the matrices, from the
    checkpoint each experiment's test run evaluated (its fit run's best when not recorded)."""
    from boneage.runs import build_system

    records, matrices = [], {}
    for name, exp in FIG7:
        fit, test = finished_run(runs_dir, exp, named)
        sparsity, ckpt = None, None
        if fit is not None and test is not None:
            try:
                system = build_system(fit, test.info.get("ckpt_path") or "best")
            except RunError as err:  # the tables stand without Fig. 7
                print(f"no Fig. 7 weights of {exp}: {err}")
            else:
                ckpt = system.ckpt_path
                matrices[name] = sex_input_weights(system.network)
                sparsity = hoyer_sparsity(matrices[name])
        records.append({"model": name, "experiment": exp, "Hoyer sparsity": sparsity,
                        "checkpoint": ckpt, **_runs(fit, test)})
    return pd.DataFrame(records), matrices


ERROR_NOTE = ("MAD and RMSE: from class labels (|true class - predicted class| x class width, 3 months on RSNA, "
              "a year on the second hospital), as the paper computes them: the paper's values compare to these. "
              "MAD/RMSE (expected age): the run's age readout (the expected age under the softmax).")
FIG7_NOTE = ("Hoyer sparsity of |W| for the 512 x 64 weights of block 6's FC 512 on the sex input's FC 64 units: "
             "0 = all weights equal in size, 1 = one non-zero. The paper (Fig. 7): joint learning makes this "
             "matrix sparser, i.e. a higher value with joint learning.")


def to_markdown(table: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """A GitHub markdown table (no extra dependency), runs column left out, ``notes`` below it."""
    cols = [c for c in table.columns if c not in {"run", "fit run", "experiment", "checkpoint"}]
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        cells = [(_fmt(row[c]) if isinstance(row[c], float) or row[c] is None else str(row[c])) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    for note in notes:
        lines += ["", note]
    missing = table.loc[table["run"].isna() & table["fit run"].isna(), "experiment"].tolist()
    untested = table.loc[table["run"].isna() & table["fit run"].notna(), "fit run"].tolist()
    if missing or untested:
        lines.append("")
    if missing:
        lines.append("n/a: no fit run yet of " + ", ".join(missing)
                     + " (make tjnet-rsna, tjnet-ablations, tjnet-baselines or tjnet-transfer; docs/tjnet.md)")
    if untested:
        lines.append("n/a: the newest fit run is not tested yet: " + ", ".join(untested)
                     + " (boneage test --config <run dir>/config.yaml --run <id> --ckpt_path best)")
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


EXPERIMENTS = [r[1] for r in TABLE1 + ABLATIONS + TABLE2]


def named_runs(specs: Sequence[str]) -> dict[str, str]:
    """``--run`` values (``EXP/<run id>`` or run directories) by experiment."""
    named = {}
    for spec in specs:
        path = Path(spec)
        experiment = Run(path).experiment if (path / RUN_FILE).is_file() else spec.partition("/")[0]
        if experiment not in EXPERIMENTS:
            raise RunError(f"--run {spec}: '{experiment}' is not an experiment of these tables "
                           f"({', '.join(EXPERIMENTS)}); give EXP/<run id> or a run directory")
        named[experiment] = spec
    return named


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TJ-Net Table 1, ablations and Table 2 from finished runs.")
    parser.add_argument("--runs-dir", "--logs", dest="runs_dir", default=RUNS_DIR,
                        help="root of the run directories")
    parser.add_argument("--out", default="reports/tjnet", help="where to write tables/figures")
    parser.add_argument("--run", action="append", default=[], metavar="EXP/RUN_ID",
                        help="use this run of experiment EXP (a fit run: its newest test run; or a test run "
                             "id; or a run directory) instead of the newest; repeatable")
    args = parser.parse_args(argv)
    try:
        return _write(args.runs_dir, Path(args.out), named_runs(args.run))
    except RunError as err:
        print(f"tjnet_tables: {err}", file=sys.stderr)
        return 2


def _write(runs_dir: str, out: Path, named: dict[str, str]) -> int:
    sparsity, matrices = fig7_table(runs_dir, named)
    parts = [("Table 1: RSNA test (years)", "table1", table1(runs_dir, named=named), [ERROR_NOTE, INCEPTION_V3_NOTE]),
             ("Ablations: RSNA test (years)", "ablations", ablation_table(runs_dir, named=named), [ERROR_NOTE]),
             ("Table 2: transfer to the Tongji-like data (years)", "table2", table2(runs_dir, named=named),
              [ERROR_NOTE]),
             ("Fig. 7: sparsity of the sex-input weights of block 6", "fig7_sparsity", sparsity, [FIG7_NOTE])]
    for _, _, table, _ in parts:
        for row in table.dropna(subset=["run"]).to_dict("records"):
            print(f"{row['experiment']}: test run {row['run']}"
                  + (f" of fit run {row['fit run']}" if row["fit run"] else ""))
    out.mkdir(parents=True, exist_ok=True)
    text = []
    for title, stem, table, notes in parts:
        table.to_csv(out / f"{stem}.csv", index=False)
        text.append(to_markdown(table, title, notes))
    (out / "tables.md").write_text("\n".join(text))
    print("\n".join(text))
    written = [f"{s}.csv" for _, s, _, _ in parts] + ["tables.md"]
    if len(matrices) == 2:
        fig7_sex_input_weights(matrices, out / "fig7_sex_input_weights.png")
        written.append("fig7_sex_input_weights.png")
    tests = {name: finished_run(runs_dir, exp, named)[1] for name, exp in
             (("with joint learning", "tjnet_rsna"), ("without joint learning", "tjnet_rsna_no_joint"))}
    if all(tests.values()):
        try:
            preds = {name: run.predictions(need_truth=True) for name, run in tests.items()}
        except RunError as err:
            print(f"no Fig. 6 comparison: {err}")
        else:
            error_by_age_group(preds, out / "fig6_error_by_age_group.png")
            written.append("fig6_error_by_age_group.png")
    tests = {name: finished_run(runs_dir, exp, named)[1] for name, exp in
             (("without CBAM", "tjnet_rsna_no_cbam"), ("with CBAM", "tjnet_rsna"))}
    maps = {name: run.path / "figures" / "block4_activation.png" for name, run in tests.items() if run}
    if len(maps) == 2 and all(p.is_file() for p in maps.values()):
        side_by_side(maps, out / "fig5_block4_activation_cbam.png")
        written.append("fig5_block4_activation_cbam.png")
    print(f"wrote {', '.join(written)} to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
