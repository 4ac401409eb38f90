"""The Dynamic Image Pyramid's level plan: pure geometry, no pixels.

Levels follow the LRS-VQA paper's DIP (reference card §2.2) with two deliberate changes:

* power-of-two levels keep their exact size ``floor(W / 2**k)`` instead of being upsampled by up to 31 %
  to fill whole tiles, so level pixel ``i`` stands for level-0 pixels ``[i*2**k, (i+1)*2**k)`` and is
  served straight from an overview of that factor. It is exactly their mean when the overview was built
  exactly (``lrs-vqa cog``, the padded libvips cache, or sizes divisible by ``2**k``); GDAL-built overviews
  of odd-sized images are ceil-sized and resampled with a ratio slightly off 2, and are served as stored.
  The remainder of
  fewer than ``2**k`` level-0 pixels at the right/bottom edge appears at the finer levels only;
* the tile grid is ``ceil(size / tile_size)``; edge tiles are *partial* (their level box is clipped to the
  level) and are padded bottom/right only when a model asks for a square tile (``Tile.padded``), as the
  reference does.

Order is coarse → fine, as in the reference: index 0 is the coarse level (long side ``coarse_long_side``,
about 3×3 tiles), the last index is the native resolution. The global thumbnail (long side
``thumbnail_size``, one tile) is kept apart from the tiled levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class PixelBox:
    """Axis-aligned pixel box; ``x1``/``y1`` are exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    def __post_init__(self) -> None:
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise ValueError(f"inverted box {self}")

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return self.width * self.height

    def intersects(self, other: PixelBox) -> bool:
        if self.area == 0 or other.area == 0:
            return False
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def clip(self, width: int, height: int) -> PixelBox:
        return PixelBox(
            min(max(self.x0, 0), width),
            min(max(self.y0, 0), height),
            min(max(self.x1, 0), width),
            min(max(self.y1, 0), height),
        )

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


@dataclass(frozen=True)
class PyramidSpec:
    """Parameters of the pyramid (defaults from the reference implementation)."""

    tile_size: int = 336
    coarse_long_side: int = 1008
    thumbnail_size: int = 336

    def __post_init__(self) -> None:
        if self.tile_size < 14 or self.coarse_long_side < self.tile_size or self.thumbnail_size < 14:
            raise ValueError("tile_size and thumbnail_size must be >= 14 and coarse_long_side >= tile_size")


@dataclass(frozen=True)
class Level:
    """One level of the pyramid.

    ``factor_x``/``factor_y`` are level-0 pixels per level pixel along each axis (exactly ``2**k`` for
    power-of-two levels; ``W / width`` for the coarse level and the thumbnail).
    """

    index: int
    name: str
    width: int
    height: int
    factor_x: float
    factor_y: float
    tile_size: int
    source_width: int
    source_height: int

    @property
    def is_native(self) -> bool:
        return self.factor_x == 1.0 and self.factor_y == 1.0

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.tile_size)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.tile_size)

    @property
    def num_tiles(self) -> int:
        return self.rows * self.cols

    def tile_level_box(self, row: int, col: int) -> PixelBox:
        """The tile's box in this level's pixels, clipped to the level (edge tiles are partial)."""
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise IndexError(f"tile ({row}, {col}) outside the {self.rows}x{self.cols} grid of {self}")
        t = self.tile_size
        return PixelBox(col * t, row * t, min((col + 1) * t, self.width), min((row + 1) * t, self.height))

    def to_level0(self, box: PixelBox) -> PixelBox:
        """Level-pixel box → the level-0 box it was resampled from (exact for power-of-two levels)."""
        return PixelBox(
            math.floor(box.x0 * self.factor_x + 1e-9),
            math.floor(box.y0 * self.factor_y + 1e-9),
            min(self.source_width, math.ceil(box.x1 * self.factor_x - 1e-9)),
            min(self.source_height, math.ceil(box.y1 * self.factor_y - 1e-9)),
        )

    def from_level0(self, box: PixelBox) -> PixelBox:
        """Level-0 box → the smallest level-pixel box covering it."""
        return PixelBox(
            math.floor(box.x0 / self.factor_x + 1e-9),
            math.floor(box.y0 / self.factor_y + 1e-9),
            min(self.width, math.ceil(box.x1 / self.factor_x - 1e-9)),
            min(self.height, math.ceil(box.y1 / self.factor_y - 1e-9)),
        )

    def tile_box(self, row: int, col: int) -> PixelBox:
        """The tile's level-0 pixel box."""
        return self.to_level0(self.tile_level_box(row, col))

    def tiles_covering(self, level0_box: PixelBox) -> list[tuple[int, int]]:
        """Row-major (row, col) of every tile whose level-0 box intersects ``level0_box``."""
        clipped = level0_box.clip(self.source_width, self.source_height)
        if clipped.area == 0:
            return []
        b = self.from_level0(clipped)
        if b.area == 0:
            return []
        t = self.tile_size
        return [
            (r, c)
            for r in range(b.y0 // t, (b.y1 - 1) // t + 1)
            for c in range(b.x0 // t, (b.x1 - 1) // t + 1)
        ]

    def describe(self) -> dict[str, object]:
        return {
            "index": self.index,
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "factor": round(max(self.factor_x, self.factor_y), 6),
            "grid": [self.rows, self.cols],
            "tiles": self.num_tiles,
        }


def _scaled_level(index: int, name: str, width: int, height: int, long_side: int, tile: int) -> Level:
    scale = long_side / max(width, height)
    lw = max(1, round(width * scale))
    lh = max(1, round(height * scale))
    return Level(index, name, lw, lh, width / lw, height / lh, tile, width, height)


def plan_levels(width: int, height: int, spec: PyramidSpec = PyramidSpec()) -> tuple[Level, ...]:
    """Tiled levels of the DIP, coarse → native.

    Power-of-two levels ``1, 1/2, 1/4, ...`` down to the last one whose long side is still at least
    ``coarse_long_side``, then a coarse level with exactly that long side when the last power-of-two level
    is larger. An image whose long side is at most ``coarse_long_side`` has a single level: native.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    long_side = max(width, height)
    pow2: list[int] = [1]
    while long_side / (pow2[-1] * 2) >= spec.coarse_long_side:
        pow2.append(pow2[-1] * 2)
    plans: list[tuple[str, int, int, float, float]] = []
    last = pow2[-1]
    if long_side / last > spec.coarse_long_side:
        coarse = _scaled_level(0, "coarse", width, height, spec.coarse_long_side, spec.tile_size)
        plans.append(("coarse", coarse.width, coarse.height, coarse.factor_x, coarse.factor_y))
    for f in reversed(pow2):
        name = "native" if f == 1 else f"1/{f}"
        plans.append((name, max(1, width // f), max(1, height // f), float(f), float(f)))
    return tuple(
        Level(i, name, w, h, fx, fy, spec.tile_size, width, height)
        for i, (name, w, h, fx, fy) in enumerate(plans)
    )


def plan_thumbnail(width: int, height: int, spec: PyramidSpec = PyramidSpec()) -> Level:
    """The global thumbnail: the whole image with long side ``thumbnail_size``, one tile."""
    lvl = _scaled_level(-1, "thumbnail", width, height, spec.thumbnail_size, spec.thumbnail_size)
    return lvl
