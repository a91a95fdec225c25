"""Phantoms in the real formats: the Tongji hands and the bone crops as DICOM read like their PNGs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest

from boneage.phantoms import bones, tongji
from boneage.phantoms.cli import main as phantom_cli
from data_modules.bones import FemurDataModule, PhalangeDataModule
from data_modules.tongji import TongjiDataModule


def _same_images(png_dm, dicom_dm) -> None:
    """Both DataModules split alike and cache images within one grey level of each other (12-bit
    quantisation against the PNG's 8 bits)."""
    for dm in (png_dm, dicom_dm):
        dm.setup("fit")
    assert dicom_dm.table("train")["path"].str.endswith(".dcm").all()
    for split in ("train", "val", "test"):
        a, b = (dm.dataset(split).cache.array.astype(int) for dm in (png_dm, dicom_dm))
        assert a.shape == b.shape and len(a) > 0
        assert np.abs(a - b).max() <= 1


def _headers(root, csv) -> list[pydicom.Dataset]:
    headers = [pydicom.dcmread(root / image, stop_before_pixels=True) for image in pd.read_csv(csv)["image"]]
    for ds in headers:  # synthetic patients only, 12 bits stored in 16
        assert ds.PatientID.startswith("PHANTOM-") and ds.PatientName == ds.PatientID
        assert "PatientBirthDate" not in ds and "InstitutionName" not in ds
        assert (ds.BitsAllocated, ds.BitsStored) == (16, 12)
    return headers


def test_tongji_hands_as_dicom_load_like_their_pngs(tmp_path):
    # 8-bit PNGs: a 16-bit PNG has no window and would go through its own percentiles
    tongji.render(tmp_path / "png", n=12, seed=5, size=48, eight_bit_fraction=1.0, progress_bar=False)
    assert phantom_cli(["tongji", "--out", str(tmp_path / "dcm"), "--n", "12", "--seed", "5", "--size", "48",
                        "--format", "dicom"]) == 0
    png, dcm = (pd.read_csv(tmp_path / fmt / tongji.LABEL_FILE) for fmt in ("png", "dcm"))
    pd.testing.assert_frame_equal(png.assign(image=png["image"].str.replace(".png", ".dcm")), dcm)
    headers = _headers(tmp_path / "dcm", tmp_path / "dcm" / tongji.LABEL_FILE)
    assert {(ds.Modality, ds.PhotometricInterpretation) for ds in headers} == {
        ("CR", "MONOCHROME1"), ("DX", "MONOCHROME2")}
    assert [ds.PatientSex for ds in headers] == dcm["sex"].tolist()
    common = dict(image_size=(32, 32), window="dicom", val_fraction=0.25, test_fraction=0.25)
    _same_images(TongjiDataModule(csv_path=str(tmp_path / "png" / tongji.LABEL_FILE), **common),
                 TongjiDataModule(csv_path=str(tmp_path / "dcm" / tongji.LABEL_FILE), **common))


@pytest.mark.parametrize(("bone", "module"), [("femur", FemurDataModule), ("phalange", PhalangeDataModule)])
def test_bone_crops_as_dicom_load_like_their_pngs(tmp_path, bone, module):
    png_csv = bones.render(tmp_path / "png", n=12, seed=3, bone=bone, size=32, progress=False)
    assert phantom_cli(["bones", "--bone", bone, "--out", str(tmp_path / "dcm"), "--n", "12", "--seed", "3",
                        "--size", "32", "--format", "dicom"]) == 0
    dcm_csv = tmp_path / "dcm" / "labels.csv"
    png = pd.read_csv(png_csv)
    pd.testing.assert_frame_equal(png.assign(image=png["image"].str.replace(".png", ".dcm")), pd.read_csv(dcm_csv))
    headers = _headers(tmp_path / "dcm", dcm_csv)
    assert {ds.Modality for ds in headers} == {"DX"}
    common = dict(image_size=(32, 32), window="dicom", val_fraction=0.25, test_fraction=0.25, augment=[])
    _same_images(module(csv_path=str(png_csv), **common), module(csv_path=str(dcm_csv), **common))


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'png' or 'dicom'"):
        tongji.render(tmp_path / "t", n=1, size=32, progress_bar=False, format="dcm")
    with pytest.raises(ValueError, match="'png' or 'dicom'"):
        bones.render(tmp_path / "b", n=1, size=32, progress=False, format="dcm")
