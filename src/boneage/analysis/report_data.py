"""What the reproduction report reads from runs: where a paper's runs are, what a run was trained on,
the phantom's noise floor, the training-mean predictor, and the figures regenerated from run files.

Runs are reached only through :mod:`boneage.runs`. A report's runs folder (``--runs-dir``) may hold a
paper's runs directly (``<runs dir>/<experiment>/<run id>``) or in a nested runs folder of their own
(``<runs dir>/roi_demo/<experiment>/<run id>``, as ``make roi-demo`` writes them); each paper reads the
folder holding most of its experiments.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from boneage.runs import RUN_FILE, Run, RunError, build_data, find_runs, resolve_run, resolve_test_run

YEARS_PER = {"years": 1.0, "months": 1.0 / 12.0}


# ------------------------------------------------------------------------------ where runs are
def runs_roots(runs_dir: str | Path, depth: int = 2) -> list[Path]:
    """``runs_dir`` and every folder below it (``depth`` levels) laid out as a runs folder
    (``<folder>/<experiment>/<run id>/run.json``), ``runs_dir`` first. ``oracle`` folders (stage 2 on
    true regions, not a paper's result) are left out."""
    root = Path(runs_dir)
    found, frontier = [root], [root]
    for _ in range(depth):
        nxt = []
        for folder in frontier:
            for sub in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
                if (sub / RUN_FILE).is_file() or sub.name == "oracle":
                    continue
                if any(sub.glob(f"*/*/{RUN_FILE}")):
                    found.append(sub)
                nxt.append(sub)
        frontier = nxt
    return list(dict.fromkeys(found))


class Context:
    """The runs a report reads: the runs folder, the runs named with ``--run``, and a cache so that each
    table is built once for the report and its claims."""

    def __init__(self, runs_dir: str | Path, named: Iterable[str] = ()):
        self.runs_dir = Path(runs_dir)
        self.roots = runs_roots(self.runs_dir) if self.runs_dir.is_dir() else [self.runs_dir]
        self.named: dict[str, str] = {}
        for spec in named:
            path = Path(spec)
            if (path / RUN_FILE).is_file():
                self.named[Run(path).experiment] = str(path.resolve())
            elif "/" in spec:
                exp, run_id = spec.split("/", 1)
                self._check_named(exp, run_id)
                self.named[exp] = run_id
            else:
                raise RunError(f"--run {spec}: give <experiment>/<run id> or a run directory")
        self._cache: dict[str, Any] = {}
        self.problems: list[str] = []

    def _check_named(self, experiment: str, run_id: str) -> None:
        """A named run must exist in one of the runs folders: a typo is an error, not a "not run" row."""
        stage = next((s for s in ("test", "validate", "predict") if run_id.startswith(f"{s}-")), "fit")
        errors = []
        for root in self.roots:
            if (root / experiment).is_dir():
                try:
                    resolve_run(root, experiment, run_id, stage=stage)
                    return
                except RunError as err:
                    errors.append(str(err))
        raise RunError(errors[0] if errors else f"--run {experiment}/{run_id}: no experiment '{experiment}' in "
                       f"{self.runs_dir} or the runs folders in it")

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def root_for(self, experiments: Sequence[str]) -> Path:
        """The runs folder holding fit runs of most of ``experiments`` (the runs folder itself on a tie)."""
        def count(root: Path) -> int:
            return sum(bool(find_runs(root, e, stage=None)) for e in experiments if (root / e).is_dir())
        best = max(self.roots, key=lambda r: (count(r), r == self.runs_dir))
        return best

    def spec(self, root: Path, experiment: str) -> str:
        """What to pass a table builder for ``experiment``: the named run (``EXP/<id>`` or a run
        directory) or the experiment alone (its newest fit run)."""
        named = self.named.get(experiment)
        if named is None:
            return experiment
        return named if Path(named).is_dir() else f"{experiment}/{named}"

    def named_in(self, experiments: Iterable[str]) -> dict[str, str]:
        """``{experiment: EXP/<id> or run directory}`` of the named runs among ``experiments``."""
        return {e: self.spec(self.runs_dir, e) for e in experiments if e in self.named}

    def test_run(self, root: Path, experiment: str) -> tuple[Run | None, Run | None]:
        """(fit run, test run) of an experiment (named, or the newest fit run's newest test); (fit, None)
        when untested, (None, None) when it has no fit run."""
        try:
            return resolve_test_run(root, self.spec(root, experiment))
        except RunError:
            if experiment in self.named:
                raise
            fits = find_runs(root, experiment, stage="fit")
            return (fits[-1] if fits else None), None


# ------------------------------------------------------------------------------ what a run is
def _data_args(run: Run) -> dict:
    try:
        data = run.config().get("data") or {}
    except RunError:
        return {}
    return data.get("init_args") or {}


def phantom_of(run: Run) -> dict | None:
    """The ``phantom.json`` behind a run's data (its data folder, the label file's folder or a parent of
    it, or, for a derived data set such as an ROI export, the folder of the images it was made from)."""
    from boneage.phantoms.common import read_metadata

    candidates: list[Path] = []
    for key, value in _data_args(run).items():
        if isinstance(value, str) and value and ("dir" in key or "path" in key or key in ("root", "data")):
            path = Path(value)
            candidates += [path] if path.is_dir() else []
            candidates += [path.parent, path.parent.parent, path.parent.parent.parent]
            if path.suffix == ".csv" and path.is_file():
                try:
                    source = pd.read_csv(path, nrows=1).get("source")
                except (OSError, ValueError):
                    source = None
                if source is not None and len(source):
                    src = Path(str(source.iloc[0]))
                    if not src.is_absolute():
                        src = path.parent / src
                    candidates += [src.parent, src.parent.parent, src.parent.parent.parent]
    for folder in dict.fromkeys(candidates):
        try:
            meta = read_metadata(folder)
        except (OSError, ValueError):
            meta = None
        if meta:
            return meta
    return None


def data_label(run: Run) -> str:
    """'phantom (<generator>, n=<n>, label noise ...)' or "user's data (<path>)"."""
    meta = phantom_of(run)
    if meta:
        sigma = meta.get("label_noise_sigma")
        noise = f", label noise sigma {sigma:.2f} {meta.get('units', '')}" if isinstance(sigma, (int, float)) else ""
        return f"phantom ({meta.get('generator', '?')}, n={meta.get('n', '?')}{noise})"
    args = _data_args(run)
    where = next((str(v) for k, v in args.items() if isinstance(v, str) and ("dir" in k or "path" in k) and v), "?")
    return f"user's data ({where})"


def image_size(run: Run) -> str:
    size = _data_args(run).get("image_size")
    if isinstance(size, (list, tuple)):
        return " x ".join(str(s) for s in size)
    return str(size) if size is not None else "-"


def scale(run: Run) -> str:
    """How long the run trained (epochs or steps reached, and the limit) and the network width."""
    try:
        cfg = run.config()
    except RunError:
        return "-"
    trainer = cfg.get("trainer") or {}
    parts = []
    try:
        metrics = run.metrics()
        if "epoch" in metrics and metrics["epoch"].notna().any():
            parts.append(f"{int(metrics['epoch'].max()) + 1} epochs")
        if "step" in metrics and metrics["step"].notna().any():
            parts.append(f"{int(metrics['step'].max()) + 1} steps")
    except RunError:
        pass
    if (trainer.get("max_steps") or -1) > 0:
        parts.append(f"max_steps {trainer['max_steps']}")
    elif trainer.get("max_epochs"):
        parts.append(f"max_epochs {trainer['max_epochs']}")
    network = ((cfg.get("model") or {}).get("init_args") or {}).get("network") or {}
    net_args = network.get("init_args") or {} if isinstance(network, dict) else {}
    for key in ("width", "backbone"):
        if net_args.get(key) is not None:
            parts.append(f"{key} {net_args[key]}")
    return ", ".join(parts) or "-"


def created(run: Run) -> str:
    stamp = run.info.get("created") or time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.created))
    return stamp.replace("T", " ")


