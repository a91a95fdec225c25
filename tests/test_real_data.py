"""Real data as it comes: the RSNA download's own layouts and files, patients, and bad input.

Every bad input is an error naming the file and row (both rows for a duplicate) and what to do.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from boneage.phantoms.rsna import render
from data_modules.base import DataError
from data_modules.hospital import HospitalCSVDataModule
from data_modules.rsna import RSNADataModule
from data_modules.tongji import TongjiDataModule
from data_modules.wholebody import WholeBodyCTDataModule

TRAIN_CSV = "boneage-training-dataset.csv"


@pytest.fixture(scope="module")
def hands(tmp_path_factory) -> Path:
    """40 phantom hands in the RSNA training layout, 48 px."""
    return render(tmp_path_factory.mktemp("hands"), n=40, seed=3, size=48, progress_bar=False)


@pytest.fixture
def rsna(hands, tmp_path) -> Path:
    dst = tmp_path / "rsna"
    shutil.copytree(hands, dst)
    return dst


def rsna_module(root: Path, **kw) -> RSNADataModule:
    return RSNADataModule(data_dir=str(root), image_size=(32, 32), batch_size=4, use_cache=False, **kw)


def split_sizes(dm) -> tuple[int, int, int]:
    dm.setup("fit")
    return tuple(len(dm.table(s)) for s in ("train", "val", "test"))


def real_download(root: Path) -> pd.DataFrame:
    """Reshape a phantom into the real download: 20 training hands, the validation set's CSV over
    two image folders, and the test set's ground truth as .xlsx beside 'Test Set Images'."""
    table = pd.read_csv(root / TRAIN_CSV)
    train, val, test = table.iloc[:20], table.iloc[20:30], table.iloc[30:]
    train.to_csv(root / TRAIN_CSV, index=False)
    images = root / "boneage-training-dataset"
    val_dir, test_dir = root / "Bone Age Validation Set", root / "Bone Age Test Set"
    for k, i in enumerate(val["id"]):
        folder = val_dir / f"boneage-validation-dataset-{1 + k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (images / f"{i}.png").rename(folder / f"{i}.png")
    val.rename(columns={"id": "Image ID", "boneage": "Bone Age (months)"})[["Image ID", "male", "Bone Age (months)"]] \
        .to_csv(val_dir / "Validation Dataset.csv", index=False)
    (test_dir / "Test Set Images").mkdir(parents=True)
    for i in test["id"]:
        (images / f"{i}.png").rename(test_dir / "Test Set Images" / f"{i}.png")
    truth = pd.DataFrame({"Case ID": test["id"], "Sex": np.where(test["male"], "M", "F"),
                          "Ground truth bone age (months)": test["boneage"] + 0.25})
    truth.to_excel(test_dir / "Bone age ground truth.xlsx", index=False)
    return truth


def test_real_download_with_xlsx_ground_truth_and_two_validation_folders(rsna):
    truth = real_download(rsna)
    dm = rsna_module(rsna, val_csv="Bone Age Validation Set/Validation Dataset.csv",
                     val_images="Bone Age Validation Set",
                     test_csv="Bone Age Test Set/Bone age ground truth.xlsx",
                     test_images="Bone Age Test Set/Test Set Images")
    assert split_sizes(dm) == (20, 10, 10)
    test = dm.table("test")
    assert test["age"].tolist() == pytest.approx(truth["Ground truth bone age (months)"].tolist())
    assert test["sex"].tolist() == (truth["Sex"] == "M").astype(float).tolist()
    # the validation images come from both folders
    assert {Path(p).parent.name for p in dm.table("val")["path"]} == {"boneage-validation-dataset-1",
                                                                        "boneage-validation-dataset-2"}


def test_a_split_over_a_list_of_folders(rsna):
    real_download(rsna)
    folders = [f"Bone Age Validation Set/boneage-validation-dataset-{k}" for k in (1, 2)]
    dm = rsna_module(rsna, val_csv="Bone Age Validation Set/Validation Dataset.csv", val_images=folders,
                     test_csv="Bone Age Test Set/Bone age ground truth.xlsx", test_images="Bone Age Test Set")
    assert split_sizes(dm) == (20, 10, 10)
    # one folder of the two: the ids of the other are named as missing
    dm = rsna_module(rsna, val_csv="Bone Age Validation Set/Validation Dataset.csv", val_images=folders[:1])
    with pytest.raises(DataError, match=r"5 of 10 images listed in .*Validation Dataset.csv are not in "
                                        r".*boneage-validation-dataset-1 as \{id\}.png or \{id\}.dcm"):
        dm.setup("fit")


