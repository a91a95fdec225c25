"""Heat map -> mask -> box -> crop (Do et al., Eq. 3) on hand-made heat maps."""

from __future__ import annotations

import numpy as np
import pytest

from boneage.analysis.roi import Box, binary_mask, crop, locate_roi, map_box, mask_box


def test_threshold_edges_are_inclusive_at_gamma():
    heat = np.array([[149 / 255, 150 / 255, 151 / 255, 1.0, 0.0, 149.6 / 255]])
    assert binary_mask(heat, gamma=150).tolist() == [[False, True, True, True, False, True]]
    # gamma 0 keeps everything, gamma 255 keeps only the maximum
    assert binary_mask(heat, gamma=0).all()
    assert binary_mask(heat, gamma=255).tolist() == [[False, False, False, True, False, False]]


def test_higher_gamma_gives_smaller_roi():
    yy, xx = np.mgrid[0:60, 0:20]
    heat = np.exp(-((yy - 30) ** 2 / 200.0 + (xx - 10) ** 2 / 30.0))
    areas = [locate_roi(heat, (60, 20), gamma=g).box.area for g in (50, 100, 150, 200, 250)]
    assert areas == sorted(areas, reverse=True) and areas[0] > areas[-1]


def test_box_of_single_blob_is_tight():
    heat = np.zeros((10, 8))
    heat[2:5, 3:7] = 0.9
    box, fallback = mask_box(binary_mask(heat), heat)
    assert box == Box(3, 2, 7, 5) and not fallback


def test_several_blobs_policies():
    heat = np.zeros((20, 20))
    heat[1:3, 1:3] = 1.0  # small blob holding the maximum
    heat[10:18, 5:15] = 0.8  # large, weaker blob
    mask = binary_mask(heat)
    assert mask_box(mask, heat, blobs="peak")[0] == Box(1, 1, 3, 3)
    assert mask_box(mask, heat, blobs="largest")[0] == Box(5, 10, 15, 18)
    assert mask_box(mask, heat, blobs="union")[0] == Box(1, 1, 15, 18)


def test_diagonal_pixels_form_one_blob():
    heat = np.zeros((5, 5))
    heat[1, 1] = heat[2, 2] = 1.0  # 8-connected
    heat[4, 4] = 0.7  # separate
    assert mask_box(binary_mask(heat), heat, blobs="peak")[0] == Box(1, 1, 3, 3)


def test_empty_mask_policies():
    heat = np.full((6, 4), 100 / 255)  # below gamma everywhere
    heat[2, 3] = 120 / 255
    res = locate_roi(heat, (60, 40))
    assert res.fallback and res.box == Box(0, 0, 40, 60)  # full original image
    res = locate_roi(heat, (60, 40), empty="peak")
    assert res.fallback and res.heat_box == Box(3, 2, 4, 3) and res.box == Box(30, 20, 40, 30)
    with pytest.raises(ValueError, match="empty ROI mask"):
        locate_roi(heat, (60, 40), empty="raise")
    # an all-zero Grad-CAM map (nothing survived the ReLU) falls back too
    assert locate_roi(np.zeros((6, 4)), (60, 40)).fallback


def test_box_maps_back_to_original_resolution():
    # heat map on a 300 x 1000 (w x h) network input, original 900 x 3000
    heat = np.zeros((1000, 300))
    heat[400:500, 100:150] = 1.0
    res = locate_roi(heat, (3000, 900))
    assert res.heat_box == Box(100, 400, 150, 500)
    assert res.box == Box(300, 1200, 450, 1500)
    # non-integer factors: the mapped box covers every original pixel under the resized box
    box = map_box(Box(1, 1, 2, 2), from_size=(3, 3), to_size=(10, 10))
    assert box == Box(3, 3, 7, 7)  # covers [3.33, 6.67)
    # margin widens, clipped at the border
    assert map_box(Box(0, 0, 2, 2), (4, 4), (40, 40), margin=0.5) == Box(0, 0, 30, 30)


