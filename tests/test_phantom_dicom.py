"""Phantoms in the real formats: DICOM hands and two-frame NM bone scans read like their PNGs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from boneage.analysis.roi import RoiExporter
from boneage.phantoms import rsna, scintigraphy
from boneage.phantoms.cli import main as phantom_cli
from boneage.phantoms.common import NM_STORAGE, save_dicom
from data_modules.base import DataError, read_gray
from data_modules.dicom import header_sex_age, read_dicom
from data_modules.scintigraphy import ScintigraphyDataModule

NM_WINDOW = [0, scintigraphy.NM_COUNTS]
REPO = Path(__file__).resolve().parents[1]


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal within one grey level (12-bit or count quantisation against the PNG's 8 bits)."""
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_phantom_hands_as_dicom_decode_like_their_pngs(tmp_path):
    png = rsna.render(tmp_path / "png", n=6, seed=4, size=64, sixteen_bit_fraction=0.0, progress_bar=False)
    assert phantom_cli(["rsna", "--out", str(tmp_path / "dcm"), "--n", "6", "--seed", "4", "--size", "64",
                        "--format", "dicom"]) == 0
    dcm = tmp_path / "dcm"
    pd.testing.assert_frame_equal(pd.read_csv(png / rsna.TRAIN_CSV), pd.read_csv(dcm / rsna.TRAIN_CSV))
    seen = set()
    for i in pd.read_csv(dcm / rsna.TRAIN_CSV)["id"]:
        file = dcm / rsna.TRAIN_DIR / f"{i}.dcm"
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        seen.add((ds.Modality, ds.PhotometricInterpretation))
        assert (ds.BitsAllocated, ds.BitsStored) == (16, 12) and ds.PatientID == f"PHANTOM-{i:04d}"
        assert float(ds.RescaleSlope) != 1 and "WindowCenter" in ds and "PatientBirthDate" not in ds
        _close(read_gray(file, "dicom"), read_gray(png / rsna.TRAIN_DIR / f"{i}.png"))
    assert seen == {("CR", "MONOCHROME1"), ("DX", "MONOCHROME2")}


def _scans(tmp_path):
    args = dict(n=4, seed=2, width=48, height=160, progress=False)
    scintigraphy.render(tmp_path / "png", **args)
    scintigraphy.render(tmp_path / "dcm", **args, format="dicom")
    return tmp_path / "png", tmp_path / "dcm"


def test_two_frame_nm_scan_is_the_png_layout_also_from_two_files(tmp_path):
    png, dcm = _scans(tmp_path)
    for i in range(4):
        side_by_side = read_gray(png / f"images/scan_{i:05d}.png")
        file = dcm / f"images/scan_{i:05d}.dcm"
        frames, meta = read_dicom(file)
        assert frames.shape == (2, 160, 24) and meta["modality"] == "NM"
        _close(read_gray(file, NM_WINDOW), side_by_side)
        # the file stores the posterior view as its detector sees it: mirrored against the PNG
        assert not np.array_equal(frames[1], frames[1][:, ::-1])
        sex, age = header_sex_age(file)
        truth = pd.read_csv(dcm / "phantom_truth.csv").iloc[i]
        assert sex == (0.0 if truth.sex == "F" else 1.0) and age == int(truth.true_age)
    # the same scans as two files per scan (anterior, posterior), listed in an image_posterior column
    labels = pd.read_csv(dcm / "labels.csv")
    posterior = []
    for image in labels["image"]:
        frames = pydicom.dcmread(dcm / image).pixel_array
        for view, frame in zip(("ant", "post"), frames):
            save_dicom(dcm / image.replace(".dcm", f"_{view}.dcm"), frame, modality="NM", sop_class=NM_STORAGE,
                       patient_id="PHANTOM-0009", sex="F", bits_stored=16)
        posterior.append(image.replace(".dcm", "_post.dcm"))
    labels.assign(image=labels["image"].str.replace(".dcm", "_ant.dcm"), image_posterior=posterior).to_csv(
        dcm / "two_files.csv", index=False)
    common = dict(image_size=(80, 24), window=NM_WINDOW, test_fraction=0.25, val_fraction=0.25,
                  cache_dir=str(tmp_path / "cache"))
    one = ScintigraphyDataModule(csv_path=str(dcm / "labels.csv"), **common)
    two = ScintigraphyDataModule(csv_path=str(dcm / "two_files.csv"), **common)
    one.setup()
    two.setup()
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(one.dataset(split).cache.array, two.dataset(split).cache.array)
    # a posterior file that is not there is named with its row
    labels.assign(image_posterior=["nowhere.dcm"] + posterior[1:]).to_csv(dcm / "two_files.csv", index=False)
    with pytest.raises(DataError, match=r"two_files.csv: row 2 .*nowhere.dcm"):
        ScintigraphyDataModule(csv_path=str(dcm / "two_files.csv"), **common).setup()


