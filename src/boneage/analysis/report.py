"""The reproduction report: every paper's tables beside ours, its figures and its claims, from finished runs.

    python -m boneage.analysis.report [--runs-dir lightning_logs] [--out reports] [--run EXP/ID ...]

writes ``<out>/report.md`` (figures in ``<out>/figures/``) and ``<out>/report.html`` (the same content,
self-contained: figures embedded as base64 PNG, inline CSS, nothing fetched). It trains nothing and
works with any subset of runs: each table or figure that cannot be built says so and names the
command that makes its runs. Sections: the claims of every paper (:mod:`boneage.analysis.claims`),
then per paper the runs read (data set: phantom or the user's, image size, scale, run ids, date),
its tables with the paper's figures beside ours (the existing table builders), its figures
(learning curves from metrics.csv, predicted vs true and the error by age group and sex from
predictions.csv, and the figures the runs wrote: heat maps, ROI crops, GAN grids, t-SNE, latent
age walk) and its claim rows; last, the hand regressor demo (``make demo``) when it was run.

Runs are found as the table builders find them (the newest fit run of each experiment and its newest
test run), in the runs folder or a runs folder nested in it (``lightning_logs/roi_demo``); ``--run``
names a run of an experiment instead (``EXP/<run id>`` or a run directory).
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from boneage.analysis import claims as cl
from boneage.analysis.report_data import (
    Context,
    fmt,
    learning_curves,
    mean_predictor,
    noise_floor,
    predictions_figures,
    run_rows,
)
from boneage.runs import RUNS_DIR, Run, RunError, find_runs

HIDDEN = {"run", "fit run", "experiment", "checkpoint", "source", "metric", "note"}


# ------------------------------------------------------------------------------ document
@dataclass
class Block:
    kind: str          # "text", "table", "figure", "missing"
    text: str = ""
    table: pd.DataFrame | None = None
    path: Path | None = None
    hide: bool = True  # leave out the builders' bookkeeping columns (run, experiment, ...)


@dataclass
class Section:
    key: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    no_runs: bool = False  # nothing of this paper was run: one line instead of one per figure

    def text(self, value: str) -> None:
        self.blocks.append(Block("text", value))

    def heading(self, value: str) -> None:
        self.blocks.append(Block("heading", value))

    def table(self, frame: pd.DataFrame | None, caption: str, what: str = "", make: str = "",
              hide: bool = True) -> None:
        if frame is None or frame.empty:
            self.missing(what or caption, make)
            return
        self.blocks.append(Block("table", caption, table=frame, hide=hide))

    def figure(self, path: Path | str | None, caption: str, make: str = "") -> None:
        if path is None or not Path(path).is_file():
            first = caption.split(" ", 1)[0]
            plain = first.isalpha() and first[1:].islower()  # "Learning", not "Fig." or "GAN"
            self.missing(caption[0].lower() + caption[1:] if plain else caption, make)
            return
        self.blocks.append(Block("figure", caption, path=Path(path)))

    def missing(self, what: str, make: str) -> None:
        if self.no_runs:  # said once, at the top of the section
            return
        self.blocks.append(Block("missing", f"could not build {what}: run `{make}`" if make else
                                 f"could not build {what}"))


def _cell(value, column: str = "") -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if column.endswith("%"):
            return f"{value:.1f}"
        if column.startswith(("n ", "Number")) and value.is_integer():
            return str(int(value))
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[c for c in frame.columns if c not in HIDDEN]]


# ------------------------------------------------------------------------------ sections
def _figdir(out: Path) -> Path:
    path = out / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pairs(ctx: Context, root: Path, experiments: Sequence[str]) -> dict[str, tuple[Run | None, Run | None]]:
    return {e: ctx.test_run(root, e) for e in experiments}


def _runs_block(sec: Section, pairs: dict, make: str) -> None:
    rows = run_rows(pairs)
    if rows.empty:
        sec.no_runs = True
        sec.blocks.append(Block("missing", f"not run: no run of this paper yet, so no figures either; run `{make}`"))
        return
    sec.table(rows, "Runs read (data set, image size, scale, run ids, date)", make=make, hide=False)


def _figures_of_runs(sec: Section, ctx: Context, pairs: dict, names: dict[str, str], out: Path, key: str,
                     make: str) -> None:
    """Learning curves of the named experiments' fit runs, predicted vs true and error by group and sex."""
    fits = {label: pairs[e][0] for e, label in names.items() if e in pairs and pairs[e][0] is not None}
    tests = {label: pairs[e][1] for e, label in names.items() if e in pairs and pairs[e][1] is not None}
    figs = _figdir(out)
    sec.figure(learning_curves(fits, figs / f"{key}_learning_curves.png") if fits else None,
               "Learning curves (metrics.csv of the fit runs)", make)
    written = predictions_figures(tests, figs / f"{key}_predicted_vs_true.png",
                                  figs / f"{key}_error_by_age_sex.png") if tests else []
    sec.figure(written[0] if written else None, "Predicted vs true age (test runs' predictions.csv)", make)
    sec.figure(written[1] if len(written) > 1 else None, "MAE by age group and sex (test runs)", make)


