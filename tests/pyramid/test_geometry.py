"""Tile geometry: level-0 pixel boxes → native CRS boxes → WGS84 polygons, and no georeferencing warnings."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from rasterio.windows import bounds as rio_bounds
from shapely.geometry import Point

from pyramid.dip import THUMBNAIL, DynamicImagePyramid
from pyramid.geometry import Georef
from pyramid.levels import PixelBox
from pyramid.source import inspect_raster
from tests.pyramid.rasters import CRS, TRANSFORM, Raster, make_options

TO_WGS84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)


def window_of(b: PixelBox) -> Window:
    return Window(b.x0, b.y0, b.width, b.height)


def bounds(window: Window, transform: Affine) -> tuple[float, float, float, float]:
    """rasterio.windows.bounds (left, bottom, right, top), minus affine 3's `*` deprecation noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return rio_bounds(window, transform)


def all_keys(dip: DynamicImagePyramid) -> list:
    return [k for level in (*range(len(dip.levels)), THUMBNAIL) for k in dip.all_tiles(level)]


def test_native_box_matches_rasterio_bounds(cog_tif: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(cog_tif.path, make_options(tmp_path)) as dip:
        assert dip.info.crs == CRS and dip.info.georeferenced
        for key in all_keys(dip):
            tile = dip.tile(key.level, key.row, key.col)
            g = tile.geometry
            assert g.pixel_box == tile.box == dip.level(key.level).to_level0(tile.level_box)
            assert g.native_crs == CRS
            expected = bounds(window_of(tile.box), TRANSFORM)  # (left, bottom, right, top)
            assert g.native_box == pytest.approx(expected, abs=1e-6)
    # spot check by hand: native tile (1, 2) is x 672..1008, y 336..672 at 0.5 m from (500000, 5000000)
    n = len(dip.levels) - 1
    assert dip.levels[n].tile_box(1, 2) == PixelBox(672, 336, 1008, 672)
    assert bounds(window_of(PixelBox(672, 336, 1008, 672)), TRANSFORM) == pytest.approx(
        (500336.0, 4999664.0, 500504.0, 4999832.0)
    )


def test_pixel_native_round_trip() -> None:
    georef = Georef(TRANSFORM, CRS)
    rng = random.Random(2)
    boxes = [PixelBox(0, 0, 2503, 1901), PixelBox(0, 0, 1, 1), PixelBox(2502, 1900, 2503, 1901)]
    while len(boxes) < 300:
        x0, x1 = sorted(rng.randint(0, 30000) for _ in range(2))
        y0, y1 = sorted(rng.randint(0, 30000) for _ in range(2))
        if x0 < x1 and y0 < y1:
            boxes.append(PixelBox(x0, y0, x1, y1))
    for b in boxes:
        native = georef.pixel_box_to_native(b)
        assert native == pytest.approx(bounds(window_of(b), TRANSFORM), abs=1e-6)
        assert georef.native_box_to_pixel(native) == b


def test_native_to_pixel_covers_partial_pixels() -> None:
    georef = Georef(TRANSFORM, CRS)
    # 0.5 m pixels: a box from 500000.2 to 500001.1 touches pixel columns 0, 1, 2
    assert georef.native_box_to_pixel((500000.2, 4999999.6, 500001.1, 4999999.9)) == PixelBox(0, 0, 3, 1)


def test_rotated_transform_round_trip() -> None:
    t = TRANSFORM @ Affine.rotation(30)
    georef = Georef(t, CRS)
    b = PixelBox(100, 200, 400, 500)
    poly = georef.pixel_polygon_native(b)
    corners = [t @ (b.x0, b.y0), t @ (b.x1, b.y0), t @ (b.x1, b.y1), t @ (b.x0, b.y1)]
    assert [v for xy in list(poly.exterior.coords)[:4] for v in xy] == pytest.approx(
        [v for xy in corners for v in xy]
    )
    # the bounding box of a rotated box covers more pixels; it must at least contain the original
    back = georef.native_box_to_pixel(georef.pixel_box_to_native(b))
    assert back.x0 <= b.x0 and back.y0 <= b.y0 and back.x1 >= b.x1 and back.y1 >= b.y1


def test_wgs84_polygon(cog_tif: Raster, tmp_path: Path) -> None:
    with DynamicImagePyramid.open(cog_tif.path, make_options(tmp_path)) as dip:
        n = len(dip.levels) - 1
        keys = [*dip.all_tiles(0), *dip.all_tiles(THUMBNAIL), *dip.all_tiles(n)[::7]]
        for key in keys:
            tile = dip.tile(key.level, key.row, key.col)
            poly = tile.geometry.wgs84
            assert poly is not None and poly.is_valid and not poly.is_empty
            left, bottom, right, top = bounds(window_of(tile.box), TRANSFORM)
            cx, cy = TO_WGS84.transform((left + right) / 2, (bottom + top) / 2)
            assert poly.contains(Point(cx, cy))
            lons, lats = TO_WGS84.transform([left, right, right, left], [top, top, bottom, bottom])
            minx, miny, maxx, maxy = poly.bounds
            assert minx == pytest.approx(min(lons), abs=1e-4) and maxx == pytest.approx(max(lons), abs=1e-4)
            assert miny == pytest.approx(min(lats), abs=1e-4) and maxy == pytest.approx(max(lats), abs=1e-4)
            # lon/lat order (RFC 7946): this scene is near 15° E, 45° N
            assert 14.9 < cx < 15.1 and 45.0 < cy < 45.2
            for lon, lat in zip(lons, lats, strict=True):  # every corner on the outline
                assert shapely.distance(poly.exterior, Point(lon, lat)) < 1e-7


def test_crs_without_epsg_is_kept_as_wkt() -> None:
    wkt = (
        'PROJCS["custom",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
        'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
        'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",15.1],PARAMETER["scale_factor",0.9996],'
        'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1]]'
    )
    georef = Georef(TRANSFORM, wkt)
    assert georef.crs_string is not None and georef.crs_string.startswith(("PROJCS", "PROJCRS"))
    g = georef.tile_geometry(PixelBox(0, 0, 10, 10))
    assert g.wgs84 is not None and g.native_crs == georef.crs_string


def test_transform_without_crs_has_native_box_but_no_wgs84() -> None:
    georef = Georef(TRANSFORM, None)
    g = georef.tile_geometry(PixelBox(0, 0, 10, 20))
    assert g.native_box == pytest.approx((500000.0, 4999990.0, 500005.0, 5000000.0))
    assert g.native_crs is None and g.wgs84 is None


def test_not_georeferenced_no_geometry_and_no_warning(nongeo_tif: Raster, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = inspect_raster(nongeo_tif.path)
        assert not info.georeferenced and info.crs is None
        # a disk cache too (cache_min_pixels=1000): its libvips TIFF has no georeferencing either
        with DynamicImagePyramid.open(nongeo_tif.path, make_options(tmp_path, cache_min_pixels=1000)) as dip:
            assert dip.georef is None
            n = len(dip.levels) - 1
            for key in [*dip.all_tiles(0), *dip.all_tiles(1)[:3], *dip.all_tiles(THUMBNAIL)]:
                tile = dip.tile(key.level, key.row, key.col)
                assert tile.geometry.native_box is None and tile.geometry.wgs84 is None
                assert tile.geometry.native_crs is None
                assert tile.geometry.pixel_box == tile.box
            for tile in dip.stream(dip.all_tiles(n)):
                assert tile.geometry.native_box is None and tile.geometry.wgs84 is None
            dip.level_image(0)
            desc = dip.describe()
            assert desc["crs"] is None and desc["transform"] is None and desc["georeferenced"] is False
    bad = [w for w in caught if issubclass(w.category, NotGeoreferencedWarning)]
    assert not bad, [str(w.message) for w in bad]


def test_not_georeferenced_png_no_warning(rgb_png: Raster, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with DynamicImagePyramid.open(rgb_png.path, make_options(tmp_path)) as dip:
            list(dip.stream(dip.all_tiles(0)))
            assert dip.thumbnail().geometry.wgs84 is None
    assert not [w for w in caught if issubclass(w.category, NotGeoreferencedWarning)]
