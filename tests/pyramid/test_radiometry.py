"""Band choice and radiometry: which bands become R, G, B and how non-8-bit data becomes uint8.

Expectations are computed here: percentiles with numpy from a direct GDAL average read of the source at
the coarse level's size, then an independent linear stretch of the source pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pyramid.dip import DynamicImagePyramid
from pyramid.errors import UnsupportedRasterError
from pyramid.levels import PixelBox
from tests.pyramid.rasters import NODATA, SH, SW, Raster, make_options, read_window

COARSE_W, COARSE_H = 1008, 739  # 1500 x 1100 → long side 1008, 1100 * 1008 / 1500 = 739.2


_COARSE: dict[tuple[Path, tuple[int, ...]], np.ndarray] = {}


def coarse_of(raster: Raster, indexes: list[int]) -> np.ndarray:
    """(h, w, len(indexes)) coarse level of the source: GDAL area average (nodata-aware). Memoised."""
    key = (raster.path, tuple(indexes))
    if key not in _COARSE:
        box = (0, 0, raster.width, raster.height)
        _COARSE[key] = read_window(raster.path, box, COARSE_W, COARSE_H, indexes)
    return _COARSE[key]


def percentiles(values: np.ndarray, q: tuple[float, float] = (2.0, 98.0)) -> tuple[float, float]:
    lo, hi = np.percentile(values.astype(np.float64), q)
    return float(lo), float(hi)


def stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(np.rint((values.astype(np.float64) - lo) * 255.0 / (hi - lo)), 0, 255)


def expected_rgb(raster: Raster, bands: tuple[int, int, int], box: PixelBox) -> np.ndarray:
    """Independent stretch of the source pixels in ``box`` for 1-based ``bands``."""
    coarse = coarse_of(raster, list(bands))
    out = np.empty((box.height, box.width, 3))
    for i, b in enumerate(bands):
        lo, hi = percentiles(coarse[..., i])
        out[..., i] = stretch(raster.data[b - 1, box.y0 : box.y1, box.x0 : box.x1], lo, hi)
    return out


def assert_close(got: np.ndarray, expected: np.ndarray, tol: int = 1) -> None:
    diff = np.abs(got.astype(np.float64) - expected)
    assert diff.max() <= tol, f"max diff {diff.max()}, mean {diff.mean():.3f}"


# ----------------------------------------------------------------------------------------- band choice


def test_rgbn_default_bands_when_colorinterp_is_undefined(rgbn_undefined: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(rgbn_undefined.path, make_options(tmp_path)) as dip:
        # GTiff can only say "gray" for band 1 of a MINISBLACK file; no band claims red/green/blue.
        assert dip.info.colorinterp == ("gray", "undefined", "undefined", "undefined")
        assert dip.info.dtype == "uint16" and dip.info.count == 4
        assert dip.bands.rgb == (1, 2, 3) and dip.bands.alpha is None
        assert dip.describe()["bands_rgb"] == [1, 2, 3]


def test_rgbn_bands_by_colorinterp(rgbn_bgr: Raster, rgbn_undefined: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(rgbn_bgr.path, make_options(tmp_path)) as dip:
        assert dip.info.colorinterp == ("blue", "green", "red", "undefined")
        assert dip.bands.rgb == (3, 2, 1) and dip.bands.alpha is None
        n = len(dip.levels) - 1
        tile = dip.tile(n, 1, 2)
        assert_close(tile.pixels, expected_rgb(rgbn_bgr, (3, 2, 1), tile.box))
    # the same scene stored R,G,B,N: identical RGB output
    with DynamicImagePyramid.open(rgbn_undefined.path, make_options(tmp_path)) as dip:
        np.testing.assert_array_equal(dip.tile(n, 1, 2).pixels, tile.pixels)


def test_explicit_bands(rgbn_undefined: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(rgbn_undefined.path, make_options(tmp_path, bands=(4, 3, 2))) as dip:
        assert dip.bands.rgb == (4, 3, 2)
        tile = dip.tile(len(dip.levels) - 1, 2, 3)
        assert_close(tile.pixels, expected_rgb(rgbn_undefined, (4, 3, 2), tile.box))
    with DynamicImagePyramid.open(rgbn_undefined.path, make_options(tmp_path, bands=(2,))) as dip:
        assert dip.bands.rgb == (2, 2, 2)
        tile = dip.tile(len(dip.levels) - 1, 0, 0)
        assert_close(tile.pixels, expected_rgb(rgbn_undefined, (2, 2, 2), tile.box))
        assert (tile.pixels[..., 0] == tile.pixels[..., 1]).all() and (
            tile.pixels[..., 1] == tile.pixels[..., 2]
        ).all()


@pytest.mark.parametrize("bands", [(5, 1, 2), (0, 1, 2), (1, 2), (1, 2, 3, 4), (-1,)])
def test_invalid_band_request(rgbn_undefined: Raster, tmp_path: Path, bands: tuple[int, ...]) -> None:
    with pytest.raises(UnsupportedRasterError) as info:
        DynamicImagePyramid.open(rgbn_undefined.path, make_options(tmp_path, bands=bands))
    assert "\n" not in str(info.value)
    assert str(rgbn_undefined.path) in str(info.value)


# ----------------------------------------------------------------------------------------- 16-bit stretch


@pytest.mark.parametrize("cache_min_pixels", [4096 * 4096, 1000], ids=["source", "disk-cache"])
def test_uint16_percentile_stretch(rgbn_undefined: Raster, tmp_path: Path, cache_min_pixels: int) -> None:
    opts = make_options(tmp_path, cache_min_pixels=cache_min_pixels)
    with DynamicImagePyramid.open(rgbn_undefined.path, opts) as dip:
        n = len(dip.levels) - 1
        native = dip.levels[n]
        for r, c in [(0, 0), (1, 2), (native.rows - 1, native.cols - 1)]:
            tile = dip.tile(n, r, c)
            assert tile.pixels.dtype == np.uint8
            assert_close(tile.pixels, expected_rgb(rgbn_undefined, (1, 2, 3), tile.box))
        coarse = dip.level_image(0).pixels
    assert coarse.shape == (COARSE_H, COARSE_W, 3)
    src = coarse_of(rgbn_undefined, [1, 2, 3])
    for b in range(3):
        band = coarse[..., b]
        # a 2–98 % stretch of its own percentiles: ~2 % of pixels clip at each end, the rest spreads out
        assert 0.01 <= (band == 0).mean() <= 0.05
        assert 0.01 <= (band == 255).mean() <= 0.05
        assert np.percentile(band, 10) < 60 and np.percentile(band, 90) > 195
        # not PIL's high-byte truncation (12-bit data → 0..15)
        assert not np.array_equal(band, (src[..., b] >> 8).astype(np.uint8))
        assert band.max() == 255 and len(np.unique(band)) > 200


# ----------------------------------------------------------------------------------------- validity


def test_float_nodata_is_invalid_and_zero(float_nodata: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(float_nodata.path, make_options(tmp_path)) as dip:
        assert dip.info.nodata == NODATA and dip.bands.rgb == (1, 1, 1)
        n = len(dip.levels) - 1
        coarse = coarse_of(float_nodata, [1])[..., 0]
        lo, hi = percentiles(coarse[coarse != NODATA])
        # tile (1, 2) = x 672..1008, y 336..672 overlaps the nodata rectangle x 400..900, y 300..650
        for r, c in [(1, 2), (0, 0), (1, 1)]:
            tile = dip.tile(n, r, c)
            b = tile.box
            src = float_nodata.data[0, b.y0 : b.y1, b.x0 : b.x1]
            expected_valid = src != NODATA
            if expected_valid.all():
                assert tile.valid is None or tile.valid.all()
                continue
            assert tile.valid is not None and tile.valid.dtype == bool
            np.testing.assert_array_equal(tile.valid, expected_valid)
            assert (tile.pixels[~expected_valid] == 0).all()
            exp = stretch(src, lo, hi)
            for ch in range(3):
                assert_close(tile.pixels[..., ch][expected_valid], exp[expected_valid])
        assert dip.tile(n, 1, 2).valid is not None


def test_float_nodata_coarse_level(float_nodata: Raster, tmp_path: Path) -> None:
    """Coarse level from the source: GDAL's average skips nodata; nodata-only pixels are invalid."""
    with DynamicImagePyramid.open(float_nodata.path, make_options(tmp_path)) as dip:
        got = dip.level_image(0)
    _check_coarse_nodata(float_nodata, got.pixels, got.valid)