def run_rows(pairs: Mapping[str, tuple[Run | None, Run | None]]) -> pd.DataFrame:
    """One row per experiment read: fit run, test run, date, data set, image size, scale."""
    rows = []
    for experiment, (fit, test) in pairs.items():
        if fit is None and test is None:
            continue
        about = fit or test
        rows.append({"experiment": experiment, "fit run": fit.id if fit else "-",
                     "test run": test.id if test else "-", "date": created(test or fit),
                     "data set": data_label(about), "image size": image_size(about), "scale": scale(about)})
    return pd.DataFrame(rows, columns=["experiment", "fit run", "test run", "date", "data set", "image size",
                                       "scale"])


# ------------------------------------------------------------------------------ floor and mean predictor
def noise_floor(run: Run | None, units: str = "years") -> float | None:
    """The phantom's label-noise floor MAE (sigma * sqrt(2/pi)) behind ``run``, in ``units``; None for
    real data."""
    meta = phantom_of(run) if run is not None else None
    if not meta or meta.get("noise_floor_mae") is None:
        return None
    return float(meta["noise_floor_mae"]) * YEARS_PER.get(meta.get("units", units), 1.0) / YEARS_PER[units]


def truth_column(frame: pd.DataFrame) -> tuple[str, str] | None:
    """(column, units) of the true age in a predictions.csv."""
    for units in ("years", "months"):
        for col in (f"true_{units}", f"age_{units}"):
            if col in frame.columns:
                return col, units
    return None