def test_roi_export_crops_with_the_stage1_window(tmp_path):
    _, dcm = _scans(tmp_path)
    file = dcm / "images/scan_00000.dcm"
    heat = np.zeros((40, 12))
    heat[10:20, 6:10] = 1.0  # on the posterior half
    exporter = RoiExporter(tmp_path / "roi", window=NM_WINDOW)
    row = exporter.add(file, 50.0, "F", heat, order=0)
    ant, post = (dcm / "images/a.dcm", dcm / "images/p.dcm")
    for path, frame in zip((ant, post), pydicom.dcmread(file).pixel_array):
        save_dicom(path, frame, modality="NM", sop_class=NM_STORAGE, patient_id="PHANTOM-0009", sex="F",
                   bits_stored=16)
    pair = exporter.add((ant, post), 50.0, "F", heat, order=1)
    stage1 = read_gray(file, NM_WINDOW)  # the stage-1 input before resizing
    box = np.s_[row["y0"]:row["y1"], row["x0"]:row["x1"]]
    assert (row["x0"], row["x1"]) == (24, 40)
    for r in (row, pair):
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "roi" / r["image"])), stage1[box])
    assert pair["source"] == str(ant)


def test_roi_pipeline_exports_crops_from_two_frame_nm_scans(tmp_path):
    """Stage 1 trains on two-frame NM files with the YAML's window and exports crops in that window."""
    from boneage.analysis.roi import export_csv
    from boneage.cli import RUN_ENV
    from boneage.cli import main as cli

    def _stage(cmd: str, exp: str, csv: str, runs: Path, *extra: str) -> None:
        os.environ.pop(RUN_ENV, None)  # a fresh run directory per command
        configs = ["--config", str(REPO / "experiments" / f"{exp}.yaml"),
                   "--config", str(REPO / "tests" / "configs" / f"{exp}.yaml")]
        cli([cmd, *configs, "--runs_dir", str(runs), "--data.init_args.csv_path", csv, "--trainer.max_epochs", "1",
             "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
             *extra])

    csv = scintigraphy.render(tmp_path / "scans", n=16, seed=5, width=48, height=160, progress=False,
                              format="dicom")
    runs = tmp_path / "runs"
    _stage("fit", "roi_localizer_scinti", str(csv), runs)
    _stage("predict", "roi_localizer_scinti", str(csv), runs, "--ckpt_path", "best",
           "--data.init_args.predict_split", "all")
    roi = pd.read_csv(export_csv(runs)[0])
    assert len(roi) == 16 and roi.source.str.endswith(".dcm").all()
    for _, r in roi.head(4).iterrows():
        stage1 = read_gray(r.source, NM_WINDOW)  # roi_localizer_scinti.yaml's window
        crop = np.array(Image.open(export_csv(runs)[0].parent / r.image))
        np.testing.assert_array_equal(crop, stage1[r.y0:r.y1, r.x0:r.x1])


def test_rsna_datamodule_reads_the_dicom_layout_like_the_png_one(tmp_path):
    from data_modules.rsna import RSNADataModule

    for fmt, frac in (("png", 0.0), ("dicom", 0.1)):
        rsna.render(tmp_path / fmt, n=20, seed=6, size=64, sixteen_bit_fraction=frac, progress_bar=False, format=fmt)
    dms = [RSNADataModule(data_dir=str(tmp_path / fmt), image_size=(48, 48), window="dicom",
                          cache_dir=str(tmp_path / "cache")) for fmt in ("png", "dicom")]
    for dm in dms:
        dm.setup("fit")
    assert dms[1].table("train")["path"].str.endswith(".dcm").all()
    for split in ("train", "val", "test"):
        a, b = (dm.dataset(split).cache.array.astype(int) for dm in dms)
        assert np.abs(a - b).max() <= 1