def _claims_block(sec: Section, ctx: Context, key: str) -> list[cl.ClaimRow]:
    rows = ctx.cached(f"claims-{key}", lambda: cl.check_claims(ctx, [key]))
    sec.table(cl.claims_table(rows).drop(columns=["paper"]), "Claims", "the claims")
    return rows


def tjnet_section(ctx: Context, out: Path) -> Section:
    from boneage.analysis import tjnet_tables as tt

    paper = cl.PAPERS["tjnet"]
    sec = Section("tjnet", paper.title)
    data = cl.tjnet(ctx)
    root = data["root"]
    pairs = _pairs(ctx, root, [*tt.EXPERIMENTS, cl.SCRATCH])
    _runs_block(sec, pairs, paper.make)
    sec.text("MAD and RMSE in years. " + tt.ERROR_NOTE)
    for key, caption in (("table1", "Table 1: RSNA test, ours beside the paper's"),
                         ("ablations", "Ablations (section 3.3)"),
                         ("table2", "Table 2: transfer to the second hospital (Tongji-like)")):
        table = data[key].copy()
        if key == "table2":
            scratch = data["scratch"].copy()
            scratch["pretrained blocks"] = "none (from scratch, not in the paper)"
            table = pd.concat([table, scratch], ignore_index=True)
        sec.table(_order(table), caption, make=paper.make)
        lacking = table.loc[table["run"].isna(), "experiment"].tolist()
        if lacking:
            sec.missing("the rows of " + ", ".join(lacking), paper.make)
    sec.text(tt.INCEPTION_V3_NOTE)
    figs = _figdir(out)
    _figures_of_runs(sec, ctx, pairs, {"tjnet_rsna": "TJ-Net", "tjnet_rsna_no_cbam": "no CBAM",
                                       "tjnet_rsna_no_joint": "no joint learning",
                                       "tjnet_tongji_freeze3": "Tongji, blocks 1-3 frozen"}, out, "tjnet",
                     paper.make)
    tests = {n: pairs[e][1] for n, e in (("with joint learning", "tjnet_rsna"),
                                         ("without joint learning", "tjnet_rsna_no_joint"))}
    fig6 = None
    if all(tests.values()):
        try:
            preds = {n: r.predictions() for n, r in tests.items()}
            fig6 = tt.error_by_age_group(preds, figs / "tjnet_fig6_error_by_age_group.png")
        except (RunError, KeyError) as err:
            ctx.problems.append(f"TJ-Net Fig. 6: {err}")
    sec.figure(fig6, "Fig. 6: error per age group with and without joint learning", paper.make)
    maps = {n: pairs[e][1].path / "figures" / "block4_activation.png" for n, e in
            (("without CBAM", "tjnet_rsna_no_cbam"), ("with CBAM", "tjnet_rsna")) if pairs[e][1] is not None}
    fig5 = None
    if len(maps) == 2 and all(p.is_file() for p in maps.values()):
        fig5 = tt.side_by_side(maps, figs / "tjnet_fig5_block4_cbam.png")
    sec.figure(fig5, "Fig. 5: block-4 activations without and with CBAM", paper.make)
    if all(tests.values()):
        sparsity, matrices = cl.tjnet_fig7(ctx)
        if sparsity is not None and sparsity["Hoyer sparsity"].isna().all():
            sparsity = None
        sec.table(sparsity, "Fig. 7: Hoyer sparsity of the sex-input weights of block 6 (paper: sparser with "
                  "joint learning)", make=paper.make)
        sec.figure(tt.fig7_sex_input_weights(matrices, figs / "tjnet_fig7.png") if len(matrices) == 2 else None,
                   "Fig. 7: sex-input weights without and with joint learning", paper.make)
    else:
        sec.missing("Fig. 7 (sex-input weights)", paper.make)
    _claims_block(sec, ctx, "tjnet")
    return sec