def years_frame(raw: pd.DataFrame) -> pd.DataFrame | None:
    """``age``, ``pred`` (years) and ``sex`` of a predictions.csv, whichever units it was written in."""
    for units in ("years", "months"):
        pred = f"pred_{units}"
        truth = next((c for c in (f"true_{units}", f"age_{units}") if c in raw.columns), None)
        if pred in raw.columns and truth is not None:
            out = pd.DataFrame({"age": raw[truth].astype(float) * YEARS_PER[units],
                                "pred": raw[pred].astype(float) * YEARS_PER[units]})
            if "sex" in raw.columns:
                out["sex"] = raw["sex"].astype(str)
            return out
    return None


@functools.lru_cache(maxsize=256)
def mean_predictor(fit: Run | None, test: Run | None, units: str = "years") -> float | None:
    """MAE of always predicting the mean training label (from the fit run's own data module, its
    training split), on the test run's images, in ``units``; None when either is missing."""
    if fit is None or test is None:
        return None
    try:
        frame = test.predictions(need_truth=True)
    except RunError:
        return None
    found = truth_column(frame)
    if found is None:
        return None
    col, col_units = found
    try:
        try:  # the labels only: no image cache is built
            dm = build_data(fit, {"init_args": {"use_cache": False}})
        except TypeError:
            dm = build_data(fit)
        train = dm.table("train")["age"].to_numpy(np.float64)
    except Exception as err:  # noqa: BLE001 - the report stands without this column; it says why
        print(f"report: no mean predictor for {fit.label}: {str(err).splitlines()[0]}")
        return None
    dm_units = getattr(dm, "age_units", col_units)
    mean = float(train.mean()) * YEARS_PER.get(dm_units, 1.0) / YEARS_PER[col_units]
    mae = float(np.abs(frame[col].to_numpy(np.float64) - mean).mean())
    return mae * YEARS_PER[col_units] / YEARS_PER[units]


def fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{(' ' + unit) if unit else ''}"


