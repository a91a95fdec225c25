"""Resizing (``shrink``, ``resize_gray``): no aliasing at any pair of factors, right geometry, exact size."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from data_modules.base import resize_gray, shrink

# thin bands, each 1 or 2 px wide: (period, bright rows per period)
PATTERNS = [(2, 1), (3, 1), (3, 2), (4, 2)]


def bands(shape: tuple[int, int], period: int, bright: int, axis: int) -> np.ndarray:
    """Bands across ``axis`` (0: horizontal bands, rows alternate; 1: vertical bands)."""
    line = ((np.arange(shape[axis]) % period < bright) * 255).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(line[:, None] if axis == 0 else line[None, :], shape))


def band_std(img: np.ndarray, axis: int) -> float:
    """Row-to-row (axis 0) or column-to-column (axis 1) std of the means: 0 for a flat gray, large when
    the bands alias into stripes."""
    return float(img.astype(np.float64).mean(axis=1 - axis).std())


def aliasing(resize, shape: tuple[int, int], axis: int) -> list[float]:
    return [band_std(resize(bands(shape, p, b, axis)), axis) for p, b in PATTERNS]


def rms(values: list[float]) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def area(size: tuple[int, int]):
    return lambda img: cv2.resize(img, size[::-1], interpolation=cv2.INTER_AREA)


def test_ct_paper_size_thin_bands_come_out_flat():
    """3000x900 -> 256x256 (11.7x by 3.5x): the vertical axis is area-averaged, not shrunk bilinearly
    (a whole factor of the smaller axis and then bilinear gave a row-to-row std of 25-35 here)."""
    for axis, shape in ((0, (3000, 900)), (1, (900, 3000))):
        ours = aliasing(lambda img: shrink(img, 256, 256), shape, axis)
        reference = aliasing(area((256, 256)), shape, axis)
        assert max(ours) < 5, (axis, ours)
        assert rms(ours) <= 2 * rms(reference), (axis, ours, reference)


@pytest.mark.parametrize("shape", [(3000, 900), (589, 1818), (1818, 589), (384, 384), (2185, 1669)],
                         ids=["11.7x3.5", "2.3x7.1", "7.1x2.3", "1.5x1.5", "8.5x6.5"])
@pytest.mark.parametrize("axis", [0, 1], ids=["horizontal-bands", "vertical-bands"])
def test_thin_bands_alias_no_more_than_opencv_area(shape, axis):
    size = (256, 256)
    ours = aliasing(lambda img: shrink(img, *size), shape, axis)
    reference = aliasing(area(size), shape, axis)
    assert rms(ours) <= 2 * rms(reference), (ours, reference)


def test_one_axis_shrinks_while_the_other_grows():
    """3000x100 -> 256x256: the shrinking axis is still area-averaged (OpenCV's INTER_AREA alone is not
    an area average once an axis grows: the reference is an area resize of that axis alone)."""
    ours = aliasing(lambda img: shrink(img, 256, 256), (3000, 100), 0)
    reference = aliasing(area((256, 100)), (3000, 100), 0)
    assert rms(ours) <= 2 * rms(reference) and max(ours) < 5, (ours, reference)
    wide = aliasing(lambda img: shrink(img, 256, 256), (100, 3000), 1)
    assert max(wide) < 5, wide


@pytest.mark.parametrize("shape, size", [
    ((3000, 900), (256, 256)), ((589, 1818), (256, 256)), ((384, 384), (256, 256)),
    ((2185, 1669), (128, 98)), ((100, 60), (256, 256)), ((3000, 100), (256, 256)), ((257, 1001), (256, 7)),
])
def test_a_bright_square_lands_where_it_should(shape, size):
    h, w = shape
    img = np.zeros(shape, np.uint8)
    top, left, side_h, side_w = int(0.3 * h), int(0.6 * w), max(2, h // 10), max(2, w // 10)
    img[top:top + side_h, left:left + side_w] = 255
    out = shrink(img, *size).astype(np.float64)
    assert out.shape == size
    ys, xs = np.indices(size)
    # pixel centres at i + 0.5 in both images; the square's centre scales with the image
    want_y = (top + side_h / 2) * size[0] / h - 0.5
    want_x = (left + side_w / 2) * size[1] / w - 0.5
    got_y, got_x = (ys * out).sum() / out.sum(), (xs * out).sum() / out.sum()
    assert abs(got_y - want_y) <= 1 and abs(got_x - want_x) <= 1, ((got_y, got_x), (want_y, want_x))
    assert out.sum() / 255 == pytest.approx(side_h * side_w * size[0] * size[1] / (h * w), rel=0.1)


@pytest.mark.parametrize("shape, size", [
    ((1001, 999), (7, 13)), ((5, 3), (17, 11)), ((2185, 1669), (128, 98)), ((13, 2000), (13, 40)),
    ((3000, 900), (256, 256)), ((600, 1200), (256, 256)),
])
def test_output_is_exactly_the_requested_size(shape, size):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = shrink(img, *size)
    assert out.shape == size and out.dtype == np.uint8
    for keep_aspect in (True, False):
        boxed = resize_gray(img, size, keep_aspect)
        assert boxed.shape == size and boxed.dtype == np.uint8