def _order(table: pd.DataFrame) -> pd.DataFrame:
    """Each paper column right after ours (``MAD``, ``paper MAD``, ...)."""
    cols = [c for c in table.columns if not c.startswith("paper ")]
    ordered = []
    for c in cols:
        ordered.append(c)
        if f"paper {c}" in table.columns:
            ordered.append(f"paper {c}")
    ordered += [c for c in table.columns if c not in ordered]
    return table[ordered]


def ct_section(ctx: Context, out: Path) -> Section:
    paper = cl.PAPERS["ct"]
    sec = Section("ct", paper.title)
    data = cl.ct(ctx)
    pairs = data["pairs"]
    _runs_block(sec, pairs, paper.make)
    floors = {s.floor for s in data["sources"].values() if s.floor}
    if floors:
        sec.text("Phantom label-noise floor: " + ", ".join(f"{f:.2f}" for f in sorted(floors))
                 + " years (no model can beat it on average); `MAE / floor` is 1.0 at best.")
    t2 = data["table2"]
    t1 = t2[t2["experiment"].isin(["ct_vgg16", "ct_hvgg"])]
    sec.table(_order(t1), "Table 1: fine-tuned VGG vs our hierarchical VGG (MAE, years)", make=paper.make)
    sec.table(_order(t2), "Table 2: every model, fusions included (MAE, years)", make=paper.make)
    sec.table(_order(data["table3"]), "Table 3: upper vs lower body (MAE, years)", make=paper.make)
    sec.table(data["table4"], "Table 4: MAE by sex (hierarchical VGG)", "Table 4 (by sex)", paper.make)
    lacking = [e for e, (fit, test) in pairs.items() if test is None]
    if lacking:
        sec.missing("the rows of " + ", ".join(lacking), paper.make)
    _figures_of_runs(sec, ctx, pairs, {"ct_vgg16": "fine-tuned VGG", "ct_hvgg": "hierarchical VGG",
                                       "ct_hvgg_upper": "upper body", "ct_hvgg_lower": "lower body"}, out, "ct",
                     paper.make)
    fig4 = None
    fit = pairs.get("ct_hvgg", (None, None))[0]
    if fit is not None:
        try:
            from boneage.runs import build_data

            dm = build_data(fit, {"init_args": {"use_cache": False}})
            if hasattr(dm, "distribution_figure"):
                fig4 = _figdir(out) / "ct_fig4_data_distribution.png"
                dm.distribution_figure(fig4)
        except Exception as err:  # noqa: BLE001 - the report stands without the figure; it says why
            ctx.problems.append(f"CT Fig. 4: {str(err).splitlines()[0]}")
            fig4 = None
    sec.figure(fig4, "Fig. 4: age and sex distribution of the data set", paper.make)
    cams = pairs.get("ct_hvgg", (None, None))[1]
    sec.figure(cams.path / "figures" / "gradcam.png" if cams else None,
               "Fig. 5: Grad-CAM of the hierarchical VGG on test images", paper.make)
    _claims_block(sec, ctx, "ct")
    return sec