def test_float_nodata_never_goes_through_the_disk_cache(float_nodata: Raster, tmp_path: Path) -> None:
    """libvips would average nodata into valid pixels (-9999 blended into a border pixel is far below the
    stretch's low end and turns it black, and shifts the percentiles), so a file with nodata is read from
    the source, where GDAL's averaging honours nodata, even when it is big enough for the cache."""
    opts = make_options(tmp_path, cache_min_pixels=1000, lossless_cache=True)
    with DynamicImagePyramid.open(float_nodata.path, opts) as dip:
        assert dip.describe()["read_paths"]["coarse"] == "source"
        got = dip.level_image(0)
        assert dip.disk_cache is None
    _check_coarse_nodata(float_nodata, got.pixels, got.valid)


def _check_coarse_nodata(raster: Raster, pixels: np.ndarray, valid: np.ndarray | None) -> None:
    coarse = coarse_of(raster, [1])[..., 0]
    expected_valid = coarse != NODATA
    assert 0 < (~expected_valid).sum() < expected_valid.size
    assert valid is not None
    np.testing.assert_array_equal(valid, expected_valid)
    assert (pixels[~expected_valid] == 0).all()
    lo, hi = percentiles(coarse[expected_valid])
    exp = stretch(coarse, lo, hi)
    assert_close(pixels[..., 0][expected_valid], exp[expected_valid])


