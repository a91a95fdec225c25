"""``boneage predict-folder``: bone age of new images from trained runs, with heat maps and a report.

    boneage predict-folder --run demo_rsna/<run id> [--run demo_rsna/<other run>] INPUT... --out DIR
                           [--sex M|F] [--tta] [--keep-names] [--runs-dir lightning_logs]

``INPUT``: folders (searched recursively), CSV files (a ``path``/``image``/``file`` column, relative to the
CSV's folder unless absolute, and an optional ``sex`` column: M/F, male/female, 1/0), or image files; PNG,
JPEG, TIFF or DICOM. Every run is rebuilt from its own ``config.yaml`` and best checkpoint
(:mod:`boneage.runs`), and every image goes through that run's DataModule preprocessing (its image size,
letterboxing, half-image crop, DICOM window, evaluation crop and pixel standardisation), not the
experiment's YAML.

Writes into ``DIR``:

- ``predictions.csv``: one row per image: ``image`` (an index and a hash of the file's bytes; the file
  name only with ``--keep-names``, in a ``file`` column), ``age_months``, ``age_years`` (the ensemble mean
  with several runs), ``age_sd_months`` (the spread over runs, the uncertainty; empty for one run),
  ``sex`` (M/F, empty when no run uses it), ``sex_source`` (``cli``, ``csv``, ``dicom``, ``model``: TJ-Net's
  own sex classifier, or ``unused``), ``runs`` and one ``months[<experiment>/<run id>]`` column per run;
- ``overlays/<image>.png``: the network input with its Grad-CAM heat map (the mean over runs);
- ``report.html``: one self-contained page (table, thumbnails, heat maps embedded, a model card per run).

Which systems: age regressors (:class:`~boneage.systems.regression.AgeRegressor`, every hand, CT and
scintigraphy experiment), TJ-Net age classifiers (:class:`~boneage.systems.tjnet.TJNetSystem`), and the
two-stage ROI pipeline: a stage-2 regressor trained on an ROI export finds its stage-1 localizer through
the export run, each image is cropped by the localizer's Grad-CAM box (:mod:`boneage.analysis.roi`) and
the crop goes to the regressor. GAN systems and a localizer alone predict no age and are refused. CT
volumes (NIfTI, DICOM series) are refused: give their 2-D projections (PNG) instead.

No patient identifiers leave: DICOM headers are read for the sex only (:func:`data_modules.dicom.
header_sex_age`); names, ids, birth and accession data are never copied into any output, and file names
only with ``--keep-names``.

Sex, in this order (paper is silent on unlabelled images: chose the sources that describe the image
itself first): the CSV's sex column, the DICOM header's PatientSex, then ``--sex`` (for the images that
have neither, e.g. the PNGs of a mixed folder), then the mean male probability of the runs that can
predict it (TJ-Net with joint learning). An image without any, for a run that needs one, is an error
naming the image. (The web app's explicit choice overrides the header: :mod:`boneage.serve`.)

Test-time augmentation (``--tta``; paper is silent): the mean prediction over the image, its horizontal
flip and two shifts by 3 % of the input size (down-right and up-left, black fill), on the network input
before standardisation. Chose those because they are the training augmentations the hand experiments use
(flip) and the small misregistrations a new scanner brings (shift); none changes the anatomy.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from boneage.runs import RUNS_DIR, Run, RunError, build_data, build_system, resolve_run
from data_modules.base import DICOM_SUFFIXES, IMAGE_SUFFIXES, DataError, ImageCache, ImageTableDataset, parse_sex

MONTHS = {"months": 1.0, "years": 12.0}
GAN_SYSTEMS = ("PGGANSystem", "BAPGANSystem")
CSV_PATH_COLUMNS = ("path", "image", "file", "filename")
TTA_SHIFT = 0.03  # share of the input size of the two TTA shifts


# ------------------------------------------------------------------------------ inputs
def collect_inputs(inputs: Sequence[str | Path]) -> pd.DataFrame:
    """Rows ``path`` (absolute), ``sex`` (1 male, 0 female, NaN unknown), ``sex_source`` (csv or empty)
    from folders, CSVs and image files, in the order given (a folder's files sorted)."""
    rows: list[dict[str, Any]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            rows += [{"path": str(p.resolve()), "sex": np.nan, "sex_source": ""} for p in found]
        elif path.suffix.lower() == ".csv":
            rows += _csv_rows(path)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{path} is not an image ({', '.join(IMAGE_SUFFIXES)}), a CSV or a folder")
            rows.append({"path": str(path.resolve()), "sex": np.nan, "sex_source": ""})
        elif path.name.lower().endswith((".nii", ".nii.gz")):
            raise DataError(f"{path}: CT volumes are not predicted here; give the 2-D projection (PNG) instead")
        else:
            raise DataError(f"input {path} does not exist: give folders, CSVs or image files")
    table = pd.DataFrame(rows, columns=["path", "sex", "sex_source"])
    volumes = [p for p in table["path"] if Path(p).name.lower().endswith((".nii", ".nii.gz"))]
    if volumes:
        raise DataError(f"{volumes[0]}: CT volumes are not predicted here; give the 2-D projection (PNG) instead")
    return table.drop_duplicates("path").reset_index(drop=True)


def _csv_rows(csv: Path) -> list[dict[str, Any]]:
    from data_modules.base import read_label_file

    frame = read_label_file(csv)
    column = next((c for c in frame.columns if str(c).strip().lower() in CSV_PATH_COLUMNS), None)
    if column is None:
        raise DataError(f"{csv} has no image column ({'/'.join(CSV_PATH_COLUMNS)}); it has {list(frame.columns)}")
    sex_col = next((c for c in frame.columns if str(c).strip().lower() in ("sex", "male", "gender")), None)
    sex = np.full(len(frame), np.nan, np.float32)
    if sex_col is not None:
        given = frame[sex_col].notna() & (frame[sex_col].astype(str).str.strip() != "")
        if given.any():
            sex[given.to_numpy()] = parse_sex(frame.loc[given, sex_col], str(csv), str(sex_col))
    rows = []
    for i, (value, s) in enumerate(zip(frame[column], sex)):
        path = Path(str(value).strip())
        path = path if path.is_absolute() else csv.parent / path
        if not path.is_file():
            raise DataError(f"{csv} row {i + 2}: image {value} does not exist; fix the path or remove the row")
        rows.append({"path": str(path.resolve()), "sex": s, "sex_source": "" if np.isnan(s) else "csv"})
    return rows


def image_ids(paths: Sequence[str]) -> list[str]:
    """``0001-<8 hex of the file's sha1>``: names an image without its file name (which may hold a patient's)."""
    ids = []
    for i, path in enumerate(paths):
        digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()[:8]
        ids.append(f"{i + 1:04d}-{digest}")
    return ids


def header_sex(path: str) -> float:
    """PatientSex of a DICOM file (1 male, 0 female), NaN for other files or when absent."""
    if Path(path).suffix.lower() not in DICOM_SUFFIXES:
        return math.nan
    from data_modules.dicom import header_sex_age

    sex, _ = header_sex_age(path)
    return math.nan if sex is None else float(sex)


# ------------------------------------------------------------------------------ models
@dataclass
class Predictor:
    """A run's system and DataModule, ready for single images (and, for stage 2 of the ROI pipeline,
    its localizer)."""

    run: Run
    system: Any
    dm: Any
    localizer: Predictor | None = None
    card: dict[str, Any] = field(default_factory=dict)
    _layer: Any = None

    @property
    def units(self) -> str:
        return getattr(self.dm, "age_units", "years")

    @property
    def network(self):
        return self.system.network

    @property
    def needs_sex(self) -> bool:
        if type(self.system).__name__ == "TJNetSystem":
            return True
        return bool(getattr(self.network, "use_sex", False))

    @property
    def predicts_sex(self) -> bool:
        return type(self.system).__name__ == "TJNetSystem" and getattr(self.network, "block5", None) is not None

    def inputs(self, paths: Sequence[str], folder: Path) -> tuple[torch.Tensor, np.ndarray]:
        """Network inputs [N, 1, H, W] (before the DataModule's batch transform) and the uint8 images
        [N, H, W] they were made from, through the DataModule's own reading, resizing and crops."""
        import albumentations as A

        table = pd.DataFrame({"path": list(paths), "age": np.nan, "sex": np.nan})
        cache = ImageCache(list(paths), self.dm.image_size, self.dm.keep_aspect, folder, self.dm.crop,
                           window=self.dm.window)
        crop = getattr(self.dm, "crop_size", None)  # e.g. whole-body CT: the centre crop of evaluation
        augment = A.Compose([A.CenterCrop(*crop)]) if crop else None
        dataset = ImageTableDataset(table, cache, augment, use_cache=False)
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        shown = ((images[:, 0] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        return images, shown

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """The DataModule's batch transform (e.g. the training set's pixel standardisation)."""
        return self.dm.on_after_batch_transfer({"image": images}, 0)["image"]

    def age(self, images: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        """Predicted age in label units [N] of transformed inputs."""
        with torch.no_grad():
            return self.system(images, sex).float()

    def male_probability(self, images: torch.Tensor) -> torch.Tensor:
        """TJ-Net's own sex classifier (block 5): P(male) [N]."""
        with torch.no_grad():
            return self.network.sex_logits(self.network.forward_features(images)).float().softmax(1)[:, 1]

    def cam_layer(self, images: torch.Tensor, sex: torch.Tensor):
        """The network's ``cam_layer`` or else the last layer with a spatial output (Grad-CAM's target)."""
        if self._layer is None:
            self._layer = getattr(self.network, "cam_layer", None) or last_spatial_layer(
                self.score(sex), self.network, images)
        return self._layer

    def score(self, sex: torch.Tensor):
        """What Grad-CAM explains: the predicted age; for an age classifier the expected age class, which
        has a gradient whatever the system's readout (an arg-max has none)."""
        if type(self.system).__name__ != "TJNetSystem":
            return lambda x: self.system(x, sex)
        from boneage.losses_tjnet import expected_class

        logits = getattr(self.network, "predict", self.network)
        return lambda x: expected_class(logits(x, sex))

    def heat(self, images: torch.Tensor, sex: torch.Tensor) -> np.ndarray:
        """Grad-CAM maps [N, H, W] in [0, 1] of the predicted age (:mod:`boneage.analysis.gradcam`)."""
        from boneage.analysis.gradcam import grad_cam

        layer = self.cam_layer(images[:1], sex[:1])
        return grad_cam(self.score(sex), layer, images).cpu().numpy()


def last_spatial_layer(fn, network: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """The module of ``network`` that last returns a [B, K, h, w] tensor with h, w > 1 in a forward pass."""
    seen: list[torch.nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, out: seen.append(mod) if isinstance(out, torch.Tensor)
                                     and out.dim() == 4 and min(out.shape[-2:]) > 1 else None)
             for m in network.modules() if m is not network]
    try:
        with torch.no_grad():
            fn(images)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise RunError(f"{type(network).__name__} has no layer with a spatial output: no Grad-CAM for it")
    return seen[-1]


def test_mae(run: Run) -> tuple[float | None, str | None]:
    """(test MAE in label units, the test run's id) of the run's newest test evaluation, if any."""
    for test in reversed(run.evaluations("test")):
        try:
            metrics = test.metrics()
        except RunError:
            continue
        if "test/mae" in metrics.columns and metrics["test/mae"].notna().any():
            return float(metrics["test/mae"].dropna().iloc[-1]), test.id
    return None, None


def model_card(run: Run, system: Any, dm: Any, ckpt: str | None) -> dict[str, Any]:
    """What a reader needs to judge a run's predictions: experiment, run, networks, data, test MAE."""
    data = (run.config().get("data") or {}).get("init_args") or {}
    units = getattr(dm, "age_units", "years")
    mae, test_id = test_mae(run)
    network = getattr(system, "network", None)
    return {
        "experiment": run.experiment, "run": run.label, "system": type(system).__name__,
        "network": type(network).__name__ + (f" ({network.backbone.__class__.__name__})"
                                             if hasattr(network, "backbone") else ""),
        "data": f"{type(dm).__name__} "
                + ", ".join(f"{k}: {data[k]}" for k in ("data_dir", "csv_path") if data.get(k)),
        "image_size": list(dm.image_size), "units": units,
        "checkpoint": Path(ckpt).name if ckpt else None,
        "test_mae_months": None if mae is None else round(mae * MONTHS[units], 3),
        "test_run": test_id,
    }


def _build_system(run: Run, ckpt: str):
    import warnings

    with warnings.catch_warnings():  # Lightning's note on save_hyperparameters: not for a user of the run
        warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module` and is already saved.*")
        return build_system(run, ckpt)


def _datamodule_state(dm: Any, ckpt: str | None) -> None:
    """Load the DataModule state the checkpoint carries (e.g. whole-body CT's pixel statistics)."""
    if not ckpt or not hasattr(dm, "load_state_dict"):
        return
    state = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False)
    if type(dm).__qualname__ in state:
        dm.load_state_dict(state[type(dm).__qualname__])


def load_predictor(spec: str, runs_dir: str | Path = RUNS_DIR, ckpt: str = "best",
                   localizer: str | None = None) -> Predictor:
    """A fit run named ``<experiment>/<run id>``, ``<experiment>`` (its newest fit run) or a run folder."""
    run = _resolve(spec, runs_dir)
    cls = ((run.config().get("model") or {}).get("class_path") or "").rsplit(".", 1)[-1]
    if cls in GAN_SYSTEMS:
        raise RunError(f"{run.label} is a {cls} (a generative model): it predicts no age; name an age "
                       "regressor or TJ-Net run")
    if cls == "AgeGroupLocalizer":
        raise RunError(f"{run.label} is the ROI localizer (stage 1): name the stage-2 regressor run trained on "
                       "its export; it finds this localizer itself")
    system = _build_system(run, ckpt)
    dm = build_data(run)
    _datamodule_state(dm, system.ckpt_path)
    predictor = Predictor(run, system, dm, card=model_card(run, system, dm, system.ckpt_path))
    stage1 = localizer or roi_localizer_of(run)
    if stage1:
        predictor.localizer = _load_localizer(stage1, runs_dir, ckpt)
        predictor.card["localizer"] = predictor.localizer.run.label
    return predictor


def roi_localizer_of(run: Run) -> str | None:
    """The stage-1 fit run (a folder) of a stage-2 ROI run, found through the ROI export its CSV came from."""
    csv = ((run.config().get("data") or {}).get("init_args") or {}).get("csv_path")
    if not csv or Path(csv).parent.name != "roi_dataset":
        return None
    export = Run(Path(csv).parent.parent)
    info = export.info
    if info.get("source_dir") and Path(info["source_dir"]).is_dir():
        return str(info["source_dir"])
    # a cross-fitted export: its fold localizers; paper is silent on new images: chose fold 0's
    ids = [info.get("source_run")] if info.get("source_run") else list(info.get("source_runs") or [])
    for run_id in ids:
        if run_id and (export.path.parent / run_id).is_dir():
            return str(export.path.parent / run_id)
    raise RunError(f"{run.label} trained on the ROI export {export.path}, whose localizer run is gone: "
                   "name it with --localizer <experiment>/<run id>")


def _resolve(spec: str, runs_dir: str | Path) -> Run:
    path = Path(spec)
    if path.is_dir():
        return resolve_run(runs_dir, path.parent.name, str(path))
    experiment, _, run_id = spec.partition("/")
    return resolve_run(runs_dir, experiment, run_id or None)


def _load_localizer(spec: str, runs_dir: str | Path, ckpt: str) -> Predictor:
    run = _resolve(spec, runs_dir)
    system = _build_system(run, ckpt)
    dm = build_data(run)
    return Predictor(run, system, dm, card=model_card(run, system, dm, system.ckpt_path))


# ------------------------------------------------------------------------------ prediction
@dataclass
class Result:
    """Per image: ensemble age in months, spread, each run's months, sex used and where from, the
    heat map and the input it lies on."""

    months: np.ndarray            # [N]
    sd_months: np.ndarray         # [N] (NaN for one run)
    per_run: dict[str, np.ndarray]
    sex: np.ndarray               # [N] 1 male, 0 female, NaN unused
    sex_source: list[str]
    heat: np.ndarray              # [N, H, W] in [0, 1]
    shown: np.ndarray             # [N, H, W] uint8 network input of the first run


def _tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    d = max(1, round(TTA_SHIFT * min(x.shape[-2:])))
    pad = (d, d, d, d)
    padded = F.pad(x, pad, value=-1.0)  # black in the [-1, 1] input units
    h, w = x.shape[-2:]
    return [x, torch.flip(x, dims=[-1]), padded[..., :h, :w], padded[..., 2 * d:, 2 * d:]]


def _roi_crops(pred: Predictor, paths: Sequence[str], folder: Path) -> list[str]:
    """Stage 1 of the ROI pipeline: each image's localizer Grad-CAM box, cropped from the original
    (:func:`boneage.analysis.roi.locate_roi`, :func:`~boneage.analysis.roi.crop`), saved as a PNG."""
    from boneage.analysis.gradcam import grad_cam
    from boneage.analysis.roi import crop, locate_roi, read_original, save_crop

    loc = pred.localizer
    hp = loc.system.hparams
    images, _ = loc.inputs(paths, folder)
    x = loc.transform(images)
    with torch.no_grad():
        logits = loc.system(x)
    target = {"expected_age": loc.system.expected_age, "age_direction": loc.system.age_direction,
              "predicted": logits.argmax(1)}[hp.cam_target]
    cams = grad_cam(loc.network, loc.network.cam_layer, x, target).cpu().numpy()
    out = []
    for i, path in enumerate(paths):
        original = read_original(path, loc.dm.window)
        res = locate_roi(cams[i], original.shape[:2], hp.gamma, hp.blobs, hp.empty, hp.margin,
                         bool(loc.dm.keep_aspect))
        name = folder / f"crop-{i:05d}.png"
        save_crop(name, crop(original, res.box))
        out.append(str(name))
    return out


def resolve_sex(table: pd.DataFrame, predictors: Sequence[Predictor], cli_sex: str | None,
                inputs: dict[int, tuple[torch.Tensor, np.ndarray]], sex_overrides: bool = False
                ) -> tuple[np.ndarray, list[str]]:
    """One sex per image for every run: CSV, then DICOM header, then ``cli_sex`` (first of all with
    ``sex_overrides``), then the runs' own classifier."""
    n = len(table)
    sex = table["sex"].to_numpy(np.float64).copy()
    source = list(table["sex_source"])
    given = math.nan if not cli_sex else (1.0 if cli_sex.upper().startswith("M") else 0.0)
    if sex_overrides and cli_sex:
        return np.full(n, given), ["cli"] * n
    for i, path in enumerate(table["path"]):
        if np.isnan(sex[i]):
            sex[i] = header_sex(path)
            source[i] = "" if np.isnan(sex[i]) else "dicom"
        if np.isnan(sex[i]) and cli_sex:
            sex[i], source[i] = given, "cli"
    if not any(p.needs_sex for p in predictors):
        return np.full(n, np.nan), ["unused"] * n
    missing = np.isnan(sex)
    if missing.any():
        guessers = [k for k, p in enumerate(predictors) if p.predicts_sex]
        if not guessers:
            first = table["path"].iloc[int(np.flatnonzero(missing)[0])]
            label = next(p.run.label for p in predictors if p.needs_sex)
            raise DataError(f"image {int(np.flatnonzero(missing)[0]) + 1} ({Path(first).suffix} file) has no sex "
                            f"(no CSV sex column, no DICOM PatientSex) and {label} needs one: give --sex M|F or a "
                            "CSV with a sex column")
        prob = np.mean([predictors[k].male_probability(predictors[k].transform(inputs[k][0])).numpy()
                        for k in guessers], axis=0)
        for i in np.flatnonzero(missing):
            sex[i] = float(prob[i] >= 0.5)
            source[i] = "model"
    return sex, source


def predict(predictors: Sequence[Predictor], table: pd.DataFrame, sex: str | None = None,
            tta: bool = False, heatmaps: bool = True, sex_overrides: bool = False) -> Result:
    """Ensemble prediction of every image of ``table`` (rows ``path``, ``sex``, ``sex_source``); ``sex``
    (M/F) for images without their own, or for all with ``sex_overrides``."""
    paths = list(table["path"])
    with tempfile.TemporaryDirectory(prefix="boneage-predict-") as tmp:
        folder = Path(tmp)
        inputs: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
        for k, pred in enumerate(predictors):
            if pred.localizer:
                (folder / f"roi{k}").mkdir()
            sources = _roi_crops(pred, paths, folder / f"roi{k}") if pred.localizer else paths
            inputs[k] = pred.inputs(sources, folder)
        used_sex, sex_source = resolve_sex(table, predictors, sex, inputs, sex_overrides)
    s = torch.tensor(np.nan_to_num(used_sex, nan=0.0), dtype=torch.float32)
    per_run: dict[str, np.ndarray] = {}
    heats = []
    size = inputs[0][1].shape[-2:]
    for k, pred in enumerate(predictors):
        images = inputs[k][0]
        views = _tta_views(images) if tta else [images]
        ages = torch.stack([pred.age(pred.transform(v), s) for v in views]).mean(0)
        per_run[pred.run.label] = ages.numpy() * MONTHS[pred.units]
        if heatmaps:
            cam = torch.from_numpy(pred.heat(pred.transform(images), s))[:, None]
            heats.append(F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)[:, 0].numpy())
    months = np.stack(list(per_run.values()))
    sd = months.std(axis=0, ddof=1) if len(months) > 1 else np.full(months.shape[1], np.nan)
    heat = np.mean(heats, axis=0) if heats else np.zeros((len(paths), *size), np.float32)
    return Result(months.mean(0), sd, per_run, used_sex, sex_source, heat, inputs[0][1])


# ------------------------------------------------------------------------------ outputs
def result_frame(result: Result, ids: Sequence[str], files: Sequence[str] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"image": list(ids)})
    if files is not None:
        frame["file"] = list(files)
    frame["age_months"] = np.round(result.months, 2)
    frame["age_years"] = np.round(result.months / 12.0, 3)
    frame["age_sd_months"] = np.round(result.sd_months, 2)
    frame["sex"] = ["" if np.isnan(s) else ("M" if s > 0.5 else "F") for s in result.sex]
    frame["sex_source"] = result.sex_source
    frame["runs"] = ";".join(result.per_run)
    for label, months in result.per_run.items():
        frame[f"months[{label}]"] = np.round(months, 2)
    return frame


def overlay_png(shown: np.ndarray, heat: np.ndarray) -> bytes:
    """PNG bytes of the Grad-CAM overlay (:func:`boneage.analysis.gradcam.overlay`); no metadata."""
    from PIL import Image

    from boneage.analysis.gradcam import overlay

    buf = io.BytesIO()
    Image.fromarray(overlay(shown, heat)).save(buf, format="PNG")
    return buf.getvalue()


def gray_png(shown: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(shown).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def card_html(card: dict[str, Any]) -> str:
    mae = card.get("test_mae_months")
    rows = [("experiment", card["experiment"]), ("run", card["run"]), ("system", card["system"]),
            ("network", card["network"]), ("data", card["data"]),
            ("input", f"{card['image_size'][0]} x {card['image_size'][1]} px, ages in {card['units']}"),
            ("checkpoint", card.get("checkpoint") or "-"),
            ("test MAE", f"{mae:.2f} months ({mae / 12:.2f} years), {card['test_run']}" if mae is not None
             else "no test evaluation of this run")]
    if card.get("localizer"):
        rows.append(("ROI localizer (stage 1)", card["localizer"]))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="card">{body}</table>'


def write_report(path: Path, frame: pd.DataFrame, result: Result, cards: Sequence[dict[str, Any]],
                 tta: bool) -> Path:
    """One self-contained HTML page: the table, thumbnails and heat maps (base64), the model cards."""
    rows = []
    for i, row in frame.iterrows():
        thumb = data_uri(gray_png(result.shown[i]))
        heat = data_uri(overlay_png(result.shown[i], result.heat[i]))
        sd = "" if pd.isna(row["age_sd_months"]) else f" &plusmn; {row['age_sd_months']:.1f}"
        name = f"<br><small>{html.escape(str(row['file']))}</small>" if "file" in frame.columns else ""
        runs = "<br>".join(f"{html.escape(k)}: {v[i]:.1f}" for k, v in result.per_run.items())
        rows.append(f"<tr><td>{html.escape(row['image'])}{name}</td><td><img src='{thumb}'></td>"
                    f"<td><img src='{heat}'></td><td><b>{row['age_months']:.1f}</b>{sd} months<br>"
                    f"{row['age_years']:.2f} years</td><td>{row['sex'] or '-'} ({row['sex_source']})</td>"
                    f"<td><small>{runs}</small></td></tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Bone age predictions</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}} img{{height:160px}}
table.card{{margin-bottom:1em}}</style></head><body>
<h1>Bone age predictions</h1>
<p>{len(frame)} images, {len(cards)} run(s){' (ensemble mean &plusmn; sd over runs)' if len(cards) > 1 else ''};
test-time augmentation {'on (image, flip, two 3% shifts)' if tta else 'off'}. Heat maps: Grad-CAM of the predicted
age{', mean over runs' if len(cards) > 1 else ''}, on the network input.</p>
<table><tr><th>image</th><th>input</th><th>Grad-CAM</th><th>bone age</th><th>sex (source)</th>
<th>each run (months)</th></tr>
{''.join(rows)}</table>
<h2>Models</h2>{''.join(card_html(c) for c in cards)}
</body></html>"""
    path.write_text(page)
    return path


def run_folder(runs: Sequence[str], inputs: Sequence[str], out: str | Path, runs_dir: str | Path = RUNS_DIR,
               sex: str | None = None, tta: bool = False, keep_names: bool = False,
               localizer: str | None = None) -> pd.DataFrame:
    """The whole command: predictions.csv, overlays/ and report.html in ``out``; returns the table."""
    table = collect_inputs(inputs)
    earlier = table["path"].map(lambda p: Path(p).is_relative_to(Path(out).resolve()))
    table = table[~earlier].reset_index(drop=True)  # an earlier report's overlays are no input
    if table.empty:
        raise DataError(f"no input images outside the output folder {out}")
    predictors = [load_predictor(r, runs_dir, localizer=localizer) for r in runs]
    result = predict(predictors, table, sex=sex, tta=tta)
    ids = image_ids(list(table["path"]))
    frame = result_frame(result, ids, list(table["path"]) if keep_names else None)
    out = Path(out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "predictions.csv", index=False)
    for i, image in enumerate(ids):
        (out / "overlays" / f"{image}.png").write_bytes(overlay_png(result.shown[i], result.heat[i]))
    write_report(out / "report.html", frame, result, [p.card for p in predictors], tta)
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="boneage predict-folder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="folders, CSVs (path + optional sex column) or image files")
    parser.add_argument("--run", action="append", required=True,
                        help="<experiment>/<run id> (or <experiment> for its newest fit run); repeat for an ensemble")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--runs-dir", "--runs_dir", default=RUNS_DIR)
    parser.add_argument("--sex", choices=["M", "F", "m", "f"],
                        help="the sex of the images whose CSV row or DICOM header gives none")
    parser.add_argument("--tta", action="store_true", help="average over flip and two small shifts")
    parser.add_argument("--keep-names", action="store_true", help="write the file names (they may identify patients)")
    parser.add_argument("--localizer", help="stage-1 localizer run of an ROI regressor (default: found via its export)")
    args = parser.parse_args(argv)
    frame = run_folder(args.run, args.inputs, args.out, args.runs_dir, args.sex, args.tta, args.keep_names,
                       args.localizer)
    out = Path(args.out)
    print(f"{len(frame)} images, {len(args.run)} run(s): {out / 'predictions.csv'}, {out / 'overlays'}/, "
          f"{out / 'report.html'}", file=sys.stderr)
    return 0
