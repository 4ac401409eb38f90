"""Tests for pyramid.cog.write_cog: layout, georeferencing, pixel values, choices and errors."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import tifffile
from affine import Affine
from PIL import Image
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning

import pyramid.cog as cog
from pyramid.cog import CogResult, OutputExistsError, write_cog
from pyramid.errors import (
    CorruptRasterError,
    NotARasterError,
    RasterInputError,
    UnsupportedRasterError,
)

pytestmark = pytest.mark.filterwarnings("error::rasterio.errors.NotGeoreferencedWarning")

CRS = "EPSG:32633"
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0)


def smooth(bands: int, h: int, w: int, seed: int = 0, lo: float = 0, hi: float = 255) -> np.ndarray:
    """(bands, h, w) float texture: smooth blobs plus a little noise, like imagery."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((h // 40 + 2, w // 40 + 2, bands), dtype=np.float32)
    a = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, bands)
    a = a + rng.normal(0, 0.006, a.shape).astype(np.float32)
    return (lo + np.clip(a, 0, 1) * (hi - lo)).transpose(2, 0, 1)


def write_src(path: Path, data: np.ndarray, **kw: object) -> Path:
    """A georeferenced, tiled DEFLATE GeoTIFF source."""
    ci = kw.pop("colorinterp", None)
    profile = dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=data.dtype, crs=CRS, transform=TRANSFORM, tiled=True, blockxsize=256,
        blockysize=256, compress="deflate",
    )  # fmt: skip
    profile.update(kw)
    with rasterio.open(path, "w", **profile) as dst:
        if ci:  # before the pixels: GTiff fixes ExtraSamples once data is written
            dst.colorinterp = ci
        dst.write(data)
    return path