@pytest.mark.parametrize("cache", [False, True], ids=["source", "disk-cache"])
def test_rgba_alpha_is_validity(rgba_png: Raster, tmp_path: Path, cache: bool) -> None:
    opts = make_options(tmp_path, cache_min_pixels=1000 if cache else 4096 * 4096, lossless_cache=True)
    alpha = rgba_png.data[3]
    with DynamicImagePyramid.open(rgba_png.path, opts) as dip:
        assert dip.info.colorinterp == ("red", "green", "blue", "alpha")
        assert dip.bands.rgb == (1, 2, 3) and dip.bands.alpha == 4
        n = len(dip.levels) - 1
        # (0, 1) and (1, 1) cover the transparent rectangle x 200..701, y 100..401;
        # (2, 3) covers the half-transparent one (alpha 128: valid)
        for r, c in [(0, 1), (1, 1), (2, 3), (3, 4)]:
            tile = dip.tile(n, r, c)
            b = tile.box
            a = alpha[b.y0 : b.y1, b.x0 : b.x1]
            rgb = rgba_png.data[:3, b.y0 : b.y1, b.x0 : b.x1].transpose(1, 2, 0)
            if (a > 0).all():
                assert tile.valid is None
                np.testing.assert_array_equal(tile.pixels, rgb)
                continue
            assert tile.valid is not None
            np.testing.assert_array_equal(tile.valid, a > 0)
            assert (tile.pixels[a == 0] == 0).all()
            np.testing.assert_array_equal(tile.pixels[a > 0], rgb[a > 0])
        coarse = dip.level_image(0)
    exp = read_window(rgba_png.path, (0, 0, SW, SH), COARSE_W, COARSE_H)
    assert coarse.valid is not None
    np.testing.assert_array_equal(coarse.valid, exp[..., 3] > 0)
    np.testing.assert_array_equal(coarse.pixels[coarse.valid], exp[..., :3][coarse.valid])
    assert (coarse.pixels[~coarse.valid] == 0).all()


def test_gray_is_replicated(gray_tif: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(gray_tif.path, make_options(tmp_path)) as dip:
        assert dip.bands.rgb == (1, 1, 1) and dip.bands.alpha is None
        n = len(dip.levels) - 1
        for r, c in [(0, 0), (3, 4)]:
            tile = dip.tile(n, r, c)
            b = tile.box
            g = gray_tif.data[0, b.y0 : b.y1, b.x0 : b.x1]
            for ch in range(3):
                np.testing.assert_array_equal(tile.pixels[..., ch], g)  # uint8: no stretch at all
            assert tile.valid is None
        thumb = dip.thumbnail().pixels
        assert (thumb[..., 0] == thumb[..., 1]).all() and (thumb[..., 1] == thumb[..., 2]).all()
