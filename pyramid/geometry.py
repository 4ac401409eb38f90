"""Pixel ↔ map geometry for tiles: level-0 pixel boxes, native-CRS boxes and WGS84 polygons."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from pyramid.levels import PixelBox

if TYPE_CHECKING:  # pyproj and shapely cost ~60 ms to import: loaded when a CRS or a polygon is first needed
    from affine import Affine
    from pyproj import CRS, Transformer
    from shapely.geometry import Polygon

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


_EPSG = re.compile(r"(?i)EPSG:(\d+)")


class Georef:
    """An affine transform plus a CRS; converts pixel boxes to map boxes and back.

    The CRS is parsed (pyproj) on first use: opening a pyramid and streaming tiles need only its name."""

    def __init__(self, transform: Affine, crs: CRS | str | None) -> None:
        self.transform = transform
        self._crs_input = crs
        self._inverse = ~transform
        self._coefficients = tuple(transform)[:6]

    @cached_property
    def crs(self) -> CRS | None:
        if self._crs_input is None:
            return None
        from pyproj import CRS

        return CRS.from_user_input(self._crs_input)

    @cached_property
    def crs_string(self) -> str | None:
        if self._crs_input is None:
            return None
        if isinstance(self._crs_input, str) and (m := _EPSG.fullmatch(self._crs_input.strip())):
            return f"EPSG:{int(m.group(1))}"  # what pyproj's to_epsg() gives back for an EPSG code
        epsg = self.crs.to_epsg()  # type: ignore[union-attr]
        return f"EPSG:{epsg}" if epsg else self.crs.to_wkt()  # type: ignore[union-attr]

    @cached_property
    def _to_wgs84(self) -> Transformer | None:
        if self.crs is None:
            return None
        from pyproj import CRS, Transformer

        return Transformer.from_crs(self.crs, CRS.from_epsg(4326), always_xy=True)

    def _corners(self, box: PixelBox) -> list[tuple[float, float]]:
        corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1)]
        return [self.transform @ c for c in corners]

    def pixel_polygon_native(self, box: PixelBox) -> Polygon:
        """The box's outline in the native CRS (a rotated transform gives a rotated polygon)."""
        from shapely.geometry import Polygon

        return Polygon(self._corners(box))

    def pixel_box_to_native(self, box: PixelBox) -> tuple[float, float, float, float]:
        # The outline's bounds are its corners' extremes, in plain arithmetic: no polygon and no Affine
        # products per tile (streaming pays this per tile).
        a, b, c, d, e, f = self._coefficients
        x0, y0, x1, y1 = box.x0, box.y0, box.x1, box.y1
        xs = (a * x0 + b * y0 + c, a * x1 + b * y0 + c, a * x1 + b * y1 + c, a * x0 + b * y1 + c)
        ys = (d * x0 + e * y0 + f, d * x1 + e * y0 + f, d * x1 + e * y1 + f, d * x0 + e * y1 + f)
        return (min(xs), min(ys), max(xs), max(ys))

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
        import shapely
        from shapely.geometry import Polygon

        outline = self.pixel_polygon_native(box)
        minx, miny, maxx, maxy = outline.bounds
        native = shapely.segmentize(outline, max(maxx - minx, maxy - miny, 1e-12) / _EDGE_POINTS)
        xs, ys = self._to_wgs84.transform(*native.exterior.xy)
        return Polygon(zip(xs, ys, strict=True))

    def tile_geometry(self, box: PixelBox) -> TileGeometry:
        if self._crs_input is None:
            # A transform without a CRS is still a map box, in an unnamed frame.
            return TileGeometry(box, self.pixel_box_to_native(box), None)
        return TileGeometry(box, self.pixel_box_to_native(box), self.crs_string, self)
