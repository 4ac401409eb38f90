"""Pixel ↔ map geometry for tiles: level-0 pixel boxes, native-CRS boxes and WGS84 polygons."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import shapely
from affine import Affine
from pyproj import CRS, Transformer
from shapely.geometry import Polygon

from pyramid.levels import PixelBox

# Points per box edge when projecting to WGS84, so long edges follow the projection's curvature.
_EDGE_POINTS = 8


@dataclass(frozen=True)
class TileGeometry:
    """Where a tile lies: always in level-0 pixels; in map coordinates when georeferenced.

    The WGS84 polygon is projected on first access: streaming thousands of tiles should not pay for
    projections nobody reads."""

    pixel_box: PixelBox
    native_box: tuple[float, float, float, float] | None = None  # minx, miny, maxx, maxy
    native_crs: str | None = None
    georef: Georef | None = field(default=None, repr=False, compare=False)

    @cached_property
    def wgs84(self) -> Polygon | None:
        """The tile's outline in lon/lat (RFC 7946 order), or None without a CRS."""
        return self.georef.pixel_box_to_wgs84(self.pixel_box) if self.georef is not None else None


class Georef:
    """An affine transform plus a CRS; converts pixel boxes to map boxes and back."""

    def __init__(self, transform: Affine, crs: CRS | str | None) -> None:
        self.transform = transform
        self.crs = CRS.from_user_input(crs) if crs is not None else None
        self._inverse = ~transform

    @cached_property
    def crs_string(self) -> str | None:
        if self.crs is None:
            return None
        epsg = self.crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else self.crs.to_wkt()

    @cached_property
    def _to_wgs84(self) -> Transformer | None:
        if self.crs is None:
            return None
        return Transformer.from_crs(self.crs, CRS.from_epsg(4326), always_xy=True)

    def pixel_polygon_native(self, box: PixelBox) -> Polygon:
        """The box's outline in the native CRS (a rotated transform gives a rotated polygon)."""
        corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1)]
        return Polygon([self.transform @ c for c in corners])

    def pixel_box_to_native(self, box: PixelBox) -> tuple[float, float, float, float]:
        minx, miny, maxx, maxy = self.pixel_polygon_native(box).bounds
        return (minx, miny, maxx, maxy)

    def native_box_to_pixel(self, native: tuple[float, float, float, float]) -> PixelBox:
        """Smallest pixel box covering a native-CRS box (inverse of ``pixel_box_to_native``)."""
        minx, miny, maxx, maxy = native
        pts = [self._inverse @ p for p in ((minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy))]
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        return PixelBox(
            math.floor(min(xs) + 1e-6),
            math.floor(min(ys) + 1e-6),
            math.ceil(max(xs) - 1e-6),
            math.ceil(max(ys) - 1e-6),
        )

    def pixel_box_to_wgs84(self, box: PixelBox) -> Polygon | None:
        if self._to_wgs84 is None:
            return None
        outline = self.pixel_polygon_native(box)
        minx, miny, maxx, maxy = outline.bounds
        native = shapely.segmentize(outline, max(maxx - minx, maxy - miny, 1e-12) / _EDGE_POINTS)
        xs, ys = self._to_wgs84.transform(*native.exterior.xy)
        return Polygon(zip(xs, ys, strict=True))

    def tile_geometry(self, box: PixelBox) -> TileGeometry:
        if self.crs is None:
            # A transform without a CRS is still a map box, in an unnamed frame.
            return TileGeometry(box, self.pixel_box_to_native(box), None)
        return TileGeometry(box, self.pixel_box_to_native(box), self.crs_string, self)