def test_kaggle_nested_folders_are_found(rsna):
    images = rsna / "boneage-training-dataset"
    nested = images / "boneage-training-dataset"
    nested.mkdir()
    for png in images.glob("*.png"):
        png.rename(nested / png.name)
    dm = rsna_module(rsna)
    assert sum(split_sizes(dm)) == 40
    assert all(Path(p).parent == nested for p in dm.table("train")["path"])


def test_an_image_folder_without_images_is_named_with_what_it_holds(rsna):
    images = rsna / "boneage-training-dataset"
    shutil.rmtree(images)
    images.mkdir()
    (images / "boneage-training-dataset.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"image folder .*boneage-training-dataset holds no \{id\}.png or \{id\}.dcm "
                                        r"images.*unzip boneage-training-dataset.zip"):
        rsna_module(rsna).setup("fit")


def test_images_are_found_as_dcm_too(rsna):
    png = rsna / "boneage-training-dataset" / "1380.png"
    png.rename(png.with_suffix(".dcm"))
    table = rsna_module(rsna).read_table().set_index("id")
    assert table.loc["1380", "path"].endswith("1380.dcm") and table.loc["1381", "path"].endswith("1381.png")
    shutil.copy(rsna / "boneage-training-dataset" / "1381.png", rsna / "boneage-training-dataset" / "1381.dcm")
    with pytest.raises(DataError, match=r"image 1381 is there twice, .*1381\.(png|dcm) and .*1381\.(png|dcm)"):
        rsna_module(rsna).setup("fit")


def test_kaggle_test_csv_without_ages_points_at_the_ground_truth(rsna):
    pd.DataFrame({"Case ID": [1380], "Sex": ["M"]}).to_csv(rsna / "boneage-test-dataset.csv", index=False)
    dm = rsna_module(rsna, test_csv="boneage-test-dataset.csv", test_images="boneage-training-dataset")
    with pytest.raises(DataError, match=r"boneage-test-dataset.csv has no column\(s\) \['Ground truth bone age "
                                        r"\(months\)'\].*Bone age ground truth.xlsx"):
        dm.setup("fit")


# --- bad input --------------------------------------------------------------------------

def test_negative_age_names_the_row_and_the_range(rsna):
    table = pd.read_csv(rsna / TRAIN_CSV)
    table.loc[6, "boneage"] = -3
    table.to_csv(rsna / TRAIN_CSV, index=False)
    with pytest.raises(DataError, match=rf"{TRAIN_CSV} row 8: age -3 months is outside the plausible range "
                                        r"0-240 months.*age_range"):
        rsna_module(rsna).setup("fit")


def test_duplicated_image_id_names_both_rows(rsna):
    table = pd.read_csv(rsna / TRAIN_CSV)
    table.loc[9, "id"] = table.loc[2, "id"]
    table.to_csv(rsna / TRAIN_CSV, index=False)
    with pytest.raises(DataError, match=rf"image id 1379 appears twice: .*{TRAIN_CSV} row 4 and .*{TRAIN_CSV} row 11"):
        rsna_module(rsna).setup("fit")


def test_the_same_id_in_training_and_test_labels_is_an_error(rsna):
    real_download(rsna)
    truth = rsna / "Bone Age Test Set" / "Bone age ground truth.xlsx"
    table = pd.read_excel(truth)
    table.loc[0, "Case ID"] = 1377  # a training image's id
    table.to_excel(truth, index=False)
    shutil.copy(rsna / "boneage-training-dataset" / "1377.png", rsna / "Bone Age Test Set" / "Test Set Images")
    dm = rsna_module(rsna, test_csv="Bone Age Test Set/Bone age ground truth.xlsx",
                     test_images="Bone Age Test Set/Test Set Images")
    with pytest.raises(DataError, match=rf"image id 1377 appears twice: .*{TRAIN_CSV} row 2 and .*Bone age ground "
                                        r"truth.xlsx row 2"):
        dm.setup("fit")