def roi_section(ctx: Context, out: Path) -> Section:
    from boneage.analysis import roi_tables as rt

    paper = cl.PAPERS["roi"]
    sec = Section("roi", paper.title)
    data = cl.roi(ctx)
    root = data["root"]
    exps = ["roi_localizer_scinti"] + [e for m in rt.METHODS for e in (m.with_sex, m.without_sex)]
    pairs = _pairs(ctx, root, exps)
    _runs_block(sec, pairs, paper.make)
    table = data["table1"].rename(columns={"paper with sex": "paper MAE with sex",
                                           "paper without sex": "paper MAE without sex"})
    sec.table(_order(table), "Table 1: test MAE (years) with and without the sex input", make=paper.make)
    missing = [e for e, r in data["found"].items() if isinstance(r, RunError)]
    if missing:
        sec.missing("the rows of " + ", ".join(missing), paper.make)
    summary = data["summary"]
    if summary:
        fit, _ = pairs["roi_regressor_scinti"]
        floor = summary.get("noise_floor") or noise_floor(fit)
        rows = [("noise floor (label noise)", floor),
                ("predicting the training mean", summary.get("mean_predictor_mae")),
                ("whole image (" + summary["whole_image_run"] + ")", summary["whole_image_mae"]),
                ("ROI pipeline (" + summary["roi_run"] + ")", summary["roi_mae"]),
                ("oracle: stage 2 on the true regions", summary.get("oracle_mae"))]
        sec.table(pd.DataFrame([{"model (same test images)": n, "test MAE (years)": v} for n, v in rows]),
                  f"ROI pipeline vs the whole image on the same {summary['n_test']} test images", make=paper.make)
        hits = {k.replace("_", " "): v for k, v in summary.items() if "hit_rate" in k or "coverage" in k}
        if hits:
            sec.table(pd.DataFrame([hits]), "Localization against the phantom's true region (hit rate within one "
                      "heat-map cell; coverage of the true box)", make=paper.make)
    else:
        sec.missing("the ROI vs whole-image summary (same test images)", paper.make)
    _figures_of_runs(sec, ctx, pairs, {"roi_localizer_scinti": "stage 1 localizer",
                                       "roi_regressor_scinti": "ROI regressor",
                                       "roi_regressor_nosex_scinti": "ROI regressor, no sex",
                                       "roi_resnet50_scinti": "whole image (ResNet)"}, out, "roi", paper.make)
    crops = _roi_crops(root, out)
    sec.figure(crops, "Fig. 3: Grad-CAM heat maps and ROI crops of the stage-1 export", paper.make)
    _claims_block(sec, ctx, "roi")
    return sec