def test_crop_takes_original_pixels():
    original = np.arange(3000 * 900, dtype=np.int64).reshape(3000, 900)
    heat = np.zeros((1000, 300))
    heat[400:500, 100:150] = 1.0
    patch = crop(original, locate_roi(heat, original.shape).box)
    assert patch.shape == (300, 150)
    assert patch[0, 0] == original[1200, 300] and patch[-1, -1] == original[1499, 449]
    with pytest.raises(ValueError, match="outside the image"):
        crop(original, Box(0, 0, 901, 10))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="0-255"):
        binary_mask(np.zeros((2, 2)), gamma=0.6 * 1000)
    with pytest.raises(ValueError, match="NaN"):
        binary_mask(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        binary_mask(np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="blobs"):
        mask_box(np.ones((2, 2)), np.ones((2, 2)), blobs="biggest")


def test_box_iou_and_coverage():
    a, b = Box(0, 0, 10, 10), Box(5, 0, 15, 10)
    assert a.iou(b) == pytest.approx(50 / 150)
    assert Box(0, 0, 20, 20).coverage(a) == 1.0 and a.coverage(b) == 0.5


def test_exporter_writes_crops_from_originals(tmp_path):
    from PIL import Image

    from boneage.analysis.roi import RoiExporter

    src = tmp_path / "src"
    src.mkdir()
    rows = []
    for i, depth in enumerate((8, 16)):
        arr = (np.arange(90 * 30).reshape(90, 30) % (250 if depth == 8 else 60000)).astype(
            np.uint8 if depth == 8 else np.uint16)
        Image.fromarray(arr).save(src / f"s{i}.png")
        rows.append(arr)
    heat = np.zeros((30, 10))  # network-input grid, a third of the original
    heat[10:15, 2:5] = 1.0
    exp = RoiExporter(tmp_path / "roi", figures=tmp_path / "fig", max_figures=1)
    exp.add(src / "s1.png", 61.5, "F", heat, order=1, split="test")
    exp.add(src / "s0.png", 44.0, "M", np.zeros((30, 10)), order=0, split="train")
    csv = exp.finish()
    import pandas as pd

    table = pd.read_csv(csv)
    assert list(table.columns[:3]) == ["image", "age_years", "sex"]
    assert table.image.tolist() == ["crops/000000_s0.png", "crops/000001_s1.png"]  # source order
    assert table.fallback.tolist() == [True, False]
    crop16 = np.array(Image.open(tmp_path / "roi" / table.image[1]))
    from data_modules.base import read_gray

    stage1 = read_gray(src / "s1.png")  # the 16-bit original as the stage-1 input scaled it (same window)
    assert crop16.dtype == np.uint8 and np.array_equal(crop16, stage1[30:45, 6:15])
    crop8 = np.array(Image.open(tmp_path / "roi" / table.image[0]))
    assert np.array_equal(crop8, rows[0])  # empty mask: whole image kept
    assert len(list((tmp_path / "fig").glob("*.png"))) == 1
    assert "1 with an empty mask" in exp.summary()


def test_exporter_missing_original_names_file(tmp_path):
    from boneage.analysis.roi import RoiExporter

    exp = RoiExporter(tmp_path / "roi")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        exp.add(tmp_path / "nope.png", 50.0, "M", np.ones((4, 4)), order=0)
    with pytest.raises(ValueError, match="no sample"):
        exp.finish()


def test_letterboxed_heat_map_maps_to_original():
    """A 900x3000 original letterboxed into a 1000x1000 input occupies columns 350..649."""
    from boneage.analysis.roi import unletterbox

    heat = np.zeros((1000, 1000))
    heat[400:500, 350 + 100:350 + 150] = 1.0
    assert unletterbox(heat, (3000, 900)).shape == (1000, 300)
    res = locate_roi(heat, (3000, 900), letterboxed=True)
    assert res.box == Box(300, 1200, 450, 1500)
