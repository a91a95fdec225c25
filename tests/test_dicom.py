"""DICOM as an image source: decoding, errors, intensity windows, two-view bone scans, predict folders."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLSLossless, generate_uid

from boneage.phantoms.common import CR_STORAGE, NM_STORAGE, save_dicom
from data_modules import dicom
from data_modules.base import DataError, read_gray
from data_modules.dicom import header_sex_age, read_dicom
from data_modules.hospital import HospitalCSVDataModule


def _body(hot: float = 0.0) -> np.ndarray:
    """A 12-bit 'scan': background 0, a body of ~800 counts, optionally a large hot spot."""
    img = np.zeros((60, 40), np.uint16)
    img[5:55, 8:32] = 800 + np.arange(24, dtype=np.uint16) * 10  # a ramp so windows show
    if hot:
        img[10:25, 10:30] = hot  # a bladder-sized hot spot: 12% of the pixels
    return img


def test_windows_percentile_fixed_and_dicom_differ_where_they_should(tmp_path):
    def dcm(name, pixels, bits_stored=12, **kw):
        save_dicom(tmp_path / name, pixels, modality="NM", sop_class=NM_STORAGE, patient_id="PHANTOM-0001", sex="F",
                   bits_stored=bits_stored, **kw)
        return tmp_path / name

    plain, hot = dcm("plain.dcm", _body()), dcm("hot.dcm", _body(hot=4000))
    body = np.s_[30:50, 8:32]  # body pixels away from the hot spot
    # a hot spot moves a percentile window (the body dims) but not a fixed one
    assert read_gray(hot, "percentile")[body].mean() < read_gray(plain, "percentile")[body].mean() - 50
    np.testing.assert_array_equal(read_gray(hot, [0, 1200])[body], read_gray(plain, [0, 1200])[body])
    # a fixed window maps its ends to 0 and 255, linearly
    assert read_gray(plain, [800, 1030])[5, 8] == 0 and read_gray(plain, [800, 1030])[5, 31] == 255
    # "dicom": the file's own window centre/width (here [600, 1400]) ...
    windowed = dcm("windowed.dcm", _body(hot=4000), window=(1000.5, 801))
    own = read_gray(windowed, "dicom")
    assert np.abs(own.astype(int) - read_gray(hot, [600, 1400])).max() <= 1  # pydicom's rounding path
    assert np.abs(own.astype(int) - read_gray(hot, "percentile")).max() > 40
    # ... and the image's own percentiles where the file has none, said once per process
    dicom._said.clear()
    with pytest.warns(UserWarning, match="no DICOM window"):
        no_window = read_gray(hot, "dicom")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_gray(plain, "dicom")  # not said again
    np.testing.assert_array_equal(no_window, read_gray(hot, "percentile"))
    # 8-bit files stay as they are, whatever the window
    eight = dcm("eight.dcm", np.arange(200, dtype=np.uint8).reshape(10, 20), bits_stored=8)
    for window in ("dicom", "percentile", [0, 1000]):
        np.testing.assert_array_equal(read_gray(eight, window), np.arange(200, dtype=np.uint8).reshape(10, 20))


def test_monochrome1_rescale_and_window_are_applied(tmp_path):
    """Stored values through slope/intercept, the window in modality units, then MONOCHROME1 inverted."""
    stored = np.array([[0, 1000, 2000, 4095]], np.uint16)
    save_dicom(tmp_path / "cr.dcm", stored, modality="CR", sop_class=CR_STORAGE, patient_id="PHANTOM-0002", sex="M",
               bits_stored=12, photometric="MONOCHROME1", rescale=(2.0, -1000.0), window=(1000.5, 2001))
    frames, meta = read_dicom(tmp_path / "cr.dcm")
    np.testing.assert_array_equal(frames[0], [[-1000, 1000, 3000, 7190]])  # modality units
    # window [0, 2000]: -1000 and 0 -> 0, 1000 -> 127.5, >= 2000 -> 255; then inverted for MONOCHROME1
    np.testing.assert_array_equal(read_gray(tmp_path / "cr.dcm", "dicom"), [[255, 127, 0, 0]])
    np.testing.assert_array_equal(read_gray(tmp_path / "cr.dcm", [0, 4000]), [[255, 191, 64, 0]])


def _tiny(path, syntax=None, pixels=True) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CR_STORAGE, generate_uid(entropy_srcs=[str(path)])
    ds.PatientID = "PHANTOM-0003"
    if pixels:
        ds.set_pixel_data(np.zeros((4, 4), np.uint16), "MONOCHROME2", 12)
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([b"\xff\xd8 not really JPEG-LS \xff\xd9"])
        ds["PixelData"].VR = "OB"
    else:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def test_compressed_syntax_without_a_decoder_names_syntax_and_package(tmp_path):
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    _tiny(tmp_path / "jls.dcm", JPEGLSLossless)
    with pytest.raises(DataError) as err:
        read_gray(tmp_path / "jls.dcm")
    message = str(err.value)
    assert "\n" not in message and "jls.dcm" in message
    assert "JPEG-LS Lossless" in message and JPEGLSLossless in message
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in message and "pip install python-gdcm" in message


def test_dicom_without_pixel_data_or_not_dicom_names_the_file(tmp_path):
    _tiny(tmp_path / "header.dcm", pixels=False)
    with pytest.raises(DataError, match=r"header.dcm has no pixel data"):
        read_gray(tmp_path / "header.dcm")
    (tmp_path / "text.dcm").write_text("not a DICOM file")
    with pytest.raises(DataError, match=r"cannot read DICOM file .*text.dcm"):
        read_gray(tmp_path / "text.dcm")


def test_sex_and_age_from_the_header(tmp_path):
    _tiny(tmp_path / "a.dcm")
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    ds.PatientSex, ds.PatientAge = "F", "144M"
    ds.save_as(tmp_path / "months.dcm")
    assert header_sex_age(tmp_path / "months.dcm") == (0.0, 12.0)
    del ds.PatientAge
    ds.PatientSex, ds.PatientBirthDate, ds.StudyDate = "M", "20100301", "20200301"
    ds.save_as(tmp_path / "dates.dcm")
    sex, age = header_sex_age(tmp_path / "dates.dcm")
    assert sex == 1.0 and age == pytest.approx(10.0, abs=0.01)
    assert header_sex_age(tmp_path / "a.dcm") == (None, None)


def _csv_of(tmp_path, files, **columns) -> str:
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"image": [str(f) for f in files], "age_years": 10.0, "sex": "F", **columns}).to_csv(csv, index=False)
    return str(csv)


def test_window_is_part_of_the_cache_key_and_predict_finds_dcm_folders(tmp_path):
    scans = tmp_path / "scans"
    (scans / "nested").mkdir(parents=True)
    files = []
    for i in range(6):
        files.append(scans / ("nested" if i % 2 else "") / f"s{i}.dcm")
        save_dicom(files[-1], _body(hot=4000 * (i % 2)), modality="NM", sop_class=NM_STORAGE,
                   patient_id=f"PHANTOM-{i:04d}", sex="F", bits_stored=12)
    csv = _csv_of(tmp_path, files)
    common = dict(csv_path=csv, image_size=(30, 20), keep_aspect=False, batch_size=2, val_fraction=0.2,
                  test_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    fixed = HospitalCSVDataModule(**common, window=[0, 1200])
    pct = HospitalCSVDataModule(**common, window="percentile")
    fixed.setup("fit")
    pct.setup("fit")
    assert fixed.dataset("train").cache.file != pct.dataset("train").cache.file
    assert not np.array_equal(fixed.dataset("train").cache.array, pct.dataset("train").cache.array)
    with pytest.raises(ValueError, match="window must be"):
        HospitalCSVDataModule(**common, window=[5, 1])
    # a predict folder of .dcm files (nested too) is found and read
    dm = HospitalCSVDataModule(**common, window=[0, 1200], predict_dir=str(scans))
    dm.setup("predict")
    assert sorted(dm.table("predict")["path"]) == sorted(str(f.resolve()) for f in files)
    batch = next(iter(dm.predict_dataloader()))
    assert batch["image"].shape == (2, 1, 30, 20) and batch["image"].std() > 0.1


def test_dicom_window_honours_a_voi_lut_and_a_sigmoid(tmp_path):
    save_dicom(tmp_path / "lut.dcm", np.array([[0, 1, 2, 3, 9]], np.uint16), modality="DX", sop_class=CR_STORAGE,
               patient_id="PHANTOM-0004", sex="F", bits_stored=12)
    ds = pydicom.dcmread(tmp_path / "lut.dcm")
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4, 0, 12])  # 4 entries from stored value 0, 12 bits each
    item.add_new("LUTData", "US", [0, 100, 3000, 4000])
    ds.VOILUTSequence = [item]
    ds.save_as(tmp_path / "lut.dcm")
    # the LUT's range [0, 4000] becomes [0, 255]; values past its end take its last entry
    np.testing.assert_array_equal(read_gray(tmp_path / "lut.dcm", "dicom"), [[0, 6, 191, 255, 255]])
    del ds.VOILUTSequence
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 2, 2, "SIGMOID"
    ds.save_as(tmp_path / "sigmoid.dcm")
    out = read_gray(tmp_path / "sigmoid.dcm", "dicom")[0]
    assert out[2] == 128 and 0 < out[0] < out[1] < 128 < out[3] < 255  # smooth, centred on 2, never clipped