def _roi_crops(root: Path, out: Path, n: int = 4) -> Path | None:
    """The first ``n`` Grad-CAM/crop figures of the newest export of the localizer, two per row, in one PNG."""
    runs = [r for r in find_runs(root, "roi_localizer_scinti", stage=None) if (r.path / "figures" / "roi").is_dir()]
    files = sorted((runs[-1].path / "figures" / "roi").glob("*.png"))[:n] if runs else []
    if not files:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from boneage.analysis.figures import write_figure

    rows = (len(files) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(12, 4.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, f in zip(axes.ravel(), files):
        ax.imshow(plt.imread(str(f)))
        ax.set_title(f"{runs[-1].label}: {f.stem}", fontsize=8)
    return write_figure(fig, _figdir(out) / "roi_fig3_crops.png", dpi=90)


def bapgan_section(ctx: Context, out: Path) -> Section:
    from boneage.analysis import bapgan_table1 as bt

    paper = cl.PAPERS["bapgan"]
    sec = Section("bapgan", paper.title)
    data = cl.bapgan(ctx)
    root = data["root"]
    exps = [f"{m}_{d}" for d in bt.DATASETS for _, m, _ in bt.ROWS] + \
        [f"bapgan_age_regressor_{d}" for d in bt.DATASETS]
    pairs = {e: (find_runs(root, e, "fit")[-1] if find_runs(root, e, "fit") else None, None) for e in exps}
    _runs_block(sec, pairs, paper.make)
    table = data["table1"]
    if table is not None:
        metrics = sorted(set(table["metric"].dropna()))
        sec.text("FID of ours: " + (", ".join(f"`{m}`" for m in metrics) or "none yet") + "; the paper's is "
                 "Inception-v3 FID, so only the ranking compares across the two columns. D_age, LS, SA: read from "
                 "each run's config. Age accuracy: generated images (every test image rendered at every age "
                 "group) whose group an independently trained regressor recognises; not in the paper.")
        shown = table.drop(columns=["source", "metric"]).copy()
        sec.table(_order(shown), "Table 1: FID per data set and ablation row", make=paper.make)
        lacking = table.loc[table["FID"].isna(), "experiment"].tolist()
        if lacking:
            sec.missing("the FID of " + ", ".join(lacking), paper.make)
        for _, row in table[table["note"] != ""].iterrows():
            sec.text(f"Note: {row['experiment']}/{row['run']}: {row['note']}.")
    else:
        sec.missing("Table 1", paper.make)
    figs = _figdir(out)
    fits = {e: pairs[e][0] for e in ("bapgan_femur", "bapgan_phalange", "bapgan_caae_femur") if pairs[e][0]}
    sec.figure(learning_curves(fits, figs / "bapgan_learning_curves.png") if fits else None,
               "Learning curves (metrics.csv of the fit runs)", paper.make)
    for d in bt.DATASETS:
        run = pairs[f"bapgan_{d}"][0]
        folder = run.path / "bapgan_eval" if run else None
        grid = None
        if run is not None:  # the evaluation's grid (make bapgan-figures), else the one training drew last
            grid = next((p for p in (folder / "progression_grid.png", run.path / "figures" / "progression_grid.png")
                         if p.is_file()), None)
        sec.figure(grid, f"Age progression grid, {d} (images rendered at every age group)",
                   f"make bapgan-figures EXP=bapgan_{d}")
        pngs = sorted(folder.glob("eight_year_*.png")) if folder and folder.is_dir() else []
        for png in pngs:
            sec.figure(png, f"8-year {png.stem.split('_')[-1]} pairs, {d}")
        sec.figure(folder / "tsne.png" if folder else None, f"Fig. 5: t-SNE of real, CAAE and BAPGAN images, {d}",
                   f"make bapgan-tsne DATASET={d}")
    _claims_block(sec, ctx, "bapgan")
    return sec


GIF_LIMIT = 8 * 2**20  # a larger walk.gif (1024 px frames) is named, not embedded
PGGAN_PAPER = [  # (what, the paper's figure, json file, key(s))
    ("regressor MAE, training data", "3.7 months", "regressor_errors", "train_mae"),
    ("regressor MAE, test data", "8.8 months", "regressor_errors", "test_mae"),
    ("LASSO |error|, training latents", "11.6 +- 9.4 months", "lasso", ("train_abs_error_mean", "train_abs_error_sd")),
    ("LASSO |error|, held-out latents", "10.9 +- 9.0 months", "lasso", ("test_abs_error_mean", "test_abs_error_sd")),
    ("LASSO R^2, held-out", "-", "lasso", "test_r2"),
    ("neighbours' age sd, by pixels", "21.4 months", "neighbours", "age_sd_by_pixels_mean"),
    ("neighbours' age sd, by regressor features", "10.2 months", "neighbours", "age_sd_by_features_mean"),
    ("aging walk: first -> last frame's age", "3-4 years upwards", "walk", ("first_age", "last_age")),
    ("aging walk: Spearman frame vs age", "-", "walk", "spearman_frame_vs_age"),
    ("age control (not in the paper): MAE to target", "-", "control", "mae"),
]


def pggan_section(ctx: Context, out: Path) -> Section:
    paper = cl.PAPERS["pggan"]
    sec = Section("pggan", paper.title)
    data = cl.pggan(ctx)
    gan, reg = data["gan"], data["regressor"]
    pairs = {}
    if gan is not None:
        pairs[gan.experiment] = (gan, None)
    if reg is not None:
        pairs[reg.experiment] = ctx.test_run(reg.path.parent.parent, reg.experiment)
        pairs[reg.experiment] = (reg, pairs[reg.experiment][1])
    _runs_block(sec, pairs, paper.make)
    js = data["json"]
    units = (js.get("regressor_errors") or js.get("neighbours") or {}).get("units", "months")
    rows = []
    for what, figure, name, keys in PGGAN_PAPER:
        d = js.get(name) or {}
        if isinstance(keys, tuple):
            a, b = d.get(keys[0]), d.get(keys[1])
            sep = " -> " if name == "walk" else " +- "
            ours = f"{a:.2f}{sep}{b:.2f}" if a is not None and b is not None else "-"
        else:
            ours = fmt(d.get(keys), 2)
        rows.append({"measure": what, f"ours ({units})": ours, "paper": figure})
    if js:
        sec.text(f"Ages in {units}. The paper: 1024 px PGGAN, 200,000 generated images; ours: the scale in the "
                 "runs table and the number of generated images of the analysis.")
        sec.table(pd.DataFrame(rows), "Latent-space analysis and the regressor, ours beside the paper's",
                  make=paper.make)
    else:
        sec.missing("the latent-space analysis tables", paper.make)
    figs = gan.path / "figures" if gan else None
    analysis = data["analysis"]
    sec.figure(figs / "samples_final.png" if figs else None, "Generated hands at the final resolution (Fig. 5a)",
               paper.make)
    sec.figure(figs / "gan_metrics.png" if figs else None, "GAN metrics during training (Fig. 6)", paper.make)
    for name, caption in (("mae_by_year", "Regressor MAE by true age (Fig. 4)"),
                          ("lasso", "LASSO of predicted age on the latents (Fig. 8a)"),
                          ("neighbours", "Nearest training images by pixels and by regressor features (Fig. 7)"),
                          ("walk", "Latent aging walk: predicted age per frame (Fig. 8b)"),
                          ("control", "Age control along the LASSO direction (not in the paper)")):
        sec.figure(analysis / f"{name}.png" if analysis else None, caption, paper.make)
        if name == "walk":
            gif = analysis / "walk.gif" if analysis else None
            if gif is not None and gif.is_file() and gif.stat().st_size >= GIF_LIMIT:
                sec.text(f"Latent aging walk, the frames (Video 1): `{gif}` (over {GIF_LIMIT // 2**20} MiB, "
                         "not embedded).")
            else:
                sec.figure(gif, "Latent aging walk, the frames (Video 1)", paper.make)
    _claims_block(sec, ctx, "pggan")
    return sec


def demo_section(ctx: Context, out: Path) -> Section | None:
    """The hand regressor demo (``make demo``), when it was run."""
    root = ctx.root_for(["demo_rsna"])
    fit, test = ctx.test_run(root, "demo_rsna")
    if fit is None:
        return None
    sec = Section("demo", "Hand regressor demo (make demo; not a paper)")
    _runs_block(sec, {"demo_rsna": (fit, test)}, "make demo")
    if test is not None:
        mae = None
        try:
            frame = test.predictions()
            mae = float(frame["abs_error"].mean()) if "abs_error" in frame else None
        except RunError:
            pass
        floor, mean = noise_floor(fit, "months"), mean_predictor(fit, test, "months")
        sec.table(pd.DataFrame([{"test MAE (months)": mae, "noise floor (months)": floor,
                                 "MAE / floor": mae / floor if mae and floor else None,
                                 "predicting the training mean (months)": mean}]),
                  "Test MAE beside the phantom's floor and the mean predictor", make="make demo")
    _figures_of_runs(sec, ctx, {"demo_rsna": (fit, test)}, {"demo_rsna": "hand regressor"}, out, "demo", "make demo")
    return sec


SECTIONS = {"tjnet": tjnet_section, "ct": ct_section, "roi": roi_section, "bapgan": bapgan_section,
            "pggan": pggan_section}


def build(runs_dir: str | Path, out: str | Path, named: Sequence[str] = ()) -> tuple[list[Section], list, Context]:
    """Every section and the claim rows (checked once)."""
    ctx = Context(runs_dir, named)
    out = Path(out)
    sections, rows = [], []
    for key, make_section in SECTIONS.items():
        try:
            sec = make_section(ctx, out)
        except Exception as err:  # noqa: BLE001 - one paper's unreadable run must not take the others' sections
            what = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ctx.problems.append(f"{key}: {what}")
            sec = Section(key, cl.PAPERS[key].title)
            sec.missing(f"this section ({what})", cl.PAPERS[key].make)
            sec.table(cl.claims_table(cl.check_claims(ctx, [key])).drop(columns=["paper"]), "Claims")
        sections.append(sec)
        rows += ctx.cached(f"claims-{key}", lambda k=key: cl.check_claims(ctx, [k]))
    try:
        demo = demo_section(ctx, out)
    except Exception as err:  # noqa: BLE001 - the demo is an extra; the papers' sections stand without it
        ctx.problems.append(f"demo: {type(err).__name__}: {err}")
        demo = None
    if demo is not None:
        sections.append(demo)
    return sections, rows, ctx


# ------------------------------------------------------------------------------ markdown
def _md_table(frame: pd.DataFrame, hide: bool = True) -> str:
    frame = _shown(frame) if hide else frame
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, str(c)).replace("|", "\\|") for c, v in zip(cols, row)) + " |")
    return "\n".join(lines)


