"""Raster fixtures of the pyramid tests: small files written with rasterio / PIL, known pixels.

Source files are written once per session (they are read-only for the tests); pyramid caches always go to a
per-test ``tmp_path / "cache"`` (see :func:`tests.pyramid.rasters.make_options`), never to the user's home.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rasterio.enums import ColorInterp

from tests.pyramid.rasters import (
    CRS,
    NODATA,
    SH,
    SW,
    TRANSFORM,
    H,
    Raster,
    W,
    smooth,
    write_tiff,
)

# --------------------------------------------------------------------------------------- RGB layouts


@pytest.fixture(scope="session")
def rgb_data() -> np.ndarray:
    return np.round(smooth(3, H, W, seed=0)).astype(np.uint8)


@pytest.fixture(scope="session")
def raster_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rasters")


@pytest.fixture(scope="session")
def cog_tif(raster_dir: Path, rgb_data: np.ndarray) -> Raster:
    """Tiled 512 DEFLATE, internal average overviews 2 and 4 → layout ``cog``."""
    p = write_tiff(
        raster_dir / "cog.tif",
        rgb_data,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        overviews=(2, 4),
    )
    return Raster(p, rgb_data, "cog", CRS, TRANSFORM)


@pytest.fixture(scope="session")
def tiled_tif(raster_dir: Path, rgb_data: np.ndarray) -> Raster:
    """Tiled 512 DEFLATE, no overviews → layout ``tiled``."""
    p = write_tiff(
        raster_dir / "tiled.tif", rgb_data, tiled=True, blockxsize=512, blockysize=512, compress="deflate"
    )
    return Raster(p, rgb_data, "tiled", CRS, TRANSFORM)


@pytest.fixture(scope="session")
def striped_tif(raster_dir: Path, rgb_data: np.ndarray) -> Raster:
    """Row strips, LZW → layout ``striped``."""
    p = write_tiff(raster_dir / "striped.tif", rgb_data, tiled=False, compress="lzw")
    return Raster(p, rgb_data, "striped", CRS, TRANSFORM)


@pytest.fixture(scope="session")
def rgb_png(raster_dir: Path, rgb_data: np.ndarray) -> Raster:
    """The same pixels as a PNG → layout ``sequential``."""
    p = raster_dir / "rgb.png"
    Image.fromarray(rgb_data.transpose(1, 2, 0)).save(p, compress_level=1)
    return Raster(p, rgb_data, "sequential")


@pytest.fixture(scope="session")
def nongeo_tif(raster_dir: Path, rgb_data: np.ndarray) -> Raster:
    """Tiled TIFF with no CRS and no geotransform."""
    p = write_tiff(
        raster_dir / "nongeo.tif",
        rgb_data,
        georef=False,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
    )
    return Raster(p, rgb_data, "tiled")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pyramid cache folder shared by the tests that only read (the cache is keyed by content), so each
    source's cache is built once per session. Tests about building the cache use their own tmp_path."""
    return tmp_path_factory.mktemp("pyramid-cache")


@pytest.fixture
def isolated_default_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """For code paths that use the default cache folder (the CLI): point it at tmp_path, not ~/.cache."""
    folder = tmp_path / "default-cache"
    monkeypatch.setenv("LRS_VQA_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(params=["cog", "tiled", "striped", "sequential"])
def layout_raster(request: pytest.FixtureRequest) -> Raster:
    name = {"cog": "cog_tif", "tiled": "tiled_tif", "striped": "striped_tif", "sequential": "rgb_png"}
    return request.getfixturevalue(name[request.param])


# --------------------------------------------------------------------------------------- radiometry


@pytest.fixture(scope="session")
def rgbn_data() -> np.ndarray:
    """4-band uint16 with 12-bit values (0..4095); bands differ in range so a swap is visible."""
    a = smooth(4, SH, SW, seed=1)  # 0..255
    scale = np.array([16.0, 12.0, 8.0, 14.0], np.float32)[:, None, None]
    offset = np.array([0.0, 600.0, 1000.0, 200.0], np.float32)[:, None, None]
    return np.clip(np.round(a * scale + offset), 0, 4095).astype(np.uint16)


@pytest.fixture(scope="session")
def rgbn_undefined(raster_dir: Path, rgbn_data: np.ndarray) -> Raster:
    """RGBN with no colour interpretation. GTiff (PHOTOMETRIC=MINISBLACK) cannot store 'undefined' for
    band 1, so GDAL reports (gray, undefined, undefined, undefined): no band is called red/green/blue."""
    p = write_tiff(
        raster_dir / "rgbn_undef.tif",
        rgbn_data,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        colorinterp=[ColorInterp.undefined] * 4,
    )
    return Raster(p, rgbn_data, None, CRS, TRANSFORM)


@pytest.fixture(scope="session")
def rgbn_bgr(raster_dir: Path, rgbn_data: np.ndarray) -> Raster:
    """The same RGBN pixels, stored in the order B, G, R, N and declared as such."""
    data = rgbn_data[[2, 1, 0, 3]]
    p = write_tiff(
        raster_dir / "rgbn_bgr.tif",
        data,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        colorinterp=[ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined],
    )
    return Raster(p, data, None, CRS, TRANSFORM)


@pytest.fixture(scope="session")
def rgba_png(raster_dir: Path) -> Raster:
    """RGBA PNG with a fully transparent rectangle and a half-transparent one."""
    data = np.round(smooth(4, SH, SW, seed=2)).astype(np.uint8)
    alpha = np.full((SH, SW), 255, np.uint8)
    alpha[100:401, 200:701] = 0
    alpha[800:900, 1300:1400] = 128  # partly transparent is still valid
    data[3] = alpha
    p = raster_dir / "rgba.png"
    Image.fromarray(data.transpose(1, 2, 0), "RGBA").save(p, compress_level=1)
    return Raster(p, data, "sequential")


@pytest.fixture(scope="session")
def float_nodata(raster_dir: Path) -> Raster:
    """float32 single band (values -50..1200) with nodata=-9999 in a rectangle."""
    data = smooth(1, SH, SW, seed=3, hi=1250.0) - 50.0
    data[0, 300:651, 400:901] = NODATA
    data = data.astype(np.float32)
    p = write_tiff(
        raster_dir / "float.tif",
        data,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        nodata=NODATA,
    )
    return Raster(p, data, "tiled", CRS, TRANSFORM, NODATA)


@pytest.fixture(scope="session")
def gray_tif(raster_dir: Path) -> Raster:
    data = np.round(smooth(1, SH, SW, seed=4)).astype(np.uint8)
    p = write_tiff(
        raster_dir / "gray.tif", data, tiled=True, blockxsize=256, blockysize=256, compress="deflate"
    )
    return Raster(p, data, "tiled", CRS, TRANSFORM)