# ------------------------------------------------------------------------------ figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(runs: Mapping[str, Run], out: str | Path) -> Path | None:
    """One panel per fit run: its training and validation curves per epoch from metrics.csv (the
    loss and the age error where logged)."""
    from boneage.analysis.figures import write_figure

    tables = {}
    for name, run in runs.items():
        try:
            metrics = run.metrics()
        except RunError:
            continue
        if "epoch" not in metrics:
            continue
        cols = []
        for stage in ("train", "val"):  # the loss and one age error (years where logged) per stage
            for names in (("loss_epoch", "loss"), ("mad_years_epoch", "mad_years", "mae_epoch", "mae", "recon_l2")):
                col = next((f"{stage}/{n}" for n in names
                            if f"{stage}/{n}" in metrics.columns and metrics[f"{stage}/{n}"].notna().any()), None)
                if col is not None:
                    cols.append(col)
        if cols:
            tables[name] = (metrics, cols)
    if not tables:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(min(4.4 * len(tables), 17), 3.3), squeeze=False)
    for ax, (name, (metrics, cols)) in zip(axes[0], tables.items()):
        errors = [c for c in cols if "loss" not in c and "recon" not in c]
        right = ax.twinx() if errors and len(errors) < len(cols) else None
        for i, col in enumerate(cols):
            per_epoch = pd.to_numeric(metrics[col], errors="coerce").groupby(metrics["epoch"]).last().dropna()
            if not len(per_epoch):
                continue
            target = right if (right is not None and col in errors) else ax
            target.plot(per_epoch.index + 1, per_epoch.to_numpy(), marker="." if len(per_epoch) < 30 else None,
                        ls="--" if target is right else "-", color=f"C{i}", label=col)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if right is not None else "", fontsize=8)
        handles = ax.get_legend_handles_labels()
        if right is not None:
            right.set_ylabel("age error (dashed)", fontsize=8)
            extra = right.get_legend_handles_labels()
            handles = (handles[0] + extra[0], handles[1] + extra[1])
        ax.legend(*handles, fontsize=7)
    return write_figure(fig, out, dpi=90)


def predictions_figures(tests: Mapping[str, Run], out_scatter: str | Path, out_groups: str | Path,
                        group_years: float | None = None) -> list[Path]:
    """Predicted vs true age (one panel per test run) and the MAE by age group and sex, regenerated from
    the test runs' predictions.csv (ages in years)."""
    from boneage.analysis.figures import write_figure

    frames = {}
    for name, run in tests.items():
        try:
            frame = years_frame(run.predictions(need_truth=True))
        except RunError:
            continue
        if frame is not None:
            frames[name] = frame
    if not frames:
        return []
    if group_years is None:  # about six groups over the ages seen, in whole years
        top = max(float(f["age"].max()) for f in frames.values())
        group_years = next((g for g in (1, 2, 5, 10, 20) if top / g <= 7), 20)
    plt = _pyplot()
    written = []
    fig, axes = plt.subplots(1, len(frames), figsize=(min(3.4 * len(frames), 16), 3.4), squeeze=False)
    for ax, (name, f) in zip(axes[0], frames.items()):
        ax.scatter(f["age"], f["pred"], s=6, alpha=0.5)
        lo, hi = float(min(f["age"].min(), f["pred"].min())), float(max(f["age"].max(), f["pred"].max()))
        ax.plot([lo, hi], [lo, hi], "r--", lw=0.8)
        ax.set_title(f"{name}\nMAE {np.abs(f['pred'] - f['age']).mean():.2f} y", fontsize=9)
        ax.set_xlabel("true age (years)")
    axes[0][0].set_ylabel("predicted age (years)")
    written.append(write_figure(fig, out_scatter, dpi=90))
    fig, axes = plt.subplots(1, len(frames), figsize=(min(3.4 * len(frames), 16), 3.2), squeeze=False,
                             sharey=True)
    for ax, (name, f) in zip(axes[0], frames.items()):
        err = (f["pred"] - f["age"]).abs()
        group = (np.floor(f["age"] / group_years) * group_years).astype(int)
        sexes = sorted(f["sex"].unique()) if "sex" in f.columns else ["all"]
        groups = sorted(group.unique())
        width = 0.8 / len(sexes)
        for i, sex in enumerate(sexes):
            mask = (f["sex"] == sex) if "sex" in f.columns else np.ones(len(f), bool)
            values = [err[mask & (group == g)].mean() if (mask & (group == g)).any() else np.nan for g in groups]
            ax.bar(np.arange(len(groups)) + i * width, values, width, label={"F": "female", "M": "male"}.get(sex, sex))
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2,
                      [f"{g}-{g + int(group_years)}" for g in groups], rotation=45, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("true age group (years)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("MAE (years)")
    written.append(write_figure(fig, out_groups, dpi=90))
    return written