def to_markdown(sections: Sequence[Section], rows: Sequence[cl.ClaimRow], head: Sequence[str], out: Path) -> str:
    figs = _figdir(out)
    md = ["# Reproduction report", "", *head, "",
          "Contents: " + " · ".join(f"[{_short(s)}](#{s.key})" for s in sections), "",
          '<a id="claims"></a>', "", "## Claims", "",
          "Each paper's headline claims checked on the runs below: *holds* (our runs show it at the scale run), "
          "*does not hold* (our runs show something else) or *not run* (with the command that makes the runs).",
          "", _md_table(cl.claims_table(rows)), ""]
    for sec in sections:
        md += [f'<a id="{sec.key}"></a>', "", f"## {sec.title}", ""]
        for block in sec.blocks:
            if block.kind == "table":
                md += [f"**{block.text}**", "", _md_table(block.table, block.hide), ""]
            elif block.kind == "figure":
                target = figs / block.path.name
                if block.path.resolve().parent != figs.resolve():
                    target = figs / f"{sec.key}_{_slug(block.text)}{block.path.suffix.lower()}"
                    shutil.copyfile(block.path, target)
                md += [f"![{block.text}](figures/{target.name})", "", f"*{block.text}*", ""]
            elif block.kind == "missing":
                md += [f"> {block.text}", ""]
            else:
                md += [block.text, ""]
    return "\n".join(md) + "\n"