@pytest.mark.parametrize("content", ["", "id,boneage,male\n"])
def test_empty_label_file_is_named(rsna, content):
    (rsna / TRAIN_CSV).write_text(content)
    with pytest.raises(DataError, match=rf"label file .*{TRAIN_CSV} (is empty|has a header but no rows)"):
        rsna_module(rsna, val_csv=TRAIN_CSV, val_images="boneage-training-dataset").setup("fit")


# --- hospital CSVs: patients, ranges, duplicates ------------------------------------------

def hospital(root: Path, rows: list[dict], cls=HospitalCSVDataModule, **kw):
    """A label CSV of tiny images at ``root``; one image file per distinct image name."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    for name in frame["image"].unique():
        cv2.imwrite(str(root / name), np.full((8, 8), 100, np.uint8))
    frame.to_csv(root / "labels.csv", index=False)
    return cls(csv_path=str(root / "labels.csv"), image_size=(8, 8), batch_size=2, use_cache=False, **kw)


def patients_rows(n_patients: int = 12, per_patient: int = 3) -> list[dict]:
    return [{"image": f"img/p{p}_{k}.png", "age_years": 5 + p % 10, "sex": "MF"[p % 2], "patient_id": f"P{p:03d}"}
            for p in range(n_patients) for k in range(per_patient)]


def test_patient_column_keeps_each_patient_in_one_split(tmp_path):
    dm = hospital(tmp_path, patients_rows(), images_per_patient="many", val_fraction=0.25, test_fraction=0.25)
    dm.setup("fit")
    patients = {s: set(dm.table(s)["group"]) for s in ("train", "val", "test")}
    assert all(patients.values())
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"])
    assert sum(len(dm.table(s)) for s in ("train", "val", "test")) == 36


def test_a_patient_twice_is_an_error_unless_several_images_are_expected(tmp_path):
    with pytest.raises(DataError, match=r"patient P000 appears twice: .*labels.csv row 2 and .*labels.csv row 3 "
                                        r"\(12 duplicated in all\); set data.init_args.images_per_patient: many"):
        hospital(tmp_path, patients_rows()).setup("fit")


def test_a_shipped_split_with_a_patient_in_two_splits_is_an_error(tmp_path):
    rows = patients_rows(n_patients=4, per_patient=2)
    for k, row in enumerate(rows):
        row["split"] = ["train", "train", "val", "test"][k // 2]
    rows[1]["split"] = "test"  # patient P000: one image in train, one in test
    dm = hospital(tmp_path, rows, images_per_patient="many", split_col="split")
    with pytest.raises(DataError, match=r"patient P000 is in the (train|test) and (train|test) splits "
                                        r"\(.*labels.csv row [23], .*labels.csv row [23]\)"):
        dm.setup("fit")


def test_duplicated_image_in_a_hospital_csv_names_both_rows(tmp_path):
    rows = [{"image": f"img/{i}.png", "age_years": 8, "sex": "F"} for i in range(6)]
    rows[4]["image"] = "img/../img/1.png"  # the same file, written differently
    with pytest.raises(DataError, match=r"image .*1.png appears twice: .*labels.csv row 3 and .*labels.csv row 6; "
                                        r"a duplicated image could land in train and test"):
        hospital(tmp_path, rows).setup("fit")


@pytest.mark.parametrize(("cls", "extra", "age", "allowed"), [
    (TongjiDataModule, {}, 25.0, "0-22 years"),
    (WholeBodyCTDataModule, {"crop_size": None}, 104.0, "0-100 years"),
    (HospitalCSVDataModule, {"age_units": "months", "age_range": [0, 240]}, 250.0, "0-240 months"),
])
def test_implausible_age_for_the_modality_names_row_and_range(tmp_path, cls, extra, age, allowed):
    rows = [{"image": f"img/{i}.png", "age_years": 10 + i, "sex": "M"} for i in range(6)]
    rows[3]["age_years"] = age
    with pytest.raises(DataError, match=rf"labels.csv row 5: age {age:g} {allowed.split()[1]} is outside the "
                                        rf"plausible range {allowed}"):
        hospital(tmp_path, rows, cls, **extra).setup("fit")


def test_empty_hospital_csv_is_named(tmp_path):
    (tmp_path / "labels.csv").write_text("")
    dm = HospitalCSVDataModule(csv_path=str(tmp_path / "labels.csv"))
    with pytest.raises(DataError, match=r"label file .*labels.csv is empty"):
        dm.setup("fit")