def box(a: np.ndarray, f: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Independent f×f box average of (bands, h, w), GDAL-style: edge blocks and blocks with
    invalid pixels average only the pixels that exist / are valid; NaN where none is."""
    c, h, w = a.shape
    hh, ww = -(-h // f), -(-w // f)
    x = np.full((c, hh * f, ww * f), np.nan)
    x[:, :h, :w] = a
    if valid is not None:
        x[:, :h, :w][~np.broadcast_to(valid, a.shape)] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        return np.nanmean(x.reshape(c, hh, f, ww, f), axis=(2, 4))


def read_level(path: Path, k: int, masks: bool = False) -> np.ndarray:
    """Level k (0 = full resolution) exactly as stored."""
    opts = {} if k == 0 else {"overview_level": k - 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, **opts) as ds:
            return ds.read_masks(1) if masks else ds.read()


def assert_cog_layout(path: Path, blocksize: int, factors: tuple[int, ...]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert ds.block_shapes[0] == (blocksize, blocksize)
            assert ds.overviews(1) == list(factors)
    # GDAL's definition (its validate_cloud_optimized_geotiff.py), checked independently: first
    # IFD right after the ghost area, all IFDs before any tile, image IFDs by decreasing size,
    # tile data from the smallest overview to full resolution, row-major, every tile framed by
    # leader and trailer, each mask tile right after its image tile.
    with tifffile.TiffFile(path) as tif, open(path, "rb") as fh:
        head = fh.read(16 + 50)
        start = 16 if tif.is_bigtiff else 8
        assert head[start:].startswith(b"GDAL_STRUCTURAL_METADATA_SIZE=")
        ghost = 43 + int(head[start + 30 : start + 36])
        pages = list(tif.pages)
        assert pages[0].offset == start + ghost + ghost % 2
        first_tile = min(min(p.dataoffsets) for p in pages)
        assert max(p.offset for p in pages) < first_tile
        is_mask = [254 in p.tags and p.tags[254].value & 4 for p in pages]
        images = [p for p, m in zip(pages, is_mask, strict=True) if not m]
        assert [p.offset for p in images] == sorted(p.offset for p in images)
        assert [p.imagewidth for p in images] == sorted((p.imagewidth for p in images), reverse=True)
        starts = [min(p.dataoffsets) for p in images]
        assert starts == sorted(starts, reverse=True)  # level 0 last, smallest overview first
        for p in pages:
            assert list(p.dataoffsets) == sorted(p.dataoffsets)
            for off, n in zip(p.dataoffsets, p.databytecounts, strict=True):
                fh.seek(off - 4)
                blob = fh.read(n + 8)
                assert struct.unpack("<I", blob[:4])[0] == n
                assert blob[-4:] == blob[-8:-4]
        for mask in (p for p, m in zip(pages, is_mask, strict=True) if m):
            image = next(p for p in images if p.shape[:2] == mask.shape[:2])
            expected = [o + n + 8 for o, n in zip(image.dataoffsets, image.databytecounts, strict=True)]
            assert list(mask.dataoffsets) == expected


# --------------------------------------------------------------------------- JPEG cases


def test_rgb_uint8_auto_jpeg(tmp_path: Path) -> None:
    data = smooth(3, 1100, 1500).round().astype(np.uint8)
    src = write_src(tmp_path / "rgb.tif", data)
    res = write_cog(src, tmp_path / "out.tif")

    assert isinstance(res, CogResult)
    assert (res.width, res.height, res.count, res.dtype) == (1500, 1100, 3, "uint8")
    assert res.compression == "jpeg" and res.overview_factors == (2, 4) and res.blocksize == 512
    assert res.crs == CRS and res.path == tmp_path / "out.tif" and res.seconds > 0
    assert_cog_layout(res.path, 512, (2, 4))
    with rasterio.open(res.path) as ds:
        assert ds.crs == rasterio.crs.CRS.from_string(CRS)
        assert ds.transform == TRANSFORM
        assert ds.nodata is None
        assert ds.compression.name == "jpeg" and ds.photometric.name == "ycbcr"
        assert ds.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert ds.mask_flag_enums[0] == [MaskFlags.all_valid]
    src_f = data.astype(np.float64)
    assert np.abs(read_level(res.path, 0) - src_f).mean() < 3
    for k, f in enumerate((2, 4), start=1):
        lvl = read_level(res.path, k)
        assert lvl.shape == (3, 1100 // f, 1500 // f)
        assert np.abs(lvl - box(src_f, f)).mean() < 3


def test_rgba_becomes_rgb_jpeg_with_internal_mask(tmp_path: Path) -> None:
    data = smooth(4, 1100, 1500, seed=1).round().astype(np.uint8)
    alpha = np.full((1100, 1500), 255, np.uint8)
    alpha[:301, :401] = 0  # odd-sized hole: overview blocks that are partly valid
    alpha[900:, 1200:] = 0
    data[3] = alpha
    ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    src = write_src(tmp_path / "rgba.tif", data, colorinterp=ci)
    res = write_cog(src, tmp_path / "out.tif")

    assert res.compression == "jpeg" and res.count == 3
    assert_cog_layout(res.path, 512, (2, 4))
    with rasterio.open(res.path) as ds:
        assert ds.count == 3 and ds.mask_flag_enums[0] == [MaskFlags.per_dataset]
    valid = alpha > 0
    np.testing.assert_array_equal(read_level(res.path, 0, masks=True), valid * 255)
    rgb = data[:3].astype(np.float64)
    err = np.abs(read_level(res.path, 0) - rgb)[:, valid]
    assert err.mean() < 3
    for k, f in enumerate((2, 4), start=1):
        ref_valid = box(valid[None].astype(np.float64), f)[0] > 0  # any valid pixel
        np.testing.assert_array_equal(read_level(res.path, k, masks=True), ref_valid * 255)
        ref = box(rgb, f, valid[None])  # average of the valid pixels only
        assert np.abs(read_level(res.path, k) - ref)[:, ref_valid].mean() < 3


def test_gray_png_without_georeferencing_leaks_no_warning(tmp_path: Path) -> None:
    gray = smooth(1, 700, 900, seed=2)[0].round().astype(np.uint8)
    src = tmp_path / "gray.png"
    Image.fromarray(gray).save(src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = write_cog(src, tmp_path / "out.tif")
    assert not [w for w in caught if issubclass(w.category, NotGeoreferencedWarning)]
    assert res.crs is None and res.compression == "jpeg" and res.count == 1
    assert res.overview_factors == (2,)
    assert_cog_layout(res.path, 512, (2,))
    out = read_level(res.path, 0)
    assert out.shape == (1, 700, 900) and np.abs(out[0] - gray.astype(float)).mean() < 3
    assert np.abs(read_level(res.path, 1) - box(gray[None].astype(float), 2)).mean() < 3


def test_palette_png_is_expanded_to_rgb(tmp_path: Path) -> None:
    idx = (np.arange(600)[:, None] // 50 + np.arange(500)[None, :] // 50) % 4
    palette = [[200, 30, 30], [30, 200, 30], [30, 30, 200], [240, 240, 240]]
    img = Image.fromarray(idx.astype(np.uint8), mode="P")
    img.putpalette(np.array(palette, np.uint8).ravel().tolist())
    img.save(tmp_path / "pal.png")
    auto = write_cog(tmp_path / "pal.png", tmp_path / "auto.tif")
    assert auto.count == 3 and auto.compression == "jpeg"  # opaque palette: no alpha, no mask
    res = write_cog(tmp_path / "pal.png", tmp_path / "out.tif", compression="deflate")
    expected = np.array(palette, np.uint8)[idx].transpose(2, 0, 1)
    np.testing.assert_array_equal(read_level(res.path, 0), expected)
    # Saturated colour edges lose most to 4:2:0 chroma subsampling; GDAL's JPEG does the same.
    assert np.abs(read_level(auto.path, 0) - expected.astype(float)).mean() < 6


# --------------------------------------------------------------------------- DEFLATE cases


def test_uint16_nodata_odd_size_deflate_exact(tmp_path: Path) -> None:
    data = smooth(1, 1037, 1301, seed=3, lo=100, hi=4000).round().astype(np.uint16)
    data[0, :200, :333] = 0
    # Source tiles taller than ours: read in bands of whole source block rows.
    src = write_src(tmp_path / "u16.tif", data, nodata=0, blockxsize=512, blockysize=512)
    res = write_cog(src, tmp_path / "out.tif", blocksize=256)

    assert res.compression == "deflate" and res.dtype == "uint16"
    assert res.overview_factors == (2, 4, 8)  # 1301 / 8 = 163 <= 256
    assert_cog_layout(res.path, 256, (2, 4, 8))
    with rasterio.open(res.path) as ds:
        assert ds.nodata == 0 and ds.crs == CRS and ds.transform == TRANSFORM
        assert ds.compression.name == "deflate" and ds.tags(ns="IMAGE_STRUCTURE")
        assert int(ds.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR", 2)) == 2
    np.testing.assert_array_equal(read_level(res.path, 0), data)
    valid = data != 0
    for k, f in enumerate((2, 4, 8), start=1):
        lvl = read_level(res.path, k).astype(np.float64)
        ref = box(data.astype(np.float64), f, valid)
        assert lvl.shape == ref.shape == (1, -(-1037 // f), -(-1301 // f))
        np.testing.assert_array_equal(lvl == 0, np.isnan(ref))  # nodata exactly where no data
        assert np.abs(lvl - ref)[~np.isnan(ref)].max() <= 0.5  # rounding only, edges too


def test_float32_deflate_floating_point_predictor(tmp_path: Path) -> None:
    data = smooth(2, 900, 1100, seed=4, lo=-50, hi=3000).astype(np.float32)
    src = write_src(tmp_path / "f32.tif", data, tiled=False, blockysize=7)  # odd strips
    res = write_cog(src, tmp_path / "out.tif")
    assert res.compression == "deflate" and res.dtype == "float32" and res.count == 2
    assert_cog_layout(res.path, 512, (2, 4))
    with rasterio.open(res.path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "3"
    np.testing.assert_array_equal(read_level(res.path, 0), data)
    for k, f in enumerate((2, 4), start=1):
        np.testing.assert_allclose(read_level(res.path, k), box(data, f), rtol=1e-5, atol=1e-3)


def test_rgba_explicit_deflate_keeps_alpha_band_and_exact_pixels(tmp_path: Path) -> None:
    data = smooth(4, 600, 700, seed=5).round().astype(np.uint8)
    ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    src = write_src(tmp_path / "rgba.tif", data, colorinterp=ci)
    res = write_cog(src, tmp_path / "out.tif", compression="deflate")
    assert res.compression == "deflate" and res.count == 4
    with rasterio.open(res.path) as ds:
        assert ds.colorinterp == tuple(ci)
    np.testing.assert_array_equal(read_level(res.path, 0), data)
    assert np.abs(read_level(res.path, 1) - box(data.astype(float), 2)).max() <= 1


def test_four_band_uint8_auto_is_deflate(tmp_path: Path) -> None:
    data = smooth(4, 300, 400, seed=6).round().astype(np.uint8)
    ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]  # RGBN
    res = write_cog(write_src(tmp_path / "rgbn.tif", data, colorinterp=ci), tmp_path / "out.tif")
    assert res.compression == "deflate" and res.overview_factors == ()
    np.testing.assert_array_equal(read_level(res.path, 0), data)
    assert_cog_layout(res.path, 512, ())


def test_source_mask_is_kept(tmp_path: Path) -> None:
    """A source with an internal mask (our own RGBA -> JPEG + mask output) keeps the mask."""
    data = smooth(4, 700, 800, seed=7).round().astype(np.uint8)
    data[3] = 255
    data[3, 100:300, 200:500] = 0
    ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    first = write_cog(write_src(tmp_path / "a.tif", data, colorinterp=ci), tmp_path / "b.tif")
    res = write_cog(first.path, tmp_path / "c.tif", compression="deflate")
    np.testing.assert_array_equal(read_level(res.path, 0, masks=True), (data[3] > 0) * 255)
    np.testing.assert_array_equal(read_level(res.path, 0), read_level(first.path, 0))


def test_bigtiff_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cog, "_BIGTIFF_AT", 0)  # force the >4 GB layout on a small file
    data = smooth(3, 1100, 1500, seed=8).round().astype(np.uint8)
    res = write_cog(write_src(tmp_path / "rgb.tif", data), tmp_path / "out.tif")
    with tifffile.TiffFile(res.path) as tif:
        assert tif.is_bigtiff
    assert_cog_layout(res.path, 512, (2, 4))
    assert np.abs(read_level(res.path, 0) - data.astype(float)).mean() < 3


def test_progress_bar_and_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = smooth(1, 300, 300, seed=9).round().astype(np.int16) - 100
    src = write_src(tmp_path / "i16.tif", data)
    (tmp_path / "out.tif").write_bytes(b"old")
    res = write_cog(src, tmp_path / "out.tif", progress=True, overwrite=True)
    np.testing.assert_array_equal(read_level(res.path, 0), data)
    assert "writing COG" in capsys.readouterr().err


# --------------------------------------------------------------------------- errors


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_existing_destination_is_refused(tmp_path: Path) -> None:
    src = write_src(tmp_path / "src.tif", smooth(1, 64, 64).astype(np.uint8))
    dst = tmp_path / "out.tif"
    dst.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError) as err:
        write_cog(src, dst)
    assert isinstance(err.value, FileExistsError) and "\n" not in str(err.value)
    assert dst.read_bytes() == b"keep me"


def test_text_file_is_not_a_raster(tmp_path: Path) -> None:
    txt = tmp_path / "notes.txt"
    txt.write_text("just some words, not pixels\n")
    with pytest.raises(NotARasterError) as err:
        write_cog(txt, tmp_path / "out.tif")
    assert isinstance(err.value, RasterInputError) and "\n" not in str(err.value)
    assert leftovers(tmp_path, {"notes.txt"}) == []


def test_jpeg_requested_for_uint16_is_unsupported(tmp_path: Path) -> None:
    src = write_src(tmp_path / "u16.tif", smooth(3, 64, 64).astype(np.uint16))
    with pytest.raises(UnsupportedRasterError) as err:
        write_cog(src, tmp_path / "out.tif", compression="jpeg")
    assert "JPEG" in str(err.value) and "\n" not in str(err.value)
    assert leftovers(tmp_path, {"u16.tif"}) == []


def test_truncated_source_is_corrupt_and_leaves_nothing(tmp_path: Path) -> None:
    src = write_src(tmp_path / "src.tif", smooth(3, 1500, 1500).round().astype(np.uint8))
    blob = src.read_bytes()
    src.write_bytes(blob[: len(blob) * 2 // 3])  # header intact, last tiles missing
    with pytest.raises(CorruptRasterError) as err:
        write_cog(src, tmp_path / "out.tif")
    assert "\n" not in str(err.value)
    assert leftovers(tmp_path, {"src.tif"}) == []


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_src(tmp_path / "src.tif", smooth(3, 600, 600).astype(np.uint8))

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(cog, "_assemble", boom)
    with pytest.raises(OSError, match="disk full"):
        write_cog(src, tmp_path / "out.tif")
    assert leftovers(tmp_path, {"src.tif"}) == []