def _short(sec: Section) -> str:
    paper = cl.PAPERS.get(sec.key)
    return paper.short if paper else "Demo"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60]


# ------------------------------------------------------------------------------ HTML
CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1180px; margin: 2em auto;
       padding: 0 1.2em; color: #1d2430; line-height: 1.45; font-size: 15px; }
h1 { border-bottom: 2px solid #2d5b8c; padding-bottom: .3em; }
h2 { margin-top: 2.2em; border-bottom: 1px solid #ccd5df; padding-bottom: .2em; color: #2d5b8c; }
h3 { margin: 1.4em 0 .4em; font-size: 1.02em; }
table { border-collapse: collapse; margin: .4em 0 1em; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d3dae3; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef2f7; }
tr:nth-child(even) td { background: #fafbfd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.holds { background: #dff3e3 !important; color: #14532d; font-weight: 600; white-space: nowrap; }
td.fails { background: #fde2e1 !important; color: #8a1c1c; font-weight: 600; white-space: nowrap; }
td.notrun { background: #eceff3 !important; color: #555; font-weight: 600; white-space: nowrap; }
figure { margin: .6em 0 1.4em; }
figure img { max-width: 100%; border: 1px solid #e1e6ec; }
figcaption { font-size: 13px; color: #4a5563; }
p.missing { background: #fff7e0; border-left: 4px solid #e0a800; padding: .35em .7em; font-size: 14px; }
code { background: #f1f3f6; padding: 0 3px; border-radius: 3px; font-size: 92%; }
nav a { margin-right: 1em; }
.meta { color: #4a5563; font-size: 14px; }
"""


def _inline(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _html_table(frame: pd.DataFrame, hide: bool = True) -> str:
    frame = _shown(frame) if hide else frame
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for col, value in zip(frame.columns, row):
            text = _cell(value, str(col))
            cls = {cl.HOLDS: "holds", cl.FAILS: "fails", cl.NOT_RUN: "notrun"}.get(text) if col == "verdict" else None
            if cls is None and isinstance(value, (int, float)) and not isinstance(value, bool):
                cls = "num"
            cells.append(f'<td class="{cls}">{_inline(text)}</td>' if cls else f"<td>{_inline(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_html(sections: Sequence[Section], rows: Sequence[cl.ClaimRow], head: Sequence[str]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Reproduction report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>Reproduction report</h1>"]
    parts += [f'<p class="meta">{_inline(line)}</p>' for line in head]
    parts.append("<nav>" + '<a href="#claims">Claims</a>' + "".join(
        f'<a href="#{s.key}">{html.escape(_short(s))}</a>' for s in sections) + "</nav>")
    parts += ['<h2 id="claims">Claims</h2>',
              "<p>Each paper's headline claims checked on the runs below: <em>holds</em> (our runs show it at the "
              "scale run), <em>does not hold</em> (our runs show something else) or <em>not run</em> (with the "
              "command that makes the runs).</p>", _html_table(cl.claims_table(rows))]
    for sec in sections:
        parts.append(f'<h2 id="{sec.key}">{html.escape(sec.title)}</h2>')
        for block in sec.blocks:
            if block.kind == "table":
                parts += [f"<h3>{_inline(block.text)}</h3>", _html_table(block.table, block.hide)]
            elif block.kind == "figure":
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                mime = "image/gif" if block.path.suffix.lower() == ".gif" else "image/png"
                parts.append(f'<figure><img alt="{html.escape(block.text)}" src="data:{mime};base64,{data}">'
                             f"<figcaption>{_inline(block.text)}</figcaption></figure>")
            elif block.kind == "missing":
                parts.append(f'<p class="missing">{_inline(block.text)}</p>')
            else:
                parts.append(f"<p>{_inline(block.text)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------ command line
def write_report(runs_dir: str | Path, out: str | Path, named: Sequence[str] = ()) -> tuple[Path, Path, list]:
    """Build the report from the runs and write ``report.md`` and ``report.html`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections, rows, ctx = build(runs_dir, out, named)
    counts = {v: sum(r.verdict == v for r in rows) for v in (cl.HOLDS, cl.FAILS, cl.NOT_RUN)}
    head = [f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from the runs in `{runs_dir}` by "
            "`make report` (python -m boneage.analysis.report); it trains nothing.",
            f"Claims: {counts[cl.HOLDS]} hold, {counts[cl.FAILS]} do not hold, {counts[cl.NOT_RUN]} not run."]
    if ctx.problems:
        head.append("Could not read: " + "; ".join(ctx.problems))
    md = out / "report.md"
    md.write_text(to_markdown(sections, rows, head, out))
    page = out / "report.html"
    page.write_text(to_html(sections, rows, head))
    return md, page, rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boneage.analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", "--runs_dir", default=RUNS_DIR, help="root of the run directories")
    parser.add_argument("--out", default="reports", help="folder for report.md, report.html and figures/")
    parser.add_argument("--run", action="append", default=[], metavar="EXP/RUN_ID",
                        help="read this run of experiment EXP (a fit run: its newest test; a test run; or a run "
                             "directory) instead of the newest; repeatable")
    args = parser.parse_args(argv)
    if not Path(args.runs_dir).is_dir():
        print(f"report: runs folder {args.runs_dir} not found: give --runs-dir (RUNS_DIR=) or make the runs "
              "(make reproduce-mini)", file=sys.stderr)
        return 2
    try:
        md, page, rows = write_report(args.runs_dir, args.out, args.run)
    except RunError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    print(cl.claims_table(rows)[["paper", "claim", "verdict"]].to_string(index=False))
    print(f"wrote {md} and {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
