"""CT volumes (DICOM series folders, NIfTI files) -> the 2-D whole-body bone image of paper 002."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from boneage.phantoms import wholebody_ct as phantom
from data_modules import volume
from data_modules.base import DataError, resize_gray
from data_modules.volume import project, read_volume
from data_modules.wholebody import WholeBodyCTDataModule

SLICES = 32  # phantom volumes of 32 slices: 64 x 19 px projections, fast


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    """The same 12 phantom subjects as DICOM series, NIfTI files and 2-D PNGs."""
    root = tmp_path_factory.mktemp("ct_volumes")
    geometry = phantom.volume_geometry(SLICES)
    for fmt in ("series", "nifti"):
        phantom.render(root / fmt, n=12, seed=3, format=fmt, slices=SLICES, progress=False)
    phantom.render(root / "png", n=12, seed=3, height=geometry["height"], width=geometry["width"], progress=False)
    return {fmt: root / fmt for fmt in ("series", "nifti", "png")}


def _series(folder: Path, hu: np.ndarray, pixel: float = 1.0, thickness: float = 3.0) -> Path:
    """An axial series of ``hu`` [slice (head first), row (front to back), column (right to left)]."""
    phantom.write_series(folder, hu, pixel, thickness, "t", "F", [0])
    return folder


def test_series_and_nifti_of_a_phantom_subject_project_to_its_2d_image(phantoms):
    series = project(read_volume(phantoms["series"] / "series" / "ct_00004"))
    nifti = project(read_volume(phantoms["nifti"] / "volumes" / "ct_00004.nii.gz"))
    assert series.dtype == np.uint8 and series.shape == nifti.shape
    assert np.abs(series.astype(int) - nifti).max() <= 1
    # the 2-D phantom of the same subject, two rows per slice: the age cues survive the projection
    png = cv2.imread(str(phantoms["png"] / "images" / "ct_00004.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    per_slice = cv2.resize(png, (png.shape[1], SLICES), interpolation=cv2.INTER_AREA)
    expected = cv2.resize(per_slice, png.shape[::-1], interpolation=cv2.INTER_LINEAR)
    assert series.shape == png.shape  # slices twice as thick as the pixels: 2 rows each
    assert np.abs(series - expected).mean() < 1.0
    other = cv2.imread(str(phantoms["png"] / "images" / "ct_00005.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    assert np.abs(series - other).mean() > 5.0


def test_bone_lands_where_the_voxel_spacing_says(tmp_path):
    # 20 slices 3 mm apart, 12 rows x 40 columns of 1 mm: 60 mm tall, 40 mm wide
    hu = np.full((20, 12, 40), -1000.0, np.float32)
    hu[4:6, 5:7, 10:12] = 1200.0  # slices 4-5 (12-18 mm below the top), columns 10-11 (patient's right side)
    vol = read_volume(_series(tmp_path / "s", hu))
    assert vol.spacing == pytest.approx((1.0, 1.0, 3.0))

    def bone(image: np.ndarray) -> tuple[float, float]:
        ys, xs = np.nonzero(image > 128)
        return float(ys.mean()), float(xs.mean())

    image = project(vol)  # 1 mm pixels
    assert image.shape == (60, 40)
    assert bone(image) == pytest.approx((15.0 - 0.5, 11.0 - 0.5), abs=0.3)  # pixel centres
    coarse = project(vol, spacing_mm=2.0)
    assert coarse.shape == (30, 20)
    assert bone(coarse) == pytest.approx((7.0, 5.0), abs=0.3)
    # the same bone in a NIfTI stored left-right and head-foot flipped: the affine, not the array order, counts
    x0, y0 = -19.5, -5.5
    affine = np.array([[-1.0, 0, 0, -x0], [0, -1.0, 0, -y0], [0, 0, -3.0, 0], [0, 0, 0, 1]])  # as the series
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0)[::-1, :, ::-1].copy(),
                             affine @ np.array([[-1, 0, 0, 39], [0, 1, 0, 0], [0, 0, -1, 19], [0, 0, 0, 1]])),
             tmp_path / "flipped.nii.gz")
    np.testing.assert_array_equal(project(read_volume(tmp_path / "flipped.nii.gz")), image)


def test_shuffled_slice_files_read_as_the_same_volume(phantoms, tmp_path):
    source = phantoms["series"] / "series" / "ct_00002"
    files = sorted(source.iterdir())
    order = np.random.default_rng(0).permutation(len(files))
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for name, f in zip(order, files):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = int(name) + 1  # names and instance numbers no longer follow the anatomy
        ds.save_as(shuffled / f"IM{name:05d}")  # no .dcm suffix, as many scanners write them
    a, b = read_volume(source), read_volume(shuffled)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.spacing == b.spacing and b.orientation == "RAS"


@pytest.mark.parametrize("damage, message", [
    ("spacing", "mixed pixel spacing"),
    ("orientation", "mixed orientation"),
    ("missing", "missing slices, a gap of 9.00 mm"),
    ("one", "fewer than 2 slices"),
    ("stray", "notes.txt is not a DICOM file"),
    ("no pixels", "slice_0002.dcm has no pixel data"),
])
def test_broken_series_give_one_line_errors_naming_the_folder(tmp_path, damage, message):
    folder = _series(tmp_path / f"patient_{damage.replace(' ', '_')}", np.zeros((8, 6, 6), np.float32))
    files = sorted(folder.iterdir())
    if damage == "no pixels":
        ds = pydicom.dcmread(files[2])
        del ds.PixelData
        ds.save_as(files[2])
    elif damage in ("spacing", "orientation"):
        ds = pydicom.dcmread(files[5])
        if damage == "spacing":
            ds.PixelSpacing = [0.8, 0.8]
        else:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.save_as(files[5])
    elif damage == "missing":
        files[3].unlink()
        files[4].unlink()
    elif damage == "one":
        for f in files[1:]:
            f.unlink()
    else:
        (folder / "notes.txt").write_text("series of patient 7")
    with pytest.raises(DataError, match=message) as err:
        read_volume(folder)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_files_that_are_not_volumes_are_errors(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 1), np.int16), np.eye(4)), tmp_path / "flat.nii")
    with pytest.raises(DataError, match=r"flat.nii is not a CT volume: its data has shape \(8, 8, 1\)"):
        read_volume(tmp_path / "flat.nii")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match="cannot read NIfTI volume .*broken.nii.gz"):
        read_volume(tmp_path / "broken.nii.gz")


def _csv(tmp_path: Path, phantoms: dict[str, Path], formats: dict[int, str]) -> Path:
    """The phantom's label CSV, row i's image taken from the data set of format ``formats[i]``
    (default the DICOM series): the same subjects in every format."""
    table = pd.read_csv(phantoms["series"] / "labels.csv")
    images = {fmt: pd.read_csv(folder / "labels.csv")["image"] for fmt, folder in phantoms.items()}
    table["image"] = [str(phantoms[fmt] / images[fmt][i])
                      for i, fmt in ((i, formats.get(i, "series")) for i in range(len(table)))]
    path = tmp_path / "labels.csv"
    table.to_csv(path, index=False)
    return path


def test_datamodule_reads_series_nifti_and_images_row_by_row_and_projects_each_volume_once(
        phantoms, tmp_path, monkeypatch):
    import pytorch_lightning as pl

    csv = _csv(tmp_path, phantoms, {1: "nifti", 2: "png", 3: "nifti"})
    kw = {"csv_path": str(csv), "image_size": (32, 16), "crop_size": None, "flip": False, "batch_size": 4,
          "cache_dir": str(tmp_path / "cache")}
    dm = WholeBodyCTDataModule(**kw)
    dm.trainer = pl.Trainer(default_root_dir=str(tmp_path / "run"), logger=False, enable_checkpointing=False)
    dm.setup("fit")
    figure = tmp_path / "run" / "figures" / "ct_projection.png"
    assert figure.is_file()
    listed = set(pd.read_csv(csv)["image"])
    tables = pd.concat([dm.table(s) for s in ("train", "val", "test")])
    assert set(tables["path"]) == listed  # tables (and so predictions.csv) name the volumes themselves
    assert len(dm.projections) == 11  # 9 series + 2 NIfTI; the PNG row is read as it is
    train = dm.table("train")
    for i, path in enumerate(train["path"]):
        image = cv2.imread(dm.projections.get(path, path), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(dm.dataset("train").cache.array[i], resize_gray(image, (32, 16), False))
    # projections are cached: another image size reads no volume again; another window does
    monkeypatch.setattr(volume, "read_volume", lambda p: (_ for _ in ()).throw(AssertionError(f"read {p}")))
    WholeBodyCTDataModule(**{**kw, "image_size": (40, 20)}).setup("fit")
    with pytest.raises(AssertionError, match="read "):
        WholeBodyCTDataModule(**kw, hu_window=(0, 1000)).setup("fit")


def test_a_broken_volume_in_the_csv_stops_with_its_folder_named(phantoms, tmp_path):
    csv = _csv(tmp_path, phantoms, {})
    broken = tmp_path / "broken"
    shutil.copytree(phantoms["series"] / "series" / "ct_00006", broken)
    sorted(broken.iterdir())[10].unlink()
    table = pd.read_csv(csv)
    table.loc[6, "image"] = str(broken)
    table.to_csv(csv, index=False)
    for workers in (0, 1):
        dm = WholeBodyCTDataModule(csv_path=str(csv), cache_dir=str(tmp_path / "cache"), num_workers=workers)
        with pytest.raises(DataError, match=f"^DICOM series {re.escape(str(broken))}: missing slices") as err:
            dm.setup("fit")
        assert "\n" not in str(err.value)


def test_predict_folder_of_series_and_nifti_files(phantoms, tmp_path):
    folder = tmp_path / "scans"
    shutil.copytree(phantoms["series"] / "series" / "ct_00000", folder / "patient_a" / "ct")
    shutil.copy(phantoms["nifti"] / "volumes" / "ct_00001.nii.gz", folder / "patient_b.nii.gz")
    dm = WholeBodyCTDataModule(csv_path=str(phantoms["series"] / "labels.csv"), image_size=(32, 16), crop_size=None,
                               cache_dir=str(tmp_path / "cache"), predict_dir=str(folder))
    dm.setup("predict")
    assert list(dm.table("predict")["path"]) == [str((folder / "patient_a" / "ct").resolve()),
                                                 str((folder / "patient_b.nii.gz").resolve())]
    assert dm.dataset("predict")[0]["image"].shape == (1, 32, 16)


def test_phantom_cli_writes_volumes_listed_in_labels_csv(tmp_path, capsys):
    from boneage.phantoms.cli import main

    assert main(["wholebody_ct", "--out", str(tmp_path / "n"), "--n", "2", "--format", "nifti", "--slices", "16"]) == 0
    labels = pd.read_csv(tmp_path / "n" / "labels.csv")
    assert list(labels["image"]) == ["volumes/ct_00000.nii.gz", "volumes/ct_00001.nii.gz"]
    assert read_volume(tmp_path / "n" / labels["image"][1]).hu.shape[2] == 16
    with pytest.raises(SystemExit, match="--height does not apply to --format series"):
        main(["wholebody_ct", "--out", str(tmp_path / "s"), "--format", "series", "--height", "300"])


@pytest.mark.parametrize("fmt", ["series", "nifti"])
def test_boneage_fit_ct_hvgg_on_phantom_volumes_writes_the_projection_figure(phantoms, run_cli, tmp_path, fmt):
    runs = run_cli("fit", "--config", "experiments/ct_hvgg.yaml", "--config", "tests/configs/ct_hvgg.yaml",
                   "--data.init_args.csv_path", str(phantoms[fmt] / "labels.csv"),
                   "--data.init_args.cache_dir", str(tmp_path / "cache"), "--data.init_args.num_workers", "0",
                   "--trainer.max_epochs", "1")
    run = next((runs / "ct_hvgg").iterdir())
    assert (run / "figures" / "ct_projection.png").is_file()
    assert any((run / "checkpoints").glob("*.ckpt"))
